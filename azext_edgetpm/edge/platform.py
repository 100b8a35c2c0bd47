"""Which operating systems IoT Edge 1.5 supports, read from a device's /etc/os-release and
Debian architecture (pure functions, no I/O).

Tier 1 (../shared/docs/iotedge.md): Ubuntu 20.04/22.04/24.04 on amd64 and arm64; Debian 11
and 12; Raspberry Pi OS Bullseye and Bookworm on armhf and arm64. Raspberry Pi OS Stretch was
retired on 30 June 2022 and is refused, like every system not in the matrix, before anything
on the device changes.
"""
import shlex
from dataclasses import dataclass
from typing import Dict, Optional

from azext_edgetpm.errors import DeviceError

MICROSOFT_CONFIG_URL = "https://packages.microsoft.com/config/{distro}/{version}/packages-microsoft-prod.deb"

# (os-release ID, VERSION_ID) -> supported Debian architectures.
_SUPPORTED = {
    ("ubuntu", "20.04"): ("amd64", "arm64"),
    ("ubuntu", "22.04"): ("amd64", "arm64"),
    ("ubuntu", "24.04"): ("amd64", "arm64"),
    ("debian", "11"): ("amd64", "arm64", "armhf"),
    ("debian", "12"): ("amd64", "arm64", "armhf"),
    ("raspbian", "11"): ("armhf", "arm64"),
    ("raspbian", "12"): ("armhf", "arm64"),
}
_RETIRED = {
    ("raspbian", "9"): "Raspberry Pi OS Stretch was retired from IoT Edge's tier 1 systems on 30 June 2022",
    ("debian", "9"): "Debian 9 (Stretch) is not supported by IoT Edge 1.5",
    ("debian", "10"): "Debian 10 (Buster) is not supported by IoT Edge 1.5",
    ("raspbian", "10"): "Raspberry Pi OS Buster is not supported by IoT Edge 1.5",
    ("ubuntu", "18.04"): "Ubuntu 18.04 is not supported by IoT Edge 1.5",
}
_UNAME_TO_DEB = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "armv6l": "armhf"}


@dataclass(frozen=True)
class Platform:
    """A supported device OS."""
    os_id: str          # ubuntu | debian | raspbian
    version: str        # 22.04, 12, ...
    codename: str       # jammy, bookworm, ...
    arch: str           # Debian architecture
    pretty_name: str

    @property
    def repo_distro(self) -> str:
        """The packages.microsoft.com directory: Raspberry Pi OS uses Debian's packages."""
        return "ubuntu" if self.os_id == "ubuntu" else "debian"

    @property
    def microsoft_config_url(self) -> str:
        return MICROSOFT_CONFIG_URL.format(distro=self.repo_distro, version=self.version)

    def to_dict(self) -> dict:
        return {"name": self.pretty_name, "id": self.os_id, "version": self.version,
                "codename": self.codename, "architecture": self.arch}


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


def detect(os_release_text: str, arch: str, display: str = "the device") -> Platform:
    """The device's platform, or a DeviceError when IoT Edge does not support it."""
    values = parse_os_release(os_release_text)
    os_id = _os_id(values)
    version = values.get("VERSION_ID", "")
    pretty = values.get("PRETTY_NAME") or f"{values.get('NAME', os_id)} {version}".strip()
    supported_list = ("Ubuntu 20.04/22.04/24.04 (amd64, arm64), Debian 11/12, "
                      "Raspberry Pi OS Bullseye/Bookworm (armhf, arm64)")
    if not values:
        raise DeviceError(f"{display} has no readable /etc/os-release; cannot tell which system it runs.",
                          f"IoT Edge 1.5 supports {supported_list}.")
    key = (os_id, version)
    if key in _RETIRED:
        raise DeviceError(
            f"{display} runs {pretty}: {_RETIRED[key]}. Nothing was changed on the device.",
            f"Upgrade the device's OS (Raspberry Pi OS: to Bullseye or Bookworm); IoT Edge 1.5 supports "
            f"{supported_list}.")
    if key not in _SUPPORTED:
        raise DeviceError(
            f"{display} runs {pretty}, which is not a tier 1 system of IoT Edge 1.5. Nothing was changed "
            "on the device.",
            f"Use a supported system: {supported_list}. For tier 2 systems, install the .deb files of an "
            "IoT Edge release yourself.")
    if arch not in _SUPPORTED[key]:
        raise DeviceError(
            f"{display} runs {pretty} on {arch}; IoT Edge supports it only on "
            f"{', '.join(_SUPPORTED[key])}. Nothing was changed on the device.",
            f"Use a device of a supported architecture; supported: {supported_list}.")
    codename = values.get("VERSION_CODENAME") or values.get("UBUNTU_CODENAME") or ""
    return Platform(os_id=os_id, version=version, codename=codename, arch=arch, pretty_name=pretty)
