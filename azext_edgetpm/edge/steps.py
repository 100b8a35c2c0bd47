"""The seven steps of `az edge-tpm install`, each check -> change only what differs -> verify.

1 os               /etc/os-release + architecture against IoT Edge's tier 1 matrix (refuses early)
2 package-source   Microsoft's packages-microsoft-prod (or a mirror's, or an apt line, or .deb
                   files uploaded over SFTP), and tpm2-tools
3 container-engine moby-engine; /etc/docker/daemon.json merged; engine restarted only if it changed
4 iotedge          aziot-edge + aziot-identity-service, latest or pinned
5 config           /etc/aziot/config.toml for DPS + TPM (tomlkit; backup; atomic, 0600); payload
6 tpm-access       aziottpm's access to /dev/tpm* (udev rule, tss group, or root); skipped for a
                   TPM reached over TCP
7 runtime          iotedge config apply when needed, then status / check / logs verified
"""
import json
import shlex
import time
from typing import List, Optional

from azext_edgetpm.errors import DeviceError, EdgeTpmError, LocalFileError, option
from . import apt, configtoml, health, platform, proxy as proxy_mod, runtime, support
from .plan import Check, Context, Step
from .services import AZIOT_UNITS, ServiceManager

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


# -- 1 --------------------------------------------------------------------------------------------------
class OsStep(Step):
    name = "os"
    title = "Checking the operating system"

    def check(self, ctx):
        f = ctx.facts
        arch = platform.debian_arch(f.dpkg_arch, f.uname_machine)
        ctx.platform = platform.detect(f.os_release, arch, ctx.display, ctx.settings.edge_version)
        if ctx.platform.package_manager == "dnf":
            raise DeviceError(
                f"{ctx.display} runs {ctx.platform.pretty_name}: installing IoT Edge with dnf is not supported by "
                "this version of az edge-tpm yet. Nothing was changed on the device.",
                "Install IoT Edge on Red Hat Enterprise Linux by Microsoft's instructions (packages-microsoft-prod.rpm, "
                "then dnf install moby-engine moby-cli aziot-edge); Debian and Ubuntu devices install here.")
        warn = support.warning(ctx.platform.line)
        if warn and warn not in ctx.warnings:
            ctx.warnings.append(warn)
        if not f.has("apt-get") or not f.has("dpkg"):
            raise DeviceError(f"{ctx.display} has no apt-get/dpkg.",
                              "IoT Edge's packages install with apt on Debian, Ubuntu and Raspberry Pi OS.")
        init = ServiceManager.detect(f).describe()
        line = ctx.platform.line
        return Check(detail=f"{ctx.platform.pretty_name} ({ctx.platform.arch}); {init}; IoT Edge {line.name} LTS "
                            f"({'pinned' if ctx.platform.pinned else 'newest LTS line for this system'})")

    def apply(self, ctx, check):
        raise NotImplementedError("the os step only checks: its Check never asks for a change")


# -- 2 --------------------------------------------------------------------------------------------------
def is_apt_line(value: Optional[str]) -> bool:
    return bool(value) and value.strip().split(" ", 1)[0] in ("deb", "deb-src")


def config_package_url(source: Optional[str], plat) -> str:
    """Where packages-microsoft-prod.deb comes from: Microsoft, a URL to the .deb itself, or a
    mirror of packages.microsoft.com (its config/<distro>/<version>/ path)."""
    if not source:
        return plat.microsoft_config_url
    if source.endswith(".deb"):
        return source
    return f"{source.rstrip('/')}/config/{plat.repo_distro}/{plat.version}/packages-microsoft-prod.deb"


class PackageSourceStep(Step):
    name = "package-source"
    title = "Configuring the package source"

    def check(self, ctx):
        s, f = ctx.settings, ctx.facts
        changes, detail, data = [], [], {}
        if s.offline_packages:
            debs = apt.read_offline_dir(s.offline_packages, ctx.platform.arch, s.edge_version)
            ctx.extra["offline_debs"] = debs
            if any(d.package not in ctx.extra_packages for d in debs):
                ctx.extra_packages += [d.package for d in debs]
                f = ctx.refresh()
            todo = [d for d in debs if f.installed(d.package) != d.version]
            data["debs"] = todo
            if todo:
                changes.append(f"upload and install {len(todo)} package(s) from {s.offline_packages}: "
                               + ", ".join(f"{d.package} {d.version}" for d in todo))
            else:
                detail.append(f"the {len(debs)} package(s) of {s.offline_packages} are installed")
        elif is_apt_line(s.package_source):
            want = "# Package source of IoT Edge (written by az edge-tpm install)\n" + s.package_source.strip() + "\n"
            data["list"] = want
            current = f.file(APT_LIST)
            if current is None or current.text != want:
                changes.append(f"write {APT_LIST}: {s.package_source.strip()}")
            else:
                detail.append(f"{APT_LIST}: {s.package_source.strip()}")
                self._check_index(ctx, changes, data)
        else:
            version = f.installed("packages-microsoft-prod")
            url = config_package_url(s.package_source, ctx.platform)
            data["url"] = url
            if version:
                detail.append(f"packages-microsoft-prod {version} installed")
                self._check_index(ctx, changes, data)
            else:
                changes.append(f"install packages-microsoft-prod from {url}")
        tools = f.installed("tpm2-tools")
        offline_tools = any(d.package == "tpm2-tools" for d in data.get("debs", []))
        if not tools and not offline_tools:
            changes.append("install tpm2-tools")
            data["tpm2_tools"] = True
        elif tools:
            detail.append(f"tpm2-tools {tools}")
        return Check(changes=changes, detail="; ".join(detail), data=data)

    @staticmethod
    def _check_index(ctx, changes, data):
        missing = unindexed_sources(ctx, source_files(ctx))
        if missing:
            changes.append(f"apt-get update ({', '.join(missing)} has no package index yet)")
            data["update"] = True

    def apply(self, ctx, check):
        done = []
        if check.data.get("update"):
            update_sources(ctx)
            done.append("apt-get update")
        if "debs" in check.data and check.data["debs"]:
            self._install_offline(ctx, check.data["debs"])
            done.append(f"installed {', '.join(d.package + ' ' + d.version for d in check.data['debs'])} "
                        "from the uploaded .deb files")
        if "list" in check.data and (ctx.facts.file(APT_LIST) is None or
                                     ctx.facts.file(APT_LIST).text != check.data["list"]):
            self._write_list(ctx, check.data["list"])
            done.append(f"wrote {APT_LIST}; apt-get update")
        if "url" in check.data and not ctx.facts.installed("packages-microsoft-prod"):
            self._install_config_package(ctx, check.data["url"])
            ctx.refresh()
            update_sources(ctx)
            done.append(f"installed packages-microsoft-prod from {check.data['url']}; apt-get update")
        if check.data.get("tpm2_tools"):
            ctx.refresh()
            ensure_candidates(ctx, ["tpm2-tools"])
            apt_install(ctx, ["tpm2-tools"], "tpm2-tools")
            done.append("installed tpm2-tools")
        return "; ".join(done)

    def verify(self, ctx, check):
        f = ctx.facts
        missing = [d.package for d in check.data.get("debs", []) if f.installed(d.package) != d.version]
        if "url" in check.data and not f.installed("packages-microsoft-prod"):
            missing.append("packages-microsoft-prod")
        if check.data.get("tpm2_tools") and not f.installed("tpm2-tools"):
            missing.append("tpm2-tools")
        if missing:
            raise EdgeTpmError(f"After installing, {', '.join(missing)} is still not installed on "
                               f"{ctx.display}.", "Run apt-get install on the device to see why.")

    @staticmethod
    def _write_list(ctx, text):
        """Write our apt list and update from it; when apt rejects it (or cannot fetch from it),
        put back the file that was there, or remove ours, so that the device's other apt
        commands keep working."""
        previous = ctx.facts.file(APT_LIST)
        ctx.session.install_file(text.encode(), APT_LIST, 0o644)
        try:
            update_sources(ctx, [APT_LIST])
            # a line apt cannot parse also fails every other apt command: check with all sources
            result = ctx.run("LC_ALL=C apt-cache policy >/dev/null", timeout=120)
            apt.raise_for(result, "Reading the package sources", ctx.display)
        except BaseException:
            if previous is not None:
                ctx.session.install_file(previous.data, APT_LIST, previous.mode, previous.owner, previous.group)
            else:
                ctx.run(f"rm -f -- {shlex.quote(APT_LIST)}")
            raise

    @staticmethod
    def _install_config_package(ctx, url):
        ctx.progress(f"downloading {url}")
        q = shlex.quote(url)
        # Behind a proxy, apt's own downloader fetches it: it uses the proxy step's apt settings and
        # the credentials of auth.conf.d, so that they never reach a command line.
        first = (f"if [ -x /usr/lib/apt/apt-helper ]; then /usr/lib/apt/apt-helper download-file {q} \"$F\"; elif"
                 if ctx.settings.proxy else "if")
        script = (
            "set -e; D=$(mktemp -d); trap 'rm -rf \"$D\"' EXIT; trap 'exit 143' HUP INT TERM; "
            "F=\"$D/packages-microsoft-prod.deb\"; "
            f"{first} command -v curl >/dev/null 2>&1; then curl -fsSL --retry 2 -o \"$F\" {q}; "
            f"elif command -v wget >/dev/null 2>&1; then wget -q -O \"$F\" {q}; "
            "elif command -v python3 >/dev/null 2>&1; then python3 -c "
            "'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "
            f"{q} \"$F\"; "
            "else echo 'E: no curl, wget or python3 to download with' >&2; exit 3; fi; "
            f"{apt.APT_ENV} dpkg --force-confdef --force-confold -i \"$F\"")
        result = ctx.run(script, timeout=600)
        if result.rc == 3 and "no curl" in result.stderr:
            raise DeviceError(f"{ctx.display} has no curl, wget or python3 to download {url} with.",
                              f"Install curl on the device, or use {option('offline_packages')} DIR.")
        apt.raise_for(result, f"Installing the package repository configuration from {url}", ctx.display)

    @staticmethod
    def _install_offline(ctx, debs):
        import os
        ctx.progress(f"uploading {len(debs)} package(s)")
        tmp = ctx.session.staging_dir()  # emptied by the next run if this one loses its connection
        try:
            remote = []
            for deb in debs:
                with open(deb.path, "rb") as handle:
                    data = handle.read()
                dest = f"{tmp}/{os.path.basename(deb.path)}"
                ctx.session.upload(data, dest, 0o644)
                remote.append(dest)
            paths = dict(zip((d.path for d in debs), remote))
            for group in apt.engine_first(debs):
                apt_install(ctx, [paths[d.path] for d in group], ", ".join(d.package for d in group),
                            allow_downgrades=True)
        finally:
            ctx.session.run(f"rm -rf {shlex.quote(tmp)}")


# -- 3 --------------------------------------------------------------------------------------------------
def merge_daemon_json(current_text: Optional[str], log_driver: str, display: str = "the device"):
    """(new dict or None when nothing is to be written, old dict) for /etc/docker/daemon.json."""
    old = {}
    if current_text is not None and current_text.strip():
        try:
            old = json.loads(current_text)
        except ValueError as exc:
            raise LocalFileError(f"{DAEMON_JSON} on {display} is not valid JSON ({exc}); it was left as it is.",
                                 "Fix the file (or remove it), then run the command again; "
                                 f"{option('log_driver')} keep leaves it alone.") from exc
        if not isinstance(old, dict):
            raise LocalFileError(f"{DAEMON_JSON} on {display} is not a JSON object; it was left as it is.",
                                 "Fix the file (or remove it), then run the command again.")
    if log_driver == "keep" or old.get("log-driver") == log_driver:
        return None, old
    new = dict(old)
    new["log-driver"] = log_driver
    return new, old


class ContainerEngineStep(Step):
    name = "container-engine"
    title = "Installing and configuring the container engine"

    def check(self, ctx):
        f, s = ctx.facts, ctx.settings
        changes, detail, data = [], [], {}
        engine = next(((p, f.installed(p)) for p in ("moby-engine", "docker-ce", "docker.io") if f.installed(p)), None)
        if engine is None:
            changes.append("install moby-engine")
            data["install"] = True
        else:
            detail.append(f"{engine[0]} {engine[1]}")
        current = f.file(DAEMON_JSON)
        new, old = merge_daemon_json(current.text if current else None, s.log_driver, ctx.display)
        if new is not None:
            was = old.get("log-driver")
            changes.append(f"set \"log-driver\": \"{s.log_driver}\" in {DAEMON_JSON} "
                           + (f"(was {was!r})" if was else "(engine default json-file)")
                           + " and restart the engine")
            data["daemon_json"] = json.dumps(new, indent=2) + "\n"
        else:
            detail.append(f"log driver {old.get('log-driver', 'json-file (engine default)')}"
                          + (" (kept)" if s.log_driver == "keep" else ""))
        return Check(changes=changes, detail="; ".join(detail), data=data)

    def apply(self, ctx, check):
        done = []
        if check.data.get("install"):
            ensure_candidates(ctx, ["moby-engine"])
            apt_install(ctx, ["moby-engine"], "moby-engine")
            ctx.refresh()
            done.append(f"installed moby-engine {ctx.facts.installed('moby-engine')}")
        if "daemon_json" in check.data:
            current = ctx.facts.file(DAEMON_JSON)
            saved = backup(ctx, DAEMON_JSON) if current is not None else None
            ctx.run(f"mkdir -p {shlex.quote('/etc/docker')}")
            ctx.session.install_file(check.data["daemon_json"].encode(), DAEMON_JSON, 0o644)
            done.append(f"wrote {DAEMON_JSON}" + (f" (backup {saved})" if saved else ""))
            done.append(self._restart(ctx, current))
        return "; ".join(d for d in done if d)

    @staticmethod
    def _restart(ctx, previous) -> str:
        ctx.refresh()
        manager = ServiceManager.detect(ctx.facts, "docker")
        ctx.progress("restarting the container engine")
        result = manager.restart(ctx.session, "docker")
        if result is None:
            ctx.notes.append("The container engine was not restarted (no systemd, no /etc/init.d/docker): "
                             "restart it so that daemon.json applies.")
            return "engine not restarted: no service manager on the device (restart it yourself)"
        if result.ok:
            return f"restarted the engine ({manager.kind})"
        # The engine refused the new file: put the old one back and bring the engine up again.
        if previous is not None:
            ctx.session.install_file(previous.data, DAEMON_JSON, previous.mode, previous.owner, previous.group)
        else:
            ctx.run(f"rm -f {shlex.quote(DAEMON_JSON)}")
        manager.restart(ctx.session, "docker")
        raise EdgeTpmError(
            f"The container engine did not restart with the new {DAEMON_JSON} on {ctx.display} "
            f"({apt.tail(result.stderr + result.stdout)}); the previous file was restored.",
            f"Check {option('log_driver')} (e.g. local, json-file, journald) or use {option('log_driver')} keep.")

    def verify(self, ctx, check):
        f = ctx.facts
        if check.data.get("install") and not f.installed("moby-engine"):
            raise EdgeTpmError(f"moby-engine is not installed on {ctx.display} after apt-get install.",
                               "Run apt-get install moby-engine on the device to see why.")
        if "daemon_json" in check.data:
            current = f.file(DAEMON_JSON)
            if current is None or json.loads(current.text).get("log-driver") != ctx.settings.log_driver:
                raise LocalFileError(f"{DAEMON_JSON} on {ctx.display} does not have the log driver set.",
                                     "Check the file on the device and run the command again.")


# -- 4 --------------------------------------------------------------------------------------------------
EDGE_PACKAGES = ("aziot-edge", "aziot-identity-service")


class IotEdgeStep(Step):
    name = "iotedge"
    title = "Installing IoT Edge (aziot-edge, aziot-identity-service)"

    def check(self, ctx):
        f, s = ctx.facts, ctx.settings
        edge, ident = f.installed("aziot-edge"), f.installed("aziot-identity-service")
        state = f"aziot-edge {edge or 'not installed'}, aziot-identity-service {ident or 'not installed'}"
        if s.edge_version:
            if edge and apt.match_version(s.edge_version, [edge]):
                return Check(detail=f"{state} (pinned {s.edge_version})")
            return Check(changes=[f"install aziot-edge {s.edge_version}" + (f" (installed: {edge})" if edge else "")],
                         detail=state, data={"pin": s.edge_version})
        if edge and ident:
            line = support.by_name(support.line_of(edge) or "")
            warn = support.warning(line) if line else None
            if warn and warn not in ctx.warnings:
                ctx.warnings.append(warn)
            return Check(detail=state)
        return Check(changes=["install aziot-edge and aziot-identity-service (latest)"], detail=state, data={})

    def apply(self, ctx, check):
        pin = check.data.get("pin")
        found = ensure_candidates(ctx, list(EDGE_PACKAGES))
        # The newest version of a line that has packages for this system (not a newer line the table does not
        # know, nor a line this system lacks), else apt's candidate.
        edge_full = support.newest(found["aziot-edge"]["versions"], [line.name for line in ctx.platform.lines()]) \
            or found["aziot-edge"]["candidate"]
        if pin:
            edge_full = apt.match_version(pin, found["aziot-edge"]["versions"] or [found["aziot-edge"]["candidate"]])
            if edge_full is None:
                if not found["aziot-edge"]["versions"] and not ctx.updated_sources:
                    update_sources(ctx)
                raise DeviceError(
                    f"aziot-edge {pin} is not offered by the package source of {ctx.display} "
                    f"(available: {', '.join(found['aziot-edge']['versions']) or 'none'}).",
                    f"Pick one of the available versions for {option('edge_version')}, or omit it for the latest.")
        # aziot-edge depends on ONE exact aziot-identity-service, whose number is not its own (1.5.10-1 needs
        # 1.5.3-1). apt takes only candidates for packages not named, so that version is named too.
        ident = self.identity_needed(ctx, edge_full)
        check.data["identity"] = ident
        specs = [f"aziot-edge={edge_full}"] + ([f"aziot-identity-service={ident}"] if ident else [])
        apt_install(ctx, specs, " ".join(specs), allow_downgrades=bool(pin))
        ctx.refresh()
        return (f"installed aziot-edge {ctx.facts.installed('aziot-edge')}, "
                f"aziot-identity-service {ctx.facts.installed('aziot-identity-service')}")

    @staticmethod
    def identity_needed(ctx, edge_version: str) -> Optional[str]:
        """The aziot-identity-service version that aziot-edge `edge_version` depends on with `=`, from its
        control fields in the package source (`apt-cache show`); None when it names no exact one."""
        shown_fields = ctx.run(apt.show_command("aziot-edge", edge_version), timeout=120)
        apt.raise_for(shown_fields, f"Reading the dependencies of aziot-edge {edge_version}", ctx.display)
        return apt.exact_dependency(apt.control_field(shown_fields.stdout, "Depends"), "aziot-identity-service")

    def verify(self, ctx, check):
        f = ctx.facts
        edge, ident = f.installed("aziot-edge"), f.installed("aziot-identity-service")
        if not edge or not ident or not f.has("iotedge"):
            raise EdgeTpmError(f"IoT Edge is not installed on {ctx.display} after apt-get install.",
                               "Run apt-get install aziot-edge on the device to see why.")
        pin = check.data.get("pin")
        if pin and not apt.match_version(pin, [edge]):
            raise EdgeTpmError(f"aziot-edge {edge} is installed on {ctx.display}, not {pin}.",
                               "Check that the package source offers that version.")
        needed = check.data.get("identity")
        if needed and ident != needed:
            raise EdgeTpmError(f"aziot-identity-service {ident} is installed on {ctx.display}, but aziot-edge {edge} "
                               f"depends on {needed}.", "Run apt-get install aziot-edge on the device to see why.")


# -- 5 --------------------------------------------------------------------------------------------------
class ConfigStep(Step):
    name = "config"
    title = "Writing /etc/aziot/config.toml (DPS, TPM attestation)"

    def _registration_id(self, ctx) -> Optional[str]:
        try:
            return ctx.registration_id(create=not ctx.dry_run)
        except EdgeTpmError as exc:
            # Under --dry-run a device not ready to show its EK (no tpm2-tools, no EK: a DeviceError or an
            # unclassified failure) leaves the ID pending; other kinds (unreachable, auth, ...) fail the step.
            unready = isinstance(exc, DeviceError) or type(exc) is EdgeTpmError  # pylint: disable=C0123
            if ctx.dry_run and unready:
                ctx.extra["registration_id_pending"] = str(exc)
                return None
            raise

    def check(self, ctx):
        f, s = ctx.facts, ctx.settings
        rid = self._registration_id(ctx)
        changes, data = [], {}
        payload_uri = None
        if s.payload is not None:
            payload_uri = "file://" + PAYLOAD_PATH
            current = f.file(PAYLOAD_PATH)
            if current is None or current.data != s.payload:
                changes.append(f"upload the payload {s.payload_name or ''} to {PAYLOAD_PATH}".replace("  ", " "))
                data["payload"] = True
        existing = f.file(configtoml.CONFIG_PATH)
        template = f.file(configtoml.TEMPLATE_PATH)
        base = existing.text if existing else (template.text if template else "")
        proxy = s.proxy
        settings = configtoml.DpsTpmSettings(
            id_scope=s.id_scope, registration_id=rid or "<from the EK>",
            global_endpoint=s.global_endpoint, payload_uri=payload_uri,
            auto_reprovisioning_mode=s.auto_reprovisioning_mode, tcti=s.tcti, manage_proxy=True,
            agent_image=_agent_image(ctx),
            proxy_url=proxy.url if proxy else None, proxy_display=proxy.display if proxy else None,
            trust_bundle_uri=proxy_mod.TRUST_BUNDLE_URI if proxy and proxy.ca_pem else None)
        bundle = f.file(proxy_mod.TRUST_BUNDLE)
        want_bundle = proxy.ca_pem if proxy and proxy.ca_pem else None
        if want_bundle is not None and (bundle is None or bundle.data != want_bundle or bundle.mode != 0o644):
            changes.append(f"write the proxy's CA to {proxy_mod.TRUST_BUNDLE} (trust bundle of the modules)")
            data["bundle"] = want_bundle
        elif want_bundle is None and bundle is not None:
            changes.append(f"remove {proxy_mod.TRUST_BUNDLE}")
            data["bundle"] = None
        edit = configtoml.edit_config(base, settings)
        data["text"] = edit.text
        kept = configtoml.summarize(edit.text).get("agentImage")
        if settings.agent_image and kept != settings.agent_image:
            note = (f"config.toml keeps its own edgeAgent image {kept}; the installed runtime's line uses "
                    f"{settings.agent_image}.")
            if note not in ctx.notes:
                ctx.notes.append(note)
        moved = _provisioning_moved(existing.text if existing else None, edit.text)
        if moved:
            data["moved"] = moved
        if existing is None:
            origin = "the template" if template else ("the package's template" if ctx.dry_run else "scratch")
            changes.append(f"create {configtoml.CONFIG_PATH} from {origin}: " + ", ".join(
                c for c in edit.changes if not c.startswith("removed")))
        elif edit.changes:
            changes.append(f"edit {configtoml.CONFIG_PATH}: " + ", ".join(edit.changes))
        elif existing.mode != 0o600 or existing.owner != "root":
            changes.append(f"make {configtoml.CONFIG_PATH} root-owned, mode 0600 (was {existing.owner}, "
                           f"{existing.mode:o})")
            data["chmod"] = True
        if rid is None:
            changes.append("read registration_id from the TPM's endorsement key during the install ("
                           + ctx.extra.get("registration_id_pending", "not readable yet") + ")")
        if ctx.created_keys:
            changes.insert(0, f"created the TPM's {' and '.join(k.upper() for k in ctx.created_keys)} "
                              "(0x81010001, 0x81000001)")
        summary = configtoml.summarize(edit.text)
        detail = (f"{configtoml.CONFIG_PATH}: DPS {summary['idScope']} at {summary['globalEndpoint']}, "
                  f"registration ID {summary['registrationId']}, tcti {summary['tcti']}")
        return Check(changes=changes, detail=detail, data=data)

    def apply(self, ctx, check):
        done = []
        if ctx.created_keys:
            done.append(f"created the TPM's {' and '.join(k.upper() for k in ctx.created_keys)}")
        if check.data.get("payload"):
            group = "aziotid" if "aziotid" in ctx.facts.users else "root"
            ctx.run(f"install -d -m 0750 -o root -g {shlex.quote(group)} {shlex.quote(PAYLOAD_DIR)}")
            ctx.session.install_file(ctx.settings.payload, PAYLOAD_PATH, 0o640 if group != "root" else 0o600,
                                     "root", group)
            done.append(f"uploaded the payload to {PAYLOAD_PATH}")
        if "bundle" in check.data:
            if check.data["bundle"] is None:
                ctx.run(f"rm -f -- {shlex.quote(proxy_mod.TRUST_BUNDLE)}")
                done.append(f"removed {proxy_mod.TRUST_BUNDLE}")
            else:
                owner = "aziotcs" if "aziotcs" in ctx.facts.users else "root"
                ctx.run(f"mkdir -p -- {shlex.quote(proxy_mod.TRUST_BUNDLE.rsplit('/', 1)[0])}")
                ctx.session.install_file(check.data["bundle"], proxy_mod.TRUST_BUNDLE, 0o644, owner, owner)
                done.append(f"wrote {proxy_mod.TRUST_BUNDLE}")
        existing = ctx.facts.file(configtoml.CONFIG_PATH)
        text = check.data["text"].encode()
        if check.data.get("moved"):
            ctx.extra["provisioning_moved"] = check.data["moved"]
        if existing is None or existing.data != text or check.data.get("chmod"):
            if existing is not None:
                saved = backup(ctx, configtoml.CONFIG_PATH)
                ctx.extra["config_backup"] = saved
                done.append(f"backup {saved}")
            ctx.run(f"mkdir -p {shlex.quote('/etc/aziot')}")
            ctx.session.install_file(text, configtoml.CONFIG_PATH, 0o600, "root", "root")
            done.insert(0, f"wrote {configtoml.CONFIG_PATH} (0600)")
        return "; ".join(done)

    def verify(self, ctx, check):
        current = ctx.facts.file(configtoml.CONFIG_PATH)
        if current is None or current.text != check.data["text"] or current.mode != 0o600:
            raise LocalFileError(f"{configtoml.CONFIG_PATH} on {ctx.display} is not what was written.",
                                 "Check the file on the device and run the command again.")
        summary = configtoml.summarize(current.text)
        wanted = {"source": "dps", "attestation": "tpm", "idScope": ctx.settings.id_scope,
                  "registrationId": ctx.registration_id(), "globalEndpoint": ctx.settings.global_endpoint}
        wrong = {k: summary[k] for k, v in wanted.items() if summary[k] != v}
        if wrong or not isinstance(summary["authKeyIndex"], int):
            raise LocalFileError(f"{configtoml.CONFIG_PATH} on {ctx.display} reads back differently: {wrong}.",
                                 "Report this as a bug of az edge-tpm, with the file's content.")


def _agent_image(ctx) -> Optional[str]:
    """The edgeAgent image of the runtime line installed (under --dry-run before the install: the line
    to install); None for a line the support table does not know (the file's image is kept)."""
    installed = ctx.facts.installed("aziot-edge")
    name = support.line_of(installed) if installed else (ctx.platform.line.name if ctx.platform else None)
    line = support.by_name(name) if name else None
    return line.agent_image if line else None


# What the identity service registers with: a change to any of them on a provisioned device needs
# `iotedge system reprovision` (at start-up it uses its device_info backup whatever these say).
_PROVISIONING_KEYS = ("source", "globalEndpoint", "idScope", "attestation", "registrationId", "payloadUri", "tcti",
                      "authKeyIndex")


def _provisioning_moved(old_text: Optional[str], new_text: str) -> List[str]:
    """The provisioning.* / [tpm] settings a config change moves (none when there was no DPS before)."""
    if not old_text:
        return []
    try:
        old = configtoml.summarize(old_text)
    except ValueError:
        return []
    if not old.get("source"):
        return []
    new = configtoml.summarize(new_text)
    return [k for k in _PROVISIONING_KEYS if old.get(k) != new.get(k)]


# -- 6 --------------------------------------------------------------------------------------------------
TCP_TCTIS = ("swtpm", "mssim", "tabrmd", "libtpms", "cmd")


class TpmAccessStep(Step):
    name = "tpm-access"
    title = "Giving IoT Edge (aziottpm) access to the TPM"

    def check(self, ctx):
        f, s = ctx.facts, ctx.settings
        tcti = (s.tcti or "device").split(":", 1)[0]
        if tcti in TCP_TCTIS:
            return Check(skip=f"aziot-tpmd reaches the TPM through the {tcti} TCTI, not a device node: "
                              "no access to grant")
        if not f.tpm_devices:
            return Check(skip="the device has no /dev/tpm0 or /dev/tpmrm0 (a TPM over TCP, e.g. a simulator, "
                              "needs --tcti): no access to grant")
        mode = s.tpm_access
        if "aziottpm" not in f.users:
            if ctx.dry_run:
                return Check(changes=[f"give aziottpm access to {', '.join(f.tpm_devices)} ({mode})"])
            raise DeviceError(f"The aziottpm user does not exist on {ctx.display}.",
                              "Reinstall aziot-identity-service on the device; it creates the user.")
        changes, data = [], {"mode": mode}
        if mode == "udev":
            rule = f.file(UDEV_RULE_PATH)
            if rule is None or rule.text != UDEV_RULE:
                changes.append(f"write {UDEV_RULE_PATH}")
                data["rule"] = True
            wrong = [d for d, st in f.tpm_devices.items() if not _owner_ok(st)]
            if wrong:
                changes.append(f"apply it with udevadm trigger ({', '.join(wrong)} not owned by aziottpm)")
                data["trigger"] = True
        elif mode == "tss-group":
            if "tss" not in f.groups:
                raise DeviceError(f"{ctx.display} has no tss group.",
                                  "Install tpm2-tools (its tpm-udev rules create the tss group), or use "
                                  f"{option('tpm_access')} udev.")
            if "tss" not in f.users["aziottpm"]:
                changes.append("add aziottpm to the tss group")
                data["group"] = True
        else:
            if not f.systemd:
                raise DeviceError(
                    f"{option('tpm_access')} root needs systemd, which {ctx.display} does not run.",
                    f"Use {option('tpm_access')} udev or {option('tpm_access')} tss-group on devices without systemd.")
            override = f.file(TPMD_OVERRIDE_PATH)
            if override is None or override.text != TPMD_OVERRIDE:
                changes.append(f"run aziot-tpmd as root ({TPMD_OVERRIDE_PATH})")
                data["override"] = True
        state = ", ".join(f"{d} {st['owner']}:{st['group']} {st['mode']:o}" for d, st in f.tpm_devices.items())
        return Check(changes=changes, detail=f"{mode}: {state}", data=data)

    def apply(self, ctx, check):
        done = []
        if check.data.get("rule"):
            ctx.session.install_file(UDEV_RULE.encode(), UDEV_RULE_PATH, 0o644)
            done.append(f"wrote {UDEV_RULE_PATH}")
        if check.data.get("rule") or check.data.get("trigger"):
            if ctx.facts.has("udevadm"):
                ctx.run("udevadm control --reload-rules; "
                        "udevadm trigger --action=change --subsystem-match=tpm --subsystem-match=tpmrm; "
                        "udevadm settle --timeout=10", timeout=60)
                done.append("udevadm trigger")
        if check.data.get("group"):
            result = ctx.run("usermod -aG tss aziottpm")
            if not result.ok:
                raise EdgeTpmError(f"usermod -aG tss aziottpm failed on {ctx.display}: "
                                   f"{apt.tail(result.stderr)}", "Add the user to the group on the device.")
            done.append("added aziottpm to tss")
        if check.data.get("override"):
            ctx.run(f"mkdir -p {shlex.quote(TPMD_OVERRIDE_PATH.rsplit('/', 1)[0])}")
            ctx.session.install_file(TPMD_OVERRIDE.encode(), TPMD_OVERRIDE_PATH, 0o644)
            ctx.run("systemctl daemon-reload")
            done.append(f"wrote {TPMD_OVERRIDE_PATH}; systemctl daemon-reload")
        return "; ".join(done)

    def verify(self, ctx, check):
        f = ctx.facts
        mode = check.data.get("mode")
        if mode == "udev":
            wrong = [f"{d} ({st['owner']}:{st['group']} {st['mode']:o})" for d, st in f.tpm_devices.items()
                     if not _owner_ok(st)]
            if wrong:
                raise EdgeTpmError(
                    f"The udev rule is in place on {ctx.display}, but {', '.join(wrong)} did not change owner.",
                    f"Reboot the device so that udev applies the rule, or use {option('tpm_access')} tss-group.")
        elif mode == "tss-group" and "tss" not in f.users.get("aziottpm", []):
            raise EdgeTpmError(f"aziottpm is not in the tss group on {ctx.display}.",
                               "Add it on the device: usermod -aG tss aziottpm.")


def _owner_ok(st: dict) -> bool:
    return st["owner"] == "aziottpm" and st["mode"] & 0o600 == 0o600


# -- 7 --------------------------------------------------------------------------------------------------
# Checks whose error means the configuration or the services are broken. tpmd-running is among them for
# what it does check: the real one (aziotctl/src/internal/check/checks/daemons_running.rs) only connects to
# /run/aziot/tpmd.sock, which systemd's aziot-tpmd.socket holds even while aziot-tpmd fails and restarts.
# It says nothing about access to the TPM: that shows in aziot-tpmd's own log lines (KNOWN_FAILURES "tcti",
# "tpm-permission") and in the identity service registering with the TPM's keys.
_CONFIG_CHECKS = ("keyd-config-well-formed", "certd-config-well-formed", "tpmd-config-well-formed",
                  "identityd-config-well-formed", "aziot-edged-config-well-formed", "tpmd-running",
                  "container-engine-uri")


class RuntimeStep(Step):
    name = "runtime"
    title = "Applying the configuration (iotedge config apply) and verifying"

    def check(self, ctx):
        f = ctx.facts
        upstream_changes = [n for n in ("proxy", "iotedge", "config", "tpm-access") if ctx.touched(n)]
        if ctx.dry_run and (upstream_changes or not f.has("iotedge")):
            return Check(changes=["run iotedge config apply, then check the runtime"])
        if not f.has("iotedge"):
            raise DeviceError(f"iotedge is not installed on {ctx.display}.",
                              "Run the command again: the iotedge step installs it.")
        reasons = [f"{n} changed" for n in upstream_changes]
        config_mtime = f.mtimes.get(configtoml.CONFIG_PATH) or (f.file(configtoml.CONFIG_PATH).mtime
                                                                if f.file(configtoml.CONFIG_PATH) else 0)
        from .facts import APPLIED_CONFIGS
        applied = [f.mtimes.get(p) for p in APPLIED_CONFIGS]
        if not all(applied):
            reasons.append("the configuration was never applied")
        elif config_mtime > min(applied):
            reasons.append("config.toml is newer than the applied configuration")
        stale_agent = self._stale_agent_env(ctx)
        if stale_agent:
            reasons.append(f"the edgeAgent container runs with another proxy environment ({stale_agent})")
        report = None
        if not reasons:
            report = runtime.collect(ctx.session, with_check=True, dont_run=self._dont_run(ctx))
            ctx.extra["runtime"] = report
            if not report["healthy"]:
                reasons.append("services not running: " + runtime.summary(report))
            elif report["provisioning"]["state"] == "failed":
                reasons.append("the last provisioning attempt failed")
        if reasons:
            return Check(changes=["run iotedge config apply (" + "; ".join(reasons) + ")"],
                         data={"report": report, "stale_agent": bool(stale_agent)})
        self._judge(ctx, report)
        return Check(detail=runtime.summary(report))

    @staticmethod
    def _dont_run(ctx):
        return proxy_mod.DIRECT_ONLY_CHECKS if ctx.settings.proxy else ()

    @staticmethod
    def _stale_agent_env(ctx) -> Optional[str]:
        """What differs between the proxy environment config.toml gives edgeAgent and the one its
        running container has (`iotedge config apply` leaves an existing container alone); None
        when they agree or there is no such container."""
        if not ctx.facts.installed("aziot-edge"):
            return None
        result = ctx.run("docker inspect --format '{{json .Config.Env}}' edgeAgent 2>/dev/null", timeout=60)
        if not result.ok or not result.stdout.strip():
            return None
        try:
            env = dict(item.split("=", 1) for item in json.loads(result.stdout.strip()) or [] if "=" in item)
        except (ValueError, TypeError):
            return None
        proxy = ctx.settings.proxy
        want = {"https_proxy": proxy.url, "UpstreamProtocol": configtoml.UPSTREAM_PROTOCOL} if proxy else {}
        wrong = [k for k in ("https_proxy", "UpstreamProtocol") if env.get(k) != want.get(k)]
        return ", ".join(wrong) or None

    def apply(self, ctx, check):
        done = []
        if check.data.get("stale_agent"):
            # Removed first, so that aziot-edged creates it again from the new [agent] table.
            ctx.progress("removing the edgeAgent container (its proxy environment changed)")
            ctx.run("docker rm -f edgeAgent >/dev/null 2>&1", timeout=120)
            done.append("removed the edgeAgent container")
        ctx.progress("iotedge config apply")
        if ctx.settings.before_registration is not None:
            ctx.settings.before_registration()
        # The device's clock (the logs' time) before the apply, and whether the identity service holds
        # a device already (its device_info backup, which it uses at start-up whatever config.toml says).
        # (Enabled again first, if a deprovision disabled them: they start at boot.)
        units = " ".join(shlex.quote(u) for u in AZIOT_UNITS)
        probe = ctx.run(f"systemctl enable {units} >/dev/null 2>&1; date +%s; "
                        f"test -s {shlex.quote(health.DEVICE_INFO)} && echo provisioned", timeout=60)
        words = probe.stdout.split()
        ctx.extra["apply_since"] = int(words[0]) if words and words[0].isdigit() else None
        result = ctx.run("iotedge config apply", timeout=600)
        if not result.ok:
            text = (result.stderr or "") + "\n" + (result.stdout or "")
            self._refused_hostname(ctx, text)
            problems = health.diagnose(text.splitlines())
            message = apt.tail(result.stderr or result.stdout, 4)
            backup_note = (f" The previous config.toml is kept as {ctx.extra['config_backup']}."
                           if ctx.extra.get("config_backup") else "")
            raise DeviceError(
                f"iotedge config apply rejected the configuration on {ctx.display}: {message}.{backup_note}",
                problems[0]["recommendation"] if problems else
                "Fix /etc/aziot/config.toml on the device as the message says, then run the command again.")
        done.append("iotedge config apply")
        moved = ctx.extra.get("provisioning_moved")
        if moved and "provisioned" in words:
            # identity/aziot-identityd/src/identity.rs: only the reprovision API registers again.
            ctx.progress(f"iotedge system reprovision ({', '.join(moved)} changed)")
            if ctx.settings.before_registration is not None:
                ctx.settings.before_registration()
            again = ctx.run("iotedge system reprovision", timeout=600)
            if again.ok:
                done.append(f"iotedge system reprovision ({', '.join(moved)} changed)")
            else:
                ctx.extra["reprovision_error"] = apt.tail(again.stderr or again.stdout, 3)
                done.append(f"iotedge system reprovision failed: {ctx.extra['reprovision_error']}")
        return "; ".join(done)

    @staticmethod
    def _refused_hostname(ctx, text: str):
        """edgelet/iotedge/src/config/apply.rs refuses another hostname while module containers exist."""
        if "is different from the previous hostname" not in text:
            return
        import re
        found = re.search(r"hostname in the config (\S+) is different from the previous hostname (\S+?)\.", text)
        old, new = (found.group(1), found.group(2)) if found else ("?", "?")
        raise DeviceError(
            f"iotedge config apply on {ctx.display} refuses the hostname {new} (it was {old}) while IoT Edge "
            "module containers exist. Nothing was changed on the modules.",
            f'Keep the old name with hostname = "{old}" at the top of /etc/aziot/config.toml, or, to change it and '
            "lose the data stored in the modules, run on the device: sudo iotedge system stop && sudo docker rm -f "
            '$(sudo docker ps -aq -f "label=net.azure-devices.edge.owner=Microsoft.Azure.Devices.Edge.Agent") '
            "&& sudo iotedge config apply; then run the command again.")

    def verify(self, ctx, check):
        ctx.progress("waiting for the runtime to start and provision")
        seconds = max(1, int(ctx.settings.settle_timeout))
        since = ctx.extra.get("apply_since")
        waited = None
        if since is not None:
            # On the device (a shell loop, no traffic): until the identity service logs how provisioning
            # ended since the apply (its backup used, a registration, a failure), or the time is up.
            out = ctx.run(f"i=0; while [ $i -lt {seconds} ]; do iotedge system logs -- --since @{since} 2>/dev/null "
                          f"| grep -q -E {shlex.quote(health.OUTCOME_PATTERN)} && break; sleep 1; i=$((i+1)); done; "
                          "echo $i", timeout=seconds + 60)
            last = (out.stdout or "").split()
            waited = int(last[-1]) if last and last[-1].isdigit() else None
        stale = self._stale_agent_env(ctx)
        if stale:
            # A watchdog of the old aziot-edged may have recreated it before the restart: once more.
            ctx.run("docker rm -f edgeAgent >/dev/null 2>&1; iotedge system restart", timeout=600)
            stale = self._stale_agent_env(ctx)
            if stale:
                raise EdgeTpmError(
                    f"The edgeAgent container on {ctx.display} still runs with another proxy environment ({stale}).",
                    "Remove it on the device (docker rm -f edgeAgent) and restart IoT Edge (iotedge system restart).")
        report = runtime.collect(ctx.session, with_check=True, dont_run=self._dont_run(ctx))
        report["settle"] = {"waitedSeconds": waited, "limitSeconds": seconds}
        error = ctx.extra.get("reprovision_error")
        if error:
            problems = health.diagnose([error])
            report["provisioning"] = {"state": "failed", "assignedHub": None, "deviceId": None,
                                      "lastMessage": error, "error": error, "source": "iotedge system reprovision",
                                      "recommendation": problems[0]["recommendation"] if problems else
                                      "Run iotedge system logs on the device for details."}
        ctx.extra["runtime"] = report
        self._judge(ctx, report)
        return runtime.summary(report) + (f"; provisioning settled after {waited} s" if waited is not None else "")

    @staticmethod
    def _judge(ctx, report):
        """Failures the install can do something about fail the step; a device DPS does not
        (yet) assign is reported, since its enrollment may come later."""
        problem = runtime.first_problem(report)
        check = report.get("checks") or {"errors": [], "problems": []}
        config_errors = [p for p in check["problems"]
                         if p["id"] in _CONFIG_CHECKS and p["result"] in ("error", "fatal")]
        local = problem and problem["kind"] not in ("dps-auth",)
        if config_errors or (not report["healthy"] and local):
            first = config_errors[0] if config_errors else None
            what = (f"check {first['id']}: {' '.join(first['details'])}" if first else
                    f"{problem['meaning']} ({problem['line']})")
            raise EdgeTpmError(
                f"IoT Edge on {ctx.display} is not healthy: {what}. {runtime.summary(report)}",
                problem["recommendation"] if problem else
                "Run iotedge check and iotedge system logs on the device for details.")
        proxy_problem = next((p for p in check["problems"] if p["id"] == "proxy-settings"), None)
        if ctx.settings.proxy and proxy_problem:
            raise EdgeTpmError(
                f"IoT Edge on {ctx.display} does not use one proxy everywhere: check proxy-settings: "
                f"{' '.join(proxy_problem['details'])}",
                "Check the https_proxy of [agent.env] in /etc/aziot/config.toml and of the docker, aziot-edged and "
                "aziot-identityd services (systemctl show --property=Environment UNIT), then run the command again.")
        prov = report["provisioning"]
        if prov["state"] == "failed":
            ctx.notes.append(f"DPS has not assigned the device yet: {prov.get('error')}. "
                             f"{prov.get('recommendation', '')} The identity service tries again every 5 s "
                             "(its unit restarts it), so the device is assigned later, once DPS accepts it.")
