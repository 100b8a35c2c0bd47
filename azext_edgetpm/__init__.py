"""The `az edge-tpm` extension: provision Linux devices with TPM 2.0 as IoT Edge devices
through Azure IoT Hub Device Provisioning Service.

Only the command loader lives here. Everything else is imported inside the loader's methods
or when a command runs, so that building the command table stays cheap: no paramiko,
tpm2-pytss, tomlkit, cryptography or Azure SDK imports, and validators, table transformers and
the exception handler are named, not imported (see _lazy.py; test_load.py guards the list).
"""
from azure.cli.core import AzCommandsLoader
from azure.cli.core.commands import AzCliCommand

from azext_edgetpm._help import helps  # noqa: F401  pylint: disable=unused-import


class EdgeTpmCommand(AzCliCommand):
    """An az command that, when it runs, first tells domain errors how options are spelt."""

    def __call__(self, *args, **kwargs):
        from azext_edgetpm._lazy import name_options
        name_options()
        return super().__call__(*args, **kwargs)


class EdgeTpmCommandsLoader(AzCommandsLoader):
    """Loads the `az edge-tpm` command table and its arguments."""

    def __init__(self, cli_ctx=None):
        from azure.cli.core.commands import CliCommandType
        custom = CliCommandType(operations_tmpl="azext_edgetpm.custom#{}")
        super().__init__(cli_ctx=cli_ctx, custom_command_type=custom)
        self.command_cls = EdgeTpmCommand

    def load_command_table(self, args):
        from azext_edgetpm.commands import load_command_table
        load_command_table(self, args)
        return self.command_table

    def load_arguments(self, command):
        from azext_edgetpm._params import load_arguments
        load_arguments(self, command)


COMMAND_LOADER_CLS = EdgeTpmCommandsLoader
