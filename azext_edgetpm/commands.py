"""Maps command names to the functions in custom.py, by name only (nothing heavy is imported)."""
from azext_edgetpm._format import ek_table
from azext_edgetpm._validators import validate_device_source


def load_command_table(self, _):
    with self.command_group("edge-tpm ek", is_preview=True) as g:
        g.custom_show_command("show", "ek_show", table_transformer=ek_table, validator=validate_device_source)
