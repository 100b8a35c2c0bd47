"""Device variants: named changes applied to a device's boot spec.

A device starts from the base spec (users, sshd, a fresh swtpm) built by
``devkit.rig_boot``; each variant is a function that edits that :class:`DeviceSpec` before the
device boots. Variants compose with ``+``: ``"mfg+notools"`` is a manufacturer-provisioned
TPM without tpm2-tools, ``"oldos+notpm"`` an old OS without TPM.

Adding a variant (later issues)::

    from devkit.variants import variant

    @variant("busybox", "no bash on the device")
    def _busybox(spec):
        spec.run("dpkg", "--remove", "--force-depends", "--force-remove-essential", "bash")

A spec offers ``write_file``, ``remove``, ``run`` (a command run inside the device, in its
chroot, before sshd starts), ``os_release``, the ``tpm`` mode (``"fresh"``, ``"mfg"`` or
``None``) and the ``userland`` (None: an overlay of the host's root; ``"bullseye"``,
``"trixie"``, ``"bookworm-arm64"``: a real Debian userland built by :mod:`devkit.userland`).
"""
import base64
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

TPM_FRESH = "fresh"
TPM_MFG = "mfg"


@dataclass
class DeviceSpec:
    """What a device's init does at boot; variants and services edit it."""

    name: str
    hostname: str
    address: str
    tpm: Optional[str] = TPM_FRESH
    files: Dict[str, dict] = field(default_factory=dict)
    dirs: List[dict] = field(default_factory=list)
    remove_globs: List[str] = field(default_factory=list)
    commands: List[List[str]] = field(default_factory=list)
    host_key_types: List[str] = field(default_factory=lambda: ["ed25519", "ecdsa"])
    notes: Dict[str, object] = field(default_factory=dict)
    userland: Optional[str] = None  # a devkit.userland release name; None: the host's root

    def write_file(self, path, content, mode=0o644, uid=0, gid=0):
        """Write ``content`` (str or bytes) at ``path`` inside the device (replaces links)."""
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        self.files[path] = {"path": path, "content": base64.b64encode(data).decode("ascii"),
                            "mode": mode, "uid": uid, "gid": gid}

    def make_dir(self, path, mode=0o755, uid=0, gid=0):
        """Create a directory inside the device."""
        self.dirs.append({"path": path, "mode": mode, "uid": uid, "gid": gid})

    def remove(self, pattern):
        """Remove files matching a glob inside the device."""
        self.remove_globs.append(pattern)

    def run(self, *argv):
        """Run a command inside the device at boot (argument list, no shell)."""
        self.commands.append([str(a) for a in argv])

    def os_release(self, text, debian_version=None):
        """Make the device report another OS (/etc/os-release and /usr/lib/os-release)."""
        self.write_file("/etc/os-release", text)
        self.write_file("/usr/lib/os-release", text)
        if debian_version is not None:
            self.write_file("/etc/debian_version", debian_version + "\n")


@dataclass(frozen=True)
class Variant:
    """A named edit of a device spec."""

    name: str
    description: str
    apply: Callable[[DeviceSpec], None]
    userland: Optional[str] = None  # the userland it sets (known before any device starts)


VARIANTS: Dict[str, Variant] = {}


def variant(name, description, userland=None):
    """Decorator registering ``func(spec)`` as variant ``name``. A variant that runs the device
    on another userland names it here too, so that it is built before devices start."""
    def register(func):
        VARIANTS[name] = Variant(name, description, func, userland)
        return func
    return register


def userlands(name):
    """The userlands a (possibly composed) variant runs on (the last one wins at boot)."""
    return [v.userland for v in resolve(name) if v.userland]


def resolve(name):
    """Variants of a possibly composed name (``"mfg+notools"``), in order."""
    parts = [p for p in name.split("+") if p]
    unknown = [p for p in parts if p not in VARIANTS]
    if not parts or unknown:
        raise ValueError("unknown device variant %r (known: %s; combine with '+')"
                         % (name, ", ".join(sorted(VARIANTS))))
    return [VARIANTS[p] for p in parts]


def apply(name, spec):
    """Apply a (possibly composed) variant to a spec."""
    for v in resolve(name):
        v.apply(spec)


@variant("fresh", "swtpm with no EK yet (like a TPM nobody provisioned)")
def _fresh(spec):
    spec.tpm = TPM_FRESH


@variant("mfg", "swtpm provisioned by swtpm_setup: EK at 0x81010001, EK cert in NV 0x01C00002")
def _mfg(spec):
    spec.tpm = TPM_MFG


@variant("notools", "tpm2-tools not installed (dpkg sees it as removed)")
def _notools(spec):
    if spec.notes.get("rhel"):
        raise ValueError("variant notools is not available on rhel devices (the rig's dnf "
                         "repositories have no tpm2-tools to install again)")
    spec.run("dpkg", "--remove", "--force-depends", "tpm2-tools")


@variant("notpm", "no TPM at all (no swtpm, no /dev/tpm*)")
def _notpm(spec):
    spec.tpm = None


RASPBIAN_STRETCH = """PRETTY_NAME="Raspbian GNU/Linux 9 (stretch)"
NAME="Raspbian GNU/Linux"
VERSION_ID="9"
VERSION="9 (stretch)"
VERSION_CODENAME=stretch
ID=raspbian
ID_LIKE=debian
HOME_URL="http://www.raspbian.org/"
SUPPORT_URL="http://www.raspbian.org/RaspbianForums"
BUG_REPORT_URL="http://www.raspbian.org/RaspbianBugs"
"""


@variant("oldos", "reports Raspbian GNU/Linux 9 (stretch), an OS IoT Edge does not support")
def _oldos(spec):
    spec.os_release(RASPBIAN_STRETCH, debian_version="9.13")


@variant("bullseye", "a real Debian 11 userland (debootstrap, cached): tpm2-tools 5.0, Python 3.9,"
         " OpenSSH 8.4", userland="bullseye")
def _bullseye(spec):
    spec.userland = "bullseye"


@variant("trixie", "a real Debian 13 userland (debootstrap, cached), outside IoT Edge's platform"
         " list: tpm2-tools 5.7, Python 3.13, OpenSSH 10", userland="trixie")
def _trixie(spec):
    spec.userland = "trixie"


@variant("arm64", "a real Debian 12 userland for arm64 (debootstrap --arch=arm64, cached), every "
         "program of which runs under qemu-user (devkit/binfmt.py): dpkg --print-architecture "
         "says arm64, uname -m aarch64", userland="bookworm-arm64")
def _arm64(spec):
    spec.userland = "bookworm-arm64"


PROXY_PORTS = (3128, 3129)  # devkit/proxy.py's open and authenticated proxies
FIREWALL_PATH = "/etc/devkit/proxied.nft"


def proxied_firewall(address, ports=PROXY_PORTS):
    """nft rules for a device at ``address`` whose only way out is the rig's proxies: loopback,
    replies on connections made to the device (SSH) and TCP to the host side of the bridge on
    the proxy ports; everything else it starts is rejected (EHOSTUNREACH: fails at once)."""
    host = address.rsplit(".", 1)[0] + ".1"
    return ("table inet devkit_proxied {\n"
            "  chain out {\n"
            "    type filter hook output priority 0; policy accept;\n"
            "    oif \"lo\" accept\n"
            "    ct state established,related accept\n"
            "    ip daddr %s tcp dport { %s } accept\n"
            "    reject with icmpx type admin-prohibited\n"
            "  }\n"
            "}\n" % (host, ", ".join(str(p) for p in ports)))


@variant("proxied", "no direct network access: only the rig's HTTP proxies (devkit/proxy.py, "
                    "host ports 3128/3129) are reachable (nftables in the device's namespace)")
def _proxied(spec):
    spec.notes["proxied"] = True
    spec.write_file(FIREWALL_PATH, proxied_firewall(spec.address), 0o600)
    spec.run("nft", "-f", FIREWALL_PATH)


RHEL_OS_RELEASE = """NAME="Red Hat Enterprise Linux"
VERSION="{version} ({codename})"
ID="rhel"
ID_LIKE="fedora"
VERSION_ID="{version}"
PLATFORM_ID="platform:el{major}"
PRETTY_NAME="Red Hat Enterprise Linux {version} ({codename})"
ANSI_COLOR="0;31"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:redhat:enterprise_linux:{major}::baseos"
HOME_URL="https://www.redhat.com/"
DOCUMENTATION_URL="https://access.redhat.com/documentation/en-us/red_hat_enterprise_linux/{major}"
BUG_REPORT_URL="https://issues.redhat.com/"
REDHAT_SUPPORT_PRODUCT="Red Hat Enterprise Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="{version}"
"""
RHEL_CODENAMES = {"9": "Plow", "8": "Ootpa"}
# RHEL's dnf defaults (/etc/dnf/dnf.conf of a RHEL 9 install); no repository until
# packages-microsoft-prod (or the product) adds one to /etc/yum.repos.d.
RHEL_DNF_CONF = """[main]
gpgcheck=1
installonly_limit=3
clean_requirements_on_remove=True
best=True
skip_if_unavailable=False
"""
RPM_SYSTEM_DIR = "/var/lib/devkit-rpm-system"
# What a Debian root has and RHEL has not: apt and dpkg with their state, Debian's markers.
DEBIAN_ONLY = ("/usr/bin/apt", "/usr/bin/apt-*", "/usr/bin/dpkg", "/usr/bin/dpkg-*",
               "/usr/sbin/dpkg-*", "/usr/lib/apt", "/usr/lib/dpkg", "/etc/apt", "/etc/dpkg",
               "/var/lib/apt", "/var/lib/dpkg", "/var/cache/apt", "/etc/debian_version",
               "/usr/bin/debconf*")
# RHEL trusts a CA put in /etc/pki/ca-trust/source/anchors once `update-ca-trust` ran; the
# stand-in feeds the anchors to Debian's machinery, kept out of PATH (a product path that
# calls update-ca-certificates on RHEL fails, as there).
UPDATE_CA_TRUST = """#!/bin/sh
# devkit stand-in of RHEL's update-ca-trust (ca-certificates, p11-kit): the anchors in
# /etc/pki/ca-trust/source/anchors and /usr/share/pki/ca-trust-source/anchors become trusted.
set -e
case "${1:-extract}" in extract) ;; *) echo "update-ca-trust: unknown command $1" >&2; exit 1;; esac
dir=/usr/local/share/ca-certificates/devkit-pki-anchors
rm -rf "$dir" && mkdir -p "$dir"
for f in /etc/pki/ca-trust/source/anchors/* /usr/share/pki/ca-trust-source/anchors/*; do
    [ -f "$f" ] && cp "$f" "$dir/$(basename "$f" | sed 's/[.][^.]*$//').crt"
done
exec /usr/lib/devkit-rhel/update-ca-certificates --fresh >/dev/null
"""


def rhel_userland(spec, major):
    """The host's Debian 12 root turned into a RHEL ``major`` system as the product sees it:
    RHEL's os-release, apt and dpkg gone (a path that still calls them fails: "command not
    found"), and the real dnf 4 and rpm 4 (Debian's builds) with an rpm database at
    /var/lib/rpm that holds redhat-release, tpm2-tools and the base system (header-only
    packages: the files are the root's own), so that dnf resolves the stand-ins' Requires."""
    from devkit.packages import rpms  # pylint: disable=import-outside-toplevel
    info = rpms.EL_RELEASES[major]
    version = info["os_version"]
    for pattern in DEBIAN_ONLY:
        spec.remove(pattern)
    spec.os_release(RHEL_OS_RELEASE.format(version=version, major=major,
                                           codename=RHEL_CODENAMES[major]))
    release = "Red Hat Enterprise Linux release %s (%s)\n" % (version, RHEL_CODENAMES[major])
    for path in ("/etc/redhat-release", "/etc/system-release"):
        spec.write_file(path, release)
    # Debian's rpm keeps its database in ~/.rpmdb; RHEL's (and dnf's) is /var/lib/rpm.
    spec.write_file("/etc/rpm/macros.dbpath", "%_dbpath /var/lib/rpm\n")
    spec.write_file("/etc/dnf/dnf.conf", RHEL_DNF_CONF)
    spec.make_dir("/etc/yum.repos.d")
    spec.make_dir("/etc/pki/ca-trust/source/anchors")
    spec.make_dir("/usr/lib/devkit-rhel")
    spec.run("mv", "/usr/sbin/update-ca-certificates", "/usr/lib/devkit-rhel/")
    spec.write_file("/usr/bin/update-ca-trust", UPDATE_CA_TRUST, 0o755)
    for name, data in rpms.system_rpm_files(major).items():
        spec.write_file("%s/%s" % (RPM_SYSTEM_DIR, name), data)
    # Debian's rpm complains on stderr when it installs or erases ("RPM should not be used
    # directly install RPM packages, use Alien instead!") unless given --force-debian; RHEL's
    # never does: /usr/bin/rpm passes it (dnf uses librpm, which never complains).
    spec.write_file("/usr/lib/devkit-rhel/rpm.wrapper",
                    "#!/bin/sh\n# devkit: Debian's rpm without its Debian-only warning\n"
                    'for a in "$@"; do case "$a" in -[iUFe]*|--install|--upgrade|--freshen|'
                    '--erase|--reinstall) exec /usr/lib/devkit-rhel/rpm --force-debian "$@";; '
                    'esac; done\nexec /usr/lib/devkit-rhel/rpm "$@"\n', 0o755)
    spec.run("sh", "-c", "mv /usr/bin/rpm /usr/lib/devkit-rhel/rpm && "
             "mv /usr/lib/devkit-rhel/rpm.wrapper /usr/bin/rpm")
    spec.run("rpm", "--initdb")
    spec.run("sh", "-c", "rpm -i --justdb --nodeps --noscripts --notriggers %s/*.rpm"
             % RPM_SYSTEM_DIR)
    spec.notes["rhel"] = version


@variant("rhel9", "Red Hat Enterprise Linux 9.4 as the product sees it: RHEL's os-release, dnf 4 "
                  "and rpm 4 with an rpm database (redhat-release, tpm2-tools), no apt or dpkg")
def _rhel9(spec):
    rhel_userland(spec, "9")


@variant("rhel8", "Red Hat Enterprise Linux 8.10 as the product sees it (as rhel9, el8 packages)")
def _rhel8(spec):
    rhel_userland(spec, "8")
