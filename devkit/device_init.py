"""PID 1 of a simulated device (standard library only, run as a script).

The host starts it as::

    ip netns exec NETNS unshare --mount --pid --uts --fork --kill-child \\
        PYTHON -I device_init.py SPEC.json

so it is PID 1 of a fresh PID namespace, in a private mount namespace, inside the
device's network namespace. From the spec (written by ``devkit.rig_boot``) it:

1. sets the hostname;
2. mounts an overlay whose lower layer is the host's ``/`` (or, for a foreign userland, a
   cached debootstrapped root: ``lowerdir`` in the spec) and whose upper layer is in a
   tmpfs (the spec's ``state`` directory on the host's /dev/shm when the device can be power
   cycled: ``resume`` then boots again on it and skips step 3 and the host keys), then
   proc, sysfs, ``/dev`` (rbind), a private devpts, and tmpfs on ``/dev/shm``,
   ``/run`` and ``/tmp`` inside it, and ``chroot``s into it;
3. removes files (host keys, stale apt lists), writes files (users, sshd_config, ...) and
   runs the variant's commands;
4. generates fresh SSH host keys, starts swtpm (unless the device has no TPM) and waits
   until it listens, then starts ``sshd -D -e``;
5. stays PID 1: reaps every process that ends up as its child, and exits when sshd exits
   or on SIGTERM/SIGINT/SIGHUP. Leaving takes the whole PID namespace (swtpm included)
   down, and the private mounts go with the last process of the mount namespace.

Everything happens in the device's private namespaces: nothing is mounted on the host.
Progress and errors go to stdout, which the host points at the device's log file.
"""
import base64
import encodings.idna  # noqa: F401  (see below)
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

SSHD = "/usr/sbin/sshd"
# This interpreter is the host's: after the chroot into a foreign userland (Debian 11, 13) its
# standard library is out of reach, so everything it needs later is imported above, including
# what the standard library imports lazily (encodings.idna for socket host names).


def log(msg):
    """Write one line to the device log."""
    sys.stdout.write("[init %.3f] %s\n" % (time.monotonic(), msg))
    sys.stdout.flush()


def run(argv, **kwargs):
    """Run a command, failing loudly with its output."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (rc=%d): %s" % (argv, proc.returncode, proc.stdout.strip()))
    return proc.stdout


def mount(*args):
    """Call mount(8) with an argument list."""
    run(["mount", *args])


def build_root(mnt, state=None, lowerdir="/"):
    """Mount the private root under ``mnt`` (already private to us) and return its path.

    ``state``: a directory on a host tmpfs other than ``/``'s file system that holds the
    overlay's upper and work directories, so that they outlive this boot (a power cycle boots
    again on them); without it they live in a tmpfs private to this boot. ``lowerdir``: the
    overlay's read-only lower layer (the host's ``/``, or a device userland's root).
    """
    mount("-t", "tmpfs", "-o", "mode=0755", "devkit-root", mnt)
    base = state or mnt
    upper, work, root = os.path.join(base, "upper"), os.path.join(base, "work"), os.path.join(mnt, "root")
    for d in (upper, work, root):
        os.makedirs(d, 0o755, exist_ok=True)
    mount("-t", "overlay", "devkit-overlay", "-o",
          "lowerdir=%s,upperdir=%s,workdir=%s" % (lowerdir, upper, work), root)
    mount("-t", "proc", "proc", os.path.join(root, "proc"))
    mount("-t", "sysfs", "sysfs", os.path.join(root, "sys"))
    mount("--rbind", "/dev", os.path.join(root, "dev"))
    mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620,gid=5", "devpts",
          os.path.join(root, "dev/pts"))
    mount("--bind", os.path.join(root, "dev/pts/ptmx"), os.path.join(root, "dev/ptmx"))
    mount("-t", "tmpfs", "-o", "mode=1777", "shm", os.path.join(root, "dev/shm"))
    mount("-t", "tmpfs", "-o", "mode=0755", "run", os.path.join(root, "run"))
    mount("-t", "tmpfs", "-o", "mode=1777", "tmp", os.path.join(root, "tmp"))
    share_checkout(root, always=lowerdir != "/")
    return root


def share_checkout(root, always=False):
    """Devices run the checkout's devkit code at the host's path (the stand-in runtime's TPM
    client; on the host's userland also its .venv). Under /tmp, /run or /dev/shm the device's
    fresh tmpfs would hide it (a CI clone may live there), and a foreign userland does not
    have it at all (``always``): bind it in, read-only."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not always and not checkout.startswith(("/tmp/", "/run/", "/dev/shm/")):
        return
    target = os.path.join(root, checkout.lstrip("/"))
    os.makedirs(target, exist_ok=True)
    mount("--bind", checkout, target)
    mount("-o", "remount,bind,ro", target)


def remove_paths(patterns):
    """Remove files or trees matching the glob patterns (inside the chroot)."""
    for pattern in patterns:
        for path in glob.glob(pattern):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def make_dirs(entries):
    """Create directories with mode and owner."""
    for d in entries:
        os.makedirs(d["path"], exist_ok=True)
        os.chmod(d["path"], d.get("mode", 0o755))
        os.chown(d["path"], d.get("uid", 0), d.get("gid", 0))


def write_files(entries):
    """Write files (base64 content); a symlink in the way is replaced, never followed."""
    for f in entries:
        path = f["path"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(base64.b64decode(f["content"]))
        os.chmod(path, f.get("mode", 0o644))
        os.chown(path, f.get("uid", 0), f.get("gid", 0))


def wait_listening(port, proc, timeout):
    """Wait until 127.0.0.1:port accepts a connection (or proc died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("swtpm exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("swtpm did not listen on port %d within %ss" % (port, timeout))


# The stand-in packages' services, in the order a booting system starts them.
BOOT_ORDER = ("docker", "aziot-keyd", "aziot-certd", "aziot-tpmd", "aziot-identityd", "aziot-edged")


def start_installed_services():
    """What an init system does at boot for enabled services: start the stand-in packages'
    /etc/init.d scripts (marked "(devkit" in their header), e.g. after a power cycle, unless
    `systemctl disable` (the devkit shim) marked the unit disabled. A failing service is
    logged; the device boots anyway."""
    found = []
    for path in glob.glob("/etc/init.d/*"):
        try:
            with open(path, "r", encoding="utf-8", errors="replace") as f:
                head = f.read(600)
        except OSError:
            continue
        name = os.path.basename(path)
        if os.path.exists("/var/lib/devkit-systemctl/disabled/%s.service" % name):
            log("boot: %s is disabled" % name)   # (systemctl disable, devkit-systemctl-shim)
            continue
        if "(devkit" in head:
            found.append((BOOT_ORDER.index(name) if name in BOOT_ORDER else len(BOOT_ORDER), path))
    for _, path in sorted(found):
        try:
            proc = subprocess.run([path, "start"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=60, check=False)
            log("boot: %s start -> %d %s" % (path, proc.returncode, proc.stdout.strip()[-200:]))
        except (OSError, subprocess.TimeoutExpired) as exc:
            log("boot: %s start failed: %s" % (path, exc))


class Init:
    """The supervisor loop: children by pid, exit when sshd ends or a stop signal comes."""

    STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

    def __init__(self):
        self.children = {}

    def spawn(self, role, argv, preexec_fn=None):
        """Start a child process and remember its role."""
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stdout,
                                stderr=sys.stdout, preexec_fn=preexec_fn)
        self.children[proc.pid] = role
        log("started %s (pid %d): %s" % (role, proc.pid, " ".join(argv)))
        return proc

    def reap(self):
        """Reap every finished child (ours and orphans); return the roles that ended."""
        ended = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return ended
            if pid == 0:
                return ended
            role = self.children.pop(pid, None)
            if role is not None:
                log("%s (pid %d) exited with status %d" % (role, pid, status))
                ended.append(role)

    def stop(self):
        """SIGTERM our children and give them a moment before the namespace is torn down."""
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2.0
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)

    def loop(self):
        """Wait for signals: reap on SIGCHLD, stop on SIGTERM/SIGINT/SIGHUP or when sshd ends.

        The signals are blocked only now, after every child started, so children keep a
        normal signal mask.
        """
        watched = self.STOP_SIGNALS | {signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        while True:
            if "sshd" in self.reap():
                log("sshd ended: stopping the device")
                self.stop()
                return 1
            info = signal.sigtimedwait(watched, 5.0)
            if info is not None and info.si_signo in self.STOP_SIGNALS:
                log("signal %d: stopping" % info.si_signo)
                self.stop()
                return 0


def main(spec_path):
    """Build the device described by ``spec_path`` and supervise it."""
    with open(spec_path, "r", encoding="utf-8") as f:
        spec = json.load(f)
    socket.sethostname(spec["hostname"])
    lowerdir = spec.get("lowerdir") or "/"
    root = build_root(spec["mnt"], spec.get("state"), lowerdir)
    # The host's / of this mount namespace, to start host binaries (swtpm) after the chroot.
    host_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    os.chroot(root)
    os.chdir("/")
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "HOME": "/root", "LANG": "C.UTF-8"})
    if spec.get("resume"):
        # power on again after a power cycle: disk (upper layer) and TPM state are kept, so
        # are host keys and users; /run and /tmp start empty, as after a reboot
        log("booting on the kept disk and TPM state")
    else:
        remove_paths(spec.get("remove", []))
        make_dirs(spec.get("dirs", []))
        write_files(spec.get("files", []))
        for argv in spec.get("commands", []):
            log("run: %s" % " ".join(argv))
            run(argv)
        for key_type in spec.get("host_key_types", ["ed25519"]):
            path = "/etc/ssh/ssh_host_%s_key" % key_type
            run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "root@" + spec["hostname"],
                 "-f", path])
    init = Init()
    tpm = spec.get("swtpm")
    if tpm:
        os.makedirs(tpm["state_dir"], exist_ok=True)
        port = tpm["port"]
        state_dir, preexec = tpm["state_dir"], None
        if tpm.get("host_binary"):
            # A foreign userland may have no swtpm (Debian 11): run the host's, in the
            # device's namespaces, on the state directory inside the device's root.
            state_dir = os.path.join(root, tpm["state_dir"].lstrip("/"))

            def preexec():
                os.fchdir(host_root)
                os.chroot(".")
        swtpm = init.spawn("swtpm", [
            "swtpm", "socket", "--tpm2",
            "--server", "type=tcp,port=%d,bindaddr=127.0.0.1" % port,
            "--ctrl", "type=tcp,port=%d,bindaddr=127.0.0.1" % (port + 1),
            "--tpmstate", "dir=%s" % state_dir,
            "--flags", "not-need-init,startup-clear"], preexec_fn=preexec)
        wait_listening(port, swtpm, 10.0)
    if spec.get("resume"):
        start_installed_services()
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    init.spawn("sshd", [SSHD, "-D", "-e", "-f", spec.get("sshd_config", "/etc/ssh/sshd_config")])
    log("ready")
    return init.loop()


if __name__ == "__main__":
    if os.getpid() != 1:
        sys.exit("device_init.py must run as PID 1 of a new PID namespace")
    try:
        sys.exit(main(sys.argv[1]))
    except Exception as exc:  # noqa: BLE001 - PID 1 must report any failure before dying
        log("FAILED: %s: %s" % (type(exc).__name__, exc))
        sys.exit(2)
