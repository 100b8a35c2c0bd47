"""Python snippets that load the extension's command table and arguments in a fresh
interpreter, the way az does for `az edge-tpm ...`: shared by the load test (which modules
get imported) and bench/load_time.py (how long it takes)."""

# Builds a CLI object and an invocation, as azure-cli does before it loads a command.
SETUP = r"""
from azure.cli.core.mock import DummyCli
cli = DummyCli()
cli.invocation = cli.invocation_cls(cli_ctx=cli, parser_cls=cli.parser_cls,
                                    commands_loader_cls=cli.commands_loader_cls, help_cls=cli.help_cls)
"""

# Imports the extension and builds its command table (what az does first for any `az edge-tpm ...`).
TABLE = r"""
from azext_edgetpm import EdgeTpmCommandsLoader
loader = EdgeTpmCommandsLoader(cli_ctx=cli)
table = loader.load_command_table(None)
"""

# The command whose arguments "one command" loads.
COMMAND = "edge-tpm provision"


def arguments(command=None) -> str:
    """After TABLE: the arguments of `command` (None: of every command), loaded through az's own
    MainCommandsLoader.load_arguments as when that command runs (-h too): az reads the command
    function's signature (importing custom.py or custom_fleet.py), applies _params.py's argument contexts and merges
    the registries into the commands."""
    return (
        "main = cli.invocation.commands_loader\n"
        "main.command_table.update(table)\n"
        "for name in table:\n"
        "    main.cmd_to_loader_map[name] = [loader]\n"
        f"cli.invocation.data = {{'command_string': {command or ''!r}}}\n"
        f"main.load_arguments({command!r})\n")
