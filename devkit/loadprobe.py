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

# Imports the extension, loads its command table and every command's arguments.
LOAD = r"""
from azext_edgetpm import EdgeTpmCommandsLoader
loader = EdgeTpmCommandsLoader(cli_ctx=cli)
table = loader.load_command_table(None)
for name in table:
    cli.invocation.data = {"command_string": name}
    loader.command_name = name
    loader.load_arguments(name)
"""
