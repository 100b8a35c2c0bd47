"""The apt/dpkg implementation of the package-manager interface (Debian, Ubuntu, Raspberry Pi
OS). The command texts and the parsing of apt's output are edge/apt.py; this module runs them
on the device: targeted index updates of our sources, candidates, installs (finishing an
interrupted dpkg run first), packages-microsoft-prod.deb, an apt line, .deb sets, purge."""
import shlex
from typing import List, Optional

from azext_edgetpm.errors import DeviceError, option
from .. import apt
from . import PackageManager

APT_LIST = "/etc/apt/sources.list.d/edge-tpm.list"


def source_files(ctx) -> List[str]:
    """The apt source files this product configured (ours, and packages-microsoft-prod's)."""
    files = []
    if ctx.facts.file(APT_LIST) is not None:
        files.append(APT_LIST)
    if ctx.facts.installed("packages-microsoft-prod"):
        listed = ctx.run("dpkg -L packages-microsoft-prod 2>/dev/null", timeout=60).stdout.splitlines()
        files += [f for f in listed if f.startswith("/etc/apt/sources.list.d/") and
                  f.endswith((".list", ".sources"))]
    return files


def update_sources(ctx, files: Optional[List[str]] = None) -> None:
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


def unindexed_sources(ctx, files: List[str]) -> List[str]:
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


def policy(ctx, names) -> dict:
    return apt.parse_policy(ctx.run(apt.policy_command(names), timeout=120).stdout)


def ensure_candidates(ctx, names: List[str]) -> dict:
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


def apt_install(ctx, specs: List[str], what: str, allow_downgrades: bool = False) -> None:
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


class AptManager(PackageManager):
    name = "apt"
    tools = ("apt-get", "dpkg")
    install_hint = "apt-get install"
    remove_label = "apt-get purge"
    list_hint = "dpkg -l 'aziot*'"
    update_label = "apt-get update"
    offline_suffix = ".deb"
    source_file = APT_LIST

    ca_anchor = "/usr/local/share/ca-certificates/edge-tpm-proxy-ca.crt"
    ca_update = "update-ca-certificates --fresh >/dev/null"

    def proxy_files(self, proxy, facts):
        from ..proxy import apt_files
        return apt_files(proxy)

    def is_source_line(self, value: Optional[str]) -> bool:
        return bool(value) and value.strip().split(" ", 1)[0] in ("deb", "deb-src")

    def write_source_line(self, ctx, text: str) -> str:
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
        return f"wrote {APT_LIST}; apt-get update"

    def install_config_package(self, ctx, url: str) -> str:
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
        ctx.refresh()
        update_sources(ctx)
        return f"installed packages-microsoft-prod from {url}; apt-get update"

    def unindexed(self, ctx) -> List[str]:
        return unindexed_sources(ctx, source_files(ctx))

    def update(self, ctx) -> None:
        update_sources(ctx)

    def spec(self, name: str, version: Optional[str] = None) -> str:
        return f"{name}={version}" if version else name

    def versions(self, ctx, names):
        return policy(ctx, names)

    def ensure_candidates(self, ctx, names):
        return ensure_candidates(ctx, names)

    def install(self, ctx, specs, what, allow_downgrades=False):
        apt_install(ctx, specs, what, allow_downgrades)

    def exact_requirement(self, ctx, name, version, dependency):
        """From the control fields in the package source (`apt-cache show name=version`)."""
        shown_fields = ctx.run(apt.show_command(name, version), timeout=120)
        apt.raise_for(shown_fields, f"Reading the dependencies of {name} {version}", ctx.display)
        return apt.exact_dependency(apt.control_field(shown_fields.stdout, "Depends"), dependency)

    def remove(self, ctx, names):
        """`apt-get purge`, as the IoT Edge documentation uninstalls it."""
        packages = " ".join(shlex.quote(p) for p in names)
        result = ctx.run(f"{apt.APT_ENV} apt-get {apt.APT_OPTS} purge {packages}", timeout=apt.INSTALL_TIMEOUT)
        apt.raise_for(result, "apt-get purge", ctx.display)
        return f"purged {', '.join(names)}"

    def read_offline(self, directory, arch, edge_version):
        return apt.read_offline_dir(directory, arch, edge_version)

    def install_uploaded(self, ctx, files, remote):
        """The engine (and tpm2-tools) in a transaction of their own first: aziot-edge's preinst
        refuses to run before the docker group exists (apt.engine_first)."""
        for group in apt.engine_first(files):
            apt_install(ctx, [remote[d.path] for d in group], ", ".join(d.package for d in group),
                        allow_downgrades=True)
