"""azure-cli's ScenarioTest shape for this extension's tests: `self.cmd('az edge-tpm ...',
checks=[self.check('registrationId', '{eid}')])`, `self.kwargs` for placeholders, JMESPath checks.
azdev's coverage rules find the commands and parameters a test runs by `self.cmd('az ...')`.

The commands run in this process through az itself (tests/latest/azcli.py) and live against the
dev kit (DPS emulator, simulated devices): azure-cli-testsdk's ScenarioTest records HTTP traffic
to replay it, which the dev kit makes unnecessary, so its small API is provided here instead of
depending on that package and its pinned dependencies.
"""
import shlex
import unittest

import jmespath

from azext_edgetpm.tests.latest.azcli import az


class ExecutionResult:
    """What `self.cmd` returns (as the testsdk's): the exit code, output and error."""

    def __init__(self, result):
        self.result = result
        self.exit_code = result.rc
        self.output = result.text
        self.error = result.error

    def get_output_in_json(self):
        return self.result.out


class ScenarioTest(unittest.TestCase):
    """Base class: `cmd`, `check`, `exists`, `kwargs` as in azure.cli.testsdk."""

    def setUp(self):
        super().setUp()
        self.kwargs = {}

    def _format(self, text):
        return text.format(**self.kwargs) if self.kwargs else text

    def cmd(self, command, checks=None, expect_failure=False, env=None):
        args = shlex.split(self._format(command))
        if args and args[0] == "az":
            args = args[1:]
        result = az(*args, env=env)
        if expect_failure is None:  # either outcome (the caller checks what it needs)
            pass
        elif expect_failure:
            self.assertNotEqual(result.rc, 0, f"{command} succeeded: {result.text[:500]}")
        else:
            self.assertEqual(result.rc, 0, f"{command} failed: {result.message} | {result.recommendation} | "
                                           f"{result.stderr[-1500:]}")
        for check in checks or []:
            check(result)
        return ExecutionResult(result)

    def check(self, query, expected):
        expected = self._format(expected) if isinstance(expected, str) else expected

        def run(result):
            actual = jmespath.search(query, result.out)
            self.assertEqual(actual, expected, f"{query}: {actual!r} != {expected!r}")
        return run

    def exists(self, query):
        def run(result):
            self.assertIsNotNone(jmespath.search(query, result.out), f"{query} is missing")
        return run
