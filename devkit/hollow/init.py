"""PID 1 of a group of hollow devices (standard library only, run as a script).

The host starts one per hollow namespace (see ``devkit/hollow/__init__.py``)::

    ip netns exec NETNS unshare --mount --pid --fork --kill-child --propagation private \\
        PYTHON -I init.py serve SPEC.json

and once per rig, before, to build the layer every hollow device shares::

    unshare --mount --propagation private PYTHON -I init.py template SPEC.json

``serve``: mounts a tmpfs for the devices' disks, then for every device an overlay (lower: the
rig's common layer over the host's ``/``, upper: the device's own directory in that tmpfs, where
its host keys, hostname and TPM state are written first), ``proc`` and ``/dev`` in it. It
listens on every device's address, port 22, and on every device's TPM address (a loopback
address of its own, ports 2321/2322) and then, in one loop:

- a connection to a device's SSH port: a ``sshd -i`` for that connection, in a UTS namespace of
  its own with the device's hostname, ``chroot``-ed into the device's root (so the device's
  /etc/ssh host keys, users, /etc and /var);
- a connection to a device's TPM ports (data 2321, control 2322): the device's swtpm is started
  if it is stopped (on two Unix sockets in the device's directory) and the connection is relayed
  to it (swtpm's ``--server fd=`` wants a connected socket, and tpm2-tss's swtpm TCTI opens a
  connection per command, so handing swtpm the listening socket does not work); a swtpm with no
  connection that used no CPU for ``idle`` seconds is stopped (its state is on the device's disk;
  the next start is a TPM power-on, ``startup-clear``);
- reaps every process (detached daemons of the devices end up as our children);
- every second: ``stats`` (SSH connections and swtpm starts per device, swtpms running).

SIGTERM/SIGINT stop it; leaving takes the PID namespace (every device process) down, and the
mounts go with the mount namespace.
"""
import base64
import ctypes
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

SSHD = "/usr/sbin/sshd"
SWTPM_PORT = 2321
MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
CLONE_NEWUTS = 0x04000000
LIBC = ctypes.CDLL(None, use_errno=True)


def log(msg):
    """One line to the group's log (stdout)."""
    sys.stdout.write("[hollow %.3f] %s\n" % (time.monotonic(), msg))
    sys.stdout.flush()


def mount(source, target, fstype=None, flags=0, data=None):
    """mount(2) (no mount(8) per call: a group mounts three file systems per device)."""
    enc = lambda v: v.encode() if v is not None else None  # noqa: E731
    if LIBC.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (source, target, os.strerror(err)))


def write_file(upper, entry):
    """Write one file (base64 content) into a device's upper layer."""
    path = os.path.join(upper, entry["path"].lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(base64.b64decode(entry["content"]))
    os.chmod(path, entry.get("mode", 0o644))


def checkout_dir():
    """The checkout (devices run the stand-in runtime's code from it)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------- template


def template(spec):
    """Build the common layer: an overlay upper over the host's ``/`` where the rig's base spec
    (users, sshd_config, services' files and commands) is applied once for every device."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import device_init  # noqa: E402  (devkit/device_init.py: the same steps as a full device)
    mnt, upper, work = spec["mnt"], spec["upper"], spec["work"]
    root = os.path.join(mnt, "root")
    os.makedirs(root, exist_ok=True)
    mount("devkit-hollow-common", root, "overlay", 0,
          "lowerdir=/,upperdir=%s,workdir=%s" % (upper, work))
    mount("proc", os.path.join(root, "proc"), "proc")
    mount("/dev", os.path.join(root, "dev"), None, MS_BIND)
    mount("tmp", os.path.join(root, "tmp"), "tmpfs")
    mount("run", os.path.join(root, "run"), "tmpfs")
    os.chroot(root)
    os.chdir("/")
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "HOME": "/root", "LANG": "C.UTF-8"})
    device_init.remove_paths(spec.get("remove", []))
    device_init.make_dirs(spec.get("dirs", []))
    device_init.write_files(spec.get("files", []))
    for argv in spec.get("commands", []):
        log("template: %s" % " ".join(argv))
        device_init.run(argv)
    return 0


# --------------------------------------------------------------------------- serve


class Device:
    """One hollow device of the group: its root, sockets and swtpm."""

    def __init__(self, entry, mnt):
        self.name = entry["name"]
        self.hostname = entry["hostname"]
        self.addr = entry["addr"]
        self.tpm_addr = entry["tpm_addr"]
        self.files = entry["files"]
        self.base = os.path.join(mnt, self.name)
        self.root = os.path.join(self.base, "root")
        self.ssh = None
        self.tpm = ()
        self.swtpm = None           # Popen while running
        self.relays = 0             # TPM connections being relayed
        self.cpu = (0, 0.0)         # (last CPU ticks, when they last changed)
        self.ssh_count = 0
        self.swtpm_starts = 0

    def build(self, common, checkout):
        """Upper layer (own files), overlay root, proc, /dev."""
        upper, work = os.path.join(self.base, "upper"), os.path.join(self.base, "work")
        for d in (upper, work, self.root):
            os.makedirs(d, exist_ok=True)
        for entry in self.files:
            write_file(upper, entry)
        os.makedirs(os.path.join(upper, "var/lib/devkit/swtpm"), mode=0o700, exist_ok=True)
        mount("devkit-hollow", self.root, "overlay", 0,
              "lowerdir=%s:/,upperdir=%s,workdir=%s" % (common, upper, work))
        mount("proc", os.path.join(self.root, "proc"), "proc")
        mount("/dev", os.path.join(self.root, "dev"), None, MS_BIND)
        if checkout:
            target = os.path.join(self.root, checkout.lstrip("/"))
            os.makedirs(target, exist_ok=True)
            mount(checkout, target, None, MS_BIND)
            mount(checkout, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY)

    def listen(self):
        """The device's SSH socket and its TPM's two sockets."""
        self.ssh = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ssh.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ssh.bind((self.addr, 22))
        self.ssh.listen(128)
        self.ssh.setblocking(False)
        socks = []
        for port in (SWTPM_PORT, SWTPM_PORT + 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.tpm_addr, port))
            s.listen(16)
            socks.append(s)
        self.tpm = tuple(socks)

    def enter(self):
        """In the child, before exec: the device's hostname (own UTS namespace) and root."""
        if LIBC.unshare(CLONE_NEWUTS) != 0:
            os._exit(120)
        socket.sethostname(self.hostname)
        os.chroot(self.root)
        os.chdir("/")

    def serve_ssh(self, conn):
        """One ``sshd -i`` on an accepted connection, inside the device."""
        self.ssh_count += 1
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        try:
            subprocess.Popen([SSHD, "-i", "-e", "-o", "LogLevel=ERROR"], stdin=conn, stdout=conn,
                             stderr=sys.stdout, preexec_fn=self.enter, env=env, close_fds=True)
        finally:
            conn.close()

    def start_swtpm(self):
        """Start the device's swtpm on two Unix sockets in its directory; wait until it listens."""
        self.swtpm_starts += 1
        state = os.path.join(self.root, "var/lib/devkit/swtpm")
        paths = [os.path.join(self.base, n) for n in ("tpm.sock", "tpm-ctrl.sock")]
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
        self.swtpm = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--server", "type=unixio,path=%s" % paths[0],
             "--ctrl", "type=unixio,path=%s" % paths[1], "--tpmstate", "dir=%s" % state,
             "--flags", "not-need-init,startup-clear"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.cpu = (0, time.monotonic())
        deadline = time.monotonic() + 10
        while not all(os.path.exists(p) for p in paths):
            if self.swtpm.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("%s: swtpm did not start (status %s)" % (self.name, self.swtpm.returncode))
            time.sleep(0.002)
        return self.swtpm

    def connect_tpm(self, port):
        """A connection to the running swtpm's data (2321) or control (2322) socket."""
        path = os.path.join(self.base, "tpm.sock" if port == SWTPM_PORT else "tpm-ctrl.sock")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        return conn

    def idle_for(self, now):
        """Seconds the running swtpm has used no CPU."""
        try:
            with open("/proc/%d/stat" % self.swtpm.pid, "r", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return 0.0
        if ticks != self.cpu[0]:
            self.cpu = (ticks, now)
        return now - self.cpu[1]


class Group:
    """The event loop of a hollow group."""

    def __init__(self, spec):
        self.spec = spec
        self.idle = float(spec.get("idle", 10))
        self.devices = [Device(e, spec["mnt"]) for e in spec["devices"]]
        self.sel = selectors.DefaultSelector()
        self.swtpms = {}            # pid -> Device
        self.peers = {}             # relayed TPM connections: socket -> the other side
        self.stopping = False
        self.last_stats = None

    def build(self):
        mount("proc", "/proc", "proc")  # our PID namespace's (swtpm's CPU time, by its pid)
        mount("devkit-hollow-disks", self.spec["mnt"], "tmpfs", 0, "mode=0755")
        checkout = checkout_dir()
        if not checkout.startswith(("/tmp/", "/run/", "/dev/shm/")):
            checkout = None  # visible through the lower layer already
        for dev in self.devices:
            dev.build(self.spec["common"], checkout)
            dev.listen()
            self.sel.register(dev.ssh, selectors.EVENT_READ, ("ssh", dev))
            self.watch_tpm(dev)
        log("%d devices ready" % len(self.devices))

    def watch_tpm(self, dev):
        for s in dev.tpm:
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, ("tpm", dev, s))

    def on_event(self, kind, dev, sock=None):
        if kind == "ssh":
            try:
                conn, _ = dev.ssh.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(True)
            dev.serve_ssh(conn)
        elif kind == "tpm":
            self.accept_tpm(dev, sock)
        else:
            self.relay(dev, sock)

    def accept_tpm(self, dev, listener):
        """A TPM connection: start the swtpm if it is stopped, relay the connection to it."""
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        try:
            if dev.swtpm is None:
                self.swtpms[dev.start_swtpm().pid] = dev
            inner = dev.connect_tpm(listener.getsockname()[1])
        except (OSError, RuntimeError) as exc:
            log("%s: TPM connection refused: %s" % (dev.name, exc))
            conn.close()
            return
        dev.relays += 1
        conn.setblocking(True)
        self.peers[conn] = inner
        self.peers[inner] = conn
        for s in (conn, inner):
            self.sel.register(s, selectors.EVENT_READ, ("relay", dev, s))

    def relay(self, dev, sock):
        """Copy what arrived on one side of a relayed TPM connection to the other."""
        peer = self.peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        for s in (sock, peer):
            self.sel.unregister(s)
            self.peers.pop(s, None)
            s.close()
        dev.relays -= 1

    def reap(self):
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            dev = self.swtpms.pop(pid, None)
            if dev is not None:
                if _status and not self.stopping:
                    log("%s: swtpm ended with status %d" % (dev.name, _status))
                dev.swtpm.returncode = _status
                dev.swtpm = None

    def stop_idle(self):
        """Stop the swtpms that have no connection and used no CPU for ``idle`` seconds (and
        wait for them: a connection arriving next starts a new one on the saved state)."""
        now = time.monotonic()
        for pid, dev in list(self.swtpms.items()):
            if dev.relays == 0 and dev.idle_for(now) >= self.idle:
                dev.swtpm.send_signal(signal.SIGTERM)
                try:
                    dev.swtpm.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    dev.swtpm.kill()
                    dev.swtpm.wait()
                self.swtpms.pop(pid, None)
                dev.swtpm = None

    def write_stats(self):
        stats = {"ssh": {d.name: d.ssh_count for d in self.devices if d.ssh_count},
                 "swtpm_starts": {d.name: d.swtpm_starts for d in self.devices if d.swtpm_starts},
                 "swtpm_running": len(self.swtpms)}
        if stats == self.last_stats:
            return
        tmp = self.spec["stats"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(stats, f)
        os.replace(tmp, self.spec["stats"])
        self.last_stats = stats

    def loop(self):
        def on_stop(signum, _frame):
            self.stopping = True
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        next_tick = 0.0
        while not self.stopping:
            for key, _ in self.sel.select(timeout=1.0):
                self.on_event(*key.data)
            self.reap()
            now = time.monotonic()
            if now >= next_tick:
                self.stop_idle()
                self.write_stats()
                next_tick = now + 1.0
        log("stopping")
        self.write_stats()
        return 0


def main(mode, spec_path):
    with open(spec_path, "r", encoding="utf-8") as f:
        spec = json.load(f)
    if mode == "template":
        return template(spec)
    if os.getpid() != 1:
        sys.exit("init.py serve must run as PID 1 of a new PID namespace")
    group = Group(spec)
    group.build()
    group.write_stats()
    return group.loop()


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1], sys.argv[2]))
    except Exception as exc:  # noqa: BLE001 - report any failure before dying
        log("FAILED: %s: %s" % (type(exc).__name__, exc))
        sys.exit(2)
