"""apt-get and dpkg on the device: non-interactive commands (every value quoted), targeted
index updates, candidate lookups, apt's failures turned into errors with a recommendation,
and the control fields of local .deb files (for --offline-packages).
"""
import io
import os
import re
import shlex
import tarfile
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

from azext_edgetpm.echo import shown
from azext_edgetpm.errors import EdgeTpmError, LocalFileError, UserInputError, option

APT_ENV = "DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a"
APT_OPTS = ("-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef "
            "-o Dpkg::Options::=--force-confold")
INSTALL_TIMEOUT = 1800.0
DPKG_INTERRUPTED = "dpkg was interrupted"


def configure_pending_command() -> str:
    """`dpkg --configure -a`: finish what an interrupted dpkg run left unpacked or half configured."""
    return f"{APT_ENV} dpkg --force-confdef --force-confold --configure -a"


def install_command(specs: Iterable[str], allow_downgrades: bool = False) -> str:
    """`apt-get install` of package names, name=version pins or ./file.deb paths."""
    extra = " --allow-downgrades" if allow_downgrades else ""
    return f"{APT_ENV} apt-get {APT_OPTS}{extra} install " + " ".join(shlex.quote(s) for s in specs)


def update_command(source_files: Optional[Iterable[str]] = None) -> str:
    """`apt-get update`; with source files, only those sources are refreshed (through a private
    sources.list.d made of links), so that an unrelated unreachable source cannot fail it."""
    if not source_files:
        return f"{APT_ENV} apt-get -q -o DPkg::Lock::Timeout=300 update"
    links = " ".join(f"&& ln -s {shlex.quote(f)} \"$D\"/" for f in source_files)
    return ("D=$(mktemp -d) && trap 'rm -rf \"$D\"' EXIT && trap 'exit 143' HUP INT TERM " + links + " && "
            f"{APT_ENV} apt-get -q -o DPkg::Lock::Timeout=300 -o Dir::Etc::sourcelist=/dev/null "
            "-o Dir::Etc::sourceparts=\"$D\" -o APT::Get::List-Cleanup=0 update")


def policy_command(names: Iterable[str]) -> str:
    return "LC_ALL=C apt-cache policy " + " ".join(shlex.quote(n) for n in names)


def parse_policy(text: str) -> Dict[str, dict]:
    """`apt-cache policy` -> {package: {"installed": v|None, "candidate": v|None, "versions": [...]}}."""
    out: Dict[str, dict] = {}
    current = None
    in_table = False
    for line in (text or "").splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            out[current] = {"installed": None, "candidate": None, "versions": []}
            in_table = False
            continue
        if current is None:
            continue
        stripped = line.strip()
        if stripped.startswith("Installed:"):
            value = stripped.split(":", 1)[1].strip()
            out[current]["installed"] = None if value == "(none)" else value
        elif stripped.startswith("Candidate:"):
            value = stripped.split(":", 1)[1].strip()
            out[current]["candidate"] = None if value == "(none)" else value
        elif stripped.startswith("Version table:"):
            in_table = True
        elif in_table:
            match = re.match(r"^(?:\*\*\*\s+)?(\S+)\s+\d+\s*$", stripped)
            if match:
                out[current]["versions"].append(match.group(1))
    return out


def show_command(name: str, version: str) -> str:
    """`apt-cache show NAME=VERSION`: that version's control fields, as the package source has them."""
    return "LC_ALL=C apt-cache show " + shlex.quote(f"{name}={version}")


def control_field(text: str, field_name: str) -> str:
    """One field of a control paragraph (`apt-cache show`, a .deb's control file); continuation
    lines joined; '' when absent. Only the first paragraph is read."""
    value, inside = [], False
    for line in (text or "").splitlines():
        if not line.strip():
            if inside or value:
                break
            continue
        if line[0] in " \t":
            if inside:
                value.append(line.strip())
            continue
        key, _, rest = line.partition(":")
        inside = key.strip().lower() == field_name.lower()
        if inside:
            value.append(rest.strip())
    return " ".join(value)


def exact_dependency(depends: str, package: str) -> Optional[str]:
    """The version `package` must have by a `Depends:` value, when it names exactly one
    (`package (= V)`, e.g. aziot-edge's `aziot-identity-service (= 1.5.3-1)`); None otherwise."""
    for clause in (depends or "").split(","):
        if "|" in clause:
            continue
        match = re.fullmatch(r"\s*(\S+?)(?::\S+)?\s*\(\s*=\s*([^)\s]+)\s*\)\s*", clause)
        if match and match.group(1) == package:
            return match.group(2)
    return None


def match_version(wanted: str, versions: List[str]) -> Optional[str]:
    """The full Debian version for `--edge-version` (1.5.10 matches 1.5.10-1; exact wins)."""
    if wanted in versions:
        return wanted
    for version in versions:
        upstream_version = version.split(":", 1)[-1].rsplit("-", 1)[0]
        if upstream_version == wanted:
            return version
    return None


def upstream(version: Optional[str]) -> Optional[str]:
    if not version:
        return None
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


_FAILURES = (
    (r"Unable to locate package (\S+)|Package '?(\S+?)'? has no installation candidate",
     "{pkg} is not available from the device's package sources.",
     f"Check {option('package_source')} (a mirror's base URL or an apt line that carries IoT Edge's packages), "
     f"or install from .deb files with {option('offline_packages')} DIR."),
    (r"Version '([^']+)' for '([^']+)' was not found",
     "Version {m1} of {m2} is not in the device's package sources.",
     f"Pick a version the source has (apt-cache madison aziot-edge on the device) or omit {option('edge_version')}."),
    (r"Could not get lock|Unable to acquire the dpkg frontend lock|is held by process",
     "Another package manager (unattended-upgrades, apt) holds the lock on the device.",
     "Wait until it finishes (or stop it), then run the command again; the install continues where it stopped."),
    (r"dpkg was interrupted",
     "An earlier package installation on the device was interrupted.",
     "Run `sudo dpkg --configure -a` on the device, then run the command again."),
    (r"NO_PUBKEY|is not signed|The following signatures couldn't be verified|EXPKEYSIG",
     "apt does not trust the package source's signing key.",
     "Install the repository's signing key on the device (Microsoft's comes with packages-microsoft-prod), "
     f"or give an apt line with signed-by=... in {option('package_source')}."),
    (r"Failed to fetch|Could not resolve|Temporary failure resolving|Could not connect|Connection refused|"
     r"Unable to connect|Connection timed out|404\s+Not Found|Some index files failed to download|"
     r"Network is unreachable|No route to host",
     "The device could not download from its package source.",
     f"Check the device's network and the URL of {option('package_source')}; for networks that cannot reach "
     f"packages.microsoft.com use a mirror ({option('package_source')}) or {option('offline_packages')} DIR."),
    (r"No container runtime detected",
     "aziot-edge refuses to install before a container engine is installed (its preinst looks for the "
     "docker group, which moby-engine creates).",
     f"Install moby-engine first, or put its .deb files in the {option('offline_packages')} directory, "
     "then run the command again."),
    (r"unmet dependencies|held broken packages|Depends: .* but .* is to be installed",
     "apt cannot resolve the packages' dependencies on the device.",
     "Check that the package source matches the device's distribution and version; a pinned "
     f"{option('edge_version')} needs the exact aziot-identity-service that aziot-edge version names (apt-cache show "
     "aziot-edge=VERSION) in the same source."),
)


def raise_for(result, what: str, display: str) -> None:
    """Raise the error a failed apt/dpkg command deserves (nothing when it succeeded)."""
    raise_known(result, what, display, _FAILURES, "apt", tail)


def raise_known(result, what: str, display: str, failures, tool: str, shorten, **values) -> None:
    """The package manager's failure: the first of `failures` (pattern, message, recommendation)
    whose pattern is in its output, else its exit code; the messages may name {pkg} (or {m1}, {m2}:
    the pattern's groups) and `values`. Nothing when the command succeeded."""
    if result.rc == 0:
        return
    text = (result.stderr or "") + "\n" + (result.stdout or "")
    for pattern, message, recommendation in failures:
        match = re.search(pattern, text)
        if match:
            groups = [g for g in match.groups() if g]
            named = dict(values, pkg=groups[0] if groups else "A package", m1=groups[0] if groups else "",
                         m2=groups[1] if len(groups) > 1 else "")
            raise EdgeTpmError(f"{what} failed on {display}: {message.format(**named)} {tool} said: {shorten(text)}",
                               recommendation.format(**named))
    raise EdgeTpmError(f"{what} failed on {display} (exit {result.rc}): {shorten(text)}",
                       f"Run the command again with --debug, or run it on the device to see {tool}'s output.")


# URI schemes of apt's transports (apt-transport-*: http, https, file, copy, cdrom, mirror,
# tor; `ftp`, `rsh` and `ssh` of older releases; `mirror+http` style combinations).
APT_SCHEMES = ("http", "https", "file", "copy", "cdrom", "mirror", "mirror+http", "mirror+https", "mirror+file",
               "mirror+copy", "tor+http", "tor+https", "ftp", "rsh", "ssh", "spacewalk", "s3")


def check_apt_line(line: str) -> None:
    """Raise UserInputError unless `line` is one sources.list entry apt can parse:
    `deb|deb-src [ [key=value ...] ] URI suite [component ...]` (a suite ending in / takes no
    components; any other suite needs at least one)."""
    def bad(why: str):
        return UserInputError(
            f"{option('package_source')} {shown(line)} is not a valid apt line: {why}.",
            "Write it as in /etc/apt/sources.list.d/: deb [signed-by=/usr/share/keyrings/KEY.gpg] "
            "https://mirror.example.com/microsoft/ubuntu/22.04/prod jammy main (or 'deb [trusted=yes] URL ./').")

    text = (line or "").strip()
    if "\n" in text or "\r" in text:
        raise bad("it has more than one line")
    kind, _, rest = text.partition(" ")
    if kind not in ("deb", "deb-src"):
        raise bad("it starts neither with deb nor with deb-src")
    rest = rest.strip()
    if rest.startswith("["):
        if rest.count("[") != 1 or "]" not in rest:
            raise bad("the options bracket [ is not closed by one ]" if "]" not in rest
                      else "it has more than one [")
        options, _, rest = rest[1:].partition("]")
        if "[" in options or "]" in rest:
            raise bad("its [options] are not balanced")
        for entry in options.split():
            key, eq, value = entry.partition("=")
            if not eq or not value or not re.fullmatch(r"[A-Za-z][A-Za-z0-9.\-]*[+-]?", key):
                raise bad(f"the option {shown(entry, 40)} is not key=value")
        rest = rest.strip()
    elif "[" in rest or "]" in rest:
        raise bad("its [options] must come right after " + kind)
    words = rest.split()
    if len(words) < 2:
        raise bad("it needs a URI and a suite (e.g. ./ or jammy main)")
    uri, suite, components = words[0], words[1], words[2:]
    match = re.match(r"^([a-z][a-z0-9+.\-]*):", uri)
    if not match or match.group(1) not in APT_SCHEMES:
        raise bad(f"{shown(uri, 40)} is not a URI apt can fetch from (http://, https://, file:/, ...)")
    local = match.group(1) in ("file", "copy", "cdrom", "mirror+file", "mirror+copy")
    if not (re.match(r"^[a-z+]+:/", uri) if local else re.match(r"^[a-z+]+://[^/\s]+", uri)):
        raise bad(f"{shown(uri, 40)} names no " + ("path" if local else "host"))
    if suite.endswith("/") and components:
        raise bad("a suite ending in / (an exact path such as ./) takes no components")
    if not suite.endswith("/") and not components:
        raise bad(f"the suite {shown(suite, 40)} needs at least one component (e.g. main)")


def source_uris(text: str) -> List[str]:
    """The repository URIs of sources.list lines and deb822 .sources files."""
    uris = []
    for line in (text or "").splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] in ("deb", "deb-src"):
            rest = words[1:]
            if rest and rest[0].startswith("["):
                while rest and not rest[0].endswith("]"):
                    rest = rest[1:]
                rest = rest[1:]
            if rest:
                uris.append(rest[0])
        elif words[0] == "URIs:":
            uris += words[1:]
    return list(dict.fromkeys(uris))


def update_failed(result):
    """`apt-get update` exits 0 when a source could not be fetched (apt only warns, unless
    --error-on=any, which older apt lacks): such a run is turned into a failed Result."""
    text = (result.stdout or "") + "\n" + (result.stderr or "")
    if result.rc == 0 and re.search(r"^(W: Failed to fetch|W: Some index files failed|E: )", text, re.MULTILINE):
        return type(result)(100, result.stdout, result.stderr)
    return result


def tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in (text or "").splitlines()
            if line.strip() and not line.startswith(("Reading ", "Building ", "WARNING: apt does not have"))]
    important = [line for line in kept if line.startswith(("E:", "W:", "Err:", "dpkg:"))]
    return " | ".join((important or kept)[-lines:]) or "no output"


# -- local .deb files ------------------------------------------------------------------------
@dataclass(frozen=True)
class DebFile:
    path: str
    package: str
    version: str
    architecture: str
    depends: str = ""

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def _control_text(data: bytes) -> Optional[str]:
    """The `control` file of a .deb (an ar archive holding control.tar[.gz|.xz|.bz2|.zst])."""
    if not data.startswith(b"!<arch>\n"):
        return None
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset:offset + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or 0)
        body = data[offset + 60:offset + 60 + size]
        offset += 60 + size + (size % 2)
        if not name.startswith("control.tar"):
            continue
        if name.endswith(".zst"):
            body = _unzstd(body)
            if body is None:
                return None
        try:
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                for member in tar.getmembers():
                    if member.name.lstrip("./") == "control":
                        return tar.extractfile(member).read().decode("utf-8", "replace")
        except (tarfile.TarError, OSError, EOFError):
            return None
    return None


def _unzstd(body: bytes) -> Optional[bytes]:
    try:
        from compression import zstd  # Python 3.14+
        return zstd.decompress(body)
    except ImportError:
        pass
    try:
        import zstandard  # pylint: disable=import-error
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    except ImportError:
        return None


def read_deb(path: str) -> DebFile:
    """Package, version and architecture of a .deb (control file; else the file name's
    name_version_arch.deb convention)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise LocalFileError(f"Cannot read {path}: {exc.strerror}.",
                             f"Check the {option('offline_packages')} directory.") from exc
    control = _control_text(data)
    fields = {}
    if control:
        for line in control.splitlines():
            if ":" in line and not line.startswith((" ", "\t")):
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    if not fields.get("Package"):
        parts = os.path.basename(path)[:-4].split("_")
        if len(parts) != 3:
            raise UserInputError(
                f"{path} is not a Debian package that can be read here.",
                f"Put only .deb files (named package_version_arch.deb) in the {option('offline_packages')} directory.")
        fields = {"Package": parts[0], "Version": parts[1].replace("%3a", ":"), "Architecture": parts[2]}
    return DebFile(path, fields["Package"], fields.get("Version", ""), fields.get("Architecture", "all"),
                   control_field(control or "", "Depends"))


def read_offline_dir(directory: str, arch: str, edge_version: Optional[str] = None) -> List[DebFile]:
    """The .deb files of --offline-packages for this architecture; one version per package
    (several aziot-edge versions are narrowed by --edge-version, several aziot-identity-service
    versions by the exact one the chosen aziot-edge depends on)."""
    if not os.path.isdir(directory):
        raise LocalFileError(f"{option('offline_packages')} {shown(directory)} is not a directory.",
                             "Give a directory that holds the .deb files to install.")
    debs = [read_deb(os.path.join(directory, n)) for n in sorted(os.listdir(directory)) if n.endswith(".deb")]
    debs = [d for d in debs if d.architecture in ("all", arch)]
    if not debs:
        raise LocalFileError(f"{option('offline_packages')} {shown(directory)} holds no .deb file for {arch}.",
                             "Download moby-engine, aziot-identity-service and aziot-edge for the device's "
                             "distribution and architecture into that directory.")
    by_name: Dict[str, List[DebFile]] = {}
    for deb in debs:
        by_name.setdefault(deb.package, []).append(deb)
    chosen: Dict[str, DebFile] = {}
    # aziot-edge first: the identity service's version follows from its Depends.
    for name in sorted(by_name, key=lambda n: (n != "aziot-edge", n)):
        group = by_name[name]
        if len(group) > 1 and edge_version and name == "aziot-edge":
            group = [d for d in group if match_version(edge_version, [d.version])] or group
        needed = exact_dependency(chosen["aziot-edge"].depends, name) if "aziot-edge" in chosen else None
        if needed is not None:
            if not any(d.version == needed for d in group):
                raise UserInputError(
                    f"aziot-edge {chosen['aziot-edge'].version} depends on {name} (= {needed}), but "
                    f"{option('offline_packages')} {shown(directory)} has {name} "
                    f"{', '.join(d.version for d in group)}.",
                    f"Download {name} {needed} (the version aziot-edge names) into that directory.")
            group = [d for d in group if d.version == needed]
        if len(group) > 1:
            raise UserInputError(
                f"{option('offline_packages')} {shown(directory)} has {len(group)} versions of {name}: "
                f"{', '.join(d.version for d in group)}.",
                "Keep one version of each package in the directory"
                + (f" (or choose the IoT Edge version with {option('edge_version')})." if name.startswith("aziot")
                   else "."))
        chosen[name] = group[0]
    return [chosen[name] for name in sorted(chosen)]


def engine_first(debs: List[DebFile]) -> List[List[DebFile]]:
    """The apt transactions of an offline install, in order: everything but IoT Edge's own two
    packages (the container engine, tpm2-tools and what they need), then aziot-identity-service
    and aziot-edge. aziot-edge's preinst refuses to install while the docker group that the
    engine's postinst creates is missing, so a single transaction would depend on apt's order
    (Microsoft's offline instructions install the engine first, too)."""
    edge = ("aziot-edge", "aziot-identity-service")
    return [group for group in ([d for d in debs if d.package not in edge], [d for d in debs if d.package in edge])
            if group]
