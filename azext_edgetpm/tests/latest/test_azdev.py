"""azdev, the Azure CLI's developer tool, finds nothing to fix: `azdev linter
--include-whl-extensions` on the extension as `az extension add` installed it from the wheel, and
`azdev style` (pylint and flake8 with azdev's extension configuration). Offline:
scripts/azdev_offline.py prepares what azdev would download or `azdev setup` would write."""
import os
import subprocess
import sys

import pytest

from azext_edgetpm.tests.latest.conftest import REPO

AZDEV_PYTHON = os.path.join(REPO, ".venv-azdev", "bin", "python")
RUNNER = os.path.join(REPO, "scripts", "azdev_offline.py")


@pytest.fixture(scope="module")
def azdev_runs(az_without_tss, tmp_path_factory):
    """Both checks, started together (they take tens of seconds each) and awaited."""
    if not os.path.exists(AZDEV_PYTHON):
        pytest.fail(f"{AZDEV_PYTHON} is missing: run scripts/bootstrap.sh")
    env = dict(os.environ, PYTHONPATH="", AZURE_CONFIG_DIR=str(tmp_path_factory.mktemp("azdev-az")))
    started = {}
    for check in ("linter", "style", "coverage"):
        argv = [AZDEV_PYTHON, RUNNER, "--extension-dir", az_without_tss.extension_dir, check]
        if check == "coverage":
            argv = [AZDEV_PYTHON, RUNNER, check]
        started[check] = subprocess.Popen(argv, env=env, cwd=str(tmp_path_factory.mktemp(check)),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return {check: (proc.communicate(timeout=600)[0], proc.returncode) for check, proc in started.items()}


def test_azdev_linter_passes(azdev_runs):
    output, code = azdev_runs["linter"]
    sys.stdout.write(output)
    assert "Modules: edge-tpm" in output
    assert " FAIL" not in output and "Traceback" not in output
    assert code == 0, output


def test_azdev_style_passes(azdev_runs):
    output, code = azdev_runs["style"]
    sys.stdout.write(output)
    assert "Extensions: edge-tpm" in output
    assert "Pylint: PASSED" in output and "Flake8: PASSED" in output
    assert code == 0, output


def test_every_command_is_run_by_a_scenario_test_as_azdev_sees_it(azdev_runs):
    """azdev's own reader of `self.cmd('az ...')` lines over the test files finds every command."""
    output, code = azdev_runs["coverage"]
    assert code == 0, output
