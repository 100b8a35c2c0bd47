"""Stand-in RPMs of the IoT Edge packages and their dnf repositories (Red Hat Enterprise Linux).

``build_rpm_repos(out_dir, debs)`` lays out, for each RHEL release in :data:`EL_RELEASES`::

    out_dir/rhel/<v>/prod/*.rpm        moby-engine, moby-cli, aziot-identity-service and
                                       aziot-edge of every line, devkit-systemctl-shim
    out_dir/rhel/<v>/prod/repodata/    createrepo_c's index (what dnf reads)
    out_dir/rhel/<v>/untrusted/        the same RPMs signed by another key (a mirror that
                                       was tampered with: dnf must refuse them)
    out_dir/rhel/<v>/system/*.rpm      what the rhel<v> device's rpm database holds at boot
                                       (redhat-release, tpm2-tools, the base system; payloads
                                       empty: the files are the device's own)
    out_dir/rpms/el<v>/<edge>/         hard links of one consistent offline set per release
    out_dir/keys/microsoft.asc         the kit's signing key (public), served where
                                       packages.microsoft.com serves Microsoft's

The payloads are the .debs' (the same stand-in runtime, one source), built with rpmbuild;
the scriptlets do what the real spec files do (Azure/iotedge
``edgelet/contrib/enterprise-linux/aziot-edge.spec``, Azure/iot-identity-service
``contrib/enterprise-linux/aziot-identity-service.spec.in``). ``build_config_rpm`` makes
packages-microsoft-prod.rpm for a served address (``AptRepo`` calls it at start).

The repository RPMs are signed (``rpmsign --addsign``) with a kit key made by gnupg at build
time, as packages.microsoft.com signs its RPMs with Microsoft's key: dnf checks them against the
``gpgkey=`` of the repository's file (``gpgcheck=1``). The key is Ed25519 (Microsoft's is RSA;
rpm 4.18 checks both) and lives only for the build: its public half is kept.
"""
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

from . import builder

# RHEL releases served (Azure/iotedge builds/misc/templates/build-packages.yaml: redhat8 and
# redhat9, amd64) and what their devices' rpm database holds: the rhel9 variant says 9.4.
EL_RELEASES = {"9": {"dist": ".el9", "os_version": "9.4", "tpm2_tools": "5.2-3.el9"},
               "8": {"dist": ".el8", "os_version": "8.10", "tpm2_tools": "5.2-1.el8"}}
CONFIG_RPM_VERSION = ("1.0", "1")
# What the stand-ins require from the system (python3 for the stand-in runtime, shadow-utils
# for the scriptlets' useradd, /bin/sh for the scriptlets) and what a RHEL device has anyway.
BASE_PROVIDES = ("bash", "/bin/sh", "/bin/bash", "coreutils", "glibc", "shadow-utils",
                 "python3", "/usr/bin/python3", "openssh-server", "sudo", "ca-certificates",
                 "procps-ng", "util-linux", "findutils", "grep", "sed", "tar", "gzip",
                 "curl", "dnf", "rpm")


def rpm_arch():
    """The architecture rpm builds for on this machine (x86_64 here, as Microsoft's RPMs)."""
    return builder._run(["rpm", "--eval", "%{_arch}"]).strip()


class RpmPackage:
    """An RPM under construction: header fields, files, directories, scriptlets."""

    def __init__(self, name, version, release, summary, requires=(), provides=(), arch=None):
        self.name, self.version, self.release = name, version, release
        self.summary, self.requires, self.provides = summary, list(requires), list(provides)
        self.arch = arch or rpm_arch()
        self.files = {}     # path -> (bytes, mode)
        self.dirs = []      # directories owned by the package
        self.scripts = {}   # pre/post/preun/postun -> shell text

    @classmethod
    def like(cls, deb, release, summary, requires, only=None):
        """The payload of a builder.Package (``only``: a predicate on paths) as an RPM."""
        version, _, _revision = deb.version.rpartition("-")
        pkg = cls(deb.name, version, release, summary, requires)
        pkg.files = {p: v for p, v in deb.files.items() if only is None or only(p)}
        pkg.dirs = [d for d in deb.dirs if only is None or only(d)]
        return pkg

    @property
    def file_name(self):
        """name-version-release.arch.rpm"""
        return "%s-%s-%s.%s.rpm" % (self.name, self.version, self.release, self.arch)

    def _preamble(self):
        """This package's part of a spec: a subpackage with its own version and release."""
        lines = ["", "%%package -n %s" % self.name, "Version: %s" % self.version,
                 "Release: %s" % self.release, "Summary: %s" % self.summary]
        lines += ["Requires: %s" % r for r in self.requires]
        lines += ["Provides: %s" % p for p in self.provides]
        lines += ["%%description -n %s" % self.name, self.summary + " (devkit stand-in)"]
        for name in ("pre", "post", "preun", "postun"):
            if name in self.scripts:
                lines += ["%%%s -n %s" % (name, self.name), self.scripts[name].rstrip("\n")]
        lines += ["%%files -n %s" % self.name, "%defattr(-,root,root,-)"]
        lines += ["%dir " + d for d in self.dirs] + sorted(self.files)
        return lines

    def build(self, out_dir):
        """rpmbuild the package into ``out_dir``; return its path."""
        return build_rpms([self], out_dir)[0]


# rpmbuild costs about half a second per run on a loaded machine, whatever it builds: one run
# builds many packages, as subpackages of one spec (each with its own version and release).
RPMBUILD_DEFINES = ("__os_install_post %{nil}", "__check_files %{nil}",
                    "_build_id_links none", "_binary_payload w2.gzdio",
                    "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm")


def build_rpms(pkgs, out_dir):
    """Build ``pkgs`` (distinct names and paths, one architecture) with one rpmbuild run into
    ``out_dir``; return their paths in order."""
    arch = pkgs[0].arch
    with tempfile.TemporaryDirectory(prefix="devkit-rpm-") as top:
        root = os.path.join(top, "SOURCES", "root")
        os.makedirs(root)
        spec = ["Name: devkit-standins", "Version: 1", "Release: 1", "Summary: devkit",
                "License: MIT", "BuildArch: %s" % arch, "AutoReqProv: no",
                "%description", "devkit stand-ins", "%install",
                "cp -a %{_sourcedir}/root/. %{buildroot}/"]
        for pkg in pkgs:
            for path, (data, mode) in pkg.files.items():
                dest = os.path.join(root, path.lstrip("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with open(dest, "wb") as f:
                    f.write(data)
                os.chmod(dest, mode)
            for d in pkg.dirs:
                os.makedirs(os.path.join(root, d.lstrip("/")), exist_ok=True)
            spec += pkg._preamble()
        path = os.path.join(top, "standins.spec")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(spec) + "\n")
        argv = ["rpmbuild", "-bb", "--quiet", "--define", "_topdir " + top,
                "--define", "_rpmdir " + out_dir]
        for define in RPMBUILD_DEFINES:
            argv += ["--define", define]
        builder._run(argv + [path])
    return [os.path.join(out_dir, p.file_name) for p in pkgs]


def _users_pre(users):
    """%pre lines creating groups and system users, as the real specs' %pre."""
    out = []
    for user, home, comment in users:
        out.append("getent group %s >/dev/null || groupadd -r %s\n" % (user, user))
        out.append("getent passwd %s >/dev/null || useradd -r -g %s -c '%s' -s /sbin/nologin "
                   "-d %s %s\n" % (user, user, comment, home, user))
    return "".join(out)


def standins(el, python, devkit_root):
    """The stand-in RPMs of RHEL release ``el`` (a key of EL_RELEASES), in install order."""
    dist = EL_RELEASES[el]["dist"]
    rel = "1" + dist
    shim = RpmPackage.like(builder.shim_package(), rel, "systemctl stand-in", ())
    shim.scripts["post"] = (
        "if [ ! -d /run/systemd/system ] && [ ! -e /usr/local/sbin/systemctl ]; then\n"
        "    mkdir -p /usr/local/sbin\n"
        "    ln -s /usr/lib/devkit-systemctl-shim/systemctl /usr/local/sbin/systemctl\n"
        "fi\n")
    shim.scripts["postun"] = (
        'if [ "$1" -eq 0 ] && [ "$(readlink /usr/local/sbin/systemctl 2>/dev/null)" = '
        '"/usr/lib/devkit-systemctl-shim/systemctl" ]; then rm -f /usr/local/sbin/systemctl; fi\n')
    moby = builder.moby_package("amd64")  # the RPMs are x86_64 (this machine's)
    # Microsoft's RHEL repository ships the CLI as its own package, moby-cli.
    engine = RpmPackage.like(moby, rel, "Moby container engine", ("devkit-systemctl-shim",
                                                                  "python3"),
                             only=lambda p: p != "/usr/bin/docker")
    engine.scripts["post"] = (
        "getent group docker >/dev/null || groupadd -r docker\n"
        "if [ ! -d /run/systemd/system ]; then /etc/init.d/docker restart >/dev/null 2>&1 || true; fi\n")
    engine.scripts["preun"] = 'if [ "$1" -eq 0 ]; then /etc/init.d/docker stop >/dev/null 2>&1 || true; fi\n'
    cli = RpmPackage.like(moby, rel, "Moby container engine CLI", ("python3",),
                          only=lambda p: p == "/usr/bin/docker")
    cli.name = "moby-cli"
    out = [shim, engine, cli]
    for identity in builder.IDENTITY_VERSIONS:
        pkg = RpmPackage.like(builder.identity_package(identity, python, devkit_root, "amd64"), rel,
                              "Azure IoT Identity Service", ("devkit-systemctl-shim", "python3"))
        pkg.requires.append("shadow-utils")
        # As the real spec's %pre: the service users and their groups before the files land.
        pkg.scripts["pre"] = _users_pre(
            [(user, "/var/lib/aziot/" + short, "%s user" % unit)
             for unit, (short, user) in builder.SERVICE_DIRS.items()]) + (
            "usermod -aG aziotks aziotcs\n"
            "usermod -aG aziotcs,aziotks,aziottpm aziotid\n"
            "getent group tss >/dev/null && usermod -aG tss aziottpm || true\n")
        pkg.scripts["post"] = "".join(
            "chown -R %s:%s /etc/aziot/%s /var/lib/aziot/%s\nchmod 0700 /var/lib/aziot/%s\n"
            % (user, user, short, short, short) for short, user in builder.SERVICE_DIRS.values())
        units = " ".join(reversed(builder.IDENTITY_UNITS))
        pkg.scripts["preun"] = ('if [ "$1" -eq 0 ]; then for unit in %s; do '
                                '/etc/init.d/$unit stop >/dev/null 2>&1 || true; done; fi\n' % units)
        out.append(pkg)
    for release in builder.RELEASES:
        pkg = RpmPackage.like(builder.edge_package(release, "amd64"), rel, "Azure IoT Edge Module Runtime",
                              ("(moby-engine or docker-ce)",
                               "aziot-identity-service = %s%s" % (release.identity, dist),
                               "devkit-systemctl-shim", "shadow-utils"))
        pkg.scripts["pre"] = _users_pre([("iotedge", "/var/lib/aziot/edged", "iotedge user")]) + (
            "for g in aziotcs aziotks aziotid; do\n"
            '    getent group "$g" >/dev/null && usermod -aG "$g" iotedge || true\n'
            "done\n")
        # As the real spec's %post: no `docker` group means no container engine: exit 1.
        pkg.scripts["post"] = (
            "if ! getent group docker >/dev/null; then\n"
            '    echo "%s"\n    echo ""\n    echo " ERROR: No container runtime detected."\n'
            '    echo ""\n'
            '    echo " Please install a container runtime and run this install again."\n'
            '    echo ""\n    echo "%s"\n    exit 1\nfi\n'
            "usermod -aG docker iotedge\n"
            "getent group systemd-journal >/dev/null && usermod -aG systemd-journal iotedge || true\n"
            "chown -R iotedge:iotedge /etc/aziot/edged /var/lib/aziot/edged\n" % ("!" * 79, "!" * 79))
        pkg.scripts["preun"] = ('if [ "$1" -eq 0 ]; then /etc/init.d/aziot-edged stop '
                                ">/dev/null 2>&1 || true; fi\n")
        out.append(pkg)
    return out


def system_rpms(el):
    """Header-only RPMs for a rhel<el> device's rpm database: the release, tpm2-tools, and the
    base system the stand-ins need (installed with ``rpm --justdb`` at boot)."""
    info = EL_RELEASES[el]
    release = RpmPackage("redhat-release", info["os_version"], "0" + info["dist"],
                         "Red Hat Enterprise Linux release files",
                         provides=("system-release = %s" % info["os_version"],
                                   "system-release(releasever) = %s" % el))
    tools_version, _, tools_release = info["tpm2_tools"].partition("-")
    tools = RpmPackage("tpm2-tools", tools_version, tools_release,
                       "A bunch of TPM testing toolS build upon tpm2-tss")
    base = RpmPackage("devkit-rhel-base", "1.0", "1" + info["dist"],
                      "The base system of a devkit rhel device", provides=BASE_PROVIDES)
    return [release, tools, base]


KIT_KEY_UID = "devkit package signing <devkit-packages@example.invalid>"
OTHER_KEY_UID = "devkit untrusted signer <devkit-untrusted@example.invalid>"
KEY_PATH = "keys/microsoft.asc"   # where packages.microsoft.com serves its key (keys/microsoft.asc)


def _gpg(home, *args):
    return builder._run(["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback",
                         "--passphrase", ""] + list(args))


def make_key(home, uid):
    """A fresh Ed25519 signing key ``uid`` in the gnupg ``home``; return its armored public key."""
    _gpg(home, "--quick-gen-key", uid, "ed25519", "sign", "never")
    return _gpg(home, "--armor", "--export", uid)


def sign_rpms(paths, home, uid):
    """``rpmsign --addsign`` of ``paths`` (in place) with key ``uid`` of the gnupg ``home``."""
    if paths:
        builder._run(["rpmsign", "--addsign", "--define", "__gpg " + (shutil.which("gpg") or "gpg"),
                      "--define", "_gpg_path " + home, "--define", "_gpg_name " + uid,
                      "--define", "_gpg_sign_cmd_extra_args --batch"] + sorted(paths))


def _sign_repos(out_dir, els):
    """Sign rhel/<el>/prod/ with the kit key and a copy of it, rhel/<el>/untrusted/, with
    another key; write the kit key's public half to out_dir/keys/microsoft.asc."""
    home = tempfile.mkdtemp(prefix="devkit-gpg-")   # short: gpg-agent's socket lives there
    try:
        keys = os.path.join(out_dir, os.path.dirname(KEY_PATH))
        os.makedirs(keys, exist_ok=True)
        with open(os.path.join(out_dir, KEY_PATH), "w", encoding="ascii") as f:
            f.write(make_key(home, KIT_KEY_UID))
        make_key(home, OTHER_KEY_UID)
        for el in els:
            prod = os.path.join(out_dir, "rhel", el, "prod")
            untrusted = os.path.join(out_dir, "rhel", el, "untrusted")
            os.makedirs(untrusted)
            names = [n for n in os.listdir(prod) if n.endswith(".rpm")]
            for name in names:
                shutil.copy2(os.path.join(prod, name), os.path.join(untrusted, name))
            sign_rpms([os.path.join(prod, n) for n in names], home, KIT_KEY_UID)
            sign_rpms([os.path.join(untrusted, n) for n in names], home, OTHER_KEY_UID)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False,
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _groups(pkgs):
    """Split ``pkgs`` into as few groups of distinct names as their order allows."""
    groups = []
    for pkg in pkgs:
        for group in groups:
            if all(p.name != pkg.name for p in group):
                group.append(pkg)
                break
        else:
            groups.append([pkg])
    return groups


def build_rpm_repos(out_dir, python, devkit_root):
    """Build the stand-in RPMs, their repodata and the offline sets under ``out_dir``;
    return {el: {"repo": dir, "system": dir, "offline": {edge: dir}}}. The rpmbuild runs go
    in parallel (each mostly waits on its shell steps)."""
    jobs = []
    for el in EL_RELEASES:
        for sub in ("prod", "system"):
            os.makedirs(os.path.join(out_dir, "rhel", el, sub))
        jobs += [(el, "prod", group) for group in _groups(standins(el, python, devkit_root))]
        jobs.append((el, "system", system_rpms(el)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        paths = list(pool.map(lambda job: build_rpms(job[2], os.path.join(
            out_dir, "rhel", job[0], job[1])), jobs))
    _sign_repos(out_dir, EL_RELEASES)
    done = {}
    for el in EL_RELEASES:
        repo = os.path.join(out_dir, "rhel", el, "prod")
        built = {(pkg.name, pkg.version): path for (job_el, sub, group), group_paths
                 in zip(jobs, paths) if job_el == el and sub == "prod"
                 for pkg, path in zip(group, group_paths)}
        untrusted = os.path.join(out_dir, "rhel", el, "untrusted")
        for where in (repo, untrusted):
            builder._run(["createrepo_c", "--quiet", "--no-database", where])
        offline = {}
        for release in builder.RELEASES:
            dest = os.path.join(out_dir, "rpms", "el" + el, release.edge)
            os.makedirs(dest)
            for key in (("devkit-systemctl-shim", builder.SHIM_VERSION.rsplit("-", 1)[0]),
                        ("moby-engine", builder.MOBY_VERSION.rsplit("-", 1)[0]),
                        ("moby-cli", builder.MOBY_VERSION.rsplit("-", 1)[0]),
                        ("aziot-identity-service", release.identity.rsplit("-", 1)[0]),
                        ("aziot-edge", release.upstream)):
                builder._link(built[key], os.path.join(dest, os.path.basename(built[key])))
            offline[release.edge] = dest
        done[el] = {"repo": repo, "untrusted": untrusted, "system": os.path.join(out_dir, "rhel", el, "system"),
                    "offline": offline}
    return done


def build_config_rpm(repo_url, el, out_dir, key_url):
    """packages-microsoft-prod for rhel<el>: /etc/yum.repos.d/microsoft-prod.repo naming
    ``repo_url`` and the key dnf checks its packages with, ``key_url``; return the path. As
    Microsoft's (https://packages.microsoft.com/config/rhel/9/prod.repo, the file the package
    carries): the repository packages-microsoft-com-prod, ``gpgcheck=1`` and
    ``gpgkey=https://packages.microsoft.com/keys/microsoft.asc`` (here the kit's key)."""
    version, release = CONFIG_RPM_VERSION
    pkg = RpmPackage("packages-microsoft-prod", version, release + EL_RELEASES[el]["dist"],
                     "Microsoft package repository configuration", arch="noarch")
    pkg.files["/etc/yum.repos.d/microsoft-prod.repo"] = (
        ("# devkit stand-in of packages.microsoft.com\n"
         "[packages-microsoft-com-prod]\nname=packages-microsoft-com-prod\nbaseurl=%s\n"
         "enabled=1\ngpgcheck=1\ngpgkey=%s\n" % (repo_url, key_url)).encode(), 0o644)
    return pkg.build(out_dir)


SYSTEM_CACHE = os.path.join(builder.DEVKIT_ROOT, ".devkit", "packages", "rhel-system")


def system_rpm_files(el, cache=None):
    """{file name: bytes} of :func:`system_rpms` for rhel<el>, built once per checkout (and
    again when this module changes) under ``cache``."""
    with open(os.path.abspath(__file__), "rb") as f:
        key = hashlib.sha256(f.read() + el.encode()).hexdigest()[:12]
    where = os.path.join(cache or SYSTEM_CACHE, "el%s-%s" % (el, key))
    if not os.path.isdir(where):
        os.makedirs(os.path.dirname(where), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".el%s-" % el, dir=os.path.dirname(where))
        build_rpms(system_rpms(el), tmp)
        try:
            os.rename(tmp, where)
        except OSError:  # built meanwhile by another process
            shutil.rmtree(tmp, ignore_errors=True)
    out = {}
    for name in sorted(os.listdir(where)):
        with open(os.path.join(where, name), "rb") as f:
            out[name] = f.read()
    return out
