"""On-device state of the stand-in runtime: build info, service states, journal.

Everything lives where the real runtime keeps its own state (under /var/lib/aziot and
/var/log/aziot), in plain JSON so tests and people can read it:

- /usr/lib/aziot-standin/*.json          build info written by the packages (versions,
                                          interpreter, devkit checkout for the TPM client)
- /var/lib/aziot/standin/services.json   {unit: {"state": "active"|"inactive"|"failed"|
                                          "activating", "pid": n, "since": epoch}}
- /var/lib/aziot/standin/modules.json    [{"name", "status", "image", "env", "since"}]: the
                                          containers (dockerd serves them; `docker rm` removes)
- /var/lib/aziot/identityd/device_info   the provisioning backup (where the real identityd
                                          keeps it, so a reset that removes it works on both)
- /var/log/aziot/standin-journal.jsonl   the journal that `iotedge system logs` prints
"""
import json
import os
import random
import socket
import time

LIB_DIR = "/usr/lib/aziot-standin"
STATE_DIR = "/var/lib/aziot/standin"
SERVICES_FILE = STATE_DIR + "/services.json"
MODULES_FILE = STATE_DIR + "/modules.json"
BACKUP_FILE = "/var/lib/aziot/identityd/device_info"
JOURNAL_FILE = "/var/log/aziot/standin-journal.jsonl"

AZIOT_UNITS = ("aziot-edged", "aziot-identityd", "aziot-keyd", "aziot-certd", "aziot-tpmd")


def read_json(path, default):
    """Load a JSON file, or ``default`` when it does not exist."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def write_json(path, data, mode=0o644):
    """Write JSON atomically (temp file + rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def build_info():
    """Merged build info of the installed stand-in packages."""
    info = {}
    for name in ("identity.json", "edge.json"):
        info.update(read_json(os.path.join(LIB_DIR, name), {}))
    return info


def services():
    """Current state of every aziot unit (inactive when never started)."""
    data = read_json(SERVICES_FILE, {})
    return {u: data.get(u, {"state": "inactive"}) for u in AZIOT_UNITS}


def set_service(unit, state):
    """Record a unit's state; a fresh pid is drawn when it becomes active."""
    data = read_json(SERVICES_FILE, {})
    entry = data.get(unit, {})
    if state in ("active", "activating") and entry.get("state") not in ("active", "activating"):
        entry["pid"] = random.randint(1000, 60000)
        entry["since"] = time.time()
    entry["state"] = state
    data[unit] = entry
    write_json(SERVICES_FILE, data)


def service_pid(unit):
    """The pid shown in journal lines of ``unit``."""
    entry = read_json(SERVICES_FILE, {}).get(unit, {})
    return entry.get("pid") or random.randint(1000, 60000)


# --------------------------------------------------------------------------------------
# Journal


def log(unit, level, message):
    """Append one aziot log line (``<ts> [LEVEL] - message``) to ``unit``'s journal."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    raw(unit, "%s [%s] - %s" % (stamp, level, message))


def raw(unit, text):
    """Append a line exactly as the process printed it (e.g. tpm2-tss diagnostics)."""
    os.makedirs(os.path.dirname(JOURNAL_FILE), exist_ok=True)
    entry = {"t": time.time(), "unit": unit, "pid": service_pid(unit), "msg": text}
    with open(JOURNAL_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def journal(units=None, lines=None):
    """Journal entries formatted like journalctl's short output."""
    host = socket.gethostname()
    out = []
    try:
        with open(JOURNAL_FILE, "r", encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                if units and entry["unit"] not in units:
                    continue
                stamp = time.strftime("%b %d %H:%M:%S", time.localtime(entry["t"]))
                out.append("%s %s %s[%d]: %s" % (stamp, host, entry["unit"], entry["pid"],
                                                 entry["msg"]))
    except FileNotFoundError:
        pass
    return out[-lines:] if lines else out


def modules():
    """Modules the stand-in edged runs."""
    return read_json(MODULES_FILE, [])


def set_modules(mods):
    """Replace the module list (root only, as the engine keeps its containers' configuration:
    their environment may hold a proxy's credentials)."""
    write_json(MODULES_FILE, mods, 0o600)


def stop_modules():
    """The engine's containers stop but stay (their environment with them), as when the real
    aziot-edged stops: a later start reuses them as they are."""
    set_modules([dict(m, status="exited") for m in modules()])
