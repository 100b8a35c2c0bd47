"""The DPS emulator's service API: enrollments, etags, paging, bulk, auth, limits and faults."""

from __future__ import annotations

import base64
import time

import pytest
import requests

from devkit.dps import sas
from devkit.dps.testing import ServiceClient
from devkit.wait import wait_until
from devkit.tests.dps_fixtures import (  # noqa: F401 (fixtures)
    dps_emulator, emu, entra_token, soft_tpm, svc, tpm_enrollment, unique_id,
)


def _assert_dps_error(resp, status: int, code: int):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["errorCode"] == code, body
    assert set(body) >= {"errorCode", "trackingId", "message", "timestampUtc"}
    assert str(body["errorCode"]).startswith(str(status))


def test_enrollment_crud_with_etags(svc, soft_tpm):
    rid = unique_id()
    r = svc.call("GET", f"/enrollments/{rid}")
    _assert_dps_error(r, 404, 404201)

    r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64, deviceId="edge-a",
                                                              initialTwin={"tags": {"site": "x"}}))
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["registrationId"] == rid
    assert created["capabilities"] == {"iotEdge": True}
    assert created["provisioningStatus"] == "enabled"
    assert created["reprovisionPolicy"] == {"updateHubAssignment": True, "migrateDeviceData": True}
    assert created["initialTwin"] == {"tags": {"site": "x"}}
    assert created["etag"] and created["createdDateTimeUtc"] and created["lastUpdatedDateTimeUtc"]
    assert "registrationState" not in created

    # DPS refuses a PUT over an existing enrollment without If-Match (409), and a stale etag (412)
    r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64))
    _assert_dps_error(r, 409, 409201)
    r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64), {"If-Match": '"AAAAAAAAAAA="'})
    _assert_dps_error(r, 412, 412001)

    r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64, provisioningStatus="disabled"),
                 {"If-Match": created["etag"]})
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["etag"] != created["etag"]
    assert updated["provisioningStatus"] == "disabled"
    assert updated["createdDateTimeUtc"] == created["createdDateTimeUtc"]

    r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64), {"If-Match": "*"})
    assert r.status_code == 200
    current = r.json()

    # registration IDs are case-insensitive
    assert svc.call("GET", f"/enrollments/{rid.upper()}").json()["etag"] == current["etag"]

    r = svc.call("DELETE", f"/enrollments/{rid}", headers={"If-Match": updated["etag"]})
    _assert_dps_error(r, 412, 412001)
    assert svc.call("DELETE", f"/enrollments/{rid}", headers={"If-Match": current["etag"]}).status_code == 204
    _assert_dps_error(svc.call("DELETE", f"/enrollments/{rid}"), 404, 404201)
    # creating with an If-Match for an enrollment that does not exist is a failed precondition
    r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64), {"If-Match": current["etag"]})
    _assert_dps_error(r, 412, 412001)


def test_invalid_endorsement_keys_are_400004(svc, soft_tpm):
    from tpm2_pytss.types import TPM2B_PUBLIC

    pub, _ = TPM2B_PUBLIC.unmarshal(soft_tpm.ek_pub)
    modulus = bytes(pub.publicArea.unique.rsa)
    pem = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n"
    bad = {
        "raw modulus": base64.b64encode(modulus).decode(),
        "PEM": pem,
        "PEM base64": base64.b64encode(pem.encode()).decode(),
        "TPMT_PUBLIC without size": base64.b64encode(soft_tpm.ek_pub[2:]).decode(),
        "trailing garbage": base64.b64encode(soft_tpm.ek_pub + b"\x00").decode(),
        "not base64": "!!!",
        "empty": "",
    }
    for what, ek in bad.items():
        rid = unique_id()
        r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, ek))
        _assert_dps_error(r, 400, 400004)
        assert "Endorsement key is invalid" in r.json()["message"], what
    assert soft_tpm.ek_b64.startswith("AToAAQALAAMAsgAg")


def test_registration_id_and_body_validation(svc, soft_tpm):
    ek = soft_tpm.ek_b64
    # DPS: the last character is alphanumeric or '-' (so "." and ".." are no IDs); any may lead
    for rid in ("a" * 129, "bad/char", "bad*char", "trailing.", "trailing_"):
        r = svc.call("PUT", f"/enrollments/{requests.utils.quote(rid, safe='')}", tpm_enrollment(rid, ek))
        assert r.status_code == 400, (rid, r.text)
    for ok in ("a" * 128, f"-leading-{unique_id()}", f"_x.{unique_id()}-"):
        assert svc.call("PUT", f"/enrollments/{ok}", tpm_enrollment(ok, ek)).status_code == 200, ok
    rid = unique_id()
    r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment("someone-else", ek))
    assert r.status_code == 400
    r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, ek, allocationPolicy="static"))
    assert r.status_code == 400 and "exactly one" in r.json()["message"]
    r = svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, ek, iotHubs=["nothere.azure-devices.net"]))
    assert r.status_code == 400 and "not linked" in r.json()["message"]
    assert svc.call("GET", f"/enrollments/{rid}", api_version="1999-01-01").status_code == 400
    r = svc.session.get(f"{svc.base_url}/enrollments/{rid}", headers=svc.headers(), verify=svc.verify)
    assert r.status_code == 400 and "api-version" in r.json()["message"]


def test_query_pages_with_continuation(svc, soft_tpm, emu):
    ids = {unique_id("page") for _ in range(7)}
    for rid in ids:
        assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    seen, token, pages = [], None, 0
    while True:
        headers = {"x-ms-max-item-count": "3"}
        if token:
            headers["x-ms-continuation"] = token
        r = svc.call("POST", "/enrollments/query", {"query": "*"}, headers)
        assert r.status_code == 200, r.text
        assert len(r.json()) <= 3
        assert r.headers["x-ms-item-type"] == "Enrollment"
        seen += [e["registrationId"] for e in r.json()]
        pages += 1
        token = r.headers.get("x-ms-continuation")
        if not token:
            break
    assert ids <= set(seen)
    assert len(seen) == len(set(seen)) == emu.store.counts()["enrollments"]
    assert pages == -(-len(seen) // 3)
    r = svc.call("POST", "/enrollments/query", {"query": "*"}, {"x-ms-continuation": "garbage"})
    assert r.status_code == 400


def test_bulk_operation(svc, soft_tpm):
    ek = soft_tpm.ek_b64
    ids = [unique_id("bulk") for _ in range(3)]
    too_many = [tpm_enrollment(unique_id(), ek) for _ in range(11)]
    _assert_dps_error(svc.call("POST", "/enrollments", {"mode": "create", "enrollments": too_many}), 400, 400006)

    assert svc.call("PUT", f"/enrollments/{ids[0]}", tpm_enrollment(ids[0], ek)).status_code == 200
    r = svc.call("POST", "/enrollments", {"mode": "create", "enrollments": [tpm_enrollment(i, ek) for i in ids]})
    assert r.status_code == 200
    result = r.json()
    assert result["isSuccessful"] is False
    assert [e["registrationId"] for e in result["errors"]] == [ids[0]]
    assert result["errors"][0]["errorCode"] == 409201 and result["errors"][0]["errorStatus"]
    assert svc.call("GET", f"/enrollments/{ids[2]}").status_code == 200

    stale = tpm_enrollment(ids[1], ek, etag="AAAAAAAAAAA=")
    fresh = tpm_enrollment(ids[2], ek, etag=svc.call("GET", f"/enrollments/{ids[2]}").json()["etag"],
                           provisioningStatus="disabled")
    result = svc.call("POST", "/enrollments", {"mode": "updateIfMatchETag", "enrollments": [stale, fresh]}).json()
    assert [(e["registrationId"], e["errorCode"]) for e in result["errors"]] == [(ids[1], 412001)]
    assert svc.call("GET", f"/enrollments/{ids[2]}").json()["provisioningStatus"] == "disabled"

    result = svc.call("POST", "/enrollments", {"mode": "update", "enrollments": [tpm_enrollment(i, ek) for i in ids]})
    assert result.json() == {"isSuccessful": True, "errors": []}
    result = svc.call("POST", "/enrollments", {"mode": "delete", "enrollments": [{"registrationId": i} for i in ids]})
    assert result.json()["isSuccessful"] is True
    assert all(svc.call("GET", f"/enrollments/{i}").status_code == 404 for i in ids)


def test_sas_and_bearer_auth_are_checked(emu, svc, soft_tpm):
    rid = unique_id()
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    url = f"{emu.url}/enrollments/{rid}?api-version=2021-10-01"

    def get(auth):
        return requests.get(url, headers={"Authorization": auth} if auth else {}, verify=emu.ca_bundle, timeout=10)

    owner = emu.policies["provisioningserviceowner"]
    _assert_dps_error(get(None), 401, 401002)
    wrong_key = base64.b64encode(b"k" * 32).decode()
    _assert_dps_error(get(sas.generate(emu.service_host, wrong_key, owner.name)), 401, 401002)
    _assert_dps_error(get(sas.generate(emu.service_host, owner.primary_key_b64, owner.name, ttl=-10)), 401, 401002)
    _assert_dps_error(get(sas.generate("elsewhere.example", owner.primary_key_b64, owner.name)), 401, 401002)
    _assert_dps_error(get(sas.generate(emu.service_host, owner.primary_key_b64, "nosuchpolicy")), 401, 401002)
    assert get(sas.generate(emu.service_host, owner.secondary_key_b64, owner.name)).status_code == 200
    # the DPS name form of the host is the same resource
    assert get(sas.generate(f"{emu.dps_name}.azure-devices-provisioning.net", owner.primary_key_b64,
                            owner.name)).status_code == 200

    reader = ServiceClient.for_emulator(emu, "enrollmentread")
    assert reader.call("GET", f"/enrollments/{rid}").status_code == 200
    assert reader.call("POST", "/enrollments/query", {"query": "*"}).status_code == 200
    r = reader.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64), {"If-Match": "*"})
    _assert_dps_error(r, 401, 401002)
    assert "EnrollmentWrite" in r.json()["message"]
    _assert_dps_error(reader.call("DELETE", f"/enrollments/{rid}"), 401, 401002)

    # Entra ID: a token for the DPS audience works; one for ARM does not
    dps_token = entra_token(emu, "https://azure-devices-provisioning.net")
    assert get(f"Bearer {dps_token}").status_code == 200
    _assert_dps_error(get(f"Bearer {entra_token(emu, emu.arm_audience)}"), 401, 401002)
    _assert_dps_error(get(f"Bearer {dps_token[:-4]}AAAA"), 401, 401002)

    emu.configure(local_auth_disabled=True)
    r = get(sas.generate(emu.service_host, owner.primary_key_b64, owner.name))
    _assert_dps_error(r, 401, 401002)
    assert "local" in r.json()["message"].lower()
    assert get(f"Bearer {dps_token}").status_code == 200
    assert emu.counters()["service.auth_failures"] >= 9


def test_service_throttling_answers_429_with_retry_after(emu, svc):
    emu.configure(service_ops_per_minute=30, service_burst=3)
    statuses = [svc.call("GET", "/enrollments/nope").status_code for _ in range(5)]
    assert statuses[:3] == [404, 404, 404]
    assert statuses[3:] == [429, 429]
    r = svc.call("GET", "/enrollments/nope")
    _assert_dps_error(r, 429, 429001)
    assert int(r.headers["Retry-After"]) == 2  # 30/min: the next token is due in 2 s
    counters = emu.counters()
    assert counters["service.throttled"] == 3
    assert counters["endpoint.GET /enrollments/{id}.429"] == 3
    # the bucket refills at 30/min: one call gets through again once a token is due (about 2 s)
    wait_until(lambda: svc.call("GET", "/enrollments/nope").status_code == 404, timeout=10, interval=0.2,
               what="a call after the throttling window")
    # the admin API reports and changes the same settings
    cfg = requests.get(emu.admin_url + "/config", timeout=5).json()
    assert cfg["service_ops_per_minute"] == 30
    cfg = requests.post(emu.admin_url + "/config", json={"service_ops_per_minute": 1000}, timeout=5).json()
    assert cfg["service_ops_per_minute"] == 1000 and cfg["service_burst"] == 1000
    assert svc.call("GET", "/enrollments/nope").status_code == 404


def test_injected_503_and_latency(emu, svc):
    r = requests.post(emu.admin_url + "/config",
                      json={"faults": {"fail_next": {"service": 2}, "latency_ms": {"service": 150}}}, timeout=5)
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    first = svc.call("GET", "/enrollments/nope")
    assert time.monotonic() - t0 >= 0.15
    _assert_dps_error(first, 503, 503001)
    assert first.headers["Retry-After"] == "1"
    assert svc.call("GET", "/enrollments/nope").status_code == 503
    assert svc.call("GET", "/enrollments/nope").status_code == 404
    counters = requests.get(emu.admin_url + "/counters", timeout=5).json()
    assert counters["service.faults_injected"] == 2
    assert counters["service.status.503"] == 2
    emu.configure(clear_faults=True, faults={"fail_probability": 1.0, "seed": 1})
    assert svc.call("GET", "/enrollments/nope").status_code == 503
    emu.configure(clear_faults=True)
    assert svc.call("GET", "/enrollments/nope").status_code == 404
    assert requests.post(emu.admin_url + "/counters/reset", timeout=5).json() == {"ok": True}
    assert emu.counters() == {}


def test_registration_records(svc, emu, soft_tpm):
    rid = unique_id()
    _assert_dps_error(svc.call("GET", f"/registrations/{rid}"), 404, 404202)
    _assert_dps_error(svc.call("DELETE", f"/registrations/{rid}"), 404, 404202)
    _assert_dps_error(svc.call("GET", "/enrollmentGroups/g1"), 404, 404001)
    _assert_dps_error(svc.call("PATCH", f"/enrollments/{rid}"), 405, 405001)


def test_generated_client_secrets_never_look_like_an_option():
    """A secret starting with `-` is read as an option (`az login -p -x...`): about 1 in 64 of
    token_urlsafe's did, and a test that logged in with it failed with the rest of its module."""
    from devkit.dps.emulator import _new_secret
    made = [_new_secret() for _ in range(5000)]
    assert all(s[0].isalnum() for s in made)
    assert len(set(made)) == len(made) and all(len(s) >= 40 for s in made)
