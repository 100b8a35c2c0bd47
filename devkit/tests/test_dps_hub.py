"""The IoT Hub registry of the emulated hubs: a device identity appears when DPS assigns a device
(the real TPM flow on a host swtpm), GET/DELETE /devices/{id} with etags, IoT Hub's error shapes,
Entra ID auth; and the product's hub adapter (azext_edgetpm.dps.hub) against it: deleted, gone
already (404), refused (401: left, not raised).

The HTTP calls run in a child process whose /etc/hosts (a private mount namespace) resolves the
hubs' host names to the emulator's hub listener, so they use the real URLs (https://<hub>/...)
and verify TLS against the hub's name; the machine's /etc/hosts is never changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from devkit import tpmclient
from devkit.dps import Emulator
from devkit.dps.testing import ServiceClient, resolving_prefix
from devkit.tests.dps_fixtures import entra_token, soft_tpm, tpm_enrollment, unique_id  # noqa: F401 (fixtures)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Runs inside the namespace: every call's (status, error code, body) as one JSON document.
SCRIPT = r"""
import json, sys, requests
from azure.core.credentials import AccessToken
from azext_edgetpm.dps.hub import HubClients, delete_device_identity
hub, device, token, dps_token, ca, cloud_config = sys.argv[1:7]
url = f"https://{hub}/devices/{device}?api-version=2021-04-12"
auth = {"Authorization": "Bearer " + token}
out = {}
def call(name, method, headers, u=url):
    r = requests.request(method, u, headers=headers, verify=ca, timeout=30)
    body = r.json() if r.content else None
    out[name] = {"status": r.status_code, "code": r.headers.get("iothub-errorcode"), "body": body,
                 "etag": r.headers.get("ETag")}
call("get", "GET", auth)
call("no_auth", "GET", {})
call("dps_token", "GET", {"Authorization": "Bearer " + dps_token})
call("no_api_version", "GET", auth, f"https://{hub}/devices/{device}")
call("delete_no_if_match", "DELETE", auth)
call("delete_stale", "DELETE", dict(auth, **{"If-Match": '"AAAA"'}))
call("delete", "DELETE", dict(auth, **{"If-Match": out["get"]["etag"]}))
call("get_after", "GET", auth)

class Token:  # the token the test fetched; the product asks for the IoT Hub scope
    def get_token(self, *scopes, **kwargs):
        assert scopes == ("https://iothubs.azure.net/.default",), scopes
        return AccessToken(token, 2 ** 31)
# The dev kit's cloud in az's cloud configuration (a throwaway AZURE_CONFIG_DIR), with its IoT Hub domain:
# the product checks a hub's host name against the domain of the cloud az is set to.
from azure.cli.core import get_default_cli
for argv in (["cloud", "register", "-n", "DevkitEmulator", "--cloud-config", cloud_config],
             ["cloud", "set", "-n", "DevkitEmulator"]):
    assert get_default_cli().invoke(argv + ["-o", "none"]) == 0, argv
clients = HubClients(lambda: Token(), cli_ctx=get_default_cli())
for name in ("product_gone", "product_second"):
    change = delete_device_identity(clients, hub, device)
    out[name] = {"status": change.status, "detail": change.detail}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def hub_emu(tmp_path_factory):
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare (a private mount namespace for /etc/hosts)")
    emu = Emulator(str(tmp_path_factory.mktemp("dps-hub")), host_ips=["127.0.0.1"], persist=False,
                   assignment_delay_s=0.0, operation_retry_after_s=0, hub_address="auto").start()
    yield emu
    emu.stop()


def _in_namespace(emu, tmp_path, *argv):
    prefix = resolving_prefix(emu.store.hub_names(), emu.hub_ip, str(tmp_path))
    env = dict(os.environ, REQUESTS_CA_BUNDLE=emu.ca_bundle, PYTHONPATH=REPO,
               AZURE_CONFIG_DIR=tempfile.mkdtemp(prefix="az-", dir=tmp_path), AZURE_CORE_COLLECT_TELEMETRY="no")
    argv = (*argv, json.dumps(emu.cloud_config()))
    proc = subprocess.run([*prefix, sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_identity_made_by_assignment_then_deleted_with_etags(hub_emu, soft_tpm, tmp_path):
    emu = hub_emu
    svc = ServiceClient.for_emulator(emu)
    rid = unique_id("hubdev")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    assert all(emu.store.hub_registry.find(h, rid) is None for h in emu.store.hub_names())
    state = tpmclient.register(soft_tpm.tcti, emu.device_endpoint, emu.id_scope, rid, ca_bundle=emu.ca_bundle)
    hub = state["assignedHub"]
    identity = emu.store.hub_registry.find(hub, state["deviceId"])
    assert identity and identity["capabilities"]["iotEdge"] is True       # DPS made it on the assignment

    out = _in_namespace(emu, tmp_path, hub, rid, entra_token(emu, "https://iothubs.azure.net"),
                        entra_token(emu, "https://azure-devices-provisioning.net"), emu.ca_bundle)
    get = out["get"]
    assert get["status"] == 200 and get["body"]["deviceId"] == rid and get["etag"] == f'"{identity["etag"]}"'
    for name in ("no_auth", "dps_token"):                                 # Entra ID, the IoT Hub audience only
        assert out[name]["status"] == 401 and out[name]["code"] == "IotHubUnauthorizedAccess", out[name]
        assert out[name]["body"]["Message"].startswith("ErrorCode:IotHubUnauthorizedAccess;")
        assert out[name]["body"]["ExceptionMessage"].startswith("Tracking ID:")
    assert out["no_api_version"]["status"] == 400
    assert out["delete_no_if_match"]["status"] == 412 and out["delete_stale"]["status"] == 412
    assert out["delete_stale"]["code"] == "PreconditionFailed"
    assert out["delete"]["status"] == 204
    assert out["get_after"]["status"] == 404 and out["get_after"]["code"] == "DeviceNotFound"
    # the product's adapter: already gone is done (404), twice
    assert out["product_gone"]["status"] == "ok" and "deleted already" in out["product_gone"]["detail"]
    assert out["product_second"]["status"] == "ok"
    assert emu.store.hub_registry.find(hub, rid) is None


def test_product_deletes_and_a_refusing_hub_leaves_the_identity(hub_emu, soft_tpm, tmp_path):
    emu = hub_emu
    svc = ServiceClient.for_emulator(emu)
    rid = unique_id("hubdeny")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    state = tpmclient.register(soft_tpm.tcti, emu.device_endpoint, emu.id_scope, rid, ca_bundle=emu.ca_bundle)
    hub = state["assignedHub"]
    token = entra_token(emu, "https://iothubs.azure.net")
    emu.configure(hub_denied=True)        # the identity has no rights in the hub
    try:
        denied = _in_namespace(emu, tmp_path, hub, rid, token, token, emu.ca_bundle)
    finally:
        emu.configure(hub_denied=False)
    assert denied["product_gone"]["status"] == "left", denied["product_gone"]
    assert "no right" in denied["product_gone"]["detail"] and "IotHubUnauthorizedAccess" in denied["product_gone"][
        "detail"]
    assert emu.store.hub_registry.find(hub, rid) is not None             # left where it was
    # with rights again the identity can be deleted (the raw DELETE); the adapter then finds it gone
    done = _in_namespace(emu, tmp_path, hub, rid, token, token, emu.ca_bundle)
    assert done["delete"]["status"] == 204 and done["product_gone"]["status"] == "ok"
