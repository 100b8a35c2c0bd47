"""Optional rig services (the DPS emulator, the package repository, ...).

A service runs next to the devices, usually on the host side of the rig's bridge
(``rig.host_ip``), and publishes what clients need in its own top-level section of
devkit.json. ``Rig.up(..., services=["dps"])`` / ``python -m devkit up --services dps``
start it; ``down`` stops it, also after a crash (its section is saved in devkit.json
before the devices boot).

To add one, implement the protocol below and register it by import path (imported only
when used)::

    # devkit/services.py
    SERVICES["dps"] = "devkit.dps.service:DpsService"

Protocol (duck-typed; every method but ``up`` and ``down`` is optional)::

    class MyService:
        name = "dps"
        def __init__(self): ...
        def up(self, rig) -> dict:            # start; return the devkit.json section
        def prepare_device(self, rig, spec):  # edit a DeviceSpec before the device boots
        def device_ready(self, rig, device):  # called after a device accepts SSH
        def down(self, rig, section: dict):   # stop (idempotent, may be a fresh process)
"""
import importlib
import json
import os
import signal
import subprocess
import sys
import time

SERVICES = {
    "dps": "devkit.dps.service:DpsService",
    "packages": "devkit.packages.service:AptService",
    "proxy": "devkit.proxy:ProxyService",
}


def register(name, target):
    """Register a service class by ``"module:attribute"`` path."""
    SERVICES[name] = target


def load(name):
    """Instantiate the service registered as ``name``."""
    try:
        target = SERVICES[name]
    except KeyError:
        raise ValueError("unknown devkit service %r (known: %s)"
                         % (name, ", ".join(sorted(SERVICES)) or "none")) from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)()


def runs_with(pid, *words):
    """True when process ``pid`` runs with every one of these arguments (a zombie has none)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    return all(word.encode() in argv for word in words)


class ProcessService:
    """Base of the services that run as their own process (``python -m MODULE serve ...``),
    so that they outlive the process that ran ``python -m devkit up``.

    Subclasses set ``name``, ``module`` (e.g. ``"devkit.dps"``) and implement
    ``serve_args(rig, section_file) -> list``; the server writes its devkit.json section
    (with its ``pid``) to ``section_file`` once it listens. ``down`` stops it by that pid,
    after checking the pid still is that server (also from a fresh process).
    """

    name = ""
    module = ""
    startup_timeout_s = 30.0

    def __init__(self):
        self._proc = None

    def serve_args(self, rig, section_file):
        raise NotImplementedError

    def state_dir(self, rig):
        path = os.path.join(str(rig.dir), self.name)
        os.makedirs(path, exist_ok=True)
        return path

    def up(self, rig):
        """Start the server; return its devkit.json section."""
        state = self.state_dir(rig)
        section_file = os.path.join(state, "section.json")
        log_path = os.path.join(state, "server.log")
        if os.path.exists(section_file):
            os.unlink(section_file)
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        argv = [sys.executable, "-m", self.module, "serve"] + list(self.serve_args(rig, section_file))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=checkout, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while not os.path.exists(section_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("%s server did not start; see %s" % (self.name, log_path))
            time.sleep(0.05)
        self._proc = proc
        with open(section_file, encoding="utf-8") as handle:
            return json.load(handle)

    def is_our_server(self, pid):
        """True when ``pid`` still is this service's server (a zombie has an empty cmdline)."""
        return runs_with(pid, self.module, "serve")

    def down(self, rig, section):
        """Stop the server (idempotent; works from a fresh process)."""
        pid = section.get("pid")
        if not pid or not self.is_our_server(pid):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if self._proc is not None and self._proc.pid == pid:
            try:  # our own child: reap it, or it lingers as a zombie
                self._proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not self.is_our_server(pid):
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
