"""Real Debian userlands for simulated devices, built with debootstrap and cached on the machine.

A device normally runs on an overlay of the host's own ``/`` (Debian 12). A device whose
variant names a userland (``bullseye``, ``trixie``, ``bookworm-arm64``) runs on an overlay of a
root file system that ``debootstrap`` built from the Debian mirror this machine's apt already
uses, so that its tpm2-tools, Python, OpenSSH, sudo and apt are the real ones of that release.
A userland of another architecture (``bookworm-arm64``) is debootstrapped ``--foreign`` for that
architecture; its second stage and every program of the device then run under qemu-user, which
:mod:`devkit.binfmt` registers with the kernel (about four minutes to build on 2 cores).

Each userland is built once per machine (the first device that needs it builds it; about a
minute and 300 MB) under ``/var/cache/edgetpm-devkit/userlands/<release>-<key>/root``
(``DEVKIT_USERLAND_CACHE`` overrides the directory), ``key`` being a digest of the release,
the package list, the mirror and :data:`BUILD_VERSION`. A build runs under a file lock, in a
temporary directory renamed into place when complete, so concurrent test runs on one machine
build it once and never see half a root. Devices share it read-only as the lower layer of
their overlay; nothing ever writes into it afterwards.

swtpm is not part of a userland: Debian 11 has no swtpm package, and a manufactured TPM state
(``mfg``) comes from the host's swtpm_setup. The device's swtpm is the host's binary, started
by the device's init in the device's namespaces (see ``device_init.py``); everything the
product drives on the device (tpm2-tools, sudo, sshd, python3, apt) is the userland's own.
"""
import fcntl
import glob
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from devkit import binfmt

BUILD_VERSION = "2"
DEFAULT_CACHE = "/var/cache/edgetpm-devkit/userlands"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
# What every device needs: sshd and sudo to log in, tpm2-tools (+ the swtpm TCTI) for the
# product, python3 for the stand-in runtime, ca-certificates for the DPS emulator's CA.
BASE_PACKAGES = ("openssh-server", "sudo", "tpm2-tools", "python3", "ca-certificates")


class UserlandError(RuntimeError):
    """A userland could not be built."""


@dataclass(frozen=True)
class Release:
    """A Debian release a device can run, on this machine's CPU or (``arch``) under qemu-user."""

    codename: str
    version: str
    extra_packages: Tuple[str, ...] = ()
    arch: Optional[str] = None  # a Debian architecture other than the machine's (devkit/binfmt.py)

    @property
    def label(self):
        """The release as its cache directory names it ("bookworm-arm64")."""
        return self.codename + ("-" + self.arch if self.arch else "")

    @property
    def packages(self):
        """Packages installed on top of debootstrap's minbase, sorted."""
        return tuple(sorted(set(BASE_PACKAGES) | set(self.extra_packages)))


RELEASES: Dict[str, Release] = {
    # tpm2-tss 3.0 ships the swtpm TCTI in its own package, as bookworm does.
    "bullseye": Release("bullseye", "11", ("libtss2-tcti-swtpm0",)),
    # trixie's tpm2-tss pulls its TCTIs in with libtss2-esys.
    "trixie": Release("trixie", "13"),
    # Debian 12 for arm64 (the host's own release on another CPU), run under qemu-user.
    "bookworm-arm64": Release("bookworm", "12", ("libtss2-tcti-swtpm0",), arch="arm64"),
}


def cache_root():
    """Directory holding the cached userlands."""
    return os.environ.get("DEVKIT_USERLAND_CACHE") or DEFAULT_CACHE


def host_mirror(sources_dir="/etc/apt"):
    """The Debian mirror URI this machine's apt uses (``DEVKIT_DEBIAN_MIRROR`` overrides).

    Reads deb822 ``*.sources`` and one-line ``*.list`` files and takes the first ``deb`` URI
    whose suites are not ``-security`` ones and that serves Debian (``/debian`` path).
    """
    override = os.environ.get("DEVKIT_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    files = sorted(glob.glob(os.path.join(sources_dir, "sources.list.d", "*.sources")))
    files += [os.path.join(sources_dir, "sources.list")]
    files += sorted(glob.glob(os.path.join(sources_dir, "sources.list.d", "*.list")))
    for path in files:
        try:
            with open(path, "r", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            continue
        for uri, suites in _deb_entries(text, path.endswith(".sources")):
            if uri.rstrip("/").endswith("/debian") and not any("security" in s for s in suites):
                return uri.rstrip("/")
    return FALLBACK_MIRROR


def _deb_entries(text, deb822):
    """(uri, [suites]) of the binary (``deb``) entries of a sources file."""
    if not deb822:
        for line in text.splitlines():
            m = re.match(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                yield m.group(1), [m.group(2)]
        return
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"]) == ["no"]:
            continue
        for uri in fields.get("uris", []):
            yield uri, fields.get("suites", [])


def key(release, mirror):
    """Cache key: what the built root depends on."""
    h = hashlib.sha256()
    h.update(("%s\n%s\n%s\n%s" % (BUILD_VERSION, release.label, " ".join(release.packages),
                                  mirror)).encode("utf-8"))
    return h.hexdigest()[:12]


def path_of(name, mirror=None):
    """Where the root of userland ``name`` lives (built or not)."""
    release = RELEASES[name]
    return os.path.join(cache_root(), "%s-%s" % (release.label, key(release, mirror or host_mirror())),
                        "root")


def ensure(name, log=None):
    """The root directory of userland ``name``, building it first when it is not cached."""
    if name not in RELEASES:
        raise UserlandError("unknown userland %r (known: %s)" % (name, ", ".join(sorted(RELEASES))))
    mirror = host_mirror()
    root = path_of(name, mirror)
    if RELEASES[name].arch:  # its programs need qemu-user, also when the root is cached
        try:
            binfmt.ensure(RELEASES[name].arch)
        except binfmt.BinfmtError as exc:
            raise UserlandError("the %s userland needs qemu-user for %s programs: %s"
                                % (name, RELEASES[name].arch, exc)) from exc
    if os.path.exists(os.path.join(root, ".devkit-userland")):
        return root
    base = os.path.dirname(root)
    os.makedirs(os.path.dirname(base), mode=0o755, exist_ok=True)
    with open(base + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(root, ".devkit-userland")):
            for stale in glob.glob(base + ".tmp-*"):  # a build killed half-way (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            if log is not None:
                log("building the Debian %s (%s) userland from %s (first use on this machine: %s)"
                    % (RELEASES[name].version, name, mirror, "a few minutes under qemu-user"
                       if RELEASES[name].arch else "a minute or two"))
            build(RELEASES[name], mirror, base, log)
    return root


def prefetch(names):
    """Start ``ensure`` of each userland in a background thread; a failure is left for the
    caller's own ``ensure`` to meet again (and report)."""
    def run(name):
        try:
            ensure(name)
        except Exception:  # noqa: BLE001 - reported by the ensure() that needs it
            pass
    for name in names:
        threading.Thread(target=run, args=(name,), daemon=True, name="userland-" + name).start()


def build(release, mirror, base, log=None):
    """debootstrap ``release`` from ``mirror`` into ``base``/root (replacing a stale one)."""
    if shutil.which("debootstrap") is None:
        raise UserlandError("debootstrap not found (run scripts/bootstrap.sh)")
    tmp = "%s.tmp-%d" % (base, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o755)
    target = os.path.join(tmp, "root")
    started = time.monotonic()
    log_path = os.path.join(tmp, "debootstrap.log")
    # Two stages, so that dpkg's configuration is in place before dpkg installs anything:
    # no fsync per file (the root is a cache; a crash means a rebuild) and no docs, man pages
    # or translations (a third of the time and space).
    arch = ["--arch=" + release.arch] if release.arch else []
    _debootstrap(["debootstrap", "--foreign", "--variant=minbase", "--components=main", *arch,
                  "--include=" + ",".join(release.packages), release.codename, target, mirror],
                 log_path, tmp, release, mirror)
    _write(os.path.join(target, "etc/dpkg/dpkg.cfg.d/devkit"), DPKG_CFG)
    _debootstrap(["chroot", target, "/debootstrap/debootstrap", "--second-stage"],
                 log_path, tmp, release, mirror)
    _tidy(target)
    seconds = time.monotonic() - started
    with open(os.path.join(target, ".devkit-userland"), "w", encoding="utf-8") as f:
        f.write("release=%s\narch=%s\nmirror=%s\npackages=%s\nseconds=%.1f\n"
                % (release.codename, release.arch or "native", mirror, " ".join(release.packages),
                   seconds))
    if log is not None:
        log("built the %s userland in %.0f s (%s)" % (release.label, seconds, base))
    shutil.rmtree(base, ignore_errors=True)
    os.rename(tmp, base)


DPKG_CFG = """# devkit userland (devkit/userland.py): a cache rebuilt on demand, no fsync needed
force-unsafe-io
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
"""


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _debootstrap(argv, log_path, tmp, release, mirror):
    """Run one debootstrap stage, appending to the log; clean up and raise on failure."""
    with open(log_path, "ab") as out:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                "LANG": "C.UTF-8"})
    if proc.returncode != 0:
        with open(log_path, "r", encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserlandError("debootstrap %s from %s failed (rc=%d):\n%s"
                            % (release.codename, mirror, proc.returncode, tail))


def _tidy(root):
    """Drop what only the build needed: downloaded .debs, apt lists, host keys made at install
    (each device makes its own), and services' policy of not starting daemons."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*",
                    "etc/ssh/ssh_host_*", "var/cache/apt/*.bin"):
        for path in glob.glob(os.path.join(root, pattern)):
            os.unlink(path)


def info(root) -> Optional[dict]:
    """The build stamp of a userland root (release, mirror, packages, seconds), or None."""
    try:
        with open(os.path.join(root, ".devkit-userland"), "r", encoding="utf-8") as f:
            return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return None
