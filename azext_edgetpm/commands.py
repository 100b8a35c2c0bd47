"""Maps command names to the functions in custom.py, by name only (nothing heavy is imported)."""
from azext_edgetpm._format import ek_table
from azext_edgetpm._format import enrollment_table, registration_table
from azext_edgetpm._validators import validate_device_source
from azext_edgetpm._validators import validate_enrollment_create
from azext_edgetpm._format import edge_install_table, edge_status_table, provision_table
from azext_edgetpm._validators import validate_edge_install, validate_provision
from azext_edgetpm._validators import validate_lifecycle
from azext_edgetpm._format import deprovision_table, reprovision_table, rekey_table
from azext_edgetpm._error_map import exception_handler
from azext_edgetpm._validators import check_values, validate_top


def load_command_table(self, _):
    with self.command_group("edge-tpm ek", is_preview=True, exception_handler=exception_handler) as g:
        g.custom_show_command("show", "ek_show", table_transformer=ek_table, validator=validate_device_source)

    with self.command_group("edge-tpm enrollment", is_preview=True, exception_handler=exception_handler) as g:
        g.custom_command("create", "enrollment_create", table_transformer=enrollment_table,
                         validator=validate_enrollment_create)
        g.custom_show_command("show", "enrollment_show", table_transformer=enrollment_table, validator=check_values)
        g.custom_command("list", "enrollment_list", table_transformer=enrollment_table, validator=validate_top)
        g.custom_command("delete", "enrollment_delete", confirmation=True, validator=check_values)

    with self.command_group("edge-tpm registration", is_preview=True, exception_handler=exception_handler) as g:
        g.custom_show_command("show", "registration_show", table_transformer=registration_table,
                              validator=check_values)
        g.custom_command("wait", "registration_wait", table_transformer=registration_table, validator=check_values)

    with self.command_group("edge-tpm", is_preview=True, exception_handler=exception_handler) as g:
        g.custom_command("install", "edge_install", table_transformer=edge_install_table,
                         validator=validate_edge_install)
        g.custom_show_command("status", "edge_status", table_transformer=edge_status_table, validator=check_values)
        g.custom_command("provision", "provision", table_transformer=provision_table, validator=validate_provision)
        g.custom_command("deprovision", "deprovision", table_transformer=deprovision_table,
                         validator=validate_lifecycle)
        g.custom_command("reprovision", "reprovision", table_transformer=reprovision_table,
                         validator=validate_lifecycle)
        g.custom_command("rekey", "rekey", table_transformer=rekey_table, validator=validate_lifecycle)
