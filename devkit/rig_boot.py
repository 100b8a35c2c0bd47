"""Booting a device from its spec (a mixin of :class:`devkit.devices.Rig`): the spec every device
shares (users, keys, sshd, network identity), the variant's edits, the JSON document
``devkit/device_init.py`` reads, the launch in the device's network namespace until sshd
answers; a power cycle boots the same device again on its kept disk."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from typing import Callable, Dict, Optional

from devkit import netns, swtpm, userland, users, variants
from devkit.device import DEVICE_PATH, SSH_PORT, STATE_BASE, Device, DevkitError, wait_ssh_banner
from devkit.files import atomic_write, tail
from devkit.procs import children, kill_now, stop_netns

INIT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device_init.py")
TPM_STATE_DIR = "/var/lib/devkit/swtpm"


class RigBoot:
    """Starting devices (a mixin: it uses the rig's slot, accounts, keys, CA, services and files)."""
    slot: Optional[int]
    password: Optional[str]
    service_names: list
    _devices: Dict[str, Device]
    _launchers: Dict[str, subprocess.Popen]
    _lock: threading.RLock
    _ca: swtpm.LocalCa
    _accounts: Optional[tuple]
    _userland_accounts: Dict[str, tuple]
    _keys: Dict[str, str]
    host_ip: Optional[str]                     # the rig's (properties of Rig and RigState)
    known_hosts: str
    service: Callable[[str], object]
    device: Callable[[str], Device]
    write_json: Callable[[], None]
    _device_dir: Callable[[str], str]
    _state_dir: Callable[[str], Optional[str]]

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
        shadow_gid = group_id("shadow", os.path.join(root, "etc/group"))
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
        atomic_write(spec_path, json.dumps(boot) + "\n", mode=0o600)
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
                              % (name, variant, exc, log_path, tail(log_path))) from exc
        dev = Device(
            name=name, index=index, host=addr, port=SSH_PORT, variant=variant, netns=ns,
            pid=pid, hostname=spec.hostname,
            tcti=swtpm.tcti() if spec.tpm is not None else None,
            users={a.name: user_entry(a, self._keys[a.name], self.password)
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
        kill_now(dev.netns)
        if launcher is not None:
            try:
                launcher.wait(timeout=5)
            except subprocess.TimeoutExpired:
                launcher.kill()
        spec_path = os.path.join(self._device_dir(name), "spec.json")
        with open(spec_path, "r", encoding="utf-8") as f:
            boot = json.load(f)
        boot["resume"] = True
        atomic_write(spec_path, json.dumps(boot) + "\n", mode=0o600)
        deadline = time.monotonic() + timeout
        try:
            _, pid = self._boot(name, dev.netns, dev.host, spec_path, dev.log, deadline, mode="ab")
            host_keys = self._read_host_keys(pid, boot["host_key_types"])
        except Exception as exc:
            raise DevkitError("device %s did not come back after a power cycle: %s\n--- %s (tail) ---\n%s"
                              % (name, exc, dev.log, tail(dev.log))) from exc
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
            kids = children(launcher.pid)
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

    @staticmethod
    def _kill_device(ns, pid, launcher=None, grace=1.5):
        """SIGTERM the device's PID 1, then SIGKILL what is left; delete its netns."""
        stop_netns([ns], [pid] if pid else [], grace)
        if launcher is not None:
            try:
                launcher.wait(timeout=5)
            except subprocess.TimeoutExpired:
                launcher.kill()
        netns.delete_netns(ns)


def user_entry(acct, key, password):
    """An account's entry in devkit.json (``Device.users``)."""
    entry = {"user": acct.name, "key": key, "uid": acct.uid}
    if acct.sudo != "root":
        entry["sudo"] = acct.sudo
    if acct.sudo == users.SUDO_PASSWORD:
        entry["password"] = password
    return entry


def group_id(name, group_file="/etc/group"):
    """The id of group ``name`` in ``group_file`` (0 if it has none)."""
    try:
        with open(group_file, "r", encoding="utf-8") as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == name and len(fields) > 2:
                    return int(fields[2])
    except (OSError, ValueError):
        pass
    return 0
