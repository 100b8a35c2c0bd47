"""The DPS emulator as a devkit rig service (protocol in devkit/services.py).

``up`` starts ``python -m devkit.dps serve`` as its own process (it outlives the process that ran
``python -m devkit up``), listening on all addresses with the rig's ``host_ip`` as the device
endpoint, state in ``<rig dir>/dps``; ``down`` stops it by the pid recorded in the section.
``prepare_device`` copies the emulator's CA into each device at ``DEVICE_CA_PATH`` (a device
cannot see the host's /tmp, where rig directories often live); the section names that path as
``device_ca_bundle``. Register with
``devkit.services.register("dps", "devkit.dps.service:DpsService")``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

STARTUP_TIMEOUT_S = 30.0
DEVICE_CA_PATH = "/usr/local/share/ca-certificates/devkit-dps-ca.crt"


def _is_our_server(pid: int) -> bool:
    """True when ``pid`` still is a ``python -m devkit.dps serve`` process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"devkit.dps" in argv and b"serve" in argv


class DpsService:
    """Runs the DPS emulator next to a rig's devices."""

    name = "dps"

    def __init__(self, port: int = 0):
        self.port = port
        self._ca_pem: bytes = b""
        self._proc = None

    def up(self, rig) -> dict:
        """Start the emulator process; return the devkit.json section (with its ``pid``)."""
        state_dir = os.path.join(str(rig.dir), "dps")
        os.makedirs(state_dir, exist_ok=True)
        section_file = os.path.join(state_dir, "section.json")
        log_path = os.path.join(state_dir, "server.log")
        if os.path.exists(section_file):
            os.unlink(section_file)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        argv = [sys.executable, "-m", "devkit.dps", "serve", "--dir", state_dir, "--port", str(self.port),
                "--section-file", section_file]
        if rig.host_ip:
            argv += ["--host-ip", rig.host_ip]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not os.path.exists(section_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"DPS emulator did not start; see {log_path}")
            time.sleep(0.05)
        self._proc = proc
        with open(section_file, encoding="utf-8") as f:
            section = json.load(f)
        with open(section["ca_bundle"], "rb") as f:
            self._ca_pem = f.read()
        section["device_ca_bundle"] = DEVICE_CA_PATH
        return section

    def prepare_device(self, rig, spec) -> None:
        """Make devices trust the emulator's CA system-wide, as real devices trust the public CA
        behind the real DPS: the runtime (and anything else) then verifies it with the default
        trust store, nothing configured per program."""
        if self._ca_pem:
            spec.write_file(DEVICE_CA_PATH, self._ca_pem, mode=0o644)
            spec.run("update-ca-certificates", "--fresh")

    def down(self, rig, section: dict) -> None:
        """Stop the emulator process (idempotent; works from a fresh process)."""
        pid = section.get("pid")
        if not pid or not _is_our_server(pid):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if self._proc is not None and self._proc.pid == pid:
            try:  # our own child: reap it (a zombie would look alive to kill(pid, 0))
                self._proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not _is_our_server(pid):  # gone (a zombie has an empty cmdline)
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
