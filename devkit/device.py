"""One simulated TPM device as a rig records it, and what every part of the dev kit shares about
devices (see ../shared/docs/rig.md): their address and PATH, where their disks are kept,
:class:`DevkitError`, :func:`missing_requirements`, :func:`wait_ssh_banner`.

A device is a network namespace with a veth on the rig's bridge, a private overlay root
over the host's ``/``, its own PID/mount/UTS namespaces, a real sshd and its own swtpm.
``devkit/device_init.py`` is its PID 1. :class:`devkit.devices.Rig` starts and stops devices.
"""
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

SSH_PORT = 22
DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where devices keep their disk (the overlay's upper layer) across a power cycle: a tmpfs that
# is not the file system of "/" (an upper layer inside the lower one would overlap it).
STATE_BASE = "/dev/shm/devkit-state"


def state_supported():
    """Whether STATE_BASE's file system can hold upper layers (a tmpfs apart from "/")."""
    try:
        return os.stat(os.path.dirname(STATE_BASE)).st_dev != os.stat("/").st_dev
    except OSError:
        return False


class DevkitError(RuntimeError):
    """A rig or device operation failed."""


def missing_requirements():
    """Reasons this machine cannot run devices (empty when it can)."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("simulated devices need root (network namespaces, mounts)")
    for tool in ("ip", "unshare", "nsenter", "mount", "ssh-keygen", "swtpm", "swtpm_setup",
                 "openssl", "setpriv"):
        if shutil.which(tool) is None:
            reasons.append("%s not found (run scripts/bootstrap.sh)" % tool)
    if not os.path.exists("/usr/sbin/sshd"):
        reasons.append("/usr/sbin/sshd not found (apt-get install openssh-server)")
    return reasons


@dataclass
class Device:
    """One running simulated device (as recorded in devkit.json)."""

    name: str
    index: int
    host: str
    port: int
    variant: str
    netns: str
    pid: Optional[int]
    hostname: str
    tcti: Optional[str]
    users: Dict[str, dict]
    root_dir: Optional[str]
    known_hosts: str
    veth: str = ""
    log: str = ""
    host_keys: List[str] = field(default_factory=list)
    chroot: str = ""  # a hollow device's root in its supervisor's mount namespace (devkit/hollow)

    JSON_KEYS = ("name", "index", "host", "port", "variant", "netns", "pid", "hostname",
                 "tcti", "users", "root_dir", "veth", "log", "host_keys", "chroot")

    def to_json(self):
        """The device's entry in devkit.json."""
        return {k: getattr(self, k) for k in self.JSON_KEYS}

    @classmethod
    def from_json(cls, data, known_hosts):
        """Rebuild a Device from its devkit.json entry."""
        return cls(known_hosts=known_hosts, **{k: data[k] for k in cls.JSON_KEYS if k in data})

    @property
    def tpm_env(self):
        """Environment that points tpm2-tools at this device's TPM (empty without TPM)."""
        return {"TPM2TOOLS_TCTI": self.tcti} if self.tcti else {}

    def key(self, user="root"):
        """Private key file of a device account."""
        return self.users[user]["key"]

    def alive(self):
        """Whether the device's PID 1 still runs in the device's network namespace."""
        if not self.pid:
            return False
        try:
            return (os.stat("/proc/%d/ns/net" % self.pid).st_ino
                    == os.stat(os.path.join("/run/netns", self.netns)).st_ino)
        except OSError:
            return False

    def exec(self, cmd, user="root", *, input=None, env=None, timeout=60, check=False,
             text=True):
        """Run ``cmd`` inside the device from the host, without SSH.

        ``cmd`` is an argument list, or a string run by ``sh -c``. It runs in all the
        device's namespaces and root, as ``user`` with a clean login-like environment plus
        ``env``. Returns the CompletedProcess (stdout and stderr captured).
        """
        if not self.alive():
            raise DevkitError("device %s is not running" % self.name)
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else [str(c) for c in cmd]
        home = "/root" if user == "root" else "/home/" + user
        variables = {"PATH": DEVICE_PATH, "HOME": home, "USER": user, "LOGNAME": user,
                     "LANG": "C.UTF-8", "SHELL": "/bin/bash"}
        variables.update(env or {})
        inner = ["env", "-i"] + ["%s=%s" % kv for kv in variables.items()] + argv
        if user != "root":
            inner = ["setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups"] + inner
        if self.chroot:
            inner = ["chroot", self.chroot] + inner
        full = ["nsenter", "-t", str(self.pid), "-m", "-u", "-n", "-p", "-r", "-w", "--"] + inner
        return subprocess.run(full, input=input, capture_output=True, text=text,
                              timeout=timeout, check=check, env={"PATH": DEVICE_PATH})

    def clear_tpm(self, replace=True, timeout=60):
        """Clear the device's TPM; return the TPM's persistent handles before the clear.

        ``tpm2_clear`` (lockout hierarchy, empty auth) is what an owner's "clear TPM" does: the
        owner hierarchy is reset and every persistent handle is evicted (EK 0x81010001, SRK
        0x81000001, the runtime's DPS key 0x81000100). It does NOT change the endorsement
        primary seed, so the EK made next is the same key again. With ``replace`` (default)
        ``tpm2_changeeps`` first gives the TPM a new endorsement seed: the next EK is a new key,
        as after a replaced or fully reset TPM (and a manufacturer EK certificate no longer
        matches). The device's swtpm keeps running; nothing else on the device changes.
        """
        if not self.tcti:
            raise DevkitError("device %s has no TPM" % self.name)
        before = self.exec(["tpm2_getcap", "handles-persistent"], env=self.tpm_env, timeout=timeout,
                           check=True).stdout
        steps = (["tpm2_changeeps"],) if replace else ()
        for argv in steps + (["tpm2_clear"],):
            proc = self.exec(argv, env=self.tpm_env, timeout=timeout)
            if proc.returncode != 0:
                raise DevkitError("%s on %s failed (rc=%d): %s"
                                  % (argv[0], self.name, proc.returncode, proc.stderr.strip()))
        return [line.strip("- ").strip() for line in before.splitlines() if line.strip()]

    def ssh_argv(self, user="root"):
        """An OpenSSH command line that logs into the device (known_hosts enforced)."""
        return ["ssh", "-i", self.key(user), "-p", str(self.port),
                "-o", "UserKnownHostsFile=" + self.known_hosts,
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
                "%s@%s" % (self.users[user]["user"], self.host)]

    def connect(self, user="root", timeout=10.0):
        """A connected paramiko SSHClient (host key checked against the rig's known_hosts)."""
        import paramiko  # imported here: the rest of devkit needs only the standard library
        client = paramiko.SSHClient()
        client.load_host_keys(self.known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(self.host, port=self.port, username=self.users[user]["user"],
                       key_filename=self.key(user), timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout, look_for_keys=False, allow_agent=False)
        return client


def wait_ssh_banner(host, port, deadline, is_alive=lambda: True):
    """Wait until ``host:port`` accepts TCP and sends an SSH banner (before ``deadline``)."""
    last = "no attempt"
    while time.monotonic() < deadline:
        if not is_alive():
            raise DevkitError("device died while waiting for SSH (last: %s)" % last)
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
                banner = sock.recv(256)
            if banner.startswith(b"SSH-"):
                return banner.split(b"\r\n")[0].decode("ascii", "replace")
            last = "unexpected banner %r" % banner[:40]
        except OSError as exc:
            last = str(exc)
        time.sleep(0.03)
    raise DevkitError("no SSH banner from %s:%d (last: %s)" % (host, port, last))
