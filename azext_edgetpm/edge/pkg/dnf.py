"""The dnf/rpm implementation of the package-manager interface (Red Hat Enterprise Linux 8 and 9),
as Microsoft's instructions install IoT Edge there: packages-microsoft-prod.rpm for the release
(config/rhel/<8|9>/), then `dnf install moby-engine moby-cli` and `aziot-edge`. Every value
reaching the shell is quoted; failures become errors with a recommendation.

dnf fetches a repository's metadata by itself when it has none or it expired (dnf.conf(5)
metadata_expire), so an "update" is `dnf makecache --refresh`, done only when a package is missing.

`--package-source` may also be a dnf repository itself (a directory with repodata/, such as an
Artifactory, Nexus or Pulp mirror of packages.microsoft.com/rhel/9/prod/): `URL [gpgkey=KEY]`,
written to /etc/yum.repos.d/edge-tpm.repo with gpgcheck=1 and the key its packages are signed
with (Microsoft's unless gpgkey= names another), as Microsoft's own repository file does.

--proxy goes into dnf.conf's [main] (dnf_conf_with_proxy); --no-proxy into the repositories whose
hosts it lists (dnf_direct.py).
"""
import os
import re
import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional

from azext_edgetpm.echo import shown
from azext_edgetpm.errors import DeviceError, LocalFileError, UserInputError, option
from ..apt import raise_known, tail
from . import PackageManager
from .dnf_direct import DIRECT, RepoEdit, repo_with_direct_proxy, url_is_direct

DNF = "LC_ALL=C dnf -y"
REPO_FILE = "/etc/yum.repos.d/edge-tpm.repo"
# The repository file Microsoft's packages-microsoft-prod.rpm installs (config/rhel/<v>/prod.repo).
MS_REPO_FILE = "/etc/yum.repos.d/microsoft-prod.repo"
REPO_ID = "edge-tpm"
# The key packages.microsoft.com signs its RPMs with, as its RHEL repository files name it
# (https://packages.microsoft.com/config/rhel/9/prod.repo: gpgcheck=1, gpgkey=this URL).
MICROSOFT_KEY = "https://packages.microsoft.com/keys/microsoft.asc"
_URL = re.compile(r"(https?|file)://\S+")
INSTALL_TIMEOUT = 1800.0
_RPM_LEAD = b"\xed\xab\xee\xdb"
_DEB_TO_RPM_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7hl"}

_FAILURES = (
    (r"No match for argument: (\S+)|Unable to find a match: (\S+)|No package (\S+) available",
     "{pkg} is not available from the device's package sources.",
     f"Check {option('package_source')} (a mirror of packages.microsoft.com, or the URL of a "
     f"packages-microsoft-prod.rpm), or install from .rpm files with {option('offline_packages')} DIR."),
    (r"Public key for \S+ is not installed|GPG check FAILED|is not signed|NOKEY|Bad GPG signature|"
     r"not correct for this package",
     "dnf refused the packages: their signature does not match a key the repository's file names "
     "(gpgcheck=1); nothing of them was installed.",
     f"Name the key the repository's packages are signed with: {option('package_source')} 'URL gpgkey=KEY-URL' "
     f"(default: Microsoft's, {{key}}; file:///path for a key on the device). If the packages should carry that "
     "key, the mirror serves packages that were not signed by their publisher: do not install them, fix the mirror."),
    (r"Cannot download repomd\.xml|Failed to download metadata|Curl error|Cannot download|"
     r"Could not resolve host|Failed to connect|Connection refused|Status code: 404|All mirrors were tried",
     "The device could not download from its package source.",
     f"Check the device's network and the URL of {option('package_source')}; for networks that cannot reach "
     f"packages.microsoft.com use a mirror ({option('package_source')}) or {option('offline_packages')} DIR."),
    (r"No container runtime detected",
     "aziot-edge refuses to install before a container engine is installed (its %post looks for the "
     "docker group, which moby-engine creates).",
     f"Install moby-engine first, or put its .rpm files in the {option('offline_packages')} directory, "
     "then run the command again."),
    (r"Problem: |nothing provides|conflicting requests|cannot install both|Depsolve Error",
     "dnf cannot resolve the packages' dependencies on the device.",
     "Check that the package source matches the device's release (el8 or el9); a pinned "
     f"{option('edge_version')} needs the exact aziot-identity-service that aziot-edge version requires "
     "(dnf repoquery --requires aziot-edge-VERSION) in the same source."),
)


def raise_for(result, what: str, display: str) -> None:
    """Raise the error a failed dnf/rpm command deserves (nothing when it succeeded)."""
    raise_known(result, what, display, _FAILURES, "dnf", _tail, key=MICROSOFT_KEY)


def _tail(text: str) -> str:
    kept = "\n".join(line for line in (text or "").splitlines()
                     if not line.startswith(("Last metadata expiration", "Dependencies resolved")))
    return tail(kept)


def parse_repoquery(text: str, names: List[str]) -> Dict[str, dict]:
    """`dnf repoquery --qf '%{name} %{evr}'` -> {name: {"candidate": newest, "versions": [...]}}."""
    from .. import support
    out = {n: {"installed": None, "candidate": None, "versions": []} for n in names}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in out and parts[1] not in out[parts[0]]["versions"]:
            out[parts[0]]["versions"].append(parts[1])
    for entry in out.values():
        entry["versions"].sort(key=support.version_key, reverse=True)
        entry["candidate"] = entry["versions"][0] if entry["versions"] else None
    return out


def exact_requirement(requires: str, dependency: str) -> Optional[str]:
    """The version a `Requires: dependency = V` line names (`rpm -qp --requires`, dnf repoquery
    --requires); None when there is none."""
    for line in (requires or "").splitlines():
        match = re.fullmatch(r"\s*(\S+)\s*=\s*(\S+)\s*", line)
        if match and match.group(1) == dependency:
            return match.group(2)
    return None


@dataclass(frozen=True)
class RepoSource:
    """`--package-source URL [gpgkey=KEY]` as a dnf repository: its baseurl and the key its
    packages are checked with (gpgcheck is always on)."""
    url: str
    gpgkey: str
    explicit: bool      # gpgkey= was given (then URL is a repository without asking the device)

    def repo_file(self, proxy=None) -> str:
        """Our .repo file; `proxy=` (direct) in it when `proxy`'s --no-proxy list names the URL's host."""
        return repo_with_direct_proxy(
            "# Package source of IoT Edge (written by az edge-tpm install)\n"
            f"[{REPO_ID}]\nname=IoT Edge packages (az edge-tpm)\nbaseurl={self.url}\nenabled=1\n"
            f"gpgcheck=1\ngpgkey={self.gpgkey}\n", proxy)


def parse_source(value: Optional[str]) -> Optional[RepoSource]:
    """`URL [gpgkey=KEY]` -> RepoSource; None for anything else (an .rpm URL, an apt line, nothing).
    Raise when the form is meant (a URL and more words) but wrong."""
    words = (value or "").split()
    if not words or not _URL.fullmatch(words[0]) or (len(words) == 1 and words[0].endswith(".rpm")):
        return None
    keys = [w.split("=", 1)[1] for w in words[1:] if w.startswith("gpgkey=")]
    other = [w for w in words[1:] if not w.startswith("gpgkey=")]
    if other or len(keys) > 1 or (keys and not _URL.fullmatch(keys[0])) or words[0].endswith(".rpm"):
        raise UserInputError(
            f"{option('package_source')} {shown(value)} is not a dnf repository source.",
            "Give the repository's URL, optionally followed by the key its packages are signed with: "
            "'https://mirror.example.com/rhel/9/prod/ gpgkey=https://mirror.example.com/keys/microsoft.asc' "
            "(file:///path for a key file on the device). Without gpgkey=, Microsoft's key is used.")
    return RepoSource(words[0], keys[0] if keys else MICROSOFT_KEY, bool(keys))


_OURS = "# HTTP proxy of IoT Edge (written by az edge-tpm install; --proxy none removes it)"
_PROXY_KEY = re.compile(r"\s*(proxy|proxy_username|proxy_password|proxy_auth_method)\s*=")


def dnf_conf_with_proxy(text: str, proxy, path: str = "/etc/dnf/dnf.conf") -> str:
    """dnf.conf with the proxy lines of ours (after _OURS, first in [main]) set for `proxy`, or removed
    when it is None; every other line kept. A proxy the file already sets itself is refused (dnf would
    take one of the two), so that nothing of the device's own is lost."""
    kept, ours = [], False
    for line in (text or "").splitlines():
        if line.strip() == _OURS:
            ours = True
            continue
        if ours and _PROXY_KEY.match(line):
            continue
        ours = False
        kept.append(line)
    if proxy is None:
        return "\n".join(kept) + "\n" if kept else ""
    section = None
    for line in kept:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
        elif section == "main" and _PROXY_KEY.match(line):
            raise DeviceError(
                f"{path} on the device already sets a proxy of its own ({line.split('=', 1)[0].strip()}=); it was "
                "left as it is and nothing was changed.",
                f"Remove the proxy lines from {path} (then this command writes its own), or run without "
                f"{option('proxy')} to keep the device's settings.")
    block = [_OURS, f"proxy=http://{proxy.hostport}"]
    if proxy.user is not None:
        block += [f"proxy_username={proxy.user}", f"proxy_password={proxy.password or ''}", "proxy_auth_method=basic"]
    main = next((i for i, line in enumerate(kept) if line.strip() == "[main]"), None)
    if main is None:
        kept = ["[main]"] + block + ([""] if kept else []) + kept
    else:
        kept[main + 1:main + 1] = block
    return "\n".join(kept) + "\n"


@dataclass(frozen=True)
class RpmFile:
    path: str
    package: str
    version: str       # version-release
    architecture: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def read_rpm(path: str) -> RpmFile:
    """Name, version-release and architecture of an .rpm, from its lead and its file name (the
    NAME-VERSION-RELEASE.ARCH.rpm convention that rpmbuild and every repository keep)."""
    try:
        with open(path, "rb") as handle:
            lead = handle.read(4)
    except OSError as exc:
        raise LocalFileError(f"Cannot read {path}: {exc.strerror}.",
                             f"Check the {option('offline_packages')} directory.") from exc
    match = re.fullmatch(r"(.+)-([^-]+)-([^-]+)\.([^.]+)\.rpm", os.path.basename(path))
    if lead != _RPM_LEAD or not match:
        raise UserInputError(f"{path} is not an RPM package that can be read here.",
                             f"Put only .rpm files (named NAME-VERSION-RELEASE.ARCH.rpm) in the "
                             f"{option('offline_packages')} directory.")
    return RpmFile(path, match.group(1), f"{match.group(2)}-{match.group(3)}", match.group(4))


def read_offline_dir(directory: str, arch: str, edge_version: Optional[str] = None) -> List[RpmFile]:
    """The .rpm files of --offline-packages for this architecture; one version per package
    (several aziot-edge versions are narrowed by --edge-version; the identity service's exact
    version is dnf's to match, from aziot-edge's Requires)."""
    if not os.path.isdir(directory):
        raise LocalFileError(f"{option('offline_packages')} {shown(directory)} is not a directory.",
                             "Give a directory that holds the .rpm files to install.")
    wanted = ("noarch", _DEB_TO_RPM_ARCH.get(arch, arch))
    rpms = [read_rpm(os.path.join(directory, n)) for n in sorted(os.listdir(directory)) if n.endswith(".rpm")]
    rpms = [r for r in rpms if r.architecture in wanted]
    if not rpms:
        raise LocalFileError(f"{option('offline_packages')} {shown(directory)} holds no .rpm file for {wanted[1]}.",
                             "Download moby-engine, moby-cli, aziot-identity-service and aziot-edge for the "
                             "device's release and architecture into that directory.")
    by_name: Dict[str, List[RpmFile]] = {}
    for rpm in rpms:
        by_name.setdefault(rpm.package, []).append(rpm)
    chosen = []
    for name, group in sorted(by_name.items()):
        if len(group) > 1 and edge_version and name == "aziot-edge":
            group = [r for r in group if PackageManager.match_version(edge_version, [r.version])] or group
        if len(group) > 1:
            raise UserInputError(
                f"{option('offline_packages')} {shown(directory)} has {len(group)} versions of {name}: "
                f"{', '.join(r.version for r in group)}.", "Keep one version of each package in the directory.")
        chosen.append(group[0])
    return chosen


class DnfManager(PackageManager):
    name = "dnf"
    tools = ("dnf", "rpm")
    install_hint = "dnf install"
    remove_label = "dnf remove"
    list_hint = "rpm -qa 'aziot*'"
    update_label = "dnf makecache"
    offline_suffix = ".rpm"
    engine_packages = ("moby-engine", "moby-cli")   # (Microsoft's RHEL instructions: dnf install moby-engine moby-cli)

    ca_anchor = "/etc/pki/ca-trust/source/anchors/edge-tpm-proxy-ca.crt"   # update-ca-trust(8)
    ca_update = "update-ca-trust extract"

    def proxy_files(self, proxy, facts):
        """dnf.conf's [main] with the proxy lines of ours (dnf 4 reads the proxy of its own downloads,
        packages-microsoft-prod.rpm's included, only from there or a repository's file): proxy=, and
        proxy_username / proxy_password, for which the file is made root-only (dnf runs as root)."""
        from ..proxy import DNF_CONF
        current = facts.file(DNF_CONF) if facts is not None else None
        if current is None and proxy is None:
            return {}
        text = current.text if current is not None else ""
        new = dnf_conf_with_proxy(text, proxy, current.path if current is not None else DNF_CONF)
        if proxy is not None and proxy.user is not None:
            mode = 0o600
        else:
            mode = current.mode if current is not None and current.mode != 0o600 else 0o644
        if current is not None and new == text and mode == current.mode:
            return {}
        return {DNF_CONF: (new.encode(), mode)}

    source_file = REPO_FILE

    def source_entry(self, ctx, value):
        """The .repo file for `URL [gpgkey=KEY]` when URL is a dnf repository: said by gpgkey=, by our
        file naming it already, or by the device's dnf reading URL/repodata/repomd.xml (through the
        device's own proxy settings; into a cache that is removed). A URL without repodata/ is a mirror
        of packages.microsoft.com (None: its packages-microsoft-prod.rpm is installed)."""
        source = parse_source(value)
        if source is None:
            return None
        proxy = getattr(ctx.settings, "proxy", None)
        if source.explicit:
            return source.repo_file(proxy)
        current = ctx.facts.file(REPO_FILE)
        if current is not None and repo_with_direct_proxy(current.text, None) == source.repo_file():
            return source.repo_file(proxy)       # (ours, for this URL: a repository; only proxy= may change)
        ctx.progress(f"is {source.url} a dnf repository?")
        direct = f" --setopt={REPO_ID}-probe.proxy=" if url_is_direct(proxy, source.url) else ""
        probe = ctx.run(
            "D=$(mktemp -d) && trap 'rm -rf \"$D\"' EXIT && LC_ALL=C dnf -q --setopt=cachedir=\"$D\"" + direct +
            f" --repofrompath={REPO_ID}-probe,{shlex.quote(source.url)} --repo={REPO_ID}-probe makecache",
            timeout=600)
        return source.repo_file(proxy) if probe.ok else None

    def write_source_line(self, ctx, text: str) -> str:
        """Write our .repo file (a copy of a different one we wrote before is kept next to it: dnf reads
        only *.repo) and read the repository's metadata from it; when dnf cannot, put back the file that
        was there, or remove ours, so that the device's other dnf commands keep working."""
        previous = ctx.facts.file(REPO_FILE)
        saved = ""
        if previous is not None:
            from ..steps.base import backup_name
            saved = backup_name(REPO_FILE)
            ctx.run(f"cp -p -- {shlex.quote(REPO_FILE)} {shlex.quote(saved)}")
        ctx.session.install_file(text.encode(), REPO_FILE, 0o644)
        try:
            ctx.progress(f"dnf makecache --repo={REPO_ID}")
            result = ctx.run(f"{DNF} makecache --refresh --repo={REPO_ID}", timeout=INSTALL_TIMEOUT)
            raise_for(result, f"Reading the package repository of {REPO_FILE}", ctx.display)
        except BaseException:
            if previous is not None:
                ctx.session.install_file(previous.data, REPO_FILE, previous.mode, previous.owner, previous.group)
                ctx.run(f"rm -f -- {shlex.quote(saved)}")
            else:
                ctx.run(f"rm -f -- {shlex.quote(REPO_FILE)}")
            raise
        ctx.updated_sources = True
        return f"wrote {REPO_FILE}" + (f" (the previous one kept as {saved})" if saved else "") + "; dnf makecache"

    def install_config_package(self, ctx, url: str) -> str:
        """`dnf install URL`: dnf downloads it itself (with its own proxy settings: no credential on
        a command line) and installs the repository file it carries."""
        ctx.progress(f"installing {url}")
        direct = url_is_direct(getattr(ctx.settings, "proxy", None), url)
        # (--setopt=proxy=: this download goes direct, as the repositories of --no-proxy hosts do)
        result = ctx.run(f"{DNF}{' --setopt=proxy=' if direct else ''} install {shlex.quote(url)}", timeout=600)
        raise_for(result, f"Installing the package repository configuration from {url}", ctx.display)
        ctx.refresh()
        done = f"installed packages-microsoft-prod from {url} (dnf install{', directly' if direct else ''})"
        written = self.write_repo_proxy_changes(ctx, self.repo_proxy_changes(ctx))
        return done + (f"; {written}" if written else "")

    def repo_proxy_changes(self, ctx) -> Dict[str, RepoEdit]:
        """packages-microsoft-prod's .repo file (MS_REPO_FILE, read with the device's facts) when its
        repositories must get (or lose) our empty proxy= for --no-proxy (repo_with_direct_proxy):
        {path: the edit}."""
        current = ctx.facts.file(MS_REPO_FILE)
        if current is None:
            return {}
        new = repo_with_direct_proxy(current.text, getattr(ctx.settings, "proxy", None))
        if new == current.text:
            return {}
        return {MS_REPO_FILE: RepoEdit(new, current.mode, current.owner, current.group, DIRECT in new)}

    def update(self, ctx) -> None:
        ctx.progress("dnf makecache --refresh")
        result = ctx.run(f"{DNF} makecache --refresh", timeout=INSTALL_TIMEOUT)
        raise_for(result, "dnf makecache", ctx.display)
        ctx.updated_sources = True

    def spec(self, name: str, version: Optional[str] = None) -> str:
        return f"{name}-{version}" if version else name

    def versions(self, ctx, names):
        quoted = " ".join(shlex.quote(n) for n in names)
        result = ctx.run(f"LC_ALL=C dnf -q repoquery --available --qf '%{{name}} %{{evr}}' {quoted}", timeout=600)
        raise_for(result, "Reading the available packages (dnf repoquery)", ctx.display)
        return parse_repoquery(result.stdout, list(names))

    def ensure_candidates(self, ctx, names):
        found = self.versions(ctx, names)
        missing = [n for n in names if not found[n]["candidate"]]
        if missing and not ctx.updated_sources:
            self.update(ctx)
            found = self.versions(ctx, names)
            missing = [n for n in names if not found[n]["candidate"]]
        if missing:
            raise DeviceError(
                f"{', '.join(missing)} cannot be installed on {ctx.display}: no package source of the device "
                "offers it.",
                f"Point {option('package_source')} at a mirror of packages.microsoft.com (or the URL of its "
                f"packages-microsoft-prod.rpm) that has IoT Edge's packages for this release, or install from .rpm "
                f"files with {option('offline_packages')} DIR.")
        return found

    def install(self, ctx, specs, what, allow_downgrades=False):
        """`dnf install` of names, name-version pins or .rpm paths; a pin older than the installed
        version is a downgrade to it (dnf(8) install of a NEVRA), so allow_downgrades needs no flag."""
        ctx.progress(f"installing {what}")
        result = ctx.run(f"{DNF} install " + " ".join(shlex.quote(s) for s in specs), timeout=INSTALL_TIMEOUT)
        raise_for(result, f"Installing {what}", ctx.display)

    def exact_requirement(self, ctx, name, version, dependency):
        """From the package's Requires in the repository (`dnf repoquery --requires name-version`)."""
        spec = shlex.quote(self.spec(name, version))
        result = ctx.run(f"LC_ALL=C dnf -q repoquery --requires {spec}", timeout=600)
        raise_for(result, f"Reading the dependencies of {name} {version}", ctx.display)
        return exact_requirement(result.stdout, dependency)

    def remove(self, ctx, names):
        """`dnf remove` of exactly these packages (--noautoremove: RHEL's clean_requirements_on_remove
        would take the container engine with them, which deprovision leaves)."""
        result = ctx.run(f"{DNF} remove --noautoremove " + " ".join(shlex.quote(p) for p in names),
                         timeout=INSTALL_TIMEOUT)
        raise_for(result, "dnf remove", ctx.display)
        return f"removed {', '.join(names)} (dnf remove)"

    def read_offline(self, directory, arch, edge_version):
        return read_offline_dir(directory, arch, edge_version)

    def install_uploaded(self, ctx, files, remote):
        """One dnf transaction of the uploaded files, from them alone (--disablerepo='*'): rpm orders
        it by the Requires, so the engine (aziot-edge requires moby-engine or docker-ce) comes first."""
        what = ", ".join(r.package for r in files)
        ctx.progress(f"installing {what}")
        result = ctx.run(f"{DNF} install --disablerepo='*' " + " ".join(shlex.quote(remote[r.path]) for r in files),
                         timeout=INSTALL_TIMEOUT)
        raise_for(result, f"Installing {what}", ctx.display)
