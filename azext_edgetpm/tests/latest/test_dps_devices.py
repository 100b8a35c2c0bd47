"""The issue's end-to-end path on simulated devices (real sshd, swtpm, tpm2-tools) and the real DPS
emulator: `enrollment create --host` reads the device's EK over SSH and enrolls it; the devkit's
TPM client, run inside the device against its own swtpm, answers the emulator's TPM challenge and
registers; `registration wait` returns the assignment. Once per way of reaching the DPS, plus a
wrong EK and a disabled enrollment, whose DPS error code and message `registration wait` reports."""
import json
import sys
import threading
import time

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import REPO, ArmLogin, EmulatorEnv, ok, start_emulator

pytestmark = pytest.mark.devkit


@pytest.fixture(scope="module")
def dps_rig(rig, tmp_path_factory):
    """The emulator listening where the rig's devices reach it (the host side of their bridge),
    with the az login of the ARM path."""
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("dps-rig"), host_ips=[rig.host_ip]))
    login = ArmLogin(env)
    try:
        yield env
    finally:
        login.close()
        env.close()


def host_args(dev):
    return ["--host", f"root@{dev.host}:{dev.port}", "--ssh-key", dev.key("root"),
            "--known-hosts", dev.known_hosts, "--tcti", dev.tcti]


def device_ek(dev):
    """The EK as the device's own tpm2-tools print it."""
    proc = dev.exec("tpm2_readpublic -Q -c 0x81010001 -o /root/ek.pub >/dev/null && base64 -w0 /root/ek.pub; "
                    "rm -f /root/ek.pub", env=dev.tpm_env, check=True)
    return proc.stdout.strip()


def register_inside(dev, env, registration_id):
    """devkit.tpmclient.register run inside the device, with the device's TPM and its view of
    the emulator (the device endpoint on the rig bridge, the emulator's CA)."""
    s = env.section
    with open(s["ca_bundle"], encoding="ascii") as f:  # the device has its own /tmp
        dev.exec("cat > /root/dps-ca.pem", input=f.read(), check=True)
    code = ("import json, sys\nfrom devkit import tpmclient\n"
            "try:\n"
            f"    state = tpmclient.register({dev.tcti!r}, {s['device_endpoint']!r}, {s['id_scope']!r}, "
            f"{registration_id!r}, ca_bundle='/root/dps-ca.pem', timeout=90)\n"
            "except tpmclient.DpsRequestError as exc:\n"
            "    state = {'error': str(exc)}\n"
            "print(json.dumps(state))\n")
    proc = dev.exec([sys.executable, "-c", code], env={"PYTHONPATH": REPO}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wait_while_registering(dev, env, registration_id, auth_args, timeout="60"):
    """`registration wait` running while the device registers (in a thread)."""
    device_side = {}
    worker = threading.Thread(target=lambda: device_side.update(register_inside(dev, env, registration_id)))
    started = time.monotonic()
    worker.start()
    try:
        waited = az("edge-tpm", "registration", "wait", "--registration-id", registration_id, *auth_args,
                    "--timeout", timeout, "--interval", "1")
    finally:
        worker.join(150)
    return waited, device_side, time.monotonic() - started


@pytest.mark.parametrize("path", ["arm", "connection-string", "entra-id"])
def test_enroll_over_ssh_register_with_tpm_and_wait(dps_rig, new_device, path):
    env, s = dps_rig, dps_rig.section
    auth = {"arm": env.arm, "connection-string": env.login,
            "entra-id": ["--dps-name", s["dps_name"], "--auth-type", "login"]}[path]
    dev = new_device("mfg" if path == "arm" else "fresh")
    extra = ["--iot-hubs", s["iot_hubs"][1], "--allocation-policy", "static",
             "--device-id", f"edge-{path}"] if path == "connection-string" else []
    created = ok("edge-tpm", "enrollment", "create", *host_args(dev), *auth, *extra).out
    assert created["result"] == "created"
    assert created["attestation"]["tpm"]["endorsementKey"] == device_ek(dev)
    rid = created["registrationId"]
    again = ok("edge-tpm", "enrollment", "create", *host_args(dev), *auth, *extra).out
    assert again["result"] == "unchanged"

    waited, device_side, elapsed = wait_while_registering(dev, env, rid, auth)
    assert waited.rc == 0, (waited.message, waited.recommendation, device_side)
    state = waited.out
    assert state["status"] == "assigned" and state["registrationId"] == rid
    assert state["assignedHub"] in s["iot_hubs"] and state["deviceId"]
    assert device_side["status"] == "assigned" and device_side["assignedHub"] == state["assignedHub"]
    if path == "connection-string":
        assert (state["assignedHub"], state["deviceId"]) == (s["iot_hubs"][1], "edge-connection-string")
    else:
        assert state["deviceId"] == rid
    shown = ok("edge-tpm", "registration", "show", "--registration-id", rid, *auth, output="table").text
    assert "assigned" in shown and state["assignedHub"] in shown
    print(f"\n{path}: enrolled over SSH, registered through the device's swtpm, assigned in {elapsed:.1f} s")


def test_wrong_endorsement_key_fails_with_dps_error(dps_rig, new_device):
    env = dps_rig
    dev, other = new_device("fresh"), new_device("fresh")
    mine = ok("edge-tpm", "enrollment", "create", *host_args(dev), *env.login).out
    # the enrollment is made to hold another device's EK under this device's registration ID
    ok("edge-tpm", "enrollment", "create", *host_args(other), *env.login,
       "--enrollment-id", mine["registrationId"], "--force")
    waited, device_side, _ = wait_while_registering(dev, env, mine["registrationId"], env.login, timeout="30")
    assert "error" in device_side, device_side  # the device is refused at the TPM challenge
    assert waited.rc != 0 and type(waited.error).__name__ == "AzureResponseError"
    assert type(waited.error.__cause__).__name__ == "RegistrationFailedError"
    state = ok("edge-tpm", "registration", "show", "--registration-id", mine["registrationId"], *env.login).out
    assert state["status"] == "failed" and state["errorCode"] and state["errorMessage"]
    assert str(state["errorCode"]) in waited.message and state["errorMessage"] in waited.message
    assert "ek show" in waited.recommendation and "--force" in waited.recommendation


def test_disabled_enrollment_fails_with_dps_error(dps_rig, new_device):
    env = dps_rig
    dev = new_device("fresh")
    created = ok("edge-tpm", "enrollment", "create", *host_args(dev), *env.login,
                 "--provisioning-status", "disabled").out
    assert created["provisioningStatus"] == "disabled"
    waited, device_side, _ = wait_while_registering(dev, env, created["registrationId"], env.login, timeout="30")
    assert device_side.get("status") in ("disabled", "failed") or "error" in device_side, device_side
    assert waited.rc != 0 and type(waited.error).__name__ == "AzureResponseError"
    assert type(waited.error.__cause__).__name__ == "RegistrationFailedError"
    state = ok("edge-tpm", "registration", "show", "--registration-id", created["registrationId"], *env.login).out
    assert state["status"] in ("disabled", "failed") and state["errorCode"]
    assert str(state["errorCode"]) in waited.message and state["errorMessage"] in waited.message
    assert "--provisioning-status enabled" in waited.recommendation
