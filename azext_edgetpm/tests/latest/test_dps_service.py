"""`az edge-tpm enrollment ...` and `registration ...` against the real DPS emulator (no devices):
the three ways to reach a DPS, idempotent create, conflicts and the etag guard, paging, bulk,
throttling and injected server errors, DPS-shaped errors, and secrets kept out of output and logs."""
import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import (  # noqa: F401  (fixtures)
    arm_login, az_subprocess, dps, ok, rsa_ek)

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


def _client(env, connection_string=None, **kwargs):
    from azext_edgetpm.dps.client import DpsClient
    from azext_edgetpm.dps.discovery import _target_from_login
    target = _target_from_login(None, connection_string or env.section["connection_string"], "key")
    return DpsClient(target, **kwargs)


# -- the three ways to reach the DPS -------------------------------------------------------

def test_connection_string_create_is_idempotent(dps):
    ek = rsa_ek(1)
    first = ok("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", ek).out
    from azext_edgetpm.tpm.ek import decode_endorsement_key, registration_id
    rid = registration_id(decode_endorsement_key(ek))
    assert first["result"] == "created" and first["changes"] == []
    assert first["registrationId"] == rid and first["deviceId"] == rid
    assert first["attestation"] == {"type": "tpm", "tpm": {"endorsementKey": ek}}
    assert first["capabilities"] == {"iotEdge": True} and first["provisioningStatus"] == "enabled"
    puts = dps.count("endpoint.PUT /enrollments/{id}")
    again = ok("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", ek).out
    assert again["result"] == "unchanged" and again["etag"] == first["etag"]
    assert dps.count("endpoint.PUT /enrollments/{id}") == puts, "an unchanged create must not write"
    shown = ok("edge-tpm", "enrollment", "show", "--enrollment-id", rid.upper(), *dps.login).out
    assert shown["etag"] == first["etag"] and "result" not in shown


def test_arm_discovery_with_and_without_group(dps, arm_login):
    s = dps.section
    created = ok("edge-tpm", "enrollment", "create", *dps.arm, "--endorsement-key", rsa_ek(2),
                 "--registration-id", "arm-dev-1", "--iot-hubs", s["iot_hubs"][0], "--allocation-policy", "static",
                 "--device-id", "gateway-1").out
    assert created["result"] == "created"
    assert created["iotHubs"] == [s["iot_hubs"][0]] and created["allocationPolicy"] == "static"
    # without -g the subscription is searched
    shown = ok("edge-tpm", "enrollment", "show", "-n", s["dps_name"], "--enrollment-id", "arm-dev-1").out
    assert shown["deviceId"] == "gateway-1"
    assert dps.count("endpoint.GET /subscriptions/{sub}/providers/Microsoft.Devices/provisioningServices.200") >= 1
    assert dps.count("endpoint.POST /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/"
                     "provisioningServices/{name}/listkeys.200") >= 2
    # the least-privileged policy that may read is chosen for reads, the owner policy for writes
    from azext_edgetpm.dps import discovery
    from azure.cli.core import get_default_cli

    class _Cmd:  # what discovery needs of a command: its CLI context
        cli_ctx = get_default_cli()
    read = discovery.resolve_target(_Cmd, s["dps_name"], None, rights=discovery.ENROLLMENT_READ)
    write = discovery.resolve_target(_Cmd, s["dps_name"], s["resource_group"], rights=discovery.ENROLLMENT_WRITE)
    assert (read.policy, write.policy) == ("enrollmentread", "provisioningserviceowner")
    assert read.id_scope == s["id_scope"] and read.host == s["service_host"]
    assert "Key" not in repr(read) and s["connection_string"].split("SharedAccessKey=")[1] not in repr(write)
    missing = az("edge-tpm", "enrollment", "show", "-n", "no-such-dps", "--enrollment-id", "x")
    assert missing.rc != 0 and type(missing.error).__name__ == "ResourceNotFoundError"
    assert "no-such-dps" in missing.message and missing.recommendation


def test_arm_unreachable_or_no_az_login_is_one_clear_error(dps, arm_login, tmp_path):
    """ARM behind a proxy that does not answer, and no az login at all: each one az error with a
    way out (azure-core's ServiceRequestError and az's bare "Please run 'az login'" escaped before)."""
    assert ok("edge-tpm", "enrollment", "list", *dps.arm, "--top", "1").out is not None  # the token is cached now
    no_proxy = {"HTTPS_PROXY": "http://127.0.0.1:1", "https_proxy": "http://127.0.0.1:1", "NO_PROXY": "",
                "no_proxy": ""}
    for extra in ((), ("--auth-type", "login")):
        cut = az("edge-tpm", "enrollment", "list", *dps.arm, *extra, env=no_proxy)
        assert type(cut.error).__name__ == "AzureConnectionError", (extra, type(cut.error), cut.message)
        assert "Could not reach" in cut.message and dps.section["dps_name"] in cut.message
        assert "HTTPS_PROXY" in cut.recommendation and "--login" in cut.recommendation
    # The sign-in side out of reach: with instance discovery on, MSAL's first request (to the
    # public cloud's discovery endpoint) goes to the dead proxy and fails (nothing leaves this machine).
    for extra in ((), ("--auth-type", "login")):
        cut = az("edge-tpm", "enrollment", "list", *dps.arm, *extra,
                 env=dict(no_proxy, AZURE_CORE_INSTANCE_DISCOVERY="true"))
        assert type(cut.error).__name__ == "AzureConnectionError", (extra, type(cut.error), cut.message)
        assert "sign-in endpoint" in cut.message and "--login" in cut.recommendation
    fresh = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path))  # a real az process that never logged in
    proc = subprocess.run([sys.executable, "-m", "azure.cli", "edge-tpm", "enrollment", "list", "-n", "x"],
                          capture_output=True, text=True, timeout=120, env=fresh, check=False)
    assert proc.returncode == 1 and "az login" in proc.stderr and "--login" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_entra_id_bearer_token_with_local_auth_disabled(dps, arm_login, tmp_path):
    s = dps.section
    dps.emu.configure(local_auth_disabled=True)
    try:
        refused = az("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(3))
        assert refused.rc != 0 and type(refused.error).__name__ in ("UnauthorizedError", "ForbiddenError")
        assert "errorCode" in refused.message and "trackingId" in refused.message
        assert "--auth-type login" in refused.recommendation
        created = ok("edge-tpm", "enrollment", "create", *dps.arm, "--auth-type", "login",
                     "--endorsement-key", rsa_ek(3), "--registration-id", "aad-dev-1").out
        assert created["result"] == "created"
        # --login with only the host name and a bearer token: no ARM at all. The token goes to a DNS name
        # in the cloud's DPS domain only (the dev kit's cloud registers its own, as a sovereign cloud has)
        arm_before, requests_before = dps.count("arm.requests"), dps.count("service.requests")
        for host in (s["service_host"], "127.0.0.1", f"{s['dps_name']}.azure-devices-provisioning.net"):
            refused = az("edge-tpm", "enrollment", "show", "--login", host, "--auth-type", "login",
                         "--enrollment-id", "aad-dev-1")
            assert type(refused.error).__name__ == "InvalidArgumentValueError", (host, refused.message)
            assert "no request is sent" in refused.message and refused.recommendation
            assert "az cloud" in refused.recommendation or "DNS name alone" in refused.message
        assert dps.count("service.requests") == requests_before
        if "hub_ip" in s:   # (root: the service API on :443 of an address a child process resolves the name to)
            from devkit.dps.testing import resolving_prefix
            prefix = resolving_prefix([s["dps_host_name"]], s["hub_ip"], str(tmp_path))
            proc = subprocess.run([*prefix, sys.executable, "-m", "azure.cli", "edge-tpm", "enrollment", "show",
                                   "--login", s["dps_host_name"], "--auth-type", "login", "--enrollment-id",
                                   "aad-dev-1", "-o", "json"], capture_output=True, text=True, timeout=120,
                                  env=dict(os.environ), check=False)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert json.loads(proc.stdout)["etag"] == created["etag"] and dps.count("arm.requests") == arm_before
    finally:
        dps.emu.configure(local_auth_disabled=False)


# -- conflicts and the etag guard ----------------------------------------------------------

def test_other_key_is_a_conflict_and_force_replaces_it(dps):
    ok("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(10), "--enrollment-id", "swap-1",
       "--initial-twin-tags", '{"site": "plant-1"}')
    clash = az("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(11),
               "--enrollment-id", "swap-1")
    # (az sees the azclierror the face made of the adapter's domain error, its __cause__)
    assert clash.rc != 0 and type(clash.error).__name__ == "AzureResponseError"
    assert type(clash.error.__cause__).__name__ == "DpsConflictError"
    assert "exists with an endorsement key" in clash.message and "--force" in clash.recommendation
    assert ok("edge-tpm", "enrollment", "show", *dps.login, "--enrollment-id", "swap-1").out[
        "attestation"]["tpm"]["endorsementKey"] == rsa_ek(10)
    forced = ok("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(11),
                "--enrollment-id", "swap-1", "--force").out
    assert forced["result"] == "updated" and forced["changes"] == ["endorsementKey"]
    assert forced["attestation"]["tpm"]["endorsementKey"] == rsa_ek(11)
    assert forced["initialTwin"]["tags"] == {"site": "plant-1"}, "what was not given stays as it was"
    # same key, other settings: an update of just those
    moved = ok("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(11),
               "--enrollment-id", "swap-1", "--provisioning-status", "disabled", "--edge-enabled", "false").out
    assert moved["result"] == "updated" and sorted(moved["changes"]) == ["iotEdge", "provisioningStatus"]


def test_force_is_guarded_by_the_etag(dps, tmp_path):
    """Someone else changes the enrollment between our read and our write: the If-Match update
    is refused by DPS (412) and nothing of theirs is overwritten."""
    from azext_edgetpm.dps.client import DpsClient, DpsConflictError
    from azext_edgetpm.dps.enrollment import EnrollmentSpec, create_enrollment
    ok("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(20), "--enrollment-id", "race-1")
    other = _client(dps)

    class RacedClient(DpsClient):
        def put_enrollment(self, enrollment, etag=None):
            theirs = other.get_enrollment("race-1")
            theirs["deviceId"] = "changed-by-someone-else"
            other.put_enrollment(theirs, etag=theirs["etag"])
            return super().put_enrollment(enrollment, etag)

    mine = RacedClient(_client(dps).target)
    before = dps.count("endpoint.PUT /enrollments/{id}.412")
    with pytest.raises(DpsConflictError) as err:
        create_enrollment(mine, EnrollmentSpec("race-1", rsa_ek(21)), force=True)
    assert "changed while it was being updated" in str(err.value)
    assert dps.count("endpoint.PUT /enrollments/{id}.412") == before + 1
    now = other.get_enrollment("race-1")
    assert now["deviceId"] == "changed-by-someone-else"
    assert now["attestation"]["tpm"]["endorsementKey"] == rsa_ek(20)


# -- listing, bulk, deleting ---------------------------------------------------------------

def test_list_pages_through_everything_and_bulk(dps):
    with _client(dps) as client:
        bodies = [{"registrationId": f"bulk-{i:03d}", "attestation": {"type": "tpm", "tpm": {
            "endorsementKey": rsa_ek(1000 + i)}}, "capabilities": {"iotEdge": True}} for i in range(215)]
        calls = dps.count("endpoint.POST /enrollments.")
        result = client.bulk("create", bodies)
        assert result == {"isSuccessful": True, "errors": []}
        assert dps.count("endpoint.POST /enrollments.") - calls == 22, "at most 10 per bulk call"
        again = client.bulk("create", bodies[:3])
        assert not again["isSuccessful"] and [e["registrationId"] for e in again["errors"]] == [
            "bulk-000", "bulk-001", "bulk-002"]
        assert all(e["errorCode"] == 409201 for e in again["errors"])
    total = len(dps.emu.store.query_enrollments({"query": "*"}, 10 ** 6, None)[0])
    queries = dps.count("endpoint.POST /enrollments/query")
    listed = ok("edge-tpm", "enrollment", "list", *dps.login).out
    assert len(listed) == total >= 215
    assert dps.count("endpoint.POST /enrollments/query") - queries == -(-total // 100), "one call per page"
    assert {e["registrationId"] for e in listed} >= {b["registrationId"] for b in bodies}
    assert len(ok("edge-tpm", "enrollment", "list", *dps.login, "--top", "5").out) == 5
    table = ok("edge-tpm", "enrollment", "list", *dps.login, "--top", "2", output="table").text
    assert table.splitlines()[0].split()[:3] == ["EnrollmentId", "DeviceId", "Attestation"]
    assert len(table.strip().splitlines()) == 2 + 2


def test_delete_asks_unless_yes(dps):
    ok("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(30), "--enrollment-id", "del-1")
    asked = az("edge-tpm", "enrollment", "delete", *dps.login, "--enrollment-id", "del-1")
    assert asked.rc != 0  # no terminal to confirm on: refused, nothing deleted
    assert ok("edge-tpm", "enrollment", "show", *dps.login, "--enrollment-id", "del-1").out
    ok("edge-tpm", "enrollment", "delete", *dps.login, "--enrollment-id", "del-1", "--yes")
    gone = az("edge-tpm", "enrollment", "show", *dps.login, "--enrollment-id", "del-1")
    assert type(gone.error).__name__ == "ResourceNotFoundError" and "404201" in gone.message
    again = az("edge-tpm", "enrollment", "delete", *dps.login, "--enrollment-id", "del-1", "--yes")
    assert type(again.error).__name__ == "ResourceNotFoundError"


# -- throttling and server errors ----------------------------------------------------------

def test_burst_of_creates_absorbs_429s(dps):
    dps.emu.configure(service_ops_per_minute=240, service_burst=4, reset_counters=True)
    try:
        started = time.monotonic()
        results = [az("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(100 + i),
                      "--enrollment-id", f"burst-{i}") for i in range(12)]
        elapsed = time.monotonic() - started
        throttled = dps.emu.counters().get("service.status.429", 0)
    finally:
        dps.emu.configure(service_ops_per_minute=1000, service_burst=1000)
    failures = [(r.message, r.recommendation) for r in results if r.rc != 0]
    assert failures == [], failures
    assert all(r.out["result"] == "created" for r in results)
    print(f"\n429s seen and absorbed: {throttled}; 12 creates (24 service operations) in {elapsed:.1f} s")
    assert throttled > 0, "the lowered limit must have throttled"


def test_throttling_that_outlasts_the_retries_is_a_clear_error(dps):
    from azext_edgetpm.dps.client import DpsThrottledError
    dps.emu.configure(service_ops_per_minute=1, service_burst=1)
    try:
        with _client(dps, retry_total=0) as client:
            client.find_enrollment("anything")  # takes the one token
            with pytest.raises(DpsThrottledError) as err:
                client.find_enrollment("anything")
    finally:
        dps.emu.configure(service_ops_per_minute=1000, service_burst=1000)
    assert "HTTP 429" in str(err.value) and "429001" in str(err.value)
    assert "wait a minute" in err.value.hint


def test_injected_server_errors_are_retried(dps):
    dps.emu.configure(faults={"fail_next": {"service": 2}, "status": 503, "retry_after": None})
    try:
        created = ok("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(40),
                     "--enrollment-id", "flaky-1").out
    finally:
        dps.emu.configure(clear_faults=True)
    assert created["result"] == "created"
    dps.emu.configure(faults={"fail_next": {"service": 50}, "status": 503, "retry_after": 1})
    try:
        with _client(dps, retry_total=2) as client:
            from azext_edgetpm.errors import ServerError
            with pytest.raises(ServerError) as err:
                client.get_enrollment("flaky-1")
    finally:
        dps.emu.configure(clear_faults=True)
    assert "HTTP 503" in str(err.value)


# -- DPS-shaped errors ---------------------------------------------------------------------

def test_invalid_endorsement_key_from_dps_says_how_to_read_it(dps):
    from azext_edgetpm.errors import UserInputError
    raw_modulus = __import__("base64").b64encode(b"\x01" * 256).decode()
    with _client(dps) as client, pytest.raises(UserInputError) as err:
        client.put_enrollment({"registrationId": "bad-ek", "attestation": {"type": "tpm", "tpm": {
            "endorsementKey": raw_modulus}}})
    assert "Endorsement key is invalid" in str(err.value) and "400004" in str(err.value)
    assert "tpm2_readpublic" in err.value.hint and err.value.dps["errorCode"] == 400004
    # the command checks it before DPS sees it
    local = az("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", raw_modulus,
               "--enrollment-id", "bad-ek")
    assert type(local.error).__name__ == "InvalidArgumentValueError" and "raw RSA modulus" in local.message


def test_tls_is_always_verified(dps):
    """Without the emulator's CA in REQUESTS_CA_BUNDLE its certificate is refused, with a way out
    that keeps verification on."""
    import certifi
    refused = az("edge-tpm", "enrollment", "list", *dps.login, env={"REQUESTS_CA_BUNDLE": certifi.where()})
    assert type(refused.error).__name__ == "AzureConnectionError"
    assert "could not be verified" in refused.message and "REQUESTS_CA_BUNDLE" in refused.recommendation
    # (the emulator counts the refused handshake in its own thread, after the client gave up)
    from devkit.wait import wait_until
    wait_until(lambda: dps.count("tls.handshake_failures") >= 1, timeout=10, what="the emulator counting the refusal")


def test_wrong_key_and_missing_right_are_refused(dps, tmp_path):
    wrong = dps.section["connection_string"].rsplit("=", 2)[0] + "=" + __import__("base64").b64encode(
        b"x" * 32).decode()
    cs = tmp_path / "wrong.txt"
    cs.write_text(wrong)
    refused = az("edge-tpm", "enrollment", "list", "--login", f"@{cs}")
    assert refused.rc != 0 and type(refused.error).__name__ == "UnauthorizedError"
    assert "trackingId" in refused.message
    reader = ["--login", "@" + dps.read_cs_file]
    assert ok("edge-tpm", "enrollment", "list", *reader, "--top", "1").out is not None
    denied = az("edge-tpm", "enrollment", "create", *reader, "--endorsement-key", rsa_ek(50), "--enrollment-id", "r-1")
    assert denied.rc != 0 and type(denied.error).__name__ in ("UnauthorizedError", "ForbiddenError")
    assert "EnrollmentWrite" in denied.message or "EnrollmentWrite" in denied.recommendation


def test_argument_errors(dps, tmp_path):
    static = az("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(60),
                "--allocation-policy", "static", "--iot-hubs", "a.azure-devices.net", "b.azure-devices.net")
    assert type(static.error).__name__ == "InvalidArgumentValueError" and "exactly one" in static.message
    both = az("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(60), "--host", "x")
    assert type(both.error).__name__ == "MutuallyExclusiveArgumentError"
    none = az("edge-tpm", "enrollment", "list")
    assert type(none.error).__name__ == "RequiredArgumentMissingError" and "--dps-name" in none.recommendation
    two = az("edge-tpm", "enrollment", "list", *dps.login, "--dps-name", "x")
    assert type(two.error).__name__ == "MutuallyExclusiveArgumentError"
    bad_json = az("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(60),
                  "--initial-twin-tags", "{not json")
    assert type(bad_json.error).__name__ == "InvalidArgumentValueError"
    assert "--initial-twin-tags" in bad_json.message and "@tags.json" in bad_json.recommendation
    bad_file = tmp_path / "tags.json"
    bad_file.write_text("{not json")
    for value in (str(bad_file), "@" + str(bad_file)):  # a path, or @file (az expands it first)
        in_file = az("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(60),
                     "--initial-twin-properties", value)
        assert type(in_file.error).__name__ == "InvalidArgumentValueError", (value, type(in_file.error))
        assert "--initial-twin-properties" in in_file.message and in_file.recommendation
    missing = az("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(60),
                 "--initial-twin-tags", "@" + str(tmp_path / "missing.json"))
    assert type(missing.error).__name__ == "FileOperationError" and "cannot be read" in missing.message
    bad_id = az("edge-tpm", "registration", "show", *dps.login, "--registration-id", "no spaces/allowed")
    assert type(bad_id.error).__name__ == "InvalidArgumentValueError"


def test_a_mangled_connection_string_never_shows_its_key(dps):
    """',' or ' ' instead of ';' between the pairs, or a key pasted alone: a clear error that does
    not repeat the value (nor does the key become a host name that later messages and logs show)."""
    key = dps.emu.policies[next(iter(dps.emu.policies))].primary_key_b64.rstrip("=")
    host = dps.section["service_host"]
    for login in (f"HostName={host},SharedAccessKeyName=p,SharedAccessKey={key}",
                  f"HostName={host} SharedAccessKeyName=p SharedAccessKey={key}", key):
        for extra in ((), ("--auth-type", "login")):
            bad = az("edge-tpm", "enrollment", "list", "--login", login, *extra, "--verbose")
            assert type(bad.error).__name__ == "InvalidArgumentValueError", (login, bad.message)
            assert "--login is neither" in bad.message and "';'" in bad.recommendation
            assert key.lower() not in (bad.message + bad.stderr).lower()
    unread = az("edge-tpm", "enrollment", "list", "--login", "@/no/such/connection-string.txt")
    assert type(unread.error).__name__ == "FileOperationError" and "cannot be read" in unread.message


# -- registration state --------------------------------------------------------------------

def test_registration_show_and_wait_before_the_device_registers(dps):
    ok("edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", rsa_ek(70), "--enrollment-id", "quiet-1")
    shown = az("edge-tpm", "registration", "show", *dps.login, "--registration-id", "quiet-1")
    assert type(shown.error).__name__ == "ResourceNotFoundError" and "not tried to register" in shown.message
    polls = dps.count("endpoint.GET /registrations/{id}")
    started = time.monotonic()
    waited = az("edge-tpm", "registration", "wait", *dps.login, "--registration-id", "quiet-1",
                "--timeout", "3", "--interval", "1")
    elapsed = time.monotonic() - started
    assert type(waited.error).__name__ == "UnclassifiedUserFault"
    assert type(waited.error.__cause__).__name__ == "RegistrationTimeoutError"
    assert "not assigned within 3 s" in waited.message and "has not registered yet" in waited.message
    assert 2.5 <= elapsed < 15
    assert 3 <= dps.count("endpoint.GET /registrations/{id}") - polls <= 5, "about one poll per interval"


# -- secrets -------------------------------------------------------------------------------

def test_no_secret_in_output_or_debug_logs(dps, arm_login):
    """Keys, SAS tokens and bearer tokens stay out of stdout, stderr --debug logs and az's
    command logs, on all three paths (a real az process each, so --debug is configured)."""
    secrets = dps.secrets()
    runs = {
        "key via ARM": ["edge-tpm", "enrollment", "create", *dps.arm, "--endorsement-key", rsa_ek(80),
                        "--enrollment-id", "secret-1"],
        "connection string": ["edge-tpm", "enrollment", "show", *dps.login, "--enrollment-id", "secret-1"],
        "bearer": ["edge-tpm", "enrollment", "list", *dps.arm, "--auth-type", "login", "--top", "3"],
        "registration": ["edge-tpm", "registration", "wait", *dps.login, "--registration-id", "secret-1",
                         "--timeout", "1", "--interval", "1"],
    }
    for what, args in runs.items():
        proc = az_subprocess(*args, "--debug")
        text = proc.stdout + proc.stderr
        assert "azext_edgetpm.dps.http" in text, f"{what}: the HTTP trace is in --debug"
        assert "'Authorization': 'REDACTED'" in text, what
        leaked = [s[:6] + "…" for s in secrets if s in text]
        assert leaked == [], f"{what}: secrets in output: {leaked}"
        assert "SharedAccessSignature sr=" not in text and not JWT.search(text), what
        if what == "registration":  # fails by design (timeout): one clean error line
            assert proc.returncode == 1 and "The device 'secret-1' was not assigned within 1 s" in proc.stderr
        else:
            assert proc.returncode == 0, f"{what}:\n{proc.stderr[-3000:]}"
    logs = "".join(open(p, encoding="utf-8", errors="replace").read()
                   for p in glob.glob(os.path.join(os.environ["AZURE_CONFIG_DIR"], "commands", "*.log")))
    assert not [s for s in secrets if s in logs]
