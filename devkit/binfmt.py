"""Foreign-architecture devices: qemu-user registered with the kernel's binfmt_misc.

A device whose userland is built for another CPU (``arm64`` on an amd64 machine) runs that
userland's own programs (sshd, apt, dpkg, python3, tpm2-tools) through qemu-user: the kernel's
binfmt_misc hands every ELF of that machine type to ``qemu-<cpu>-static``. Debian's
``qemu-user-static`` package ships the registrations in ``/usr/lib/binfmt.d/qemu-<cpu>.conf``
with the flags ``OPF``: ``F``, the kernel opens the interpreter when it is registered, so it
also works inside a device's chroot, where the interpreter's path does not exist. It leaves out
``C`` (credentials from the program, not from the interpreter; ``credentials no`` in
/usr/share/binfmts/qemu-<cpu>): without it a setuid program (sudo) runs with the caller's
rights and refuses ("effective uid is not 0"), which on a real arm64 machine never happens.
:func:`ensure` registers Debian's line with ``OCPF`` (replacing an entry without ``C`` or
``F``), by writing it into ``/proc/sys/fs/binfmt_misc/register``: systemd-binfmt would load
Debian's at boot, which a machine without systemd as PID 1 never does.

Whether this can work is the kernel's call (binfmt_misc built in or as a module, and root in
the initial user namespace): :func:`unavailable` says why not, for a test to say so.
"""
import os
import subprocess
from typing import Optional

BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
CONF_DIR = "/usr/lib/binfmt.d"
# Debian architecture -> qemu's CPU name (qemu-<cpu>-static, binfmt entry qemu-<cpu>).
QEMU_CPU = {"arm64": "aarch64", "armhf": "arm", "ppc64el": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}


class BinfmtError(RuntimeError):
    """qemu-user cannot run programs of that architecture on this machine."""


def native_arch():
    """The machine's Debian architecture (dpkg --print-architecture)."""
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _entry(arch):
    if arch not in QEMU_CPU:
        raise BinfmtError("no qemu-user emulation known for architecture %r (known: %s)"
                          % (arch, ", ".join(sorted(QEMU_CPU))))
    return "qemu-" + QEMU_CPU[arch]


def _mounted():
    """binfmt_misc's file system is there (mounting it when the kernel has it but nobody did)."""
    if os.path.exists(os.path.join(BINFMT_DIR, "register")):
        return True
    if not os.path.isdir(BINFMT_DIR):
        return False
    proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR],
                          capture_output=True, text=True, check=False)
    return proc.returncode == 0 and os.path.exists(os.path.join(BINFMT_DIR, "register"))


def status(arch):
    """(enabled, flags) of the kernel's registration for ``arch``, or None when there is none."""
    try:
        with open(os.path.join(BINFMT_DIR, _entry(arch)), "r", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
    return (bool(lines) and lines[0] == "enabled", flags)


def unavailable(arch) -> Optional[str]:
    """Why programs of ``arch`` cannot run here (None: they can, or :func:`ensure` can make
    them), without changing anything."""
    if arch == native_arch():
        return None
    name = _entry(arch)
    if not os.path.isdir(BINFMT_DIR):
        return "this kernel has no binfmt_misc (%s is missing)" % BINFMT_DIR
    if status(arch) is None and not os.path.exists(os.path.join(CONF_DIR, name + ".conf")):
        return "qemu-user-static is not installed (%s/%s.conf is missing; scripts/bootstrap.sh " \
               "installs it)" % (CONF_DIR, name)
    return None


FLAGS = "OCPF"  # open-binary, credentials (setuid works), preserve argv[0], fix-binary


def ensure(arch):
    """Make the kernel run ``arch`` programs through qemu-user as a machine of that CPU would run
    them (a no-op for the native architecture or when the entry has the flags); raise
    BinfmtError."""
    if arch == native_arch():
        return
    name = _entry(arch)
    reason = unavailable(arch)
    if reason:
        raise BinfmtError(reason)
    if not _mounted():
        raise BinfmtError("binfmt_misc is not mounted at %s and cannot be" % BINFMT_DIR)
    current = status(arch)
    if current is not None and current[0] and set(FLAGS) <= set(current[1]):
        return
    with open(os.path.join(CONF_DIR, name + ".conf"), "r", encoding="ascii") as f:
        line = next(l.strip() for l in f if l.strip() and not l.startswith("#"))
    fields = line.split(":")  # :name:type:offset:magic:mask:interpreter:flags
    line = ":".join(fields[:7] + [FLAGS])
    try:
        if current is not None:  # another's entry, without C or F (or disabled): ours instead
            with open(os.path.join(BINFMT_DIR, name), "w", encoding="ascii") as f:
                f.write("-1")
        with open(os.path.join(BINFMT_DIR, "register"), "w", encoding="ascii") as f:
            f.write(line)
    except OSError as exc:
        now = status(arch)
        if now is None or not set(FLAGS) <= set(now[1]):  # not a concurrent registration of ours
            raise BinfmtError("the kernel refused the %s registration: %s" % (name, exc)) from exc
