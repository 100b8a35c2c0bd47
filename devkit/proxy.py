"""An HTTP proxy on the rig (Debian's tinyproxy), for devices whose only way out is a proxy.

Two tinyproxy processes listen on the host side of the rig's bridge (``rig.host_ip``, ports
3128 and 3129): an open one and one that wants Basic auth (a user and a generated password). Both allow CONNECT to any
port (the DPS emulator does not listen on 443), run as ``nobody`` and log every request to
``DIR/proxy/<name>.log`` (their stderr, kept by the rig: tinyproxy opens a LogFile only after
dropping privileges). Registered as the rig service ``proxy``; its devkit.json section::

    {"url": "http://10.213.7.1:PORT", "host": "10.213.7.1", "port": PORT, "log": ".../open.log",
     "auth": {"url": "http://10.213.7.1:PORT2", "port": PORT2, "user": "edge",
              "password": "...", "log": ".../auth.log"},
     "pids": [..]}

Devices of the ``proxied`` variant reach these two ports and nothing else of the network
(devkit/variants.py).
"""
import os
import secrets
import signal
import socket
import subprocess
import time

from devkit.services import runs_with

PROXY_USER = "edge"
TINYPROXY = "tinyproxy"
# Fixed ports on the rig's own host address (each rig has its own), so that the `proxied`
# variant's firewall knows them before any service runs.
PORTS = {"open": 3128, "auth": 3129}


def _config(host, port, subnet, auth=None):
    lines = ["User nobody", "Group nogroup", "Listen %s" % host, "Port %d" % port,
             "Timeout 60", "LogLevel Info", "MaxClients 100", "Allow 127.0.0.1",
             "Allow %s" % subnet, "DisableViaHeader Yes"]
    # No ConnectPort line: CONNECT is allowed to every port (the emulator is not on 443).
    if auth:
        lines.append("BasicAuth %s %s" % auth)
    return "\n".join(lines) + "\n"


def _wait_listening(host, port, proc, log_path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, encoding="utf-8", errors="replace") as handle:
                raise RuntimeError("tinyproxy exited: %s" % handle.read()[-800:])
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("tinyproxy did not listen on %s:%d in time" % (host, port))


class ProxyService:
    """The rig's HTTP proxies (open and authenticated)."""

    name = "proxy"

    def up(self, rig):
        state = os.path.join(str(rig.dir), "proxy")
        os.makedirs(state, exist_ok=True)
        host = rig.host_ip
        subnet = host.rsplit(".", 1)[0] + ".0/24"
        password = secrets.token_hex(12)
        section = {"host": host, "pids": [], "confs": []}
        try:
            for kind, auth in (("open", None), ("auth", (PROXY_USER, password))):
                port = PORTS[kind]
                conf = os.path.join(state, kind + ".conf")
                log_path = os.path.join(state, kind + ".log")
                with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
                    handle.write(_config(host, port, subnet, auth))
                with open(log_path, "ab") as log:
                    proc = subprocess.Popen([TINYPROXY, "-d", "-c", conf], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True)
                section["pids"].append(proc.pid)
                section["confs"].append(conf)
                _wait_listening(host, port, proc, log_path)
                entry = {"url": "http://%s:%d" % (host, port), "port": port, "log": log_path}
                if kind == "open":
                    section.update(entry)
                else:
                    section["auth"] = dict(entry, user=PROXY_USER, password=password)
        except BaseException:
            self.down(rig, section)
            raise
        return section

    def down(self, rig, section):
        for pid, conf in zip(section.get("pids", []), section.get("confs", [])):
            if not runs_with(pid, conf):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and runs_with(pid, conf):
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.05)
