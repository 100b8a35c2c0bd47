"""The stand-in aziot services: what starting each one does, and its resulting state.

No long-running daemons: starting a unit runs its start-up work synchronously and records
the state (`systemctl is-active` wording) in store.SERVICES_FILE. The work is the part of
the real services our product can observe, with the real log lines:

- aziot-keyd, aziot-certd: become active (aziotd/src/main.rs: "Starting service...",
  "Version - X", "Starting server...").
- aziot-tpmd: opens the configured TCTI (``device`` means /dev/tpmrm0); when it cannot, the
  process exits (tpm2-tss's diagnostics and the error chain in its journal) and systemd
  restarts it every 5 s (systemd.py).
- aziot-identityd: provisions (identityd.py: a valid device_info backup is used whatever the
  configuration says; registration through the device's TPM with the devkit's DPS emulator
  otherwise); a failure exits the process, restarted every 5 s.
- aziot-edged (edgelet/aziot-edged/src/main.rs, provision.rs, watchdog.rs): asks identityd for
  the device ("Device is D on HUB"), removes the modules when the device changed (its
  provisioning_state cache), calls the reprovision API first with auto_reprovisioning_mode
  AlwaysOnStartup, runs edgeAgent, and its watchdog logs every 60 s (store.py).

Also usable as ``python -m aziot_standin.services UNIT start|stop|restart|status`` (the
/etc/init.d scripts the devkit systemctl shim calls); ``status`` exits like LSB scripts:
0 active, 3 inactive, 1 failed, 150 activating (auto-restart pending). Starts, stops and
restarts run as jobs in a process of their own (systemd.run_job): the unit's start-up goes on
when whoever asked for it is killed, as under systemd.
"""
import hashlib
import os
import random
import shutil
import socket
import sys
import time
import urllib.parse

from . import identityd, store, systemd
from .common import CONFIG_D, identity_version, service_config, tpm_child, unit_environment  # noqa: F401

START_ORDER = ("aziot-keyd", "aziot-certd", "aziot-tpmd", "aziot-identityd", "aziot-edged")
LSB_STATUS = {"active": 0, "inactive": 3, "failed": 1, "activating": 150}
EDGED_CACHE = "/var/lib/aziot/edged/cache"


def _plain(unit):
    """keyd and certd: nothing to check in the stand-in."""
    store.set_service(unit, "active")
    systemd.started(unit)
    store.log(unit, "INFO", "Starting service...")
    store.log(unit, "INFO", "Version - %s" % identity_version())
    store.log(unit, "INFO", "Starting server...")
    return True


def start_tpmd():
    """Open the TCTI; when it cannot, tpm2-tss's diagnostics and the error chain are logged and
    the process exits (restarted by systemd)."""
    unit = "aziot-tpmd"
    tcti = service_config("tpmd").get("tcti", "device")
    store.set_service(unit, "active")
    systemd.started(unit)
    store.log(unit, "INFO", "Starting service...")
    store.log(unit, "INFO", "Version - %s" % identity_version())
    answer, stderr = tpm_child({"op": "probe", "tcti": tcti})
    for line in stderr:
        store.raw(unit, line)
    if not answer["ok"]:
        systemd.error_chain(unit, "service encountered an error", [
            "Could not initialize TCTI with config %r: %s" % (tcti, answer["error"]),
            "%s: %s" % (answer["type"], answer["error"])])
        systemd.exited(unit)
        return False
    store.log(unit, "INFO", "Starting server...")
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


def _device_digest(device):
    """provision.rs device_digest: what identifies the device edged's modules belong to."""
    return hashlib.sha256(("%s|%s" % (device.get("hub"), device.get("device_id"))).encode()).hexdigest()


def _update_device_cache(unit, device):
    """provision.rs update_device_cache: a changed device removes every module."""
    path = os.path.join(EDGED_CACHE, "provisioning_state")
    store.log(unit, "INFO", "Detecting if device information has changed...")
    try:
        with open(path, "r", encoding="utf-8") as f:
            cached = f.read()
    except FileNotFoundError:
        cached = ""
    current = _device_digest(device)
    if cached == current:
        store.log(unit, "INFO", "Device information has not changed")
        return
    store.log(unit, "INFO", "Change to device information detected")
    store.log(unit, "INFO", "Removing all modules...")
    store.set_modules([])
    store.log(unit, "INFO", "Removed all modules")
    store.log(unit, "INFO", "Updating cached device information")
    os.makedirs(EDGED_CACHE, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(current)


def start_edged():
    """Get the device from identityd, then run edgeAgent once the engine answers."""
    unit = "aziot-edged"
    store.set_service(unit, "active", watchdog=None)
    systemd.started(unit)
    info = store.build_info()
    store.log(unit, "INFO", "Starting Azure IoT Edge Daemon")
    store.log(unit, "INFO", "Version - %s" % info.get("edge_version", "unknown"))
    cfg = service_config("edged")
    if cfg.get("auto_reprovisioning_mode") == "AlwaysOnStartup" and identityd.device() is not None:
        shutil.rmtree(EDGED_CACHE, ignore_errors=True)
        error = identityd.reprovision()
        if error:
            store.log(unit, "ERR!", "Reprovision on startup failed: {}")
            store.set_service(unit, "activating")
            store.stop_modules()
            return False
    store.log(unit, "INFO", "Obtaining Edge device provisioning data...")
    device = identityd.device()
    if not cfg or not device:
        # Real aziot-edged keeps running and asks again every 5 s (provision.rs); the stand-in
        # shows it activating until identityd has a device (devkit/README.md, divergences).
        store.log(unit, "WARN", "Failed to obtain device identity: connection closed before message completed")
        store.log(unit, "WARN", "Identity Service was unreachable. Waiting for Identity Service startup.")
        store.set_service(unit, "activating")
        store.stop_modules()
        return False
    store.log(unit, "INFO", "Device is %s on %s" % (device.get("device_id"), device.get("hub")))
    _update_device_cache(unit, device)
    uri = cfg.get("moby_runtime", {}).get("uri", "unix:///var/run/docker.sock")
    if not engine_reachable(uri):
        store.log(unit, "ERR!", "Failed to initialize module runtime")
        store.log(unit, "ERR!", "caused by: A module runtime error occurred")
        store.log(unit, "ERR!", "caused by: could not connect to %s" % uri)
        store.set_service(unit, "activating")
        store.stop_modules()
        return False
    store.log(unit, "INFO", "Starting watchdog with 60 second period...")
    store.log(unit, "INFO", "Watchdog checking Edge runtime status")
    agent = cfg.get("agent", {})
    image = agent.get("config", {}).get("image", "")
    mods = store.modules()
    existing = next((m for m in mods if m["name"] == "edgeAgent"), None)
    if existing is not None:
        # An existing container is started as it is: a changed [agent] (image, env) reaches
        # it only after it was removed (docker rm -f edgeAgent), as with the real runtime.
        store.log(unit, "INFO", "Edge runtime status is stopped, starting module now...")
        existing.update(status="running", since=time.time())
        store.log(unit, "INFO", "Started Edge runtime module edgeAgent")
    else:
        store.log(unit, "INFO", "Creating and starting Edge runtime module edgeAgent...")
        existing = {"name": "edgeAgent", "status": "running", "image": image,
                    "env": ["%s=%s" % kv for kv in sorted((agent.get("env") or {}).items())],
                    "id": "%064x" % random.getrandbits(256), "since": time.time()}
        mods.append(existing)
    store.set_modules(mods)
    store.set_service(unit, "active", watchdog=time.time())
    return True


STARTERS = {"aziot-keyd": lambda: _plain("aziot-keyd"), "aziot-certd": lambda: _plain("aziot-certd"),
            "aziot-tpmd": start_tpmd, "aziot-identityd": identityd.start, "aziot-edged": start_edged}


def _run_starter(unit):
    """Start ``unit`` (as systemd's restart does); identityd coming up lets a waiting edged on."""
    ok = STARTERS[unit]()
    if ok and unit == "aziot-identityd" and store.services()["aziot-edged"]["state"] == "activating":
        start_edged()
    return ok


def stop(unit):
    """Stop a unit on purpose (edged takes its modules down); a pending restart is cancelled."""
    state = store.services()[unit]["state"]
    store.set_service(unit, "inactive", gen=systemd.new_generation(), failing_since=None, restarts=None,
                      device=None, watchdog=None)
    if state != "inactive":
        systemd.stopped(unit)
    if unit == "aziot-edged":
        store.stop_modules()


def start(unit):
    """Start a unit on purpose; return True when it ended up healthy."""
    if store.services()[unit]["state"] == "active":
        return True
    store.set_service(unit, store.services()[unit]["state"], gen=systemd.new_generation(),
                      failing_since=None, restarts=None)
    return STARTERS[unit]()


def restart_all():
    """What `iotedge system restart` and `config apply` do: stop all, start in order, as one
    job the caller waits for (systemd.run_job: a killed caller leaves it running)."""
    return systemd.run_job(["all", "restart"])[0]


def _restart_all_job():
    with store.locked():
        for unit in reversed(START_ORDER):
            stop(unit)
        for unit in START_ORDER:
            start(unit)
    return 0


def reprovision():
    """The identity service's reprovision API as `iotedge system reprovision` calls it (its
    socket starts the service when it is not running), then aziot-edged restarted; served by
    the service (a job of its own), so a killed caller does not cut a registration short.
    None on success, else the error the CLI prints."""
    rc, out = systemd.run_job(["aziot-identityd", "reprovision"])
    return None if rc == 0 else (out.strip() or "Failed to reprovision: the identity service ended")


def _reprovision_job():
    with store.locked():
        if store.services()["aziot-identityd"]["state"] != "active":
            start("aziot-tpmd")
            if not start("aziot-identityd"):
                sys.stdout.write("Failed to reprovision: Connection refused (os error 111)\n")
                return 1
        error = identityd.reprovision()
        if error:
            sys.stdout.write("Failed to reprovision: %s\n" % error)
            return 1
        stop("aziot-edged")
        start("aziot-edged")
    return 0


JOBS = {("all", "restart"): _restart_all_job, ("aziot-identityd", "reprovision"): _reprovision_job}


def main(argv):
    """init.d-style entry point: UNIT start|stop|restart|status (and the restarter's
    ``auto-restart GEN``). start, stop and restart run as a job (systemd.run_job); ``--job``
    marks the job's own process, which does the work."""
    if len(argv) == 3 and argv[1] == "auto-restart" and argv[0] in STARTERS:
        return systemd.auto_restart(argv[0], argv[2], _run_starter)
    job = argv[:1] == ["--job"]
    if job:
        argv = argv[1:]
        if tuple(argv) in JOBS:
            return JOBS[tuple(argv)]()
    if len(argv) != 2 or argv[0] not in STARTERS:
        sys.stderr.write("usage: services.py {%s} {start|stop|restart|status}\n"
                         % "|".join(START_ORDER))
        return 2
    unit, action = argv
    if action == "status":
        state = store.services()[unit]["state"]
        sys.stdout.write("%s\n" % state)
        return LSB_STATUS.get(state, 4)
    if action not in ("start", "stop", "restart"):
        return 0
    if not job:
        return systemd.run_job([unit, action])[0]
    with store.locked():
        if action in ("stop", "restart"):
            stop(unit)
        if action in ("start", "restart"):
            start(unit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
