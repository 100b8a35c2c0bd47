"""What the install steps need to know about a device, gathered as root in one remote shell
script (one SSH round trip, like Ansible's fact gathering), and parsed into `Facts`.

Nothing here changes the device. The script only reads: os-release, the Debian architecture,
whether systemd runs, which commands exist, package states (dpkg-query, or rpm on Red Hat
Enterprise Linux), service users, TPM device nodes and the files the steps manage (base64, with
mode and owner).
"""
import base64
import shlex
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

from azext_edgetpm.errors import DeviceError
from .apt import tail

PACKAGES = ("packages-microsoft-prod", "moby-engine", "docker-ce", "docker.io", "aziot-edge",
            "aziot-identity-service", "tpm2-tools")
SERVICE_USERS = ("aziotks", "aziotcs", "aziotid", "aziottpm", "iotedge")
COMMANDS = ("curl", "wget", "python3", "iotedge", "udevadm", "apt-get", "dpkg", "dnf", "rpm", "usermod", "runuser")
RPM_INSTALLED = "rpm installed"   # the status of a package rpm knows (rpm has no half-installed states)
# A file the steps read from a device (config.toml, os-release, the proxy files and CA) is read up
# to this size; a larger one is refused by name, before any of it crosses the connection.
FILE_LIMIT = 4 * 2**20
APPLIED_CONFIGS = ("/etc/aziot/keyd/config.d/00-super.toml", "/etc/aziot/certd/config.d/00-super.toml",
                   "/etc/aziot/identityd/config.d/00-super.toml", "/etc/aziot/tpmd/config.d/00-super.toml",
                   "/etc/aziot/edged/config.d/00-super.toml")

_SCRIPT = r"""
set -u
file() {{
  if [ -f "$1" ]; then
    size=$(stat -c %s "$1")
    if [ "$size" -gt {file_limit} ]; then echo "@@BIGFILE $1 $size"; return; fi
    echo "@@FILE $1 $(stat -c '%a %U %G %Y' "$1") $(head -c {file_limit} "$1" | base64 -w0)"
  else
    echo "@@NOFILE $1"
  fi
}}
if [ -f /etc/os-release ]; then file /etc/os-release; else file /usr/lib/os-release; fi
echo "@@ARCH $(dpkg --print-architecture 2>/dev/null) $(uname -m)"
[ -d /run/systemd/system ] && echo "@@SYSTEMD"
for c in {commands}; do p=$(command -v "$c" 2>/dev/null) && echo "@@CMD $c $p"; done
for s in {init_scripts}; do [ -x "/etc/init.d/$s" ] && echo "@@INITD $s"; done
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f='@@PKG ${{Package}}\t${{Version}}\t${{Status}}\n' {packages} 2>/dev/null
elif command -v rpm >/dev/null 2>&1; then
  rpm -q --qf '@@PKG %{{NAME}}\t%|EPOCH?{{%{{EPOCH}}:}}|%{{VERSION}}-%{{RELEASE}}\t{rpm_installed}\n' {packages} 2>/dev/null \
    | grep '^@@PKG '
fi
for u in {users}; do
  getent passwd "$u" >/dev/null 2>&1 && echo "@@USER $u $(id -nG "$u" 2>/dev/null | tr ' ' ',')"
done
getent group tss >/dev/null 2>&1 && echo "@@GROUP tss"
for d in /dev/tpm0 /dev/tpmrm0; do [ -e "$d" ] && echo "@@DEV $(stat -c '%n %U %G %a' "$d")"; done
for f in {files}; do file "$f"; done
for f in {stat_files}; do [ -e "$f" ] && echo "@@MTIME $f $(stat -c '%Y' "$f")"; done
exit 0
"""


@dataclass
class RemoteFile:
    path: str
    data: bytes
    mode: int
    owner: str
    group: str
    mtime: int

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass
class Package:
    name: str
    version: str
    status: str

    @property
    def installed(self) -> bool:
        # dpkg's "install ok installed" (also "hold ok installed"); half-configured etc. are not;
        # rpm's RPM_INSTALLED.
        return self.status.endswith(" installed")


@dataclass
class Facts:
    """A snapshot of the device, as far as the install steps care."""
    os_release: str = ""
    dpkg_arch: str = ""
    uname_machine: str = ""
    systemd: bool = False
    commands: Dict[str, str] = field(default_factory=dict)
    init_scripts: List[str] = field(default_factory=list)
    packages: Dict[str, Package] = field(default_factory=dict)
    users: Dict[str, List[str]] = field(default_factory=dict)
    groups: List[str] = field(default_factory=list)
    tpm_devices: Dict[str, dict] = field(default_factory=dict)
    files: Dict[str, Optional[RemoteFile]] = field(default_factory=dict)
    mtimes: Dict[str, int] = field(default_factory=dict)
    too_big: Dict[str, int] = field(default_factory=dict)   # path: size of files beyond FILE_LIMIT

    def installed(self, name: str) -> Optional[str]:
        """The installed version of a package, or None."""
        pkg = self.packages.get(name)
        return pkg.version if pkg and pkg.installed else None

    def file(self, path: str) -> Optional[RemoteFile]:
        return self.files.get(path)

    def has(self, command: str) -> bool:
        return command in self.commands


def build_script(files: Iterable[str], init_scripts: Iterable[str] = ("docker",),
                 stat_files: Iterable[str] = APPLIED_CONFIGS, packages: Iterable[str] = ()) -> str:
    """The fact-gathering script; every name and path in it is quoted."""
    def words(values):
        return " ".join(shlex.quote(v) for v in values) or "''"
    return _SCRIPT.format(commands=words(COMMANDS), init_scripts=words(init_scripts),
                          packages=words(dict.fromkeys(list(PACKAGES) + list(packages))),
                          users=words(SERVICE_USERS), files=words(files), stat_files=words(stat_files),
                          file_limit=FILE_LIMIT, rpm_installed=RPM_INSTALLED)


def parse(stdout: str) -> Facts:
    facts = Facts()
    for line in stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "@@FILE":
            parts = rest.split(" ")
            if len(parts) < 5:
                continue
            path, mode, owner, group, mtime = parts[:5]
            data = base64.b64decode(parts[5]) if len(parts) > 5 and parts[5] else b""
            rf = RemoteFile(path, data, int(mode, 8), owner, group, int(mtime))
            facts.files[path] = rf
            if path.endswith("os-release"):
                facts.os_release = rf.text
        elif tag == "@@BIGFILE":
            path, _, size = rest.rpartition(" ")
            facts.too_big[path] = int(size) if size.isdigit() else 0
        elif tag == "@@NOFILE":
            facts.files[rest.strip()] = None
        elif tag == "@@ARCH":
            parts = rest.split()
            if len(parts) == 2:
                facts.dpkg_arch, facts.uname_machine = parts
            elif parts:
                facts.uname_machine = parts[-1]
        elif tag == "@@SYSTEMD":
            facts.systemd = True
        elif tag == "@@CMD":
            name, _, path = rest.partition(" ")
            facts.commands[name] = path.strip()
        elif tag == "@@INITD":
            facts.init_scripts.append(rest.strip())
        elif tag == "@@PKG":
            fields = rest.split("\t")
            if len(fields) == 3:
                facts.packages[fields[0]] = Package(*fields)
        elif tag == "@@USER":
            name, _, groups = rest.partition(" ")
            facts.users[name] = [g for g in groups.strip().split(",") if g]
        elif tag == "@@GROUP":
            facts.groups.append(rest.strip())
        elif tag == "@@DEV":
            parts = rest.split()
            if len(parts) == 4:
                facts.tpm_devices[parts[0]] = {"owner": parts[1], "group": parts[2], "mode": int(parts[3], 8)}
        elif tag == "@@MTIME":
            path, _, mtime = rest.rpartition(" ")
            facts.mtimes[path] = int(mtime)
    return facts


def gather(session, files: Iterable[str], init_scripts: Iterable[str] = ("docker",),
           packages: Iterable[str] = (), stat_files: Iterable[str] = APPLIED_CONFIGS) -> Facts:
    """Run the script on the device as root and parse it (`packages`: more package names whose
    state to read, beyond PACKAGES; `stat_files`: paths whose existence and mtime to read)."""
    result = session.run(build_script(files, init_scripts, stat_files=stat_files, packages=packages),
                         sudo=True, timeout=120)
    if result.rc != 0 or "@@ARCH" not in result.stdout:
        raise DeviceError(
            f"Could not read the state of {session.target.display} (exit {result.rc}): "
            f"{tail(result.stderr)}",
            "Check that the device runs a supported Linux (Debian-based with dpkg, or Red Hat Enterprise Linux with "
            "rpm) with /bin/sh and base64, then run again with --debug for details.")
    facts = parse(result.stdout)
    if facts.too_big:
        path, size = next(iter(facts.too_big.items()))
        raise DeviceError(
            f"{path} on {session.target.display} is {size:,} bytes, more than the {FILE_LIMIT // 2**20} MiB such a "
            "file can hold; it was not read.",
            "Check what wrote that file (it is not one a working device has at this size), move it away, and run "
            "again.")
    return facts
