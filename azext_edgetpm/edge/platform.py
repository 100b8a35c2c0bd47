"""Which operating systems IoT Edge supports per runtime line, read from a device's
/etc/os-release and architecture (pure functions, no I/O). The facts (lines, end dates,
systems) are support.LINES; this module only applies them to one device.

A system outside every line is refused before anything on the device changes (Raspberry Pi OS
Stretch was retired on 30 June 2022; Debian 10, Ubuntu 18.04, ...). A system that only an
older line supports (Debian 11, Ubuntu 20.04: 1.5 only) is refused without --edge-version,
with the way out named (upgrade the OS, or pin that line knowing it is out of support).
Red Hat Enterprise Linux 8 and 9 (ID=rhel) install with dnf (edge/pkg/dnf.py); rebuilds whose
ID_LIKE names rhel are refused, since Microsoft's docs list none of them.
"""
import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional

from azext_edgetpm.errors import DeviceError, UserInputError, option
from . import support

MICROSOFT_CONFIG_URL = ("https://packages.microsoft.com/config/{distro}/{version}/"
                        "packages-microsoft-prod.{kind}")

_RETIRED = {
    ("raspbian", "9"): "Raspberry Pi OS Stretch was retired from IoT Edge's tier 1 systems on 30 June 2022",
    ("debian", "9"): "Debian 9 (Stretch) is not supported by any IoT Edge LTS line",
    ("debian", "10"): "Debian 10 (Buster) is not supported by any IoT Edge LTS line",
    ("raspbian", "10"): "Raspberry Pi OS Buster is not supported by any IoT Edge LTS line",
    ("ubuntu", "18.04"): "Ubuntu 18.04 is not supported by any IoT Edge LTS line",
}
_UNAME_TO_DEB = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "armv6l": "armhf"}


@dataclass(frozen=True)
class Platform:
    """A supported device OS."""
    os_id: str          # ubuntu | debian | raspbian | rhel
    version: str        # 22.04, 12, 9 (RHEL: the major version of VERSION_ID) ...
    codename: str       # jammy, bookworm, ... ('' on RHEL)
    arch: str           # Debian architecture (amd64, arm64, armhf)
    pretty_name: str
    line: Optional[support.Line] = None   # the runtime line to install (the pin's, else the default)
    pinned: bool = False

    @property
    def package_manager(self) -> str:
        """apt (Debian, Ubuntu, Raspberry Pi OS) or dnf (Red Hat Enterprise Linux)."""
        return "dnf" if self.os_id == "rhel" else "apt"

    @property
    def repo_distro(self) -> str:
        """The packages.microsoft.com directory: Raspberry Pi OS uses Debian's packages."""
        if self.os_id == "rhel":
            return "rhel"
        return "ubuntu" if self.os_id == "ubuntu" else "debian"

    @property
    def system_key(self) -> str:
        """debian12, ubuntu22.04, rhel9: how the dev kit's packages.sources and messages name it."""
        return f"{self.repo_distro}{self.version}"

    @property
    def microsoft_config_url(self) -> str:
        return MICROSOFT_CONFIG_URL.format(distro=self.repo_distro, version=self.version,
                                           kind="rpm" if self.package_manager == "dnf" else "deb")

    def lines(self) -> List[support.Line]:
        """The runtime lines with packages for this system, oldest first."""
        return support.lines_for(self.os_id, self.version, self.arch)

    def to_dict(self) -> dict:
        out = {"name": self.pretty_name, "id": self.os_id, "version": self.version,
               "codename": self.codename, "architecture": self.arch}
        if self.line is not None:
            out["runtimeLine"] = self.line.to_dict(support.today())
        return out


def parse_os_release(text: str) -> Dict[str, str]:
    """KEY=value lines of os-release(5), with shell quoting undone."""
    values = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = parts[0] if parts else ""
    return values


def debian_arch(dpkg_arch: Optional[str], uname_machine: Optional[str] = None) -> str:
    """The Debian architecture name (dpkg --print-architecture, else mapped from uname -m)."""
    if dpkg_arch:
        return dpkg_arch.strip()
    return _UNAME_TO_DEB.get((uname_machine or "").strip(), (uname_machine or "unknown").strip())


def _os_id(values: Dict[str, str]) -> str:
    os_id = values.get("ID", "").lower()
    # Raspberry Pi OS 64-bit reports ID=debian; its 32-bit image ID=raspbian. Both are "raspbian" here.
    if os_id == "debian" and "raspberry" in values.get("PRETTY_NAME", "").lower():
        return "raspbian"
    return os_id


def detect(os_release_text: str, arch: str, display: str = "the device",
           edge_version: Optional[str] = None) -> Platform:
    """The device's platform and the runtime line to install on it (the line of `edge_version`,
    else the newest line in support for the system), or a DeviceError when that cannot be."""
    values = parse_os_release(os_release_text)
    os_id = _os_id(values)
    version = values.get("VERSION_ID", "")
    if os_id == "rhel":
        version = version.split(".", 1)[0]
    pretty = values.get("PRETTY_NAME") or f"{values.get('NAME', os_id)} {version}".strip()
    supported_list = support.table_text()
    if not values:
        raise DeviceError(f"{display} has no readable /etc/os-release; cannot tell which system it runs.",
                          f"IoT Edge supports: {supported_list}.")
    like = values.get("ID_LIKE", "").lower().split()
    if os_id != "rhel" and ("rhel" in like or "centos" in like):
        raise DeviceError(
            f"{display} runs {pretty}, a rebuild of Red Hat Enterprise Linux: Microsoft's IoT Edge documentation "
            "lists only Red Hat Enterprise Linux itself (8 and 9) as a tier 1 system. Nothing was changed on the "
            "device.", f"Use Red Hat Enterprise Linux 8 or 9, or another supported system: {supported_list}.")
    key = (os_id, version)
    if key in _RETIRED:
        raise DeviceError(
            f"{display} runs {pretty}: {_RETIRED[key]}. Nothing was changed on the device.",
            f"Upgrade the device's OS (Raspberry Pi OS: to Bookworm); supported: {supported_list}.")
    lines = support.lines_for(os_id, version)
    if not lines:
        raise DeviceError(
            f"{display} runs {pretty}, which is not a tier 1 system of any IoT Edge LTS line. Nothing was changed "
            "on the device.",
            f"Use a supported system: {supported_list}. For tier 2 systems, install the packages of an "
            "IoT Edge release yourself.")
    archs = sorted({a for line in lines for a in line.systems[key]})
    if arch not in archs:
        raise DeviceError(
            f"{display} runs {pretty} on {arch}; IoT Edge supports it only on {', '.join(archs)}. Nothing was "
            "changed on the device.", f"Use a device of a supported architecture; supported: {supported_list}.")
    line = _choose_line(display, pretty, os_id, version, arch, edge_version)
    codename = values.get("VERSION_CODENAME") or values.get("UBUNTU_CODENAME") or ""
    return Platform(os_id=os_id, version=version, codename=codename, arch=arch, pretty_name=pretty,
                    line=line, pinned=bool(edge_version))


def _choose_line(display, pretty, os_id, version, arch, edge_version) -> support.Line:
    lines = support.lines_for(os_id, version, arch)
    names = ", ".join(line.name for line in lines)
    if edge_version:
        wanted = support.line_of(edge_version)
        line = support.by_name(wanted) if wanted else None
        if line is None:
            raise UserInputError(
                f"{option('edge_version')} {edge_version} is not a version of an IoT Edge LTS line this command "
                f"knows ({', '.join(known.name for known in support.LINES)}). Nothing was changed on the device.",
                f"Give a version such as 1.6.0 (or omit {option('edge_version')} for the newest LTS line).")
        if line not in lines:
            raise DeviceError(
                f"IoT Edge {line.name} has no packages for {pretty} ({arch}) on {display}; this system has "
                f"{names}. Nothing was changed on the device.",
                f"Pin a version of {names} with {option('edge_version')}, or upgrade the device's OS to one "
                f"{line.name} supports ({_systems(line)}).")
        return line
    line = support.default_line(os_id, version, arch)
    if line is None:
        newest = support.LINES[-1]
        old = lines[-1]
        raise DeviceError(
            f"{display} runs {pretty} ({support.NAMES.get(os_id, os_id)} {version}), which IoT Edge {newest.name} "
            f"LTS does not support ({newest.name} removed it"
            f"); only {names} had packages for it, and {old.name} LTS was serviced until "
            f"{old.serviced_until.isoformat()}. Nothing was changed on the device.",
            f"Upgrade the device's OS to one IoT Edge {newest.name} supports ({_systems(newest)}), or pin "
            f"a {old.name} version with {option('edge_version')} (one the package source offers), knowing that it is "
            "out of support.")
    return line


def _systems(line: support.Line) -> str:
    return ", ".join(f"{support.NAMES.get(os_id, os_id)} {version}" for os_id, version in line.systems)
