"""Building the command table, and a command's arguments, imports only what they need: which
modules get imported is checked (not how long it takes; bench/load_time.py measures that), in a
fresh interpreter, so that nothing this test process already imported can hide a regression.

Validators, table transformers and the exception handler are named (_lazy.py) and imported when
a command runs; the named functions must exist, and az must call them as it would the functions."""
import inspect
import json
import os
import subprocess
import sys
from unittest import mock

import pytest

from devkit import loadprobe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# Ours that building the command table may import; anything else of ours fails the guard (the
# az face's _validators, _format and _error_map, errors.py and other modules that compile regular
# expressions, every adapter, operations and fleet).
TABLE_MODULES = {"azext_edgetpm", "azext_edgetpm._help", "azext_edgetpm._lazy", "azext_edgetpm.commands"}
# ... and loading a command's arguments: az reads the command function's signature (custom.py,
# custom_fleet.py).
ARGUMENT_MODULES = TABLE_MODULES | {"azext_edgetpm._params", "azext_edgetpm.custom", "azext_edgetpm.custom_fleet",
                                    "azext_edgetpm._client_factory", "azext_edgetpm.echo"}
HEAVY_PREFIXES = ("paramiko", "tpm2_pytss", "tomlkit", "cryptography", "azure.core", "azure.mgmt",
                  "azure.identity", "azure.keyvault", "msal", "yaml")
# (requests is imported by azure-cli-core itself when any command loader is built, so it is not ours.)


def _probe(extra_in_table: str = "") -> dict:
    """Modules new after each stage: the table, one command's arguments, every command's arguments."""
    code = ("import json, sys\n" + loadprobe.SETUP + "stages = {}\nbefore = set(sys.modules)\n"
            + loadprobe.TABLE + extra_in_table
            + "stages['table'] = sorted(set(sys.modules) - before)\n"
            + loadprobe.arguments(loadprobe.COMMAND)
            + "stages['command'] = sorted(set(sys.modules) - before)\n"
            + loadprobe.arguments(None)
            + "stages['all'] = sorted(set(sys.modules) - before)\n"
            + "print(json.dumps({'commands': sorted(table), 'stages': stages}))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def unexpected(modules, allowed) -> list:
    """The modules an import guard refuses: ours outside `allowed`, and heavy libraries."""
    return [m for m in modules if (m.startswith("azext_edgetpm") and m not in allowed) or m.startswith(HEAVY_PREFIXES)]


def test_command_table_and_arguments_import_only_what_they_need():
    probe = _probe()
    assert "edge-tpm ek show" in probe["commands"] and loadprobe.COMMAND in probe["commands"]
    stages = probe["stages"]
    assert "azext_edgetpm.commands" in stages["table"]  # the probe did build the table
    assert unexpected(stages["table"], TABLE_MODULES) == [], "building the command table imported these"
    assert "azext_edgetpm._params" in stages["command"] and "azext_edgetpm.custom_fleet" in stages["command"]
    assert unexpected(stages["command"], ARGUMENT_MODULES) == [], f"loading {loadprobe.COMMAND}'s arguments"
    assert unexpected(stages["all"], ARGUMENT_MODULES) == [], "loading every command's arguments"


def test_the_guard_sees_what_it_must_refuse():
    """The same probe with the face's helpers, a module compiling regular expressions and an
    adapter imported while the table is built: the guard names each of them."""
    refused = ["azext_edgetpm._validators", "azext_edgetpm._format", "azext_edgetpm._error_map", "azext_edgetpm.errors",
               "azext_edgetpm.remote.target"]
    probe = _probe("".join(f"import {m}\n" for m in refused))
    found = unexpected(probe["stages"]["table"], TABLE_MODULES)
    assert set(refused) <= set(found), found
    assert "paramiko" in unexpected(["paramiko", "azure.cli.core.util"], TABLE_MODULES)


def _loaded_commands():
    """The command table with every command's arguments, loaded in this process as az loads them."""
    namespace = {}
    exec(loadprobe.SETUP + loadprobe.TABLE + loadprobe.arguments(None), namespace)  # pylint: disable=exec-used
    return namespace["table"]


def test_every_named_function_exists_and_az_sees_its_signature():
    from azext_edgetpm._lazy import CommandValidator, Named
    named = []
    for name, command in _loaded_commands().items():
        for role in ("validator", "table_transformer", "exception_handler"):
            function = getattr(command, role)
            if function is None:
                continue
            assert isinstance(function, Named), f"{name}: {role} {function!r} is imported, not named (_lazy.py)"
            named.append(function)
        for argument in command.arguments.values():
            function = argument.type.settings.get("validator")
            if function is not None and getattr(function, "__module__", "").startswith("azext_edgetpm"):
                assert isinstance(function, Named), f"{name} {argument.name}: validator {function!r} is not named"
            if isinstance(function, Named):
                named.append(function)
    for function in named:
        real = function.resolve()
        assert callable(real) and real.__name__ == function.name, function
        # az passes a validator `cmd`/`namespace` as its signature asks (azure.cli.core.util.get_arg_list)
        wanted = list(inspect.signature(real).parameters)
        if isinstance(function, CommandValidator):
            wanted = ["cmd", "namespace"]  # (it hands each validator what that one asks for)
        assert list(inspect.signature(function).parameters) == wanted, function


def _seen_by_validator(namespace):
    """An argument's validator for the test below: records the value and changes it."""
    SEEN.append(namespace.host)
    namespace.host = namespace.host.upper()


SEEN = []


def test_an_arguments_validator_runs_and_before_the_commands():
    """az (knack) skips the arguments' validators of a command that has its own validator: ours
    runs them first. A named validator on --host of `edge-tpm status`, parsed and validated by az."""
    from azure.cli.core.azclierror import InvalidArgumentValueError
    from azext_edgetpm._lazy import Named
    namespace = {}
    code = loadprobe.SETUP + loadprobe.TABLE + loadprobe.arguments("edge-tpm status")
    exec(code, namespace)  # pylint: disable=exec-used
    cli, main = namespace["cli"], namespace["main"]
    # as c.argument("host", validator=...) in _params.py would set it
    host = main.command_table["edge-tpm status"].arguments["host"]
    host.type.settings["validator"] = Named(__name__, "_seen_by_validator")
    parser = cli.invocation.parser
    parser.load_command_table(main)
    SEEN.clear()
    parsed = parser.parse_args(["edge-tpm", "status", "--host", "dev1"])
    cli.invocation._validation(parsed)  # pylint: disable=protected-access
    assert SEEN == ["dev1"] and parsed.host == "DEV1"
    # the command's own validator (check_values) comes after, and sees the changed value
    parsed = parser.parse_args(["edge-tpm", "status", "--host", "dev\n1"])
    with pytest.raises(InvalidArgumentValueError, match="'DEV\\\\n1'"):
        cli.invocation._validation(parsed)  # pylint: disable=protected-access


def test_a_running_command_names_options_by_their_flags():
    """Domain errors learn the flags when a command runs (not when its arguments load): a fleet's
    per-device records are rendered inside the command, before any error reaches the face. An
    edge-tpm command built as az builds them, whose function renders an option's name."""
    from azext_edgetpm import EdgeTpmCommand, errors
    namespace = {}
    exec(loadprobe.SETUP + loadprobe.TABLE, namespace)  # pylint: disable=exec-used

    def render_option(*_):
        return errors.render(errors.option("ssh_key"))

    command = EdgeTpmCommand(namespace["loader"], "edge-tpm render", render_option)
    with mock.patch.dict(errors._NAMES, clear=True):  # (only empties the registry for this test)
        assert render_option() == "ssh_key"
        assert command({}) == "--ssh-key"
