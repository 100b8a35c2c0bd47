"""A throwaway Azure CLI home (config and extension directories) with this checkout's
extension linked in, the way `azdev extension add` lays out a development install: the
source package linked into the extension directory next to the metadata az reads."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_VERSION = "0.0.0.dev0"


def prepare(home, repo=REPO):
    """Create ``home``/config and ``home``/extensions with the extension linked; return the
    environment variables that point az at them (nothing lands in the user's ~/.azure)."""
    config = os.path.join(home, "config")
    extensions = os.path.join(home, "extensions")
    ext = os.path.join(extensions, "edge-tpm")
    info = os.path.join(ext, "edge_tpm-%s.dist-info" % DEV_VERSION)
    os.makedirs(config, exist_ok=True)
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as handle:
        handle.write("Metadata-Version: 2.1\nName: edge-tpm\nVersion: %s\n" % DEV_VERSION)
    link = os.path.join(ext, "azext_edgetpm")
    if not os.path.lexists(link):
        os.symlink(os.path.join(repo, "azext_edgetpm"), link)
    return {
        "AZURE_CONFIG_DIR": config,
        "AZURE_EXTENSION_DIR": extensions,
        "AZURE_CORE_COLLECT_TELEMETRY": "no",
        "AZURE_CORE_NO_COLOR": "true",
        "AZURE_CORE_SURVEY_MESSAGE": "no",
    }
