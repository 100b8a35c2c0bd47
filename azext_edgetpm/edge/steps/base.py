"""What the install steps share: the files they manage and backups. The package steps call the
device's package manager through ctx.pkg (edge/pkg: apt/dpkg or dnf/rpm)."""
import shlex
import time
from typing import Optional

from azext_edgetpm.errors import LocalFileError
from .. import apt, configtoml, proxy as proxy_mod
from ..plan import Context
from ..pkg.dnf import MS_REPO_FILE, REPO_FILE
# (re-exported: edge.steps' names)
from ..pkg.apt import (  # noqa: F401  # pylint: disable=unused-import
    APT_LIST, apt_install, ensure_candidates, policy, source_files, unindexed_sources, update_sources)


DAEMON_JSON = "/etc/docker/daemon.json"
PAYLOAD_DIR = "/var/secrets/aziot/identityd"
PAYLOAD_PATH = PAYLOAD_DIR + "/dps-additional-data.json"
UDEV_RULE_PATH = "/etc/udev/rules.d/tpmaccess.rules"
UDEV_RULE = ("# allow aziottpm access to tpm0 and tpmrm0 (written by az edge-tpm install)\n"
             'KERNEL=="tpm0", SUBSYSTEM=="tpm", OWNER="aziottpm", MODE="0660"\n'
             'KERNEL=="tpmrm0", SUBSYSTEM=="tpmrm", OWNER="aziottpm", MODE="0660"\n')
TPMD_OVERRIDE_PATH = "/etc/systemd/system/aziot-tpmd.service.d/50-edge-tpm-root.conf"
TPMD_OVERRIDE = ("# aziot-tpmd runs as root to reach the TPM (written by az edge-tpm install --tpm-access root)\n"
                 "[Service]\nUser=root\n")

MANAGED_FILES = (DAEMON_JSON, configtoml.CONFIG_PATH, configtoml.TEMPLATE_PATH, UDEV_RULE_PATH,
                 TPMD_OVERRIDE_PATH, APT_LIST, REPO_FILE, MS_REPO_FILE, PAYLOAD_PATH) + proxy_mod.MANAGED_FILES


def backup_name(path: str) -> str:
    return f"{path}.edgetpm-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.bak"


def backup(ctx: Context, path: str, directory: Optional[str] = None) -> str:
    """Copy `path` next to itself, or into `directory` (made root-only when missing), mode and owner kept,
    before it is replaced; return the copy's name."""
    dest = backup_name(path)
    make = ""
    if directory:
        dest = f"{directory}/{dest.rsplit('/', 1)[1]}"
        make = f"mkdir -p -m 0700 -- {shlex.quote(directory)} && "
    result = ctx.run(f"{make}cp -p -- {shlex.quote(path)} {shlex.quote(dest)}")
    if not result.ok:
        raise LocalFileError(f"Cannot back up {path} on {ctx.display}: {apt.tail(result.stderr)}",
                             "Check the free space on the device; nothing was changed.")
    return dest


# (the apt helpers the steps shared live with the apt implementation of the package-manager
# interface, edge/pkg/apt.py; their names stay importable from here)
