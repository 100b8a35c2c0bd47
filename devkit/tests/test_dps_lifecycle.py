"""A device's later life against the emulator, as real DPS documents it: the enrollment disabled,
the registration record deleted (etag rules), registering again for a new assignment, hub changes
under each reprovision policy, and an enrollment whose EK was replaced (a cleared or new TPM).

The device side is the real TPM client (devkit.tpmclient) on a host swtpm.
"""

from __future__ import annotations

import pytest
import requests

from devkit import tpmclient
from devkit.dps.testing import other_endorsement_key
from devkit.tests.dps_fixtures import (  # noqa: F401 (fixtures)
    dps_emulator, emu, soft_tpm, svc, tpm_enrollment, unique_id,
)


def _register(emu, tpm, rid):
    return tpmclient.register(tpm.tcti, emu.device_endpoint, emu.id_scope, rid, ca_bundle=emu.ca_bundle)


def _update(svc, rid, **changes):
    """Read-modify-write of an enrollment, guarded by its etag (as a client must)."""
    current = svc.call("GET", f"/enrollments/{rid}").json()
    current.pop("registrationState", None)
    current.update(changes)
    r = svc.call("PUT", f"/enrollments/{rid}", current, {"If-Match": current["etag"]})
    assert r.status_code == 200, r.text
    return r.json()


def _record(svc, rid):
    r = svc.call("GET", f"/registrations/{rid}")
    return r.json() if r.status_code == 200 else r.status_code


def test_disabled_enrollment_stops_an_assigned_device_until_enabled(emu, svc, soft_tpm):
    rid = unique_id("disable")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    first = _register(emu, soft_tpm, rid)
    assert first["status"] == "assigned"

    _update(svc, rid, provisioningStatus="disabled")
    state = _register(emu, soft_tpm, rid)
    assert state["status"] == "disabled" and state["errorCode"] == 401003
    record = _record(svc, rid)
    assert record["status"] == "disabled" and "assignedHub" not in record and "deviceId" not in record

    _update(svc, rid, provisioningStatus="enabled")
    again = _register(emu, soft_tpm, rid)
    assert again["status"] == "assigned" and again["assignedHub"] == first["assignedHub"]
    assert again["substatus"] == "initialAssignment"  # the disabled record held no hub to move from


def test_registration_record_delete_honours_etags_and_leaves_the_enrollment(emu, svc, soft_tpm):
    rid = unique_id("regdel")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    _register(emu, soft_tpm, rid)
    record = _record(svc, rid)

    stale = svc.call("DELETE", f"/registrations/{rid}", headers={"If-Match": "AAAAAAAAAAA="})
    assert stale.status_code == 412 and stale.json()["errorCode"] == 412001
    assert _record(svc, rid)["etag"] == record["etag"]  # nothing deleted

    assert svc.call("DELETE", f"/registrations/{rid}", headers={"If-Match": f'"{record["etag"]}"'}).status_code == 204
    assert _record(svc, rid) == 404
    gone = svc.call("DELETE", f"/registrations/{rid}")
    assert gone.status_code == 404 and gone.json()["errorCode"] == 404202
    assert svc.call("GET", f"/enrollments/{rid}").json().get("registrationState") is None

    # the device registers again: a new record, a new (initial) assignment
    again = _register(emu, soft_tpm, rid)
    assert again["status"] == "assigned" and again["substatus"] == "initialAssignment"
    assert _record(svc, rid)["etag"] != record["etag"]


@pytest.mark.parametrize("policy, moves, substatus", [
    ({"updateHubAssignment": True, "migrateDeviceData": False}, True, "deviceDataReset"),
    ({"updateHubAssignment": False, "migrateDeviceData": False}, False, "initialAssignment"),
])
def test_hub_change_follows_the_reprovision_policy(emu, svc, soft_tpm, policy, moves, substatus):
    hub1, hub2 = emu.store.hub_names()[:2]
    rid = unique_id("hubs")
    body = tpm_enrollment(rid, soft_tpm.ek_b64, allocationPolicy="static", iotHubs=[hub1], reprovisionPolicy=policy)
    assert svc.call("PUT", f"/enrollments/{rid}", body).status_code == 200
    assert _register(emu, soft_tpm, rid)["assignedHub"] == hub1

    _update(svc, rid, iotHubs=[hub2])
    state = _register(emu, soft_tpm, rid)
    assert state["assignedHub"] == (hub2 if moves else hub1)
    assert state["substatus"] == substatus
    assert _record(svc, rid)["assignedHub"] == state["assignedHub"]


def test_bulk_hub_change_then_each_device_moves(emu, svc, soft_tpm):
    """Enrollment changes through the bulk API (updateIfMatchETag), then the device registers again."""
    hub1, hub2 = emu.store.hub_names()[:2]
    rids = [unique_id("bulkhub") for _ in range(3)]
    for rid in rids:
        body = tpm_enrollment(rid, soft_tpm.ek_b64, allocationPolicy="static", iotHubs=[hub1])
        assert svc.call("PUT", f"/enrollments/{rid}", body).status_code == 200
    assert _register(emu, soft_tpm, rids[0])["assignedHub"] == hub1
    items = []
    for rid in rids:
        item = svc.call("GET", f"/enrollments/{rid}").json()
        item.pop("registrationState", None)
        item["iotHubs"] = [hub2]
        items.append(item)
    items[2]["etag"] = "AAAAAAAAAAA="  # someone else changed this one meanwhile
    result = svc.call("POST", "/enrollments", {"mode": "updateIfMatchETag", "enrollments": items}).json()
    assert [(e["registrationId"], e["errorCode"]) for e in result["errors"]] == [(rids[2], 412001)]
    moved = _register(emu, soft_tpm, rids[0])
    assert moved["assignedHub"] == hub2 and moved["substatus"] == "deviceDataMigrated"
    assert svc.call("GET", f"/enrollments/{rids[2]}").json()["iotHubs"] == [hub1]


def test_replaced_endorsement_key_locks_the_old_tpm_out(emu, svc, soft_tpm):
    """After the enrollment's EK is replaced (the device's TPM was cleared or swapped), the old TPM
    can register neither through the challenge nor with the key DPS had issued to it."""
    rid = unique_id("rekey")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    assert _register(emu, soft_tpm, rid)["status"] == "assigned"
    url = f"{emu.device_endpoint}/{emu.id_scope}/registrations/{rid}/register?api-version=2021-06-01"
    with tpmclient.Tpm(soft_tpm.tcti) as tpm:  # the key the old TPM imported stays persisted in it
        key, _ = tpm.persistent(tpmclient.AUTH_KEY_BASE + tpmclient.DEFAULT_AUTH_KEY_INDEX, "DPS key")
        token = tpmclient.sas_token(emu.id_scope, rid, lambda m: tpm.hmac_sha256(key, m))
    assert requests.put(url, json={"registrationId": rid}, headers={"Authorization": token},
                        verify=emu.ca_bundle, timeout=10).status_code == 202  # still valid before the change

    updated = _update(svc, rid, attestation={"type": "tpm", "tpm": {
        "endorsementKey": other_endorsement_key(soft_tpm.ek_pub)}})
    assert "storageRootKey" not in updated["attestation"]["tpm"]  # learned anew from the new TPM
    stale = requests.put(url, json={"registrationId": rid}, headers={"Authorization": token},
                         verify=emu.ca_bundle, timeout=10)
    assert stale.status_code == 401 and stale.json()["errorCode"] == 401002
    with pytest.raises(tpmclient.DpsRequestError) as err:
        _register(emu, soft_tpm, rid)
    assert err.value.status == 401 and err.value.error_code == 401002
    record = _record(svc, rid)
    assert record["status"] == "failed" and "does not match" in record["errorMessage"]
