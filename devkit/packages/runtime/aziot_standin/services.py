"""The stand-in aziot services: what starting each one does, and its resulting state.

No long-running daemons: starting a unit runs its start-up work synchronously and records
the state (`systemctl is-active` wording) in store.SERVICES_FILE. The work is the part of
the real services our product can observe:

- aziot-keyd, aziot-certd: become active.
- aziot-tpmd: opens the configured TCTI (``device`` means /dev/tpmrm0); on failure it is
  ``failed`` and tpm2-tss's diagnostics land in its journal.
- aziot-identityd: provisions. With DPS + TPM it registers through the device's TPM with
  the devkit's DPS emulator (``devkit.tpmclient.register``), honouring
  auto_reprovisioning_mode: a provisioning backup is reused unless the mode is
  AlwaysOnStartup or the provisioning settings changed. Logs "DPS registration complete."
  and "Assigned to IoT hub: ..." on success, "DPS client error" on failure.
- aziot-edged: needs identityd's provisioning result and the container engine socket; then
  runs the edgeAgent module.

Also usable as ``python -m aziot_standin.services UNIT start|stop|restart|status`` (the
/etc/init.d scripts the devkit systemctl shim calls); ``status`` exits like LSB scripts:
0 active, 3 inactive, 1 failed, 150 activating.
"""
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.parse

from . import store
from . import tomlcompat as tomllib

CONFIG_D = "/etc/aziot/%s/config.d/00-super.toml"
START_ORDER = ("aziot-keyd", "aziot-certd", "aziot-tpmd", "aziot-identityd", "aziot-edged")
LSB_STATUS = {"active": 0, "inactive": 3, "failed": 1, "activating": 150}


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


def _proxy_shown(url):
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


# --------------------------------------------------------------------------------------
# Units


def _version():
    """The identity service version string."""
    return store.build_info().get("identity_version", "unknown")


def start_keyd():
    """Keys service: nothing to check in the stand-in."""
    store.set_service("aziot-keyd", "active")
    store.log("aziot-keyd", "INFO", "Starting Azure IoT Keys Service")
    store.log("aziot-keyd", "INFO", "Version - %s" % _version())
    store.log("aziot-keyd", "INFO", "Starting server...")


def start_certd():
    """Certificates service: nothing to check in the stand-in."""
    store.set_service("aziot-certd", "active")
    store.log("aziot-certd", "INFO", "Starting Azure IoT Certificates Service")
    store.log("aziot-certd", "INFO", "Version - %s" % _version())
    store.log("aziot-certd", "INFO", "Starting server...")


def start_tpmd():
    """Open the TCTI; ``failed`` (with tpm2-tss's diagnostics logged) when it cannot."""
    tcti = service_config("tpmd").get("tcti", "device")
    store.set_service("aziot-tpmd", "active")
    store.log("aziot-tpmd", "INFO", "Starting Azure IoT TPM Service")
    store.log("aziot-tpmd", "INFO", "Version - %s" % _version())
    answer, stderr = tpm_child({"op": "probe", "tcti": tcti})
    for line in stderr:
        store.raw("aziot-tpmd", line)
    if not answer["ok"]:
        store.log("aziot-tpmd", "ERR!", "Could not initialize TCTI with config %r: %s"
                  % (tcti, answer["error"]))
        store.log("aziot-tpmd", "ERR!", "caused by: %s: %s" % (answer["type"], answer["error"]))
        store.set_service("aziot-tpmd", "failed")
        return False
    store.log("aziot-tpmd", "INFO", "Starting server...")
    return True


def _provisioning_key(prov, tpmd):
    """What identifies 'the same provisioning settings' for reuse of the backup."""
    blob = json.dumps({"provisioning": prov, "tcti": tpmd.get("tcti"),
                       "auth_key_index": tpmd.get("auth_key_index", 0x100)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_payload(uri):
    """The JSON payload sent to DPS (a file: URI on the device)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file":
        raise ValueError("payload URI %s is not a file URI" % uri)
    with open(urllib.parse.unquote(parsed.path), "r", encoding="utf-8") as f:
        return json.load(f)


def _fail_provisioning(message, cause):
    """Record a failed provisioning attempt (identityd keeps running and retrying)."""
    store.log("aziot-identityd", "WARN",
              "Failed to provision with IoT Hub, and no valid device backup was found: %s"
              % message)
    store.log("aziot-identityd", "WARN", "caused by: %s" % cause)
    store.write_json(store.BACKUP_FILE, {"status": "failed", "error": cause,
                                         "message": message, "time": time.time()}, 0o600)


def start_identityd():
    """Provision according to the identityd config; return True when assigned."""
    store.set_service("aziot-identityd", "active")
    store.log("aziot-identityd", "INFO", "Starting Azure IoT Identity Service")
    store.log("aziot-identityd", "INFO", "Version - %s" % _version())
    cfg = service_config("identityd")
    prov = cfg.get("provisioning")
    if not prov:
        store.log("aziot-identityd", "ERR!", "could not read config: "
                  "/etc/aziot/identityd/config.d/00-super.toml: missing field `provisioning`")
        store.set_service("aziot-identityd", "failed")
        return False
    store.log("aziot-identityd", "INFO",
              "Provisioning starting. Provisioning source: %s" % prov["source"])
    if prov["source"] != "dps":
        store.write_json(store.BACKUP_FILE, {"status": "assigned", "source": prov["source"],
                                             "assignedHub": prov.get("iothub_hostname"),
                                             "deviceId": prov.get("device_id")}, 0o600)
        store.log("aziot-identityd", "INFO", "Provisioning complete.")
        return True
    tpmd = service_config("tpmd")
    key = _provisioning_key(prov, tpmd)
    mode = service_config("edged").get("auto_reprovisioning_mode", "Dynamic")
    backup = store.read_json(store.BACKUP_FILE, {})
    if (backup.get("status") == "assigned" and backup.get("key") == key
            and mode != "AlwaysOnStartup"):
        store.log("aziot-identityd", "INFO",
                  "Loaded provisioning info from backup (auto_reprovisioning_mode %s)." % mode)
        store.log("aziot-identityd", "INFO", "Assigned to IoT hub: %s" % backup["assignedHub"])
        return True
    if store.services()["aziot-tpmd"]["state"] != "active":
        _fail_provisioning("DPS client error",
                           "could not get TPM keys: aziot-tpmd is not running")
        return False
    payload = None
    if prov.get("payload"):
        try:
            payload = _read_payload(prov["payload"]["uri"])
        except (OSError, ValueError) as err:
            _fail_provisioning("DPS client error", "could not read payload: %s" % err)
            return False
    att = prov["attestation"]
    proxy = https_proxy(unit_environment("aziot-identityd"))
    if proxy:
        shown = _proxy_shown(proxy)
        if shown is None:
            store.log("aziot-identityd", "ERR!", "invalid proxy uri")
            store.set_service("aziot-identityd", "failed")
            return False
        store.log("aziot-identityd", "INFO", "Using proxy %s" % shown)
    store.log("aziot-identityd", "INFO", "Registering with DPS %s, ID scope %s, registration ID %s"
              % (prov["global_endpoint"], prov["scope_id"], att["registration_id"]))
    answer, stderr = tpm_child({"op": "register", "tcti": tpmd.get("tcti", "device"),
                                "endpoint": prov["global_endpoint"],
                                "id_scope": prov["scope_id"],
                                "registration_id": att["registration_id"],
                                "payload": payload, "proxy": proxy,
                                "auth_key_index": tpmd.get("auth_key_index", 0x100)})
    for line in stderr:
        store.raw("aziot-tpmd", line)
    state = answer.get("state") or {}
    if not answer["ok"]:
        _fail_provisioning("DPS client error", "%s: %s" % (answer["type"], answer["error"]))
        return False
    if state.get("status") != "assigned":
        _fail_provisioning("DPS client error",
                           "DPS registration failed: status %s: %s %s"
                           % (state.get("status"), state.get("errorCode", ""),
                              state.get("errorMessage", "")))
        return False
    store.log("aziot-identityd", "INFO", "DPS registration complete.")
    store.log("aziot-identityd", "INFO", "Assigned to IoT hub: %s" % state.get("assignedHub"))
    store.log("aziot-identityd", "INFO", "Device ID: %s" % state.get("deviceId"))
    store.write_json(store.BACKUP_FILE, {"status": "assigned", "key": key,
                                         "assignedHub": state.get("assignedHub"),
                                         "deviceId": state.get("deviceId"),
                                         "registrationId": att["registration_id"],
                                         "time": time.time()}, 0o600)
    return True


def engine_reachable(uri):
    """True when the container engine answers /_ping on its unix socket."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "unix":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(parsed.path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b"OK" in s.recv(4096)
    except OSError:
        return False


def start_edged():
    """Run edgeAgent once identityd has provisioned and the engine answers."""
    store.set_service("aziot-edged", "active")
    info = store.build_info()
    store.log("aziot-edged", "INFO", "Starting Azure IoT Edge Daemon")
    store.log("aziot-edged", "INFO", "Version - %s" % info.get("edge_version", "unknown"))
    cfg = service_config("edged")
    backup = store.read_json(store.BACKUP_FILE, {})
    if not cfg or backup.get("status") != "assigned":
        store.log("aziot-edged", "WARN", "Failed to obtain device provisioning info from "
                  "aziot-identityd; retrying")
        store.set_service("aziot-edged", "activating")
        store.stop_modules()
        return False
    uri = cfg.get("moby_runtime", {}).get("uri", "unix:///var/run/docker.sock")
    if not engine_reachable(uri):
        store.log("aziot-edged", "ERR!", "A module runtime error occurred")
        store.log("aziot-edged", "ERR!", "caused by: could not connect to %s" % uri)
        store.set_service("aziot-edged", "activating")
        store.stop_modules()
        return False
    store.log("aziot-edged", "INFO", "Obtained device provisioning data: hub %s, device %s"
              % (backup.get("assignedHub"), backup.get("deviceId")))
    agent = cfg.get("agent", {})
    image = agent.get("config", {}).get("image", "")
    mods = store.modules()
    existing = next((m for m in mods if m["name"] == "edgeAgent"), None)
    if existing is not None:
        # An existing container is started as it is: a changed [agent] (image, env) reaches
        # it only after it was removed (docker rm -f edgeAgent), as with the real runtime.
        store.log("aziot-edged", "INFO", "Starting existing edgeAgent container")
        existing.update(status="running", since=time.time())
    else:
        store.log("aziot-edged", "INFO", "Creating edgeAgent with image %s" % image)
        existing = {"name": "edgeAgent", "status": "running", "image": image,
                    "env": ["%s=%s" % kv for kv in sorted((agent.get("env") or {}).items())],
                    "id": "%064x" % random.getrandbits(256), "since": time.time()}
        mods.append(existing)
    store.set_modules(mods)
    return True


STARTERS = {"aziot-keyd": start_keyd, "aziot-certd": start_certd, "aziot-tpmd": start_tpmd,
            "aziot-identityd": start_identityd, "aziot-edged": start_edged}


def stop(unit):
    """Stop a unit (edged takes its modules down)."""
    if store.services()[unit]["state"] != "inactive":
        store.log(unit, "INFO", "Stopping service")
    store.set_service(unit, "inactive")
    if unit == "aziot-edged":
        store.stop_modules()


def start(unit):
    """Start a unit; return True when it ended up healthy."""
    return STARTERS[unit]()


def restart_all():
    """What `iotedge system restart` and `config apply` do: stop all, start in order."""
    for unit in reversed(START_ORDER):
        stop(unit)
    for unit in START_ORDER:
        start(unit)


def main(argv):
    """init.d-style entry point: UNIT start|stop|restart|status."""
    if len(argv) != 2 or argv[0] not in STARTERS:
        sys.stderr.write("usage: services.py {%s} {start|stop|restart|status}\n"
                         % "|".join(START_ORDER))
        return 2
    unit, action = argv
    if action == "status":
        state = store.services()[unit]["state"]
        sys.stdout.write("%s\n" % state)
        return LSB_STATUS.get(state, 4)
    if action in ("stop", "restart"):
        stop(unit)
    if action in ("start", "restart"):
        start(unit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
