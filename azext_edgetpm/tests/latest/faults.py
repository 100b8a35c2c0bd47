"""Fault injection on a simulated device, from the device's side (no product code is touched).

``Severer`` puts small shims in front of the tools an install runs (``/usr/local/sbin`` comes
first in PATH, also under sudo's secure_path). Every call is logged (in /run, which a reboot empties); when an armed regular
expression matches a call ("tool arg ..."), the shim SIGKILLs the SSH session it runs under
(``sshd: user@notty`` and its ``[priv]`` monitor) together with every process between them and
itself (the shells and sudo of the remote command), and the tool never runs: the connection
drops in the middle of the step and the remote command dies at that point, as when a link or
sshd dies. The listener sshd stays, so the next run connects again.
"""
import json
import shlex
import time

FAULT_DIR = "/run/edgetpm-fault"
SHIM_DIR = "/usr/local/sbin"
TOOLS = ("apt-get", "dpkg", "dpkg-query", "install", "mv", "iotedge", "udevadm", "usermod", "mkdir", "cp")

_SHIM = r'''#!/usr/bin/python3 -I
# edgetpm test fault shim (tests/latest/faults.py)
import os, re, signal, sys
tool = os.path.basename(sys.argv[0])
call = " ".join([tool] + sys.argv[1:])
d = "/run/edgetpm-fault"
try:
    with open(d + "/log", "a") as f:
        f.write(call.replace("\n", " ") + "\n")
    with open(d + "/trigger") as f:
        pattern = f.read().strip()
except OSError:
    pattern = ""
hold = pattern.startswith("hold:")
if hold:
    pattern = pattern[len("hold:"):]
if pattern and re.search(pattern, call):
    try:
        os.unlink(d + "/trigger")
    except OSError:
        pass
    with open(d + "/fired", "a") as f:
        f.write(call.replace("\n", " ") + "\n")
    while hold:  # frozen here until the test cuts the power
        signal.pause()
    chain, pid = [], os.getppid()
    while pid > 1:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv0 = f.read().split(b"\0")[0]
        if argv0.startswith(b"/") and os.path.basename(argv0) == b"sshd":
            break  # the listener: leave it
        chain.append(pid)
        if argv0.startswith(b"sshd:") and b"[priv]" in argv0:
            break
        with open("/proc/%d/stat" % pid) as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    for p in chain:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    os._exit(137)
moved = os.path.realpath(sys.argv[0]) + ".edgetpm-real"
if os.path.exists(moved):
    os.execv(moved, [sys.argv[0]] + sys.argv[1:])
for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
    real = os.path.join(directory, tool)
    if os.path.exists(real) and os.path.realpath(real) != os.path.realpath(sys.argv[0]):
        os.execv(real, [real] + sys.argv[1:])
sys.exit(127)
'''


class Severer:
    """Shims on one device (see the module docstring)."""

    def __init__(self, dev, tools=TOOLS):
        self.dev = dev
        self.tools = tools
        self.replaced = []

    def install(self):
        self.dev.exec(f"mkdir -p {FAULT_DIR} && : > {FAULT_DIR}/log", check=True)
        for tool in self.tools:
            path = f"{SHIM_DIR}/{tool}"
            self.dev.exec(f"cat > {path} && chmod 755 {path}", input=_SHIM, check=True)
        return self

    def replace(self, path: str):
        """Shim a tool in place (for callers that do not search PATH, e.g. dpkg's maintainer
        scripts); remove() puts the real one back."""
        q, real = shlex.quote(path), shlex.quote(path + ".edgetpm-real")
        self.dev.exec(f"mv {q} {real} && cat > {q} && chmod 755 {q}", input=_SHIM, check=True)
        self.replaced.append(path)
        return self

    def remove(self):
        self.dev.exec("rm -f " + " ".join(shlex.quote(f"{SHIM_DIR}/{t}") for t in self.tools), check=True)
        for path in self.replaced:
            q = shlex.quote(path)
            self.dev.exec(f"mv -f {shlex.quote(path + '.edgetpm-real')} {q}", check=True)
        self.replaced = []

    def arm(self, pattern: str, hold: bool = False):
        """Cut the session at the first call matching `pattern`; with `hold`, freeze that call
        instead (the test then does something to the device, e.g. cuts its power)."""
        self.dev.exec(f"mkdir -p {FAULT_DIR} && : > {FAULT_DIR}/log && cat > {FAULT_DIR}/trigger",
                      input=("hold:" if hold else "") + pattern, check=True)

    def wait_fired(self, count: int, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while len(self.fired()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the fault was not reached within {timeout}s; calls: {self.calls()}")
            time.sleep(0.05)

    def disarm(self):
        self.dev.exec(f"rm -f {FAULT_DIR}/trigger", check=True)

    def fired(self):
        proc = self.dev.exec(["cat", f"{FAULT_DIR}/fired"])
        return proc.stdout.splitlines() if proc.returncode == 0 else []

    def calls(self):
        return self.dev.exec(["cat", f"{FAULT_DIR}/log"]).stdout.splitlines()


def record(name: str, value: int = 1) -> None:
    """Add to a figure of bench/robustness.py (a no-op unless it runs the suite)."""
    import os
    path = os.environ.get("EDGETPM_ROBUSTNESS_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"name": name, "value": value}) + "\n")
