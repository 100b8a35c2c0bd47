"""Session-wide test setup.

The Azure CLI reads AZURE_CONFIG_DIR and AZURE_EXTENSION_DIR when azure.cli.core is first
imported, and pytest imports the azext_edgetpm package (and so azure.cli.core) while it
collects the tests: so they are pointed at a throwaway directory here, before collection,
and nothing lands in the user's ~/.azure.
"""
import importlib.util
import os
import tempfile

from devkit import azhome  # noqa: E402  (standard library only)

# The Azure CLI reads these when azure.cli.core is first imported: set them before collection.
os.environ.update(azhome.prepare(tempfile.mkdtemp(prefix="edgetpm-az-")))
os.environ["AZURE_CORE_ONLY_SHOW_ERRORS"] = "false"

pytest_plugins = [p for p in ("devkit.pytest_plugin",) if importlib.util.find_spec(p)]
