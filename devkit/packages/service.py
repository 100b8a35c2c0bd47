"""The package repository as a devkit rig service (see devkit/services.py).

``up`` builds the repository (cached under ``<checkout>/.devkit/packages/repo``) and starts
``python -m devkit.packages serve`` as its own process bound to ``rig.host_ip``, so the
repository outlives the process that ran ``python -m devkit up``; ``down`` stops it by the
pid recorded in the section. Register it with
``devkit.services.register("packages", "devkit.packages.service:AptService")``.
"""
import json
import os
import signal
import subprocess
import sys
import time

from .__main__ import DEFAULT_DIR
from .builder import build_repo

STARTUP_TIMEOUT_S = 30.0


def _is_our_server(pid):
    """True when ``pid`` still is a ``python -m devkit.packages serve`` process."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"devkit.packages" in argv and b"serve" in argv


class AptService:
    """Serves the stand-in repository to a rig's devices."""

    name = "packages"

    def __init__(self, repo_dir=None):
        self.repo_dir = repo_dir or DEFAULT_DIR

    def up(self, rig):
        """Start the server process; return the devkit.json section (with its ``pid``)."""
        build_repo(self.repo_dir)
        section_file = os.path.join(str(rig.dir), "packages-section.json")
        log_path = os.path.join(str(rig.dir), "packages-server.log")
        if os.path.exists(section_file):
            os.unlink(section_file)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "devkit.packages", "serve", "--repo", self.repo_dir,
                 "--host-ip", rig.host_ip, "--section-file", section_file],
                cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not os.path.exists(section_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("package repository server did not start; see %s" % log_path)
            time.sleep(0.05)
        with open(section_file, "r", encoding="utf-8") as f:
            return json.load(f)

    def down(self, rig, section):
        """Stop the server process (idempotent)."""
        pid = section.get("pid")
        if not pid or not _is_our_server(pid):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
