"""`registration wait` against a DPS that goes away or keeps failing (issue 8, defects 3 and 4).

The emulator is stopped for real (connections refused) and answers 503 for real (its fault
injection); a software TPM registers for real once DPS is back.
"""
import time

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import EmulatorEnv, start_emulator


@pytest.fixture(scope="module")
def dps(tmp_path_factory):
    from devkit.dps.testing import free_port_pair
    # a fixed port, so that the emulator can be stopped and started again at the same address
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("dps-wait"), port=free_port_pair()))
    try:
        yield env
    finally:
        env.close()


def _client(env):
    from azext_edgetpm.dps.client import DpsClient
    from azext_edgetpm.dps.discovery import _target_from_login
    return DpsClient(_target_from_login(None, env.section["connection_string"], "key"))


class _Outage:
    """A clock for wait_for_assignment that runs on real time plus the time its sleeps skip, so a
    15 s outage passes in an instant: when the wait has slept past `outage_s` the emulator is
    started again and the device registers."""

    def __init__(self, outage_s, on_back):
        self.skipped, self.outage_s, self.on_back, self.back = 0.0, outage_s, on_back, False
        self.sleeps = []

    def clock(self):
        return time.monotonic() + self.skipped

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.skipped += seconds
        if not self.back and self.skipped >= self.outage_s:
            self.back = True
            self.on_back()


def test_wait_outlives_a_dps_outage(dps, tmp_path):
    """Defect 3: a 15 s outage (connection refused) no longer fails a wait with --timeout 60:
    it retries with back-off until DPS answers, then sees the device assigned."""
    from devkit import tpmclient
    from devkit.dps.testing import SoftTpm
    from devkit.tests.dps_fixtures import tpm_enrollment
    from azext_edgetpm.dps.registration import wait_for_assignment
    emu = dps.emu
    with SoftTpm(str(tmp_path / "tpm")) as tpm:
        rid = tpm.registration_id
        with _client(dps) as client:
            client.put_enrollment(tpm_enrollment(rid, tpm.ek_b64))

            def back():
                emu.start()
                tpmclient.register(tpm.tcti, emu.device_endpoint, emu.id_scope, rid, ca_bundle=emu.ca_bundle)

            outage = _Outage(15.0, back)
            emu.stop()
            try:
                state = wait_for_assignment(client, rid, timeout=60, interval=2, clock=outage.clock,
                                            sleep=outage.sleep)
            finally:
                emu.start()
    assert state["status"] == "assigned" and state["registrationId"] == rid
    assert outage.back and len(outage.sleeps) >= 3, outage.sleeps
    assert outage.sleeps[:3] == [2, 4, 8], "connection errors are retried with back-off"


def test_wait_on_a_failing_dps_honours_its_timeout_and_names_the_error(dps):
    """Defect 4: DPS answers 503 the whole time; `wait --timeout 4` ends within one poll interval
    of its timeout and reports DPS's error, not "0 polls; it has not registered yet"."""
    dps.emu.configure(clear_faults=True, faults={"fail_probability": {"service": 1.0}, "seed": 4})
    try:
        started = time.monotonic()
        waited = az("edge-tpm", "registration", "wait", *dps.login, "--registration-id", "outage-1",
                    "--timeout", "4", "--interval", "1")
        elapsed = time.monotonic() - started
    finally:
        dps.emu.configure(clear_faults=True)
    assert waited.rc != 0 and type(waited.error).__name__ == "UnclassifiedUserFault", waited.message
    assert type(waited.error.__cause__).__name__ == "RegistrationTimeoutError"
    assert "not assigned within 4 s" in waited.message
    assert "HTTP 503" in waited.message and "503001" in waited.message, waited.message
    assert "has not registered yet" not in waited.message
    # the timeout is honoured within one poll interval (1 s), plus the cost of starting the command
    assert elapsed < 4 + 1 + 3, f"wait --timeout 4 ran {elapsed:.1f} s"
