"""Hollow devices: many cheap simulated devices, real where az edge-tpm touches them.

Like Kubernetes' hollow nodes (kubemark), a hollow device costs almost nothing while idle and
is a real device to the product: its own address and SSH host keys, its own TPM state (so its
own EK, registration ID and DPS registration), its own /etc and /var (an overlay upper layer:
its installed packages too), its own hostname, the rig's users and keys. What the product cannot
tell apart is shared:

- one network namespace per /24 (``edkSh``, up to 244 addresses on its ``eth0``, one veth on the
  slot's bridge), and one supervisor process per namespace (``devkit/hollow/init.py``, PID 1 of
  its own PID namespace) that holds every device's listening sockets;
- no sshd while idle: each SSH connection gets its own ``sshd -i`` (inetd mode), run in the
  device's root (``chroot``) and hostname (a UTS namespace) — so the device's own host keys,
  users, sshd_config;
- no swtpm while idle: the device's swtpm starts when a TPM connection arrives (socket
  activation: it is handed the listening sockets) and stops after ``idle`` seconds without CPU;
  its state is on the device's disk. The TCTI is ``swtpm:host=127.213.S.H,port=2321``: a
  loopback address per device, since the devices of a namespace share ``127.0.0.1``;
- one common read-only layer (``rig/.../hollow-common``, on /dev/shm) built once per rig by
  applying the full devices' base spec (users, sudoers, sshd_config, the DPS emulator's CA,
  ``update-ca-certificates``) over the host's ``/``: every device's overlay has it between its
  own upper layer and the host's root.

Limits (documented in devkit/README.md): the ``fresh`` TPM only; no power cycle; the devices
of a namespace share one PID namespace (``ps`` on one shows the processes of all of them);
``Device.exec`` runs with the supervisor's hostname.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from devkit import netns, variants
from devkit.device import DEVICE_PATH, SSH_PORT, Device, DevkitError, state_supported, wait_ssh_banner
from devkit.files import atomic_write, tail
from devkit.rig_boot import user_entry

INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "init.py")
VARIANT = "hollow"
INDEX_BASE = 10000           # hollow devices' indexes (full devices use 1..244)
PER_NAMESPACE = netns.MAX_DEVICES
IDLE_SECONDS = 10
KEY_TYPES = ("ed25519", "ecdsa")


def tpm_address(addr):
    """The loopback address of a device's TPM: 10.213.S.H -> 127.213.S.H."""
    return "127." + addr.split(".", 1)[1]


def tcti(addr):
    """The TCTI that reaches a hollow device's swtpm from inside the device."""
    return "swtpm:host=%s,port=2321" % tpm_address(addr)


def _host_key(key_type, comment):
    """A fresh host key: (private key in OpenSSH format, "algo base64" for known_hosts, the .pub file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    key = ed25519.Ed25519PrivateKey.generate() if key_type == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode("ascii")
    return private, public, ("%s %s\n" % (public, comment)).encode("ascii")


def _opaque_dirs(upper, dirs):
    """Empty directories that hide the host's (overlay "opaque" directories): /tmp, /run."""
    for path, mode in dirs:
        full = os.path.join(upper, path.lstrip("/"))
        os.makedirs(full, exist_ok=True)
        os.chmod(full, mode)
        os.setxattr(full, "trusted.overlay.opaque", b"y")


def _file(path, data, mode=0o644):
    data = data.encode("utf-8") if isinstance(data, str) else data
    return {"path": path, "content": base64.b64encode(data).decode("ascii"), "mode": mode}


class Hollow:
    """Starts hollow devices in a running rig (``Rig.add_hollow`` calls it with itself: a
    :class:`devkit.devices.Rig`, not imported here, which imports this package)."""

    def __init__(self, rig):
        self.rig = rig
        self.base = os.path.join(rig.dir, "hollow")

    @property
    def common(self):
        """The common layer (an overlay upper on /dev/shm, deleted with the rig's state)."""
        return os.path.join(self.rig._state_root, "hollow-common")

    def add(self, count, timeout=120.0):
        """Start ``count`` hollow devices (new namespaces of up to 244); return them. A group that
        fails leaves its namespace to ``down`` (it finds every /24 the rig claimed)."""
        rig = self.rig
        if rig.slot is None:
            raise DevkitError("the rig in %s is not up" % rig.dir)
        if not state_supported():
            raise DevkitError("hollow devices need %s on a tmpfs apart from /" % os.path.dirname(self.common))
        deadline = time.monotonic() + timeout
        accounts = self.build_common()
        users = {a.name: user_entry(a, rig._keys[a.name], rig.password) for a in accounts.values()}
        first = 1 + max([d.index - INDEX_BASE for d in rig.devices if d.index > INDEX_BASE] or [0])
        numbers = list(range(first, first + count))
        groups = [numbers[i:i + PER_NAMESPACE] for i in range(0, count, PER_NAMESPACE)]
        with ThreadPoolExecutor(max_workers=len(groups) or 1) as pool:
            futures = [pool.submit(self.start_group, g, users, deadline) for g in groups]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        devices = [d for f in futures for d in f.result()]
        with rig._lock:
            for dev in devices:
                rig._devices[dev.name] = dev
            rig.write_json()
        return devices

    def build_common(self):
        """Apply the rig's base spec once, into the common layer; return the accounts."""
        rig = self.rig
        rig._prepare_accounts()
        spec = rig._base_spec("hollow", 1)
        variants.apply("fresh", spec)
        accounts = rig._add_accounts(spec, "/")
        for name in rig.service_names:
            svc = rig.service(name)
            if hasattr(svc, "prepare_device"):
                svc.prepare_device(rig, spec)
        spec.write_file("/etc/ssh/sshd_config", rig._sshd_config(spec))
        for name in (".bashrc", ".profile"):
            # Debian's defaults for root (not the host's: its shell set-up would run at every SSH
            # command of every device)
            with open(os.path.join("/etc/skel", name), "rb") as f:
                spec.write_file("/root/" + name, f.read())
        done = os.path.join(self.common, "done")
        if os.path.exists(done):
            return accounts
        shutil.rmtree(self.base, ignore_errors=True)  # a former rig's groups in this directory
        upper, work = os.path.join(self.common, "upper"), os.path.join(self.common, "work")
        for d in (upper, work):
            os.makedirs(d, mode=0o755, exist_ok=True)
        os.makedirs(self.base, exist_ok=True)
        path = os.path.join(self.base, "common.json")
        atomic_write(path, json.dumps({
            "mnt": os.path.join(self.base, "common-mnt"), "upper": upper, "work": work,
            "remove": spec.remove_globs, "dirs": spec.dirs, "files": list(spec.files.values()),
            "commands": spec.commands}), mode=0o600)
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-I", INIT,
                               "template", path], capture_output=True, text=True, check=False,
                              env={"PATH": DEVICE_PATH, "LANG": "C.UTF-8"})
        if proc.returncode != 0:
            raise DevkitError("hollow devices' common layer: %s%s" % (proc.stdout[-2000:], proc.stderr[-2000:]))
        _opaque_dirs(upper, [("/tmp", 0o1777), ("/var/tmp", 0o1777), ("/run", 0o755)])
        # The package database as it is now: the host's may change under the devices (a package
        # installed on the host mid-run showed them a half-configured package to finish).
        dpkg = os.path.join(upper, "var/lib/dpkg")
        shutil.copytree("/var/lib/dpkg", dpkg, symlinks=True, dirs_exist_ok=True)
        os.setxattr(dpkg, "trusted.overlay.opaque", b"y")
        os.makedirs(os.path.join(upper, "run/sshd"), mode=0o755, exist_ok=True)
        with open(done, "w", encoding="ascii") as f:
            f.write("ok\n")
        return accounts

    def device_files(self, name, addr):
        """A device's own files (hostname, hosts, machine-id, host keys); its known host keys."""
        rig = self.rig
        files = [_file("/etc/hostname", name + "\n"),
                 _file("/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n%s\t%s\n%s\tdevkit-host\n"
                       "::1\tlocalhost ip6-localhost ip6-loopback\n" % (name, addr, name, rig.host_ip)),
                 _file("/etc/machine-id", os.urandom(16).hex() + "\n", 0o444)]
        known = []
        for key_type in KEY_TYPES:
            private, public, pub_line = _host_key(key_type, "root@" + name)
            files.append(_file("/etc/ssh/ssh_host_%s_key" % key_type, private, 0o600))
            files.append(_file("/etc/ssh/ssh_host_%s_key.pub" % key_type, pub_line))
            known.append(public)
        return files, known

    def start_group(self, numbers, users, deadline):
        """Claim a /24, start its namespace and supervisor; return its devices once they answer."""
        rig = self.rig
        slot = netns.claim_slot(rig.dir)
        addrs = [netns.device_ip(slot, i) for i in range(1, len(numbers) + 1)]
        ns, veth = netns.add_hollow(slot, addrs)
        gdir = os.path.join(self.base, "s%d" % slot)
        os.makedirs(os.path.join(gdir, "mnt"), exist_ok=True)
        entries, keys = [], {}
        for number, addr in zip(numbers, addrs):
            name = "h%d" % number
            files, keys[name] = self.device_files(name, addr)
            entries.append({"name": name, "hostname": name, "addr": addr, "tpm_addr": tpm_address(addr),
                            "files": files})
        mnt = os.path.join(gdir, "mnt")
        stats = os.path.join(gdir, "stats.json")
        if os.path.exists(stats):
            os.unlink(stats)
        spec_path = os.path.join(gdir, "spec.json")
        atomic_write(spec_path, json.dumps({"mnt": mnt, "common": os.path.join(self.common, "upper"),
                                            "stats": stats, "idle": IDLE_SECONDS, "devices": entries}),
                     mode=0o600)
        log_path = os.path.join(gdir, "init.log")
        with open(log_path, "wb") as log:
            launcher = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--mount", "--pid", "--fork", "--kill-child",
                 "--propagation", "private", sys.executable, "-I", INIT, "serve", spec_path],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": DEVICE_PATH, "LANG": "C.UTF-8"})
        with rig._lock:
            rig._launchers["hollow-s%d" % slot] = launcher
        try:
            pid = rig._wait_init_pid(launcher, deadline)
            while not os.path.exists(stats):
                if launcher.poll() is not None or time.monotonic() > deadline:
                    raise DevkitError("the hollow group did not get ready")
                time.sleep(0.05)
            for addr in (addrs[0], addrs[-1]):
                wait_ssh_banner(addr, SSH_PORT, deadline, lambda: launcher.poll() is None)
        except Exception as exc:
            raise DevkitError("hollow devices of %s failed to start: %s\n--- %s (tail) ---\n%s"
                              % (ns, exc, log_path, tail(log_path))) from exc
        devices = []
        for number, entry in zip(numbers, entries):
            root = os.path.join(mnt, entry["name"], "root")
            devices.append(Device(
                name=entry["name"], index=INDEX_BASE + number, host=entry["addr"], port=SSH_PORT,
                variant=VARIANT, netns=ns, pid=pid, hostname=entry["name"], tcti=tcti(entry["addr"]),
                users=users, root_dir="/proc/%d/root%s" % (pid, root), known_hosts=rig.known_hosts,
                veth=veth, log=log_path, host_keys=keys[entry["name"]], chroot=root))
        return devices


def stats(rig):
    """The supervisors' counters, summed: {"ssh": {name: n}, "swtpm_starts": {...}, "swtpm_running": n}."""
    total = {"ssh": {}, "swtpm_starts": {}, "swtpm_running": 0}
    base = os.path.join(rig.dir, "hollow")
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else ():
        path = os.path.join(base, name, "stats.json")
        if not os.path.exists(path):
            continue
        with open(path, "r", encoding="utf-8") as f:
            doc = json.load(f)
        total["ssh"].update(doc.get("ssh", {}))
        total["swtpm_starts"].update(doc.get("swtpm_starts", {}))
        total["swtpm_running"] += doc.get("swtpm_running", 0)
    return total

