"""Session-wide test setup.

The Azure CLI reads AZURE_CONFIG_DIR and AZURE_EXTENSION_DIR when azure.cli.core is first
imported, and pytest imports the azext_edgetpm package (and so azure.cli.core) while it
collects the tests: so they are pointed at a throwaway directory here, before collection,
and nothing lands in the user's ~/.azure.
"""
import importlib.util
import os
import tempfile

_AZ_HOME = tempfile.mkdtemp(prefix="edgetpm-az-")
os.environ["AZURE_CONFIG_DIR"] = os.path.join(_AZ_HOME, "config")
os.environ["AZURE_EXTENSION_DIR"] = os.path.join(_AZ_HOME, "extensions")
os.environ["AZURE_CORE_COLLECT_TELEMETRY"] = "no"
os.environ["AZURE_CORE_NO_COLOR"] = "true"
os.environ["AZURE_CORE_SURVEY_MESSAGE"] = "no"
os.environ["AZURE_CORE_ONLY_SHOW_ERRORS"] = "false"
os.makedirs(os.environ["AZURE_CONFIG_DIR"], exist_ok=True)
os.makedirs(os.environ["AZURE_EXTENSION_DIR"], exist_ok=True)

# Development layout of the extension (what `azdev extension add` does): the source package
# linked into the extension directory, with the metadata az reads to list it.
_REPO = os.path.dirname(os.path.abspath(__file__))
_EXT = os.path.join(os.environ["AZURE_EXTENSION_DIR"], "edge-tpm")
os.makedirs(os.path.join(_EXT, "edge_tpm-0.0.0.dev0.dist-info"), exist_ok=True)
with open(os.path.join(_EXT, "edge_tpm-0.0.0.dev0.dist-info", "METADATA"), "w", encoding="utf-8") as _f:
    _f.write("Metadata-Version: 2.1\nName: edge-tpm\nVersion: 0.0.0.dev0\n")
if not os.path.exists(os.path.join(_EXT, "azext_edgetpm")):
    os.symlink(os.path.join(_REPO, "azext_edgetpm"), os.path.join(_EXT, "azext_edgetpm"))

pytest_plugins = [p for p in ("devkit.pytest_plugin",) if importlib.util.find_spec(p)]
