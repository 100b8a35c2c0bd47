"""What every stand-in unit shares: its applied configuration, the environment systemd gives
it, the TPM child process and the package versions."""
import json
import os
import subprocess
import urllib.parse

from . import store
from . import tomlcompat as tomllib

CONFIG_D = "/etc/aziot/%s/config.d/00-super.toml"


def service_config(name):
    """The per-service file written by `iotedge config apply` (empty when absent)."""
    try:
        with open(CONFIG_D % name, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}


def unit_environment(unit):
    """The environment systemd gives ``unit`` (Environment= of its drop-ins, as loaded at the
    last daemon-reload), asked from `systemctl show` as a process of that unit would see it."""
    try:
        out = subprocess.run(["systemctl", "show", "--property=Environment", unit], capture_output=True,
                             text=True, timeout=30, check=False).stdout
    except OSError:
        return {}
    env = {}
    for line in out.splitlines():
        if line.startswith("Environment="):
            for word in line[len("Environment="):].split():
                key, sep, value = word.partition("=")
                if sep:
                    env[key] = value
    return env


def https_proxy(env):
    """The proxy aziot-identityd uses: HTTPS_PROXY first, then https_proxy (None: direct)."""
    return env.get("HTTPS_PROXY") or env.get("https_proxy") or None


def proxy_shown(url):
    """``scheme://host:port`` of a proxy URL (credentials left out), None when it does not parse."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 80
    except ValueError:
        return None
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return None
    return "%s://%s:%d" % (parts.scheme, parts.hostname, port)


def python():
    """Interpreter for the TPM child: the devkit venv, else the system python3."""
    py = store.build_info().get("python")
    return py if py and os.path.exists(py) else "/usr/bin/python3"


def tpm_child(request):
    """Run tpmchild.py with ``request``; return (answer dict, stderr lines)."""
    request = dict(request, devkit_root=store.build_info().get("devkit_root"))
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tpmchild.py")
    proc = subprocess.run([python(), "-I", script], input=json.dumps(request),
                          capture_output=True, text=True, timeout=120, check=False)
    stderr = [line.rstrip() for line in proc.stderr.splitlines() if line.strip()]
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        answer = {"ok": False, "stage": "client", "type": "ChildError",
                  "error": "TPM helper exited with %d" % proc.returncode}
    return answer, stderr



def identity_version():
    """The identity service version string (aziotd logs "Version - X")."""
    return store.build_info().get("identity_version", "unknown")
