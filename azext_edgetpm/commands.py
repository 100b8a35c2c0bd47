"""Maps command names to the functions in custom.py (one device, DPS) and custom_fleet.py (the
fleet commands), by name only: validators, table transformers and the exception handler are named
too (_lazy.py) and imported when the command runs, so building the table imports nothing of ours
but this module."""
from azure.cli.core.commands import CliCommandType

from azext_edgetpm._lazy import command_validator, exception_handler, table


def load_command_table(self, _):
    errors = exception_handler()
    fleet = CliCommandType(operations_tmpl="azext_edgetpm.custom_fleet#{}")
    with self.command_group("edge-tpm ek", is_preview=True, exception_handler=errors) as g:
        g.custom_show_command("show", "ek_show", table_transformer=table("ek_table"),
                              validator=command_validator("validate_device_source"))

    with self.command_group("edge-tpm enrollment", is_preview=True, exception_handler=errors) as g:
        g.custom_command("create", "enrollment_create", table_transformer=table("enrollment_table"),
                         validator=command_validator("validate_enrollment_create"))
        g.custom_show_command("show", "enrollment_show", table_transformer=table("enrollment_table"),
                              validator=command_validator("check_values"))
        g.custom_command("list", "enrollment_list", table_transformer=table("enrollment_table"),
                         validator=command_validator("validate_top"))
        g.custom_command("delete", "enrollment_delete", confirmation=True, validator=command_validator("check_values"))

    with self.command_group("edge-tpm registration", is_preview=True, exception_handler=errors) as g:
        g.custom_show_command("show", "registration_show", table_transformer=table("registration_table"),
                              validator=command_validator("check_values"))
        g.custom_command("wait", "registration_wait", table_transformer=table("registration_table"),
                         validator=command_validator("check_values"))

    with self.command_group("edge-tpm", is_preview=True, exception_handler=errors) as g:
        g.custom_command("install", "edge_install", table_transformer=table("edge_install_table"),
                         validator=command_validator("validate_edge_install"))
        g.custom_show_command("status", "edge_status", table_transformer=table("edge_status_table"),
                              validator=command_validator("check_values"))

    with self.command_group("edge-tpm", is_preview=True, exception_handler=errors, custom_command_type=fleet) as g:
        g.custom_command("provision", "provision", table_transformer=table("provision_table"),
                         validator=command_validator("validate_provision"))
        g.custom_command("deprovision", "deprovision", table_transformer=table("deprovision_table"),
                         validator=command_validator("validate_lifecycle"))
        g.custom_command("reprovision", "reprovision", table_transformer=table("reprovision_table"),
                         validator=command_validator("validate_lifecycle"))
        g.custom_command("rekey", "rekey", table_transformer=table("rekey_table"),
                         validator=command_validator("validate_lifecycle"))
        g.custom_command("upgrade", "upgrade", table_transformer=table("upgrade_table"),
                         validator=command_validator("validate_upgrade"))

    with self.command_group("edge-tpm report", is_preview=True, exception_handler=errors,
                            custom_command_type=fleet) as g:
        g.custom_command("merge", "report_merge", table_transformer=table("report_merge_table"),
                         validator=command_validator("check_values"))
