"""On-device state of the stand-in runtime: build info, service states, journal.

Everything lives where the real runtime keeps its own state (under /var/lib/aziot and
/var/log/aziot), in plain JSON so tests and people can read it:

- /usr/lib/aziot-standin/*.json          build info written by the packages (versions,
                                          interpreter, devkit checkout for the TPM client)
- /var/lib/aziot/standin/services.json   {unit: {"state": "active"|"inactive"|"failed"|
                                          "activating", "pid": n, "since": epoch}}
- /var/lib/aziot/standin/modules.json    [{"name", "status", "image", "env", "since"}]: the
                                          containers (dockerd serves them; `docker rm` removes)
- /var/lib/aziot/identityd/device_info   the provisioning backup, as the real identityd writes
                                          it (identity/aziot-identityd/src/identity.rs,
                                          HubDeviceInfo: TOML with hub_name,
                                          local_gateway_hostname, device_id; or "unprovisioned")
- /var/log/aziot/standin-journal.jsonl   the journal that `iotedge system logs` prints
- /run/aziot-standin/lock                serialises unit starts/stops (systemd runs one job per
                                          unit at a time)
"""
import contextlib
import fcntl
import json
import os
import random
import re
import socket
import time

LIB_DIR = "/usr/lib/aziot-standin"
STATE_DIR = "/var/lib/aziot/standin"
SERVICES_FILE = STATE_DIR + "/services.json"
MODULES_FILE = STATE_DIR + "/modules.json"
WATCHDOG_FILE = "/var/log/aziot/standin-watchdog.json"   # (journal bookkeeping, next to it)
BACKUP_FILE = "/var/lib/aziot/identityd/device_info"
JOURNAL_FILE = "/var/log/aziot/standin-journal.jsonl"

LOCK_FILE = "/run/aziot-standin/lock"
JOURNAL_LOCK = "/run/aziot-standin/journal.lock"

AZIOT_UNITS = ("aziot-edged", "aziot-identityd", "aziot-keyd", "aziot-certd", "aziot-tpmd")
# aziot-edged's watchdog (edgelet/aziot-edged/src/watchdog.rs): a fixed 60 s period, not
# configurable in the real daemon either.
WATCHDOG_PERIOD = 60


@contextlib.contextmanager
def locked(path=LOCK_FILE):
    """Hold an exclusive lock (one job at a time, as systemd runs one job per unit)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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


BOOT_FILE = "/run/aziot-standin/boot"


def boot_token():
    """This boot's token, in /run (a tmpfs emptied at every boot, as systemd's unit states are)."""
    try:
        with open(BOOT_FILE, "r", encoding="ascii") as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    token = "%016x" % random.getrandbits(64)
    try:
        os.makedirs(os.path.dirname(BOOT_FILE), exist_ok=True)
        with open(BOOT_FILE, "x", encoding="ascii") as f:
            f.write(token)
    except FileExistsError:
        return boot_token()
    except OSError:   # not root: nothing recorded this boot yet
        pass
    return token


def services():
    """Current state of every aziot unit (inactive when never started in this boot)."""
    data = read_json(SERVICES_FILE, {})
    token = boot_token()
    out = {}
    for unit in AZIOT_UNITS:
        entry = data.get(unit)
        out[unit] = entry if entry and entry.get("boot") == token else {"state": "inactive"}
    return out


def set_service(unit, state, **fields):
    """Record a unit's state (and ``fields``; a None value removes one); a fresh pid is drawn
    when it becomes active (a new process)."""
    data = read_json(SERVICES_FILE, {})
    entry = services()[unit]
    entry["boot"] = boot_token()
    if state == "active" and entry.get("state") != "active":
        entry["pid"] = random.randint(1000, 60000)
        entry["since"] = time.time()
    entry["state"] = state
    for key, value in fields.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    data[unit] = entry
    write_json(SERVICES_FILE, data)


# --------------------------------------------------------------------------------------
# The identity service's device backup (identity/aziot-identityd/src/identity.rs)

_TOML_LINE = re.compile(r'^\s*([a-z_]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*$')


def read_device_info():
    """(device dict or None, error or None) from device_info, as HubDeviceInfo::new reads it:
    "unprovisioned" is no device; anything else must be TOML with the three keys."""
    try:
        with open(BACKUP_FILE, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    if text == "unprovisioned":
        return None, None
    found = {}
    for line in text.splitlines():
        match = _TOML_LINE.match(line)
        if match:
            found[match.group(1)] = match.group(2)
        elif line.strip():
            return None, "TOML parse error at line %s" % line.strip()[:40]
    missing = [k for k in ("hub_name", "local_gateway_hostname", "device_id") if k not in found]
    if missing:
        return None, "missing field `%s`" % missing[0]
    return found, None


def write_device_info(hub, device_id, gateway=None):
    """What reconcile_hub_identities writes (toml::to_string of HubDeviceInfo, field order)."""
    text = 'hub_name = "%s"\nlocal_gateway_hostname = "%s"\ndevice_id = "%s"\n' % (
        hub, gateway or hub, device_id)
    os.makedirs(os.path.dirname(BACKUP_FILE), exist_ok=True)
    tmp = BACKUP_FILE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, BACKUP_FILE)


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


def raw(unit, text, ident=None, pid=None, when=None):
    """Append a line exactly as the process printed it (e.g. tpm2-tss diagnostics).
    ``ident``/``pid``: another writer than the unit's process (systemd[1] for its own lines)."""
    os.makedirs(os.path.dirname(JOURNAL_FILE), exist_ok=True)
    entry = {"t": time.time() if when is None else when, "unit": unit,
             "pid": service_pid(unit) if pid is None else pid, "msg": text}
    if ident:
        entry["ident"] = ident
    with open(JOURNAL_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def systemd_log(unit, text):
    """A line systemd itself writes about ``unit`` (journalctl -u shows them with the unit's)."""
    raw(unit, text, ident="systemd", pid=1)


def _watchdog_catch_up():
    """aziot-edged's watchdog lines that are due (every WATCHDOG_PERIOD s while edged runs with
    its agent), written with the times they fall on. The stand-in keeps no daemon, so they are
    written when someone reads the journal; what a reader sees is what the real one would."""
    with locked(JOURNAL_LOCK):
        entry = services()["aziot-edged"]
        started = entry.get("watchdog")
        if entry.get("state") != "active" or not started:
            return
        now = time.time()
        tick = max(read_json(WATCHDOG_FILE, {}).get(str(started), started), started)
        if tick + WATCHDOG_PERIOD > now:
            return
        while tick + WATCHDOG_PERIOD <= now:
            tick += WATCHDOG_PERIOD
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tick))
            for message in ("Watchdog checking Edge runtime status", "Edge runtime is running"):
                raw("aziot-edged", "%s [INFO] - %s" % (stamp, message), when=tick)
        write_json(WATCHDOG_FILE, {str(started): tick})


def journal(units=None, lines=None, since=None):
    """Journal entries formatted like journalctl's short output."""
    try:
        _watchdog_catch_up()
    except OSError:   # not root: nothing written, what is there is shown
        pass
    host = socket.gethostname()
    entries = []
    try:
        with open(JOURNAL_FILE, "r", encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                if (not units or entry["unit"] in units) and (since is None or entry["t"] >= since):
                    entries.append(entry)
    except FileNotFoundError:
        pass
    out = []
    for entry in sorted(entries, key=lambda e: e["t"]):   # journalctl shows them by time
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(entry["t"]))
        out.append("%s %s %s[%d]: %s" % (stamp, host, entry.get("ident") or entry["unit"],
                                         entry["pid"], entry["msg"]))
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
