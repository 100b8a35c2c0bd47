"""What the install steps share: the files they manage, backups, and the apt helpers of the
package steps."""
import shlex
import time
from typing import List, Optional

from azext_edgetpm.errors import DeviceError, LocalFileError, option
from .. import apt, configtoml, proxy as proxy_mod
from ..plan import Context


DAEMON_JSON = "/etc/docker/daemon.json"
APT_LIST = "/etc/apt/sources.list.d/edge-tpm.list"
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
                 TPMD_OVERRIDE_PATH, APT_LIST, PAYLOAD_PATH) + proxy_mod.MANAGED_FILES


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


# -- apt helpers shared by the package steps -------------------------------------------------------
def source_files(ctx: Context) -> List[str]:
    """The apt source files this product configured (ours, and packages-microsoft-prod's)."""
    files = []
    if ctx.facts.file(APT_LIST) is not None:
        files.append(APT_LIST)
    if ctx.facts.installed("packages-microsoft-prod"):
        listed = ctx.run("dpkg -L packages-microsoft-prod 2>/dev/null", timeout=60).stdout.splitlines()
        files += [f for f in listed if f.startswith("/etc/apt/sources.list.d/") and
                  f.endswith((".list", ".sources"))]
    return files


def update_sources(ctx: Context, files: Optional[List[str]] = None) -> None:
    """apt-get update of our sources only (so an unrelated unreachable source does not fail it)."""
    files = files if files is not None else source_files(ctx)
    if not files:
        return
    ctx.progress("apt-get update")
    result = ctx.run(apt.update_command(files), timeout=apt.INSTALL_TIMEOUT)
    # apt-get update exits 0 when a source cannot be fetched (it only warns): for the sources we
    # configured, that is a failure.
    apt.raise_for(apt.update_failed(result), "apt-get update", ctx.display)
    ctx.updated_sources = True


def unindexed_sources(ctx: Context, files: List[str]) -> List[str]:
    """URIs of these source files that apt has no package index of yet (never updated, or the
    last update failed)."""
    if not files:
        return []
    quoted = " ".join(shlex.quote(f) for f in files)
    result = ctx.run(f"cat -- {quoted} 2>/dev/null; echo @@POLICY; LC_ALL=C apt-cache policy", timeout=120)
    sources, _, policy_text = result.stdout.partition("@@POLICY")
    indexed = {line.split()[1].rstrip("/") for line in policy_text.splitlines()
               if len(line.split()) > 2 and line.split()[0].isdigit() and "://" in line.split()[1]}
    return [uri for uri in apt.source_uris(sources) if uri.rstrip("/") not in indexed]


def policy(ctx: Context, names) -> dict:
    return apt.parse_policy(ctx.run(apt.policy_command(names), timeout=120).stdout)


def ensure_candidates(ctx: Context, names: List[str]) -> dict:
    """Make sure apt knows the packages (updating indexes only when it does not), or raise."""
    found = policy(ctx, names)
    missing = [n for n in names if not (found.get(n) or {}).get("candidate")]
    if missing and not ctx.updated_sources:
        update_sources(ctx)
        found = policy(ctx, names)
        missing = [n for n in names if not (found.get(n) or {}).get("candidate")]
    if missing and ctx.full_update_result is None:
        ctx.progress("apt-get update (all sources)")
        ctx.full_update_result = ctx.run(apt.update_command(), timeout=apt.INSTALL_TIMEOUT)
        found = policy(ctx, names)
        missing = [n for n in names if not (found.get(n) or {}).get("candidate")]
    if missing:
        if ctx.full_update_result is not None and not ctx.full_update_result.ok:
            apt.raise_for(ctx.full_update_result, "apt-get update", ctx.display)
        raise DeviceError(
            f"{', '.join(missing)} cannot be installed on {ctx.display}: no package source of the device offers it.",
            f"Point {option('package_source')} at a repository (mirror base URL or apt line) that has IoT Edge's "
            f"packages for this distribution, or install from .deb files with {option('offline_packages')} DIR.")
    return found


def apt_install(ctx: Context, specs: List[str], what: str, allow_downgrades: bool = False) -> None:
    ctx.progress(f"installing {what}")
    result = ctx.run(apt.install_command(specs, allow_downgrades), timeout=apt.INSTALL_TIMEOUT)
    if not result.ok and apt.DPKG_INTERRUPTED in result.stdout + result.stderr:
        # A package installation stopped half way (power cut, killed connection, e.g. in an
        # earlier run of this very command): finish it as apt asks, then install again.
        ctx.progress("finishing an interrupted package installation (dpkg --configure -a)")
        repair = ctx.run(apt.configure_pending_command(), timeout=apt.INSTALL_TIMEOUT)
        apt.raise_for(repair, "Finishing the interrupted package installation (dpkg --configure -a)", ctx.display)
        result = ctx.run(apt.install_command(specs, allow_downgrades), timeout=apt.INSTALL_TIMEOUT)
    apt.raise_for(result, f"Installing {what}", ctx.display)
