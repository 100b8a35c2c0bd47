"""The real TPM attestation against the emulator: devkit.tpmclient + swtpm, end to end."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys

import pytest
import requests

from devkit import tpmclient
from devkit.dps.testing import other_endorsement_key
from devkit.tests.dps_fixtures import (  # noqa: F401 (fixtures)
    dps_emulator, emu, soft_tpm, svc, tpm_enrollment, unique_id,
)


def _register(emu, tpm, rid, **kw):
    return tpmclient.register(tpm.tcti, emu.device_endpoint, emu.id_scope, rid, ca_bundle=emu.ca_bundle, **kw)


def test_tpm_registration_is_assigned(emu, svc, soft_tpm):
    rid = soft_tpm.registration_id
    hub = emu.store.hub_names()[1]
    body = tpm_enrollment(rid, soft_tpm.ek_b64, deviceId="edge-gw-1", allocationPolicy="static", iotHubs=[hub])
    r = svc.call("PUT", f"/enrollments/{rid}", body, {"If-Match": "*"} if svc.call(
        "GET", f"/enrollments/{rid}").status_code == 200 else None)
    assert r.status_code == 200, r.text

    state = _register(emu, soft_tpm, rid, payload={"modelId": "dtmi:example:edge;1"})
    assert state["status"] == "assigned", state
    assert state["assignedHub"] == hub
    assert state["deviceId"] == "edge-gw-1"
    assert state["registrationId"] == rid
    assert state["substatus"] == "initialAssignment"
    assert "payload" not in state  # DPS returns a payload only from a custom allocation webhook

    record = svc.call("GET", f"/registrations/{rid}").json()
    assert record["status"] == "assigned" and record["assignedHub"] == hub and record["etag"]
    enrollment = svc.call("GET", f"/enrollments/{rid}").json()
    assert enrollment["registrationState"]["status"] == "assigned"
    assert enrollment["attestation"]["tpm"]["storageRootKey"].startswith("AR")  # learned from the device
    payload = requests.get(f"{emu.admin_url}/registrations/{rid}/payload", timeout=5).json()
    assert payload == {"payload": {"modelId": "dtmi:example:edge;1"}}
    counters = emu.counters()
    assert counters["endpoint.PUT /{scope}/registrations/{id}/register.401"] == 1  # the challenge
    assert counters["endpoint.PUT /{scope}/registrations/{id}/register.202"] == 1

    # the key stays persisted at 0x81000100 for the runtime; registering again replaces it and,
    # with the hub list changed, reprovisioning moves the device (migrating its data by default)
    enrollment["iotHubs"] = [emu.store.hub_names()[0]]
    enrollment.pop("registrationState")
    assert svc.call("PUT", f"/enrollments/{rid}", enrollment, {"If-Match": enrollment["etag"]}).status_code == 200
    again = _register(emu, soft_tpm, rid)
    assert again["status"] == "assigned" and again["assignedHub"] == emu.store.hub_names()[0]
    assert again["substatus"] == "deviceDataMigrated"


def test_hashed_allocation_is_stable(emu, svc, soft_tpm):
    rid = unique_id("hash")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    first = _register(emu, soft_tpm, rid)
    second = _register(emu, soft_tpm, rid)
    assert first["status"] == second["status"] == "assigned"
    assert first["assignedHub"] == second["assignedHub"] in emu.store.hub_names()
    assert second["substatus"] == "initialAssignment"
    assert first["deviceId"] == rid  # deviceId defaults to the registration ID


def test_wrong_ek_fails_and_is_recorded(emu, svc, soft_tpm):
    rid = unique_id("wrongek")
    body = tpm_enrollment(rid, other_endorsement_key(soft_tpm.ek_pub))
    assert svc.call("PUT", f"/enrollments/{rid}", body).status_code == 200
    with pytest.raises(tpmclient.DpsRequestError) as err:
        _register(emu, soft_tpm, rid)
    assert err.value.status == 401 and err.value.error_code == 401002
    record = svc.call("GET", f"/registrations/{rid}").json()
    assert record["status"] == "failed"
    assert record["errorCode"] == 401002
    assert "does not match" in record["errorMessage"]
    assert "assignedHub" not in record


def test_disabled_enrollment_is_reported_disabled(emu, svc, soft_tpm):
    rid = unique_id("disabled")
    body = tpm_enrollment(rid, soft_tpm.ek_b64, provisioningStatus="disabled")
    assert svc.call("PUT", f"/enrollments/{rid}", body).status_code == 200
    state = _register(emu, soft_tpm, rid)
    assert state["status"] == "disabled"
    assert state["errorCode"] == 401003 and state["errorMessage"]
    record = svc.call("GET", f"/registrations/{rid}").json()
    assert record["status"] == "disabled" and record["errorCode"] == 401003


def test_unknown_registration_is_refused(emu, soft_tpm):
    with pytest.raises(tpmclient.DpsRequestError) as err:
        _register(emu, soft_tpm, unique_id("unknown"))
    assert err.value.status == 401 and err.value.error_code == 401002


def test_device_sas_is_verified(emu, svc, soft_tpm):
    """A token not signed by the imported key is refused, as is one for another registration."""
    rid = unique_id("sas")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    url = f"{emu.device_endpoint}/{emu.id_scope}/registrations/{rid}/register?api-version=2021-06-01"
    forged = tpmclient.sas_token(emu.id_scope, rid, lambda m: b"\x00" * 32)
    r = requests.put(url, json={"registrationId": rid}, headers={"Authorization": forged},
                     verify=emu.ca_bundle, timeout=10)
    assert r.status_code == 401 and r.json()["errorCode"] == 401002
    _register(emu, soft_tpm, rid)
    key = emu.store._auth_keys[rid.lower()].key  # the emulator's copy of the issued key
    good = tpmclient.sas_token(emu.id_scope, rid, lambda m: hmac.new(key, m, hashlib.sha256).digest())
    assert requests.put(url, json={"registrationId": rid}, headers={"Authorization": good},
                        verify=emu.ca_bundle, timeout=10).status_code == 202
    other = tpmclient.sas_token(emu.id_scope, "someone-else", lambda m: hmac.new(key, m, hashlib.sha256).digest())
    assert requests.put(url, json={"registrationId": rid}, headers={"Authorization": other},
                        verify=emu.ca_bundle, timeout=10).status_code == 401


def test_device_limits_and_faults_are_survived(emu, svc, soft_tpm):
    """Registration and polling limits answer 429 + Retry-After; the client waits and succeeds."""
    rid = unique_id("limits")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    emu.configure(device_registrations_per_minute=60, device_burst=1, faults={"fail_next": {"device": 1}})
    state = _register(emu, soft_tpm, rid)
    assert state["status"] == "assigned"
    counters = emu.counters()
    assert counters["device.faults_injected"] == 1
    assert counters["device.register.throttled"] >= 1  # the second PUT came too early
    assert counters["endpoint.PUT /{scope}/registrations/{id}/register.429"] >= 1

    emu.configure(polls_per_10s=2, device_registrations_per_minute=1000, device_burst=1000,
                  assignment_delay_s=30)
    statuses = []
    key = emu.store._auth_keys[rid.lower()].key

    token = tpmclient.sas_token(emu.id_scope, rid, lambda m: hmac.new(key, m, hashlib.sha256).digest())
    base = f"{emu.device_endpoint}/{emu.id_scope}/registrations/{rid}"
    op_id = requests.put(f"{base}/register?api-version=2021-06-01", json={"registrationId": rid},
                         headers={"Authorization": token}, verify=emu.ca_bundle, timeout=10).json()["operationId"]
    for _ in range(3):
        r = requests.get(f"{base}/operations/{op_id}?api-version=2021-06-01", headers={"Authorization": token},
                         verify=emu.ca_bundle, timeout=10)
        statuses.append(r.status_code)
    assert statuses[:2] == [202, 202] and statuses[2] == 429
    assert r.json()["errorCode"] == 429001 and int(r.headers["Retry-After"]) == 5
    assert emu.counters()["device.poll.throttled"] == 1


def test_cli_prints_the_state(emu, svc, soft_tpm, tmp_path):
    rid = unique_id("cli")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"site": "lab"}))
    proc = subprocess.run(
        [sys.executable, "-m", "devkit.tpmclient", "register", "--tcti", soft_tpm.tcti,
         "--endpoint", emu.device_endpoint, "--id-scope", emu.id_scope, "--registration-id", rid,
         "--ca-bundle", emu.ca_bundle, "--payload", str(payload), "--auth-key-index", "0x101"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = json.loads(proc.stdout)
    assert state["status"] == "assigned" and state["registrationId"] == rid
    assert "SharedAccessSignature" not in proc.stdout + proc.stderr
    # without the CA bundle, TLS verification fails: nothing disables it
    proc = subprocess.run(
        [sys.executable, "-m", "devkit.tpmclient", "register", "--tcti", soft_tpm.tcti,
         "--endpoint", emu.device_endpoint, "--id-scope", emu.id_scope, "--registration-id", rid],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and "TLS verification" in json.loads(proc.stdout)["error"]
