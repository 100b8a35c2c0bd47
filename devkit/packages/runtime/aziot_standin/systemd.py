"""What systemd does around the stand-in units: its own journal lines, and Restart=on-failure.

Every aziot unit has ``Restart=on-failure`` and ``RestartSec=5s``
(identity/aziot-identityd/aziot-identityd.service.in, tpm/aziot-tpmd/aziot-tpmd.service.in,
key/aziot-keyd/aziot-keyd.service.in, cert/aziot-certd/aziot-certd.service.in in
Azure/iot-identity-service; edgelet/contrib/systemd/debian/aziot-edged.service in
Azure/iotedge). A daemon that fails at start-up exits with status 1 (aziotd/src/main.rs:
``std::process::exit(1)`` after logging the error chain); systemd then logs the exit, keeps the
unit ``activating`` (auto-restart) and starts it again 5 s later, without end (the default start
limit, 5 starts in 10 s, is never reached at one start per 5 s).

Jobs: ``systemctl start|stop|restart`` (and ``iotedge config apply`` / ``system restart``, which
call it, aziotctl-common src/system/) only ask PID 1 for a job and wait for it; the unit's
process runs in the unit's own cgroup. Killing the caller (Ctrl+C, a process-group kill of an
SSH command) stops the waiting, never the unit's start-up: an identity service in the middle of
its DPS registration goes on and either provisions or exits and is restarted. The stand-in
runs each job in a detached process of its own (``run.py service --job ...``, a session of its
own) that its caller waits for (run_job), so that the same holds.

The stand-in keeps no daemon process, so a failed start spawns one detached restarter process
(``run.py service UNIT auto-restart GEN``) that sleeps RESTART_SEC, starts the unit again and
loops while it keeps failing. It stops when the unit was stopped or started by anyone else
(another generation), and after RETRY_BUDGET seconds of failures (a kit limit: the real unit
retries forever; the kit spares a shared machine's CPU, a DPS registration attempt each time).
"""
import os
import secrets
import subprocess
import sys
import time

from . import store

RESTART_SEC = 5
RETRY_BUDGET = 300
DESCRIPTIONS = {"aziot-keyd": "Azure IoT Keys Service", "aziot-certd": "Azure IoT Certificates Service",
                "aziot-tpmd": "Azure IoT TPM Service", "aziot-identityd": "Azure IoT Identity Service",
                "aziot-edged": "Azure IoT Edge daemon"}
IN_RESTARTER = {"value": False}


def new_generation():
    """A token that changes whenever someone starts or stops the unit on purpose."""
    return secrets.token_hex(6)


def started(unit):
    """systemd's line once a Type=simple unit's process runs."""
    store.systemd_log(unit, "Started %s." % DESCRIPTIONS[unit])


def stopped(unit):
    """systemd's lines when it stops a unit."""
    store.systemd_log(unit, "Stopping %s..." % DESCRIPTIONS[unit])
    store.systemd_log(unit, "%s.service: Deactivated successfully." % unit)
    store.systemd_log(unit, "Stopped %s." % DESCRIPTIONS[unit])


def error_chain(unit, first, causes):
    """aziotd/src/main.rs: the error, then each source as "caused by: ...", at ERR!."""
    store.log(unit, "ERR!", first)
    for cause in causes:
        store.log(unit, "ERR!", "caused by: %s" % cause)


def exited(unit):
    """The unit's process exited with status 1: systemd schedules a restart (auto-restart)."""
    store.systemd_log(unit, "%s.service: Main process exited, code=exited, status=1/FAILURE" % unit)
    store.systemd_log(unit, "%s.service: Failed with result 'exit-code'." % unit)
    entry = store.services()[unit]
    store.set_service(unit, "activating", failing_since=entry.get("failing_since") or time.time(),
                      device=None)
    if not IN_RESTARTER["value"]:
        spawn_restarter(unit, entry.get("gen") or "")


def _run_py():
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run.py")


def run_job(args):
    """``run.py service --job ARGS`` in a session of its own (PID 1's job), waited for; its exit
    status and its standard output (what the job answers, e.g. the reprovision API's error).
    A caller killed while it waits leaves the job running to its end."""
    with open(os.devnull, "r+b") as null:
        proc = subprocess.Popen([sys.executable, "-I", _run_py(), "service", "--job"] + list(args),
                                stdin=null, stdout=subprocess.PIPE, stderr=null, start_new_session=True,
                                close_fds=True)
    out, _ = proc.communicate()
    return proc.returncode, out.decode("utf-8", "replace")


def spawn_restarter(unit, gen):
    """Start the detached process that restarts ``unit`` every RESTART_SEC while it fails."""
    with open(os.devnull, "r+b") as null:
        subprocess.Popen([sys.executable, "-I", _run_py(), "service", unit, "auto-restart", gen],
                         stdin=null, stdout=null, stderr=null, start_new_session=True, close_fds=True)


def auto_restart(unit, gen, start):
    """The restarter's loop: ``start(unit)`` every RESTART_SEC until it succeeds, someone else
    starts or stops the unit, or the kit's retry budget is spent."""
    IN_RESTARTER["value"] = True
    while True:
        time.sleep(RESTART_SEC)
        with store.locked():
            entry = store.services()[unit]
            if entry.get("state") != "activating" or (entry.get("gen") or "") != gen:
                return 0
            if time.time() - (entry.get("failing_since") or time.time()) > RETRY_BUDGET:
                return 0
            count = entry.get("restarts", 0) + 1
            store.set_service(unit, "activating", restarts=count)
            store.systemd_log(unit, "%s.service: Scheduled restart job, restart counter is at %d."
                              % (unit, count))
            store.systemd_log(unit, "Stopped %s." % DESCRIPTIONS[unit])
            started(unit)
            if start(unit):
                store.set_service(unit, "active", failing_since=None)
                return 0
