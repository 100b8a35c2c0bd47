"""Stopping a fleet run (issue 17), for real: `az edge-tpm provision --inventory` on 10 simulated
devices, the real az in a process of its own, SIGINT and then SIGTERM at each point of the
pipeline: during the EK read, the enrollment, the apt install, the config apply and the wait.

Each point is reached for real and held there: a device-side shim (faults.Severer) freezes the
first matching tool call (tpm2_getcap of the EK read, `apt-get install` of the container engine,
`iotedge config apply`), the DPS emulator answers the enrollment only after a long delay, and it
refuses the devices' registrations (503) so that the pipeline's wait step polls DPS. Every time:
the process exits 130 (SIGINT) or 143 (SIGTERM) - a generous subprocess timeout is the guard, the
seconds from signal to exit are printed, not asserted -, nothing of ours runs on any device any
more (the devices' process lists), and the journal marks the interrupted steps. The next run
resumes: it passes the point where the previous two runs stopped, so every step is shown to be
safe to run again after an interruption at each point; the last run assigns every device, and no
enrollment was written twice (the emulator's etags).

To stay affordable (the suite's time), the runs are one chain over the same devices (one module
rig): SIGINT at a point, then SIGTERM at the same point held again, then on to the next point
(SIGTERM takes the same path as SIGINT: one handler, fleet/runner.py and stop.py). The EK read
and the enrollment points run 4 of the devices (`--only`); from the apt install on, all ten run:
the full 10-device case at three points (the six others start fresh there and pass the first two
points).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.faults import FAULT_DIR, Severer
from azext_edgetpm.tests.latest.test_dps_support import EmulatorEnv, start_emulator
from azext_edgetpm.tests.latest.test_fleet import PASSWORD_ENV, add_devices, az_process, write_inventory
from devkit.wait import wait_until

pytestmark = [pytest.mark.devkit, pytest.mark.timeout(1200)]

FLEET = 10
FEW = 4        # devices at the first two points
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# Processes of ours on a device: the shells of our remote commands (their script carries the
# process-group marker), a held tool call (the shim), the tools the pipeline runs, an SSH session.
OURS = ("EDGETPM-PGID", "/usr/local/sbin/", "@notty")
OUR_TOOLS = ("apt-get ", "dpkg ", "iotedge config", "tpm2_")
SHIMMED = ("tpm2_getcap", "apt-get", "iotedge")            # the tools the held points freeze


@pytest.fixture(scope="module")
def dps(rig, tmp_path_factory):
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("stop-dps"), host_ips=[rig.host_ip],
                                     assignment_delay_s=0.0, operation_retry_after_s=0))
    yield env
    env.close()


@pytest.fixture(scope="module")
def fleet(rig, dps):
    devices = add_devices(rig, dps, FLEET)
    yield devices
    for dev in devices:
        rig.remove_device(dev)


def ours(dev):
    """The processes of ours still running on the device (from its /proc)."""
    listing = dev.exec("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done").stdout
    return [line for line in listing.splitlines()
            if any(mark in line for mark in OURS) or line.startswith(OUR_TOOLS)]


def journal(path):
    """The state file's per-device view, read as a later run reads it (in a process of its own, so
    that no lock of this test process stays on the file)."""
    code = ("import json, sys\nfrom azext_edgetpm.fleet.state import Journal\n"
            "print(json.dumps(Journal(sys.argv[1]).records()))")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO,
                          timeout=120, check=True)
    return json.loads(proc.stdout)


BOTH = (signal.SIGINT, signal.SIGTERM)


class Held:
    """A tool call frozen on every device by the shim (the first call matching `pattern`)."""

    def __init__(self, name, step, pattern, devices=FLEET, signals=BOTH):
        self.name, self.step, self.pattern, self.devices, self.signals = name, (step,), pattern, devices, signals

    def arm(self, severers, dps):
        for sev in severers:
            sev.dev.exec(f"rm -f {FAULT_DIR}/fired", check=True)
            sev.arm(self.pattern, hold=True)

    def reached(self, severers, dps):
        return all(sev.fired() for sev in severers[:self.devices])

    def disarm(self, severers, dps):
        for sev in severers:
            sev.disarm()


class SlowEnrollment:
    """DPS answers service requests only after 8 s: the first bulk enrollment call is in flight
    (devices that were still reading their EK when it went stop there)."""
    name, step, devices, signals = "enrollment", ("enroll", "identify"), FEW, BOTH

    def arm(self, severers, dps):
        dps.emu.configure(faults={"latency_ms": {"service": 8000}}, reset_counters=True)

    def reached(self, severers, dps):
        return dps.count("service.requests") >= 1

    def disarm(self, severers, dps):
        dps.emu.configure(clear_faults=True)
        # The delayed requests are still answered: wait for them, as a later run would meet them.
        wait_until(lambda: dps.count("service.status.") >= dps.count("service.requests"), timeout=60,
                   what="the delayed DPS requests being answered")


class Unregistered:
    """DPS refuses the devices' registrations (503): the install ends with the device not
    assigned yet, and the pipeline's wait step polls DPS for its registration (devices still in
    their install's own wait for the identity service's outcome stop there). The refusal holds
    across both signals: after the SIGINT the devices are still unassigned, so the SIGTERM run
    meets the same point (its install sees the failed attempt and applies again)."""
    name, step, devices, signals = "wait", ("wait", "install"), FLEET, BOTH
    held_across_signals = True

    def arm(self, severers, dps):
        dps.emu.configure(faults={"fail_probability": {"device": 1.0}, "status": 503}, reset_counters=True)

    def reached(self, severers, dps):
        return dps.count("endpoint.GET /registrations/") >= 1

    def disarm(self, severers, dps):
        dps.emu.configure(clear_faults=True)


POINTS = (
    Held("EK read", "identify", r"^tpm2_getcap ", devices=FEW),
    SlowEnrollment(),
    Held("apt install", "install", r"^apt-get .* install .*moby-engine"),
    Held("config apply", "install", r"^iotedge config apply"),
    Unregistered(),
)


def test_sigint_and_sigterm_at_every_point_stop_within_seconds_and_the_next_run_resumes(
        fleet, dps, repo, rig, tmp_path):
    inventory = write_inventory(tmp_path / "fleet.csv", fleet)
    state = tmp_path / "state.json"
    args = ["edge-tpm", "provision", "--inventory", inventory, *dps.login, "--id-scope", dps.section["id_scope"],
            "--global-endpoint", dps.section["device_endpoint"], "--package-source", repo["base_url"],
            "--known-hosts", rig.known_hosts, "--max-parallel", str(FLEET), "--state", str(state)]
    env = {PASSWORD_ENV: fleet[0].users["pwadmin"]["password"]}
    severers = [Severer(dev, tools=SHIMMED).install() for dev in fleet]
    figures, etags = [], {}
    try:
        for point in POINTS:
            for signum in point.signals:
                point.arm(severers, dps)
                few = ["--only", *[f"{dev.host}:{dev.port}" for dev in fleet[:point.devices]]] \
                    if point.devices < FLEET else []
                started = time.monotonic()
                proc = az_process(args + few, env)
                wait_until(lambda: proc.poll() is None and point.reached(severers, dps), timeout=400, interval=0.2,
                           what=f"the {point.name} ({proc.poll() is None and 'running' or 'az ended'})")
                proc.send_signal(signum)
                sent = time.monotonic()
                out, err = proc.communicate(timeout=60)   # (the guard; the promise is 5 s)
                figures.append(f"{point.name} {signal.Signals(signum).name} ({point.devices} devices): exit "
                               f"{proc.returncode} {time.monotonic() - sent:.1f} s after the signal (run "
                               f"{time.monotonic() - started:.0f} s)")
                print("\n" + figures[-1], end="")
                assert proc.returncode == 128 + signum, err[-3000:]
                assert "Run the same command again with --state" in err, err[-3000:]
                if signum == point.signals[-1] or not getattr(point, "held_across_signals", False):
                    point.disarm(severers, dps)
                for dev in fleet:
                    wait_until(lambda dev=dev: not ours(dev), timeout=15, interval=0.5,
                               what=f"no process of ours on {dev.name} after the {point.name}: {ours(dev)}")
                # The results: nobody finished, everybody interrupted where the point holds them.
                results = json.loads(out)
                assert len(results) == point.devices and all(r["status"] == "interrupted" for r in results), \
                    [(r["host"], r["status"], r["error"]) for r in results]
                keys = {res["host"].split("@", 1)[1] for res in results}
                records = {k: r for k, r in journal(state).items() if k in keys}
                assert len(records) == point.devices and {r.get("status") for r in records.values()} == {"interrupted"}
                where = {k: r.get("failedStep") for k, r in records.items()}
                assert set(where.values()) <= set(point.step) and point.step[0] in where.values(), where
                for key, step in where.items():   # the step itself is marked, unless it never began
                    mark = records[key]["steps"].get(step, {}).get("status")
                    assert mark in ("interrupted", None), (key, step, records[key]["steps"])
                assert any(r["steps"].get(point.step[0], {}).get("status") == "interrupted"
                           for r in records.values()), records
            if point.name == "apt install":   # every enrollment exists now: as first written
                etags = {r["steps"]["enroll"]["registrationId"]: None for r in records.values()}
                etags = {rid: dps.emu.store.get_enrollment(rid)["etag"] for rid in etags}
        for sev in severers:
            sev.remove()
        severers = []
        started = time.monotonic()
        final = az(*args, env=env)
        print(f"\nthe run after: {time.monotonic() - started:.0f} s")
        assert final.rc == 0, (final.message, final.stderr[-3000:])
        assert [r["status"] for r in final.out] == ["assigned"] * FLEET, [r["error"] for r in final.out]
        for r in final.out:
            assert dps.emu.store.get_registration(r["registrationId"])["status"] == "assigned"
        # No enrollment was written twice: each is the one the interrupted enrollment created.
        assert len(etags) == FLEET
        assert {rid: dps.emu.store.get_enrollment(rid)["etag"] for rid in etags} == etags
    finally:
        dps.emu.configure(clear_faults=True)
        for sev in severers:
            sev.remove()
