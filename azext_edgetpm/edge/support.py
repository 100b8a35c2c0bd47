"""IoT Edge's long-term-support lines: when each is serviced until, and which systems its packages
are built for. THE one table of these facts (the next LTS is one more row here); pure functions.

Sources: Azure/iotedge `CHANGELOG.md` (release and end-of-servicing dates; 1.6 removed Debian 11)
and `builds/misc/templates/build-packages.yaml` on `main` (1.6) and `release/1.5` (1.5): the
systems and architectures packages are built for; Microsoft's tier 1 list for Ubuntu 20.04 and
Raspberry Pi OS (Debian's packages). RHEL: `ID=rhel` only: Microsoft's docs name no rebuild.
"""
import datetime
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple

_DEB = ("amd64", "arm64", "armhf")
_RPM = ("amd64",)  # el8/el9 packages are built for amd64 only (uname -m x86_64, mapped)


@dataclass(frozen=True)
class Line:
    """One LTS line of the runtime."""
    name: str                                # "1.6"
    released: datetime.date
    serviced_until: datetime.date
    systems: Dict[Tuple[str, str], Tuple[str, ...]]  # (os-release ID, major version) -> architectures
    min_engine: Optional[str] = None         # the oldest moby-engine whose Docker Engine API the line needs

    @property
    def agent_image(self) -> str:
        """The line's edgeAgent image (the runtime's own default: edgelet/iotedge/src/config/super_config.rs)."""
        return f"{AGENT_IMAGE_REPOSITORY}:{self.name}"

    def in_support(self, on: datetime.date) -> bool:
        return self.released <= on <= self.serviced_until

    def to_dict(self, on: datetime.date) -> dict:
        return {"line": self.name, "servicedUntil": self.serviced_until.isoformat(),
                "inSupport": self.in_support(on)}


AGENT_IMAGE_REPOSITORY = "mcr.microsoft.com/azureiotedge-agent"

LINES: Tuple[Line, ...] = (
    Line("1.5", datetime.date(2024, 5, 1), datetime.date(2026, 11, 10), {
        ("ubuntu", "20.04"): ("amd64", "arm64"), ("ubuntu", "22.04"): _DEB, ("ubuntu", "24.04"): _DEB,
        ("debian", "11"): _DEB, ("debian", "12"): _DEB,
        ("raspbian", "11"): ("armhf", "arm64"), ("raspbian", "12"): ("armhf", "arm64"),
        ("rhel", "8"): _RPM, ("rhel", "9"): _RPM}),
    Line("1.6", datetime.date(2026, 7, 14), datetime.date(2028, 11, 14), {
        ("ubuntu", "22.04"): _DEB, ("ubuntu", "24.04"): _DEB, ("debian", "12"): _DEB,
        ("raspbian", "12"): ("armhf", "arm64"),
        ("rhel", "8"): _RPM, ("rhel", "9"): _RPM},
        min_engine="20.10"),   # 1.6 moved to Docker Engine API v1.41 (Docker 20.10) -- CHANGELOG.md
)

# Injectable for tests: the date support is judged at.
clock: Callable[[], datetime.date] = datetime.date.today

NAMES = {"ubuntu": "Ubuntu", "debian": "Debian", "raspbian": "Raspberry Pi OS", "rhel": "Red Hat Enterprise Linux"}


def today() -> datetime.date:
    return clock()


def by_name(name: str) -> Optional[Line]:
    return next((line for line in LINES if line.name == name), None)


def line_of(version: Optional[str]) -> Optional[str]:
    """The major.minor line of a package version: 1.6.0-1, 1.6.0-1.el9, 1:1.5.10-1 -> 1.6 / 1.5."""
    match = re.match(r"^(?:\d+:)?(\d+)\.(\d+)", (version or "").strip())
    return f"{match.group(1)}.{match.group(2)}" if match else None


def lines_for(os_id: str, version: str, arch: Optional[str] = None) -> List[Line]:
    """The lines with packages for this system (and architecture), oldest first."""
    return [line for line in LINES if (os_id, version) in line.systems
            and (arch is None or arch in line.systems[(os_id, version)])]


def default_line(os_id: str, version: str, arch: Optional[str] = None,
                 on: Optional[datetime.date] = None) -> Optional[Line]:
    """The newest line in support today with packages for this system; None when there is none."""
    on = on or today()
    serviced = [line for line in lines_for(os_id, version, arch) if line.in_support(on)]
    return serviced[-1] if serviced else None


def version_key(version: str) -> tuple:
    """A sort key for package versions of the runtime (epoch, upstream numbers, release numbers)."""
    epoch, _, rest = (version or "").rpartition(":") if ":" in (version or "") else ("0", "", version or "")
    upstream_part, _, release = rest.partition("-")

    def numbers(text):
        return tuple(int(n) for n in re.findall(r"\d+", text))
    return (int(epoch or 0), numbers(upstream_part), numbers(release))


def newest(versions: Iterable[str], lines: Iterable[str]) -> Optional[str]:
    """The newest of these package versions that belongs to one of these lines."""
    wanted = set(lines)
    kept = [v for v in versions if line_of(v) in wanted]
    return max(kept, key=version_key) if kept else None


def warning(line: Line, on: Optional[datetime.date] = None) -> Optional[str]:
    """The out-of-support warning for a line past its end of servicing; None while serviced."""
    on = on or today()
    if line.in_support(on):
        return None
    newer = [other.name for other in LINES if other.released > line.released and other.in_support(on)]
    return (f"IoT Edge {line.name} LTS was serviced until {line.serviced_until.isoformat()} and is out of support"
            + (f"; upgrade to {newer[-1]} LTS (az edge-tpm upgrade) when the device's system allows it." if newer
               else "."))


def table_text() -> str:
    """The support table in words (help, errors): each line, its end date and systems."""
    parts = []
    for line in reversed(LINES):
        systems = ", ".join(f"{NAMES.get(os_id, os_id)} {version}" for os_id, version in line.systems)
        parts.append(f"{line.name} LTS (serviced until {line.serviced_until.isoformat()}): {systems}")
    return "; ".join(parts)
