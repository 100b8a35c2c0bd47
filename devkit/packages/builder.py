"""Build the stand-in .deb packages and the flat apt repository that holds them.

``build_repo(out_dir)`` (in repo.py, with the RPMs of rpms.py) lays out::

    out_dir/pool/*.deb          every package (stand-ins, and Debian's tpm2-tools + libtss2-*)
    out_dir/Packages(.gz)       flat index (dpkg-scanpackages --multiversion)
    out_dir/debs/<edge_ver>/    hard links of one consistent set for offline installs
    out_dir/manifest.json       cache key, versions, package files

It is cached: a rebuild happens only when the stand-in sources, this builder, the
interpreter or the devkit checkout path change (the packages embed the last two).
packages-microsoft-prod is not built here: its apt line names the server's address, so
``AptRepo`` builds it when it starts serving (``build_config_package``).
"""
import collections
import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME = os.path.join(HERE, "runtime")
FILES = os.path.join(RUNTIME, "files")
DEVKIT_ROOT = os.path.dirname(os.path.dirname(HERE))


class Release(collections.namedtuple("Release", "edge identity")):
    """One aziot-edge version and the one aziot-identity-service version it depends on with
    `=`: the two numbers may differ, as in the real packages (edgelet/contrib/debian/control of
    Azure/iotedge at tags 1.5.9 and 1.5.10: `aziot-identity-service (= 1.5.2-1)`, `(= 1.5.3-1)`;
    on main, the 1.6 line: `(= 1.6.0-1)`; the RPM spec edgelet/contrib/enterprise-linux/
    aziot-edge.spec names the same version with `%{?dist}`)."""

    @property
    def line(self):
        """The LTS line, major.minor ("1.6")."""
        return ".".join(self.edge.split(".")[:2])

    @property
    def upstream(self):
        """The version without the package revision ("1.6.0")."""
        return self.edge.rsplit("-", 1)[0]


# Served versions, oldest first (the last is the latest). A new release line is one more row;
# every row gets its own offline sets debs/<edge>/ and rpms/<el>/<edge>/. 1.6.1 changed only
# the container images: the daemon packages of the 1.6 line stay at 1.6.0.
RELEASES = (Release("1.5.9-1", "1.5.2-1"), Release("1.5.10-1", "1.5.3-1"),
            Release("1.6.0-1", "1.6.0-1"))
EDGE_VERSIONS = tuple(r.edge for r in RELEASES)
IDENTITY_VERSIONS = tuple(dict.fromkeys(r.identity for r in RELEASES))
MOBY_VERSION = "25.0.5-1"
SHIM_VERSION = "1.0-1"
CONFIG_PKG_VERSION = "1.1-debian12"
IDENTITY_UNITS = ("aziot-keyd", "aziot-certd", "aziot-identityd", "aziot-tpmd")
SERVICE_DIRS = {"aziot-keyd": ("keyd", "aziotks"), "aziot-certd": ("certd", "aziotcs"),
                "aziot-identityd": ("identityd", "aziotid"), "aziot-tpmd": ("tpmd", "aziottpm")}
# Debian's tpm2-tools and the libraries it pulls that a minimal device may lack. The
# base libraries (libc6, libssl3, libcurl*, libjson-c5) are assumed present.
TPM2_TOOLS_DEBS = ("tpm2-tools", "libtss2-esys-3.0.2-0", "libtss2-fapi1", "libtss2-mu0",
                   "libtss2-rc0", "libtss2-sys1", "libtss2-tctildr0", "libtss2-tcti-cmd0",
                   "libtss2-tcti-device0", "libtss2-tcti-mssim0", "libtss2-tcti-swtpm0",
                   "tpm-udev")
MAINTAINER = "az edge-tpm devkit <devkit@localhost>"
# Microsoft builds aziot-edge, aziot-identity-service and moby-engine per architecture
# (Azure/iotedge builds/misc/templates/build-packages.yaml: amd64, arm64 and armhf for Debian 12
# and Ubuntu), so the stand-ins are too: the same scripts under each Architecture, so that apt
# (and the product's offline selection) must pick the device's own. The shim and the config
# package are the kit's or arch-independent ("all").
DEB_ARCHS = ("amd64", "arm64", "armhf")


class BuildError(RuntimeError):
    """A package or the index could not be built."""


def _run(argv, cwd=None):
    """Run a build tool; raise BuildError with its output on failure."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError("%s failed (%d): %s%s" % (" ".join(argv), proc.returncode,
                                                    proc.stdout, proc.stderr))
    return proc.stdout


def _read(name):
    """A file of runtime/files."""
    with open(os.path.join(FILES, name), "r", encoding="utf-8") as f:
        return f.read()


# --------------------------------------------------------------------------------------
# One package


class Package:
    """A .deb under construction: control fields, files, maintainer scripts."""

    def __init__(self, name, version, description, depends=(), section="misc", arch="all"):
        self.name, self.version, self.arch = name, version, arch
        self.fields = {"Package": name, "Version": version, "Architecture": arch,
                       "Maintainer": MAINTAINER, "Section": section, "Priority": "optional"}
        if depends:
            self.fields["Depends"] = ", ".join(depends)
        self.description = description
        self.files = {}     # path -> (bytes, mode)
        self.dirs = []      # extra empty directories
        self.scripts = {}   # postinst/prerm/postrm -> text

    def add(self, path, content, mode=0o644):
        """Ship ``content`` (str or bytes) at absolute ``path``."""
        data = content.encode() if isinstance(content, str) else content
        self.files[path] = (data, mode)

    def build(self, out_dir):
        """Write ``<name>_<version>_<arch>.deb`` into ``out_dir``; return its path."""
        with tempfile.TemporaryDirectory(prefix="devkit-deb-") as root:
            for path, (data, mode) in self.files.items():
                dest = os.path.join(root, path.lstrip("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(data)
                os.chmod(dest, mode)
            for d in self.dirs:
                os.makedirs(os.path.join(root, d.lstrip("/")), exist_ok=True)
            debian = os.path.join(root, "DEBIAN")
            os.makedirs(debian)
            control = "".join("%s: %s\n" % kv for kv in self.fields.items())
            summary, _, body = self.description.partition("\n")
            control += "Description: %s\n" % summary
            for line in body.strip().splitlines():
                control += " %s\n" % (line if line.strip() else ".")
            with open(os.path.join(debian, "control"), "w", encoding="utf-8") as f:
                f.write(control)
            for name, text in self.scripts.items():
                script = os.path.join(debian, name)
                with open(script, "w", encoding="utf-8") as f:
                    f.write("#!/bin/sh\nset -e\n" + text)
                os.chmod(script, 0o755)
            for dirpath, dirnames, _files in os.walk(root):
                for d in dirnames:
                    os.chmod(os.path.join(dirpath, d), 0o755)
            target = os.path.join(out_dir, "%s_%s_%s.deb" % (self.name, self.version, self.arch))
            _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, target])
        return target


# --------------------------------------------------------------------------------------
# The stand-ins


def shim_package():
    """devkit-systemctl-shim: systemctl for devices without systemd."""
    pkg = Package("devkit-systemctl-shim", SHIM_VERSION,
                  "systemctl stand-in for devkit devices without systemd\n"
                  "Links /usr/local/sbin/systemctl to a shell script that serves units\n"
                  "from their /etc/init.d scripts, only when the system was not booted\n"
                  "with systemd (no /run/systemd/system) and nothing is there yet.",
                  section="admin")
    pkg.add("/usr/lib/devkit-systemctl-shim/systemctl", _read("systemctl"), 0o755)
    pkg.scripts["postinst"] = (
        'if [ "$1" = configure ] && [ ! -d /run/systemd/system ] '
        '&& [ ! -e /usr/local/sbin/systemctl ]; then\n'
        "    mkdir -p /usr/local/sbin\n"
        "    ln -s /usr/lib/devkit-systemctl-shim/systemctl /usr/local/sbin/systemctl\n"
        "fi\n")
    pkg.scripts["postrm"] = (
        'if [ "$1" = remove ] || [ "$1" = purge ]; then\n'
        '    if [ "$(readlink /usr/local/sbin/systemctl 2>/dev/null)" = '
        '"/usr/lib/devkit-systemctl-shim/systemctl" ]; then\n'
        "        rm -f /usr/local/sbin/systemctl\n"
        "    fi\n"
        "fi\n")
    return pkg


def moby_package(arch):
    """moby-engine for ``arch``: dockerd + docker stand-ins and the docker init script."""
    pkg = Package("moby-engine", MOBY_VERSION,
                  "Moby container engine (devkit stand-in)\n"
                  "A dockerd that validates /etc/docker/daemon.json and answers a small\n"
                  "part of the Engine API on /var/run/docker.sock; no containers run.",
                  depends=("devkit-systemctl-shim", "python3"), section="admin", arch=arch)
    pkg.add("/usr/bin/dockerd", _read("dockerd").replace("@MOBY_VERSION@", MOBY_VERSION),
            0o755)
    pkg.add("/usr/bin/docker", _read("docker"), 0o755)
    pkg.add("/etc/init.d/docker", _read("docker.init"), 0o755)
    pkg.dirs.append("/etc/docker")
    pkg.scripts["postinst"] = (
        'if [ "$1" = configure ]; then\n'
        "    getent group docker >/dev/null || groupadd --system docker\n"
        "    if [ ! -d /run/systemd/system ]; then /etc/init.d/docker restart || true; fi\n"
        "fi\n")
    pkg.scripts["prerm"] = "/etc/init.d/docker stop || true\n"
    return pkg


def _tomlkit_dir():
    """The installed tomlkit package (pure Python) that the stand-in uses where the device's
    Python has no tomllib (< 3.11, e.g. Debian 11's 3.9)."""
    import tomlkit  # pylint: disable=import-outside-toplevel
    return os.path.dirname(os.path.abspath(tomlkit.__file__))


def _standin_tree(pkg):
    """The aziot_standin Python package (shipped by aziot-identity-service), with tomlkit in
    compat/ for device Pythons without tomllib."""
    for path in sorted(glob.glob(os.path.join(RUNTIME, "aziot_standin", "*.py"))):
        with open(path, "r", encoding="utf-8") as f:
            pkg.add("/usr/lib/aziot-standin/aziot_standin/" + os.path.basename(path), f.read())
    for path in sorted(glob.glob(os.path.join(_tomlkit_dir(), "*.py"))):
        with open(path, "r", encoding="utf-8") as f:
            pkg.add("/usr/lib/aziot-standin/compat/tomlkit/" + os.path.basename(path), f.read())
    with open(os.path.join(RUNTIME, "run.py"), "r", encoding="utf-8") as f:
        pkg.add("/usr/lib/aziot-standin/run.py", f.read())


def identity_package(version, python, devkit_root, arch):
    """aziot-identity-service for ``arch``: service users, /etc/aziot dirs, keyd/certd/identityd/
    tpmd."""
    pkg = Package("aziot-identity-service", version,
                  "Azure IoT Identity Service (devkit stand-in)\n"
                  "Creates the aziotks, aziotcs, aziotid and aziottpm service users and\n"
                  "provisions through the device TPM with the devkit DPS emulator.",
                  depends=("devkit-systemctl-shim", "python3"), section="admin", arch=arch)
    _standin_tree(pkg)
    pkg.add("/usr/lib/aziot-standin/python", _read("python.in").replace("@PYTHON@", python),
            0o755)
    pkg.add("/usr/lib/aziot-standin/identity.json",
            json.dumps({"identity_version": version.rsplit("-", 1)[0], "python": python,
                        "devkit_root": devkit_root}, indent=1) + "\n")
    for unit in IDENTITY_UNITS:
        pkg.add("/etc/init.d/" + unit, _read("aziot.init.in").replace("@UNIT@", unit), 0o755)
    for short, _user in SERVICE_DIRS.values():
        pkg.dirs += ["/etc/aziot/%s/config.d" % short, "/var/lib/aziot/%s" % short]
    pkg.dirs += ["/var/lib/aziot/standin", "/var/log/aziot"]
    lines = ['if [ "$1" = configure ]; then\n']
    for short, user in SERVICE_DIRS.values():
        lines.append('    getent group %s >/dev/null || groupadd --system %s\n' % (user, user))
        lines.append('    id -u %s >/dev/null 2>&1 || useradd --system -g %s -d /var/lib/aziot/%s '
                     '-s /usr/sbin/nologin -c "Azure IoT %s" %s\n' % (user, user, short, short,
                                                                        user))
    lines += ["    usermod -aG aziotks aziotcs\n",
              "    usermod -aG aziotcs,aziotks,aziottpm aziotid\n",
              "    getent group tss >/dev/null && usermod -aG tss aziottpm || true\n"]
    for short, user in SERVICE_DIRS.values():
        lines.append("    chown -R %s:%s /etc/aziot/%s /var/lib/aziot/%s\n"
                     % (user, user, short, short))
        lines.append("    chmod 0700 /var/lib/aziot/%s\n" % short)
    lines.append("fi\n")
    pkg.scripts["postinst"] = "".join(lines)
    # As the real package: services stopped before removal. A purge removes ALL of /etc/aziot
    # and /var/lib/aziot, whatever else is in them (backups included), and the service users
    # (iot-identity-service contrib/debian/postrm, purge). The key in the TPM is not the package's.
    units = " ".join(u for u in reversed(IDENTITY_UNITS))
    pkg.scripts["prerm"] = (
        'if [ "$1" = remove ] || [ "$1" = deconfigure ]; then\n'
        "    for unit in %s; do /etc/init.d/$unit stop >/dev/null 2>&1 || true; done\n"
        "fi\n" % units)
    users = " ".join(user for _short, user in SERVICE_DIRS.values())
    pkg.scripts["postrm"] = (
        'if [ "$1" = purge ]; then\n'
        "    rm -rf /etc/aziot\n"
        "    rm -rf /var/lib/aziot\n"
        "    for u in %s; do userdel $u >/dev/null 2>&1 || true; "
        "groupdel $u >/dev/null 2>&1 || true; done\n"
        "fi\n" % users)
    return pkg


def agent_image(release):
    """The edgeAgent image a line's aziot-edged uses without an [agent] table, and its template
    shows (Azure/iotedge edgelet/contrib/config/linux/template.toml and
    edgelet/iotedge/src/config/super_config.rs: `azureiotedge-agent:1.5` on release/1.5,
    `:1.6` on main)."""
    return "mcr.microsoft.com/azureiotedge-agent:%s" % release.line


def edge_json(release):
    """Build info the stand-in iotedge reads (`iotedge version`, the default agent image)."""
    return json.dumps({"edge_version": release.upstream, "agent_image": agent_image(release)},
                      indent=1) + "\n"


def edge_template(release):
    """/etc/aziot/config.toml.edge.template of a release."""
    return (_read("config.toml.edge.template").replace("@EDGE_VERSION@", release.upstream)
            .replace("@AGENT_IMAGE@", agent_image(release)))


def edge_package(release, arch):
    """aziot-edge for ``arch``: the iotedge stand-in, the config template, the iotedge user.

    Its dependencies are the real package's (edgelet/contrib/debian/control on release/1.5):
    one exact aziot-identity-service, and NO container engine; instead its preinst refuses to
    install when the `docker` group does not exist yet (edgelet/contrib/debian/preinst,
    check_runtime), so the engine must be installed (and configured: moby-engine's postinst
    creates the group) in an earlier apt transaction. The shim is the kit's own."""
    version = release.edge
    upstream = release.upstream
    pkg = Package("aziot-edge", version,
                  "Azure IoT Edge runtime (devkit stand-in)\n"
                  "Ships /usr/bin/iotedge (config apply, system status/logs, list, check,\n"
                  "version) and /etc/aziot/config.toml.edge.template.",
                  depends=("aziot-identity-service (= %s)" % release.identity,
                           "devkit-systemctl-shim"), section="admin", arch=arch)
    # As edgelet/contrib/debian/preinst: check_runtime on install|upgrade, same message, exit 1.
    banner = "!" * 79
    pkg.scripts["preinst"] = (
        'case "$1" in\n'
        "    install|upgrade)\n"
        "        if ! getent group docker >/dev/null; then\n"
        '            echo "%s"\n'
        '            echo ""\n'
        '            echo " ERROR: No container runtime detected."\n'
        '            echo ""\n'
        '            echo " Please install a container runtime and run this install again."\n'
        '            echo ""\n'
        '            echo "%s"\n'
        "            exit 1\n"
        "        fi\n"
        "        ;;\n"
        "esac\n" % (banner, banner))
    pkg.add("/usr/bin/iotedge", _read("iotedge"), 0o755)
    pkg.add("/usr/lib/aziot-standin/edge.json", edge_json(release))
    pkg.add("/etc/aziot/config.toml.edge.template", edge_template(release), 0o644)
    pkg.add("/etc/init.d/aziot-edged", _read("aziot.init.in").replace("@UNIT@", "aziot-edged"),
            0o755)
    pkg.dirs += ["/etc/aziot/edged/config.d", "/var/lib/aziot/edged"]
    pkg.scripts["postinst"] = (
        'if [ "$1" = configure ]; then\n'
        "    getent group iotedge >/dev/null || groupadd --system iotedge\n"
        "    id -u iotedge >/dev/null 2>&1 || useradd --system -g iotedge "
        '-d /var/lib/aziot/edged -s /usr/sbin/nologin -c "Azure IoT Edge" iotedge\n'
        "    for g in aziotcs aziotks aziotid docker systemd-journal; do\n"
        '        getent group "$g" >/dev/null && usermod -aG "$g" iotedge || true\n'
        "    done\n"
        "    chown -R iotedge:iotedge /etc/aziot/edged /var/lib/aziot/edged\n"
        "fi\n")
    pkg.scripts["prerm"] = (
        'if [ "$1" = remove ] || [ "$1" = deconfigure ]; then\n'
        "    /etc/init.d/aziot-edged stop >/dev/null 2>&1 || true\n"
        "fi\n")
    # As the real package's purge (edgelet/contrib/debian/postrm): edged's config and state, the
    # super config, /var/log/aziot, the user; /var/lib/aziot when nothing else is left in it.
    pkg.scripts["postrm"] = (
        'if [ "$1" = purge ]; then\n'
        "    if [ -d /etc/aziot ]; then rm -rf /etc/aziot/edged; rm -f /etc/aziot/config.toml; fi\n"
        "    rm -rf /var/log/aziot\n"
        "    userdel iotedge >/dev/null 2>&1 || true\n"
        "    groupdel iotedge >/dev/null 2>&1 || true\n"
        "    rm -rf /var/lib/aziot/edged\n"
        '    if [ -d /var/lib/aziot ] && [ -z "$(ls -A /var/lib/aziot)" ]; then rm -rf /var/lib/aziot; fi\n'
        "fi\n")
    return pkg


def build_config_package(apt_line, out_dir, version=CONFIG_PKG_VERSION):
    """packages-microsoft-prod pointing apt at ``apt_line``; return the .deb path."""
    pkg = Package("packages-microsoft-prod", version,
                  "Package repository configuration (devkit stand-in)\n"
                  "Writes /etc/apt/sources.list.d/microsoft-prod.list for the devkit's\n"
                  "local repository instead of packages.microsoft.com.")
    pkg.add("/etc/apt/sources.list.d/microsoft-prod.list",
            "# devkit stand-in of packages.microsoft.com\n%s\n" % apt_line)
    return pkg.build(out_dir)


# --------------------------------------------------------------------------------------
# Debian's own tpm2-tools


def _installed_version(name):
    """The installed version of a Debian package on the host, or None."""
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def fetch_debian_debs(dest, cache_dir):
    """Put tpm2-tools and its libtss2 deps in ``dest``: from apt's cache, else apt-get download.

    Returns the list of file names; raises BuildError when tpm2-tools cannot be had.
    """
    os.makedirs(cache_dir, exist_ok=True)
    names = []
    for name in TPM2_TOOLS_DEBS:
        version = _installed_version(name)
        epochless = version.split(":", 1)[-1] if version else "*"
        pattern = "%s_%s_*.deb" % (name, epochless)
        found = (glob.glob(os.path.join("/var/cache/apt/archives", pattern))
                 + glob.glob(os.path.join(cache_dir, pattern)))
        if not found:
            spec = "%s=%s" % (name, version) if version else name
            proc = subprocess.run(["apt-get", "download", "-q", spec], cwd=cache_dir,
                                  capture_output=True, text=True, check=False)
            found = glob.glob(os.path.join(cache_dir, pattern))
            if not found:
                if name == "tpm2-tools":
                    raise BuildError("cannot get tpm2-tools .deb: %s" % proc.stderr.strip())
                continue
        src = sorted(found)[-1]
        shutil.copy2(src, os.path.join(dest, os.path.basename(src)))
        names.append(os.path.basename(src))
    return names


# --------------------------------------------------------------------------------------
# The repository


def scan(repo_dir):
    """(Re)write Packages and Packages.gz for ``repo_dir``/pool."""
    write_index(repo_dir, _run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"],
                               cwd=repo_dir))


def write_index(repo_dir, index):
    """Write ``index`` (the text of a Packages file) as Packages and Packages.gz."""
    tmp = os.path.join(repo_dir, "Packages.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(index)
    with open(tmp, "rb") as src, gzip.open(tmp + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(tmp + ".gz", os.path.join(repo_dir, "Packages.gz"))
    os.replace(tmp, os.path.join(repo_dir, "Packages"))


def index_stanzas(index):
    """{file name in pool/: stanza} of a Packages text (dpkg-scanpackages writes one stanza per
    file, ending with a blank line)."""
    out = {}
    for stanza in index.split("\n\n"):
        for line in stanza.splitlines():
            if line.startswith("Filename: pool/"):
                out[line[len("Filename: pool/"):]] = stanza.strip("\n") + "\n\n"
    return out


def deb_stanza(path):
    """The Packages stanza of one .deb in pool/, as dpkg-scanpackages writes it (the index of a
    served tree is the cached one plus this, not a second scan: dpkg-scanpackages takes seconds)."""
    with open(path, "rb") as f:
        data = f.read()
    control = _run(["dpkg-deb", "-f", path]).rstrip("\n")
    head, sep, rest = control.partition("\nDescription:")
    fields = head.splitlines()
    late = [f for f in fields if f.startswith(("Section:", "Priority:"))]  # after the sums
    fields = [f for f in fields if f not in late] + [
        "Filename: pool/" + os.path.basename(path), "Size: %d" % len(data),
        "MD5sum: " + hashlib.md5(data).hexdigest(),  # noqa: S324 - apt's index field
        "SHA1: " + hashlib.sha1(data).hexdigest(),  # noqa: S324 - apt's index field
        "SHA256: " + hashlib.sha256(data).hexdigest()] + late
    return "\n".join(fields) + sep + rest + "\n\n"


def _link(src, dest):
    """Hard link (same file system) or copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
