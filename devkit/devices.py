"""Simulated TPM devices and the rig that runs them (see ../shared/docs/rig.md).

A device is a network namespace with a veth on the rig's bridge, a private overlay root
over the host's ``/``, its own PID/mount/UTS namespaces, a real sshd and its own swtpm.
``devkit/device_init.py`` is its PID 1. A rig is a set of devices sharing a directory
(keys, logs, ``devkit.json``), a bridge and a /24 (see :mod:`devkit.netns`).

Typical use::

    rig = Rig("/tmp/rig")
    rig.up(["fresh", "mfg", "notools", "notpm"])
    dev = rig.by_variant("mfg")
    dev.exec(["tpm2_getcap", "handles-persistent"], env=dev.tpm_env)
    client = dev.connect("admin")          # paramiko, known_hosts checked
    rig.down()

``Rig.load(dir)`` gives the same object in another process (what ``down`` and ``status``
use); ``Rig(dir).down()`` also cleans up after a run that crashed before writing anything.
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from devkit import netns, services as services_mod, swtpm, userland, users, variants

DEVKIT_JSON = "devkit.json"
SCHEMA_VERSION = 1
INIT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device_init.py")
TPM_STATE_DIR = "/var/lib/devkit/swtpm"
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


# --------------------------------------------------------------------------- devices


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


def _children(pid):
    """Host pids of the children of ``pid``."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid), "r", encoding="ascii") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _tail(path, lines=25):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- rig


class Rig:
    """A set of simulated devices sharing a directory, a bridge and a /24."""

    def __init__(self, dir, services=(), owner_pid=None):
        """``owner_pid``: set for throw-away rigs (pytest): once that process is gone,
        ``python -m devkit gc`` may remove the rig."""
        self.dir = os.path.abspath(dir)
        self.owner_pid = owner_pid
        self.slot: Optional[int] = None
        self.state = "down"
        self.service_names: List[str] = list(services)
        self.sections: Dict[str, dict] = {}
        self._devices: Dict[str, Device] = {}
        self._launchers: Dict[str, subprocess.Popen] = {}
        self._reserved: set = set()
        self._lock = threading.RLock()
        self._ca = swtpm.LocalCa(os.path.join(self.dir, "ca"))
        self._accounts = None
        self._userland_accounts: Dict[str, tuple] = {}
        self._keys: Dict[str, str] = {}
        self._services: Dict[str, object] = {}
        self.password: Optional[str] = None

    # ---- paths and simple properties

    @property
    def json_path(self):
        """DIR/devkit.json."""
        return os.path.join(self.dir, DEVKIT_JSON)

    @property
    def known_hosts(self):
        """DIR/known_hosts: every device's host keys."""
        return os.path.join(self.dir, "known_hosts")

    @property
    def host_ip(self):
        """The host's address on the rig's bridge (where services listen)."""
        return netns.host_ip(self.slot) if self.slot is not None else None

    @property
    def devices(self):
        """Running devices, by index."""
        with self._lock:
            return sorted(self._devices.values(), key=lambda d: d.index)

    @property
    def ca_cert(self):
        """PEM of the CA that issued the mfg devices' EK certificates (None before any)."""
        return self._ca.issuer_cert if os.path.exists(self._ca.issuer_cert) else None

    def service(self, name):
        """The (single) instance of a registered service used by this rig."""
        with self._lock:
            if name not in self._services:
                self._services[name] = services_mod.load(name)
            return self._services[name]

    def device(self, name):
        """The device called ``name``."""
        with self._lock:
            try:
                return self._devices[name]
            except KeyError:
                raise DevkitError("no device %r in %s" % (name, self.dir)) from None

    def by_variant(self, variant):
        """The first device of a variant."""
        for dev in self.devices:
            if dev.variant == variant:
                return dev
        raise DevkitError("no %r device in %s" % (variant, self.dir))

    # ---- devkit.json

    def to_json(self):
        """The devkit.json document."""
        doc = {"version": SCHEMA_VERSION, "dir": self.dir, "host_ip": self.host_ip,
               "known_hosts": self.known_hosts, "state": self.state, "slot": self.slot,
               "subnet": str(netns.subnet(self.slot)) if self.slot is not None else None,
               "bridge": netns.bridge_name(self.slot) if self.slot is not None else None,
               "ca_cert": self.ca_cert, "owner_pid": self.owner_pid,
               "services": list(self.service_names),
               "devices": [d.to_json() for d in self.devices]}
        for name, section in self.sections.items():
            doc[name] = section
        return doc

    def write_json(self):
        """Write devkit.json and known_hosts atomically."""
        with self._lock:
            lines = []
            for dev in self.devices:
                host = dev.host if dev.port == SSH_PORT else "[%s]:%d" % (dev.host, dev.port)
                lines.extend("%s %s" % (host, k) for k in dev.host_keys)
            _atomic_write(self.known_hosts, "".join(x + "\n" for x in lines))
            _atomic_write(self.json_path, json.dumps(self.to_json(), indent=2) + "\n")

    def set_section(self, name, section):
        """Store a service's section in devkit.json (written at once)."""
        with self._lock:
            self.sections[name] = section
            self.write_json()

    @classmethod
    def load(cls, dir):
        """The rig described by DIR/devkit.json (DevkitError if there is none)."""
        rig = cls(dir)
        try:
            with open(rig.json_path, "r", encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise DevkitError("no %s in %s (is the rig up?)" % (DEVKIT_JSON, rig.dir)) from None
        rig.slot = doc.get("slot")
        rig.state = doc.get("state", "up")
        rig.owner_pid = doc.get("owner_pid")
        rig.service_names = list(doc.get("services", []))
        rig.sections = {n: doc[n] for n in rig.service_names if n in doc}
        for entry in doc.get("devices", []):
            dev = Device.from_json(entry, doc.get("known_hosts", rig.known_hosts))
            rig._devices[dev.name] = dev
        return rig

    # ---- bring up

    def up(self, variant_names=("fresh",), services=None, timeout=60.0, hollow=0):
        """Claim a subnet, start services and one device per variant name (and ``hollow``
        hollow devices, see devkit/hollow); wait for SSH.

        On any failure (or Ctrl-C) everything started so far is torn down again.
        """
        if services is not None:
            self.service_names = list(services)
        bad = sorted({c for c in self.dir if c in ",:\\" or c.isspace()})
        if bad:
            # the path ends up in overlayfs mount options, which such characters break
            raise DevkitError("rig directory %r must not contain %r" % (self.dir, "".join(bad)))
        os.makedirs(self.dir, exist_ok=True)
        self._refuse_if_running()
        try:
            self._prepare_accounts()
            self.slot = netns.claim_slot(self.dir)
            self.state = "starting"
            self.write_json()
            for name in self.service_names:
                self.set_section(name, self.service(name).up(self))
            self.add_devices(list(variant_names), timeout=timeout)
            if hollow:
                self.add_hollow(hollow, timeout=timeout)
            self.state = "up"
            self.write_json()
        except BaseException:
            try:
                self.down()
            except DevkitError as exc:
                sys.stderr.write("devkit: cleanup after a failed up: %s\n" % exc)
            raise
        return self.devices

    def add_hollow(self, count, timeout=120.0):
        """Start ``count`` hollow devices (devkit/hollow) in the running rig; return them."""
        from devkit.hollow import Hollow  # its own folder; imports this module
        return Hollow(self).add(count, timeout=timeout)

    def _refuse_if_running(self):
        if os.path.exists(self.json_path) or netns.slots_owned_by(self.dir):
            raise DevkitError("a rig already exists in %s; run `python -m devkit down --dir %s`"
                              " first" % (self.dir, self.dir))

    def _prepare_accounts(self):
        if self._accounts is None:
            self._keys = users.ensure_keys(os.path.join(self.dir, "keys"))
            self.password = users.ensure_password(os.path.join(self.dir, "pwadmin.password"))
            self._accounts = users.build_accounts(self.password)

    def add_device(self, variant="fresh", timeout=60.0):
        """Start one more device of ``variant`` in the running rig; return it."""
        return self.add_devices([variant], timeout=timeout)[0]

    def add_devices(self, variant_names, timeout=60.0):
        """Start devices (in parallel) in the running rig; return them in order."""
        if self.slot is None:
            raise DevkitError("the rig in %s is not up" % self.dir)
        for name in variant_names:
            variants.resolve(name)  # fail early on a typo
        self._prepare_accounts()
        self.prepare_userlands(variant_names)
        with self._lock:
            taken = {d.index for d in self._devices.values()} | self._reserved
            indexes = []
            n = 1
            while len(indexes) < len(variant_names):
                if n not in taken:
                    indexes.append(n)
                n += 1
            self._reserved.update(indexes)
        deadline = time.monotonic() + timeout
        try:
            with ThreadPoolExecutor(max_workers=min(16, len(indexes)) or 1) as pool:
                futures = [pool.submit(self._start_device, i, v, deadline)
                           for i, v in zip(indexes, variant_names)]
                errors = [f.exception() for f in futures if f.exception() is not None]
        finally:
            with self._lock:
                self._reserved.difference_update(indexes)
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    @staticmethod
    def prepare_userlands(variant_names):
        """Build (once per machine, in parallel) the userlands these variants run on, before
        any device's start-up clock runs; return {name: root}."""
        names = {u for name in variant_names for u in variants.userlands(name)}
        if not names:
            return {}
        def log(msg):
            sys.stderr.write("devkit: %s\n" % msg)
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            roots = {n: pool.submit(userland.ensure, n, log) for n in sorted(names)}
        try:
            return {n: f.result() for n, f in roots.items()}
        except userland.UserlandError as exc:
            raise DevkitError(str(exc)) from exc

    def _device_dir(self, name):
        return os.path.join(self.dir, "devices", name)

    @property
    def _state_root(self):
        return os.path.join(STATE_BASE, hashlib.sha256(self.dir.encode()).hexdigest()[:16])

    def _state_dir(self, name):
        """The device's kept disk on the host (None where power cycles are unsupported)."""
        return os.path.join(self._state_root, name) if state_supported() else None

    def _base_spec(self, name, index):
        """Users, sshd, network identity and hygiene common to every device."""
        addr = netns.device_ip(self.slot, index)
        spec = variants.DeviceSpec(name=name, hostname=name, address=addr)
        for pattern in ("/etc/ssh/ssh_host_*", "/root/.ssh", "/var/lib/apt/lists/*_*",
                        "/var/lib/apt/lists/lock", "/var/cache/apt/*.bin",
                        # man-db's dpkg trigger costs seconds per install/remove:
                        "/var/lib/man-db/auto-update"):
            spec.remove(pattern)
        spec.write_file("/etc/hostname", name + "\n")
        spec.write_file("/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n%s\t%s\n"
                        "%s\tdevkit-host\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                        % (name, addr, name, self.host_ip))
        spec.write_file("/etc/resolv.conf", "# devkit: devices have no DNS\n")
        spec.write_file("/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
        return spec

    def _lower_root(self, spec):
        """The overlay's lower layer of a device: the host's / or its built userland."""
        return userland.ensure(spec.userland) if spec.userland else "/"

    def _accounts_of(self, root):
        """(accounts by name, AccountDb) rendered from the account files of ``root``."""
        if root == "/":
            return self._accounts
        with self._lock:
            if root not in self._userland_accounts:
                self._userland_accounts[root] = users.build_accounts(
                    self.password, etc=os.path.join(root, "etc"))
            return self._userland_accounts[root]

    def _add_accounts(self, spec, root):
        """Users, their keys and sudo rights, from the account database of ``root``."""
        accounts, db = self._accounts_of(root)
        shadow_gid = _group_id("shadow", os.path.join(root, "etc/group"))
        for path, (text, mode) in db.files().items():
            spec.write_file(path, text, mode, gid=shadow_gid if "shadow" in path else 0)
        spec.write_file("/etc/sudoers.d/devkit", users.sudoers(), 0o440)
        for acct in accounts.values():
            spec.make_dir(acct.home, 0o700 if acct.name == "root" else 0o755, acct.uid, acct.gid)
            spec.make_dir(acct.home + "/.ssh", 0o700, acct.uid, acct.gid)
            with open(self._keys[acct.name] + ".pub", "r", encoding="utf-8") as f:
                spec.write_file(acct.home + "/.ssh/authorized_keys", f.read(), 0o600,
                                acct.uid, acct.gid)
        return accounts

    @staticmethod
    def _sshd_config(spec):
        keys = "".join("HostKey /etc/ssh/ssh_host_%s_key\n" % t for t in spec.host_key_types)
        return ("# devkit simulated device\n"
                "Port %d\nListenAddress 0.0.0.0\n%s"
                "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
                "PasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
                "UsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\n"
                "MaxStartups 100:30:200\nMaxSessions 100\nAcceptEnv LANG LC_*\n"
                "Subsystem sftp internal-sftp\nPidFile /run/sshd.pid\n" % (SSH_PORT, keys))

    def _render(self, spec, dev_dir, lower="/"):
        """Turn a spec into the JSON document device_init.py reads."""
        if "/etc/ssh/sshd_config" not in spec.files:
            spec.write_file("/etc/ssh/sshd_config", self._sshd_config(spec))
        tpm = None
        if spec.tpm is not None:
            tpm = {"port": swtpm.SWTPM_PORT, "state_dir": TPM_STATE_DIR,
                   "host_binary": lower != "/"}
            spec.make_dir(TPM_STATE_DIR, 0o700)
        if spec.tpm == variants.TPM_MFG:
            state_dir = os.path.join(dev_dir, "tpm-mfg")
            shutil.rmtree(state_dir, ignore_errors=True)
            state = self._ca.manufacture(state_dir, os.path.join(dev_dir, "swtpm_setup.log"))
            for fname, data in state.items():
                spec.write_file(TPM_STATE_DIR + "/" + fname, data, 0o600)
        elif spec.tpm not in (None, variants.TPM_FRESH):
            raise DevkitError("unknown tpm mode %r" % spec.tpm)
        state = self._state_dir(spec.name)
        if state:
            shutil.rmtree(state, ignore_errors=True)  # a device name reused after a crash
            os.makedirs(state, mode=0o700)
        return {"hostname": spec.hostname, "mnt": os.path.join(dev_dir, "mnt"), "state": state,
                "remove": spec.remove_globs, "dirs": spec.dirs,
                "files": list(spec.files.values()), "commands": spec.commands,
                "host_key_types": spec.host_key_types, "swtpm": tpm,
                "sshd_config": "/etc/ssh/sshd_config", "lowerdir": lower}

    def _start_device(self, index, variant, deadline):
        """Prepare, wire and boot one device; register it once it accepts SSH."""
        name = "d%d" % index
        dev_dir = self._device_dir(name)
        os.makedirs(os.path.join(dev_dir, "mnt"), exist_ok=True)
        spec = self._base_spec(name, index)
        variants.apply(variant, spec)
        lower = self._lower_root(spec)
        accts = self._add_accounts(spec, lower)
        for svc_name in self.service_names:
            svc = self.service(svc_name)
            if hasattr(svc, "prepare_device"):
                svc.prepare_device(self, spec)
        boot = self._render(spec, dev_dir, lower)
        spec_path = os.path.join(dev_dir, "spec.json")
        _atomic_write(spec_path, json.dumps(boot) + "\n", mode=0o600)
        log_path = os.path.join(dev_dir, "init.log")
        ns = netns.netns_name(self.slot, index)
        launcher = None
        pid = None
        try:
            ns, veth, addr = netns.add_device(self.slot, index)
            launcher, pid = self._boot(name, ns, addr, spec_path, log_path, deadline)
            host_keys = self._read_host_keys(pid, spec.host_key_types)
        except Exception as exc:
            self._kill_device(ns, pid, launcher)
            raise DevkitError("device %s (%s) failed to start: %s\n--- %s (tail) ---\n%s"
                              % (name, variant, exc, log_path, _tail(log_path))) from exc
        dev = Device(
            name=name, index=index, host=addr, port=SSH_PORT, variant=variant, netns=ns,
            pid=pid, hostname=spec.hostname,
            tcti=swtpm.tcti() if spec.tpm is not None else None,
            users={a.name: _user_entry(a, self._keys[a.name], self.password)
                   for a in accts.values()},
            root_dir="/proc/%d/root" % pid, known_hosts=self.known_hosts, veth=veth,
            log=log_path, host_keys=host_keys)
        with self._lock:
            self._devices[name] = dev
            self.write_json()
        for svc_name in self.service_names:
            svc = self.service(svc_name)
            if hasattr(svc, "device_ready"):
                svc.device_ready(self, dev)
        return dev

    def _boot(self, name, ns, addr, spec_path, log_path, deadline, mode="wb"):
        """Start the device's init in its network namespace; wait until sshd answers."""
        launcher = None
        with open(log_path, mode) as log:
            launcher = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--mount", "--pid", "--uts",
                 "--fork", "--kill-child", "--propagation", "private",
                 sys.executable, "-I", INIT_SCRIPT, spec_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env={"PATH": DEVICE_PATH, "LANG": "C.UTF-8"})
        with self._lock:
            self._launchers[name] = launcher
        pid = self._wait_init_pid(launcher, deadline)
        wait_ssh_banner(addr, SSH_PORT, deadline, lambda: launcher.poll() is None)
        return launcher, pid

    def power_cycle(self, device, timeout=60.0):
        """Cut the device's power and switch it on again: every process of the device is
        killed at once (no shutdown: what was not on disk is lost, a command in flight dies
        mid-way), then init boots again on the same disk (overlay upper layer, which holds the
        swtpm state too) in the same network namespace. Host keys, users, installed packages
        and TPM keys survive; /run and /tmp start empty. Returns the updated Device."""
        name = device.name if isinstance(device, Device) else device
        dev = self.device(name)
        state = self._state_dir(name)
        if not state or not os.path.isdir(os.path.join(state, "upper")):
            raise DevkitError("device %s cannot be power cycled: its disk is not kept on a tmpfs "
                              "apart from / (%s)" % (name, STATE_BASE))
        with self._lock:
            launcher = self._launchers.pop(name, None)
        _kill_now(dev.netns)
        if launcher is not None:
            try:
                launcher.wait(timeout=5)
            except subprocess.TimeoutExpired:
                launcher.kill()
        spec_path = os.path.join(self._device_dir(name), "spec.json")
        with open(spec_path, "r", encoding="utf-8") as f:
            boot = json.load(f)
        boot["resume"] = True
        _atomic_write(spec_path, json.dumps(boot) + "\n", mode=0o600)
        deadline = time.monotonic() + timeout
        try:
            _, pid = self._boot(name, dev.netns, dev.host, spec_path, dev.log, deadline, mode="ab")
            host_keys = self._read_host_keys(pid, boot["host_key_types"])
        except Exception as exc:
            raise DevkitError("device %s did not come back after a power cycle: %s\n--- %s (tail) ---\n%s"
                              % (name, exc, dev.log, _tail(dev.log))) from exc
        if host_keys != dev.host_keys:
            raise DevkitError("device %s came back with other host keys" % name)
        with self._lock:
            dev.pid = pid
            dev.root_dir = "/proc/%d/root" % pid
            self.write_json()
        return dev

    @staticmethod
    def _wait_init_pid(launcher, deadline):
        """Host pid of the device's PID 1 (the child of unshare)."""
        while time.monotonic() < deadline:
            kids = _children(launcher.pid)
            if kids:
                return kids[0]
            if launcher.poll() is not None:
                raise DevkitError("launcher exited with %s" % launcher.returncode)
            time.sleep(0.005)
        raise DevkitError("device init did not start in time")

    @staticmethod
    def _read_host_keys(pid, key_types):
        keys = []
        for t in key_types:
            path = "/proc/%d/root/etc/ssh/ssh_host_%s_key.pub" % (pid, t)
            with open(path, "r", encoding="ascii") as f:
                algo, blob = f.read().split()[:2]
            keys.append("%s %s" % (algo, blob))
        return keys

    # ---- tear down

    def remove_device(self, device):
        """Stop one device and forget it."""
        name = device.name if isinstance(device, Device) else device
        with self._lock:
            dev = self._devices.pop(name, None)
            launcher = self._launchers.pop(name, None)
        if dev is None:
            raise DevkitError("no device %r in %s" % (name, self.dir))
        self._kill_device(dev.netns, dev.pid, launcher)
        state = self._state_dir(name)
        if state:
            shutil.rmtree(state, ignore_errors=True)
        self.write_json()

    @staticmethod
    def _kill_device(ns, pid, launcher=None, grace=1.5):
        """SIGTERM the device's PID 1, then SIGKILL what is left; delete its netns."""
        _stop_netns([ns], [pid] if pid else [], grace)
        if launcher is not None:
            try:
                launcher.wait(timeout=5)
            except subprocess.TimeoutExpired:
                launcher.kill()
        netns.delete_netns(ns)

    def down(self):
        """Stop services and devices; remove namespaces, interfaces and devkit.json.

        Works from any process and after a crash: it finds the rig's subnet in devkit.json
        or by the bridge's ifalias, and its namespaces by name. Idempotent.
        """
        errors = []
        with self._lock:
            doc = {}
            if os.path.exists(self.json_path):
                try:
                    with open(self.json_path, "r", encoding="utf-8") as f:
                        doc = json.load(f)
                except (OSError, ValueError) as exc:
                    errors.append("unreadable %s: %s" % (self.json_path, exc))
            for name in doc.get("services", self.service_names):
                try:
                    self.service(name).down(self, doc.get(name, self.sections.get(name, {})))
                except Exception as exc:  # noqa: BLE001 - keep tearing down the rest
                    errors.append("service %s: %s" % (name, exc))
            slots = set(netns.slots_owned_by(self.dir))
            for s in (doc.get("slot"), self.slot):
                if s is not None:
                    slots.add(s)
            pids = [d.get("pid") for d in doc.get("devices", []) if d.get("pid")]
            pids += [d.pid for d in self._devices.values() if d.pid]
            for slot in sorted(slots):
                if netns.existing_bridges().get(slot, self.dir) != self.dir:
                    errors.append("slot %d now belongs to another rig; left alone" % slot)
                    continue
                namespaces = netns.netns_of_slot(slot)
                _stop_netns(namespaces, pids)
                for ns in namespaces:
                    try:
                        netns.delete_netns(ns)
                    except netns.NetError as exc:
                        errors.append(str(exc))
                for link in netns.links_of_slot(slot):
                    netns.delete_link(link)
            for launcher in self._launchers.values():
                try:
                    launcher.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    errors.append("launcher %d did not exit" % launcher.pid)
            self._launchers.clear()
            self._devices.clear()
            _unmount_under(self.dir)
            shutil.rmtree(self._state_root, ignore_errors=True)
            for path in (self.json_path, self.known_hosts):
                if os.path.exists(path):
                    os.unlink(path)
            self.slot = None
            self.state = "down"
        if errors:
            raise DevkitError("down finished with errors: " + "; ".join(errors))


# --------------------------------------------------------------------------- helpers


def _user_entry(acct, key, password):
    entry = {"user": acct.name, "key": key, "uid": acct.uid}
    if acct.sudo != "root":
        entry["sudo"] = acct.sudo
    if acct.sudo == users.SUDO_PASSWORD:
        entry["password"] = password
    return entry


def _group_id(name, group_file="/etc/group"):
    try:
        with open(group_file, "r", encoding="utf-8") as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == name and len(fields) > 2:
                    return int(fields[2])
    except (OSError, ValueError):
        pass
    return 0


def _atomic_write(path, text, mode=0o644):
    tmp = "%s.tmp.%d.%d" % (path, os.getpid(), threading.get_ident())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _stop_netns(namespaces, init_pids, grace=1.5):
    """Stop every process in the namespaces: SIGTERM the device inits, SIGKILL leftovers."""
    members = set()
    for ns in namespaces:
        members.update(netns.netns_pids(ns))
    for pid in init_pids:
        if pid in members:
            _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        alive = set()
        for ns in namespaces:
            alive.update(netns.netns_pids(ns))
        if not alive:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in alive:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not any(netns.netns_pids(ns) for ns in namespaces):
            return
        time.sleep(0.05)
    raise DevkitError("processes survive in %s" % ", ".join(namespaces))


def _kill_now(ns):
    """SIGKILL every process of a network namespace at once (a power cut); wait until gone."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = netns.netns_pids(ns)
        if not pids:
            return
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.02)
    raise DevkitError("processes survive in %s" % ns)


def _unmount_under(path):
    """Lazily unmount anything the host still has mounted under ``path`` (normally none)."""
    prefix = path.rstrip("/") + "/"
    targets = []
    with open("/proc/self/mountinfo", "r", encoding="utf-8") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix):
                targets.append(mnt)
    for mnt in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
