"""ARM and the identity endpoint: the real azure-mgmt-iothubprovisioningservices SDK, MSAL, and
the real ``az cloud register`` + ``az login --service-principal`` against the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import msal
import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError
from azure.mgmt.iothubprovisioningservices import IotDpsClient

from devkit.tests.dps_fixtures import dps_emulator, emu, trust_emulator  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("trust_emulator")


class MsalCredential:
    """A TokenCredential on MSAL's client-credentials flow (what ``az login`` uses)."""

    def __init__(self, emu, secret=None):
        self.app = msal.ConfidentialClientApplication(
            emu.sp.app_id, client_credential=secret or emu.sp.secret,
            authority=f"{emu.identity_endpoint}/{emu.tenant}", instance_discovery=False, verify=emu.ca_bundle,
        )

    def get_token(self, *scopes, **kwargs):
        result = self.app.acquire_token_for_client(list(scopes))
        if "access_token" not in result:
            raise ClientAuthenticationError(result.get("error_description"))
        return AccessToken(result["access_token"], int(time.time()) + int(result["expires_in"]))


def _client(emu, credential=None):
    return IotDpsClient(credential or MsalCredential(emu), emu.subscription, base_url=emu.arm_endpoint,
                        credential_scopes=[emu.arm_audience + ".default"], connection_verify=emu.ca_bundle)


def test_arm_provisioning_service_through_the_sdk(emu):
    client = _client(emu)
    dps = client.iot_dps_resource.get(emu.dps_name, emu.resource_group)
    assert dps.name == emu.dps_name and dps.type == "Microsoft.Devices/provisioningServices"
    props = dps.properties
    assert props.service_operations_host_name == emu.service_host
    assert props.device_provisioning_host_name == emu.device_host
    assert props.id_scope == emu.id_scope
    assert [h.name for h in props.iot_hubs] == emu.store.hub_names()
    assert props.allocation_policy == "Hashed" and props.state == "Active"
    assert dps.sku.name == "S1"

    assert [d.name for d in client.iot_dps_resource.list_by_subscription()] == [emu.dps_name]
    assert [d.name for d in client.iot_dps_resource.list_by_resource_group(emu.resource_group)] == [emu.dps_name]

    rules = {r.key_name: r for r in client.iot_dps_resource.list_keys(emu.dps_name, emu.resource_group)}
    assert set(rules) == {"provisioningserviceowner", "enrollmentread"}
    owner = rules["provisioningserviceowner"]
    assert "EnrollmentWrite" in owner.rights
    assert owner.primary_key == emu.policies["provisioningserviceowner"].primary_key_b64
    one = client.iot_dps_resource.list_keys_for_key_name(emu.dps_name, "enrollmentread", emu.resource_group)
    assert one.rights == "EnrollmentRead" and one.secondary_key

    with pytest.raises(ResourceNotFoundError):
        client.iot_dps_resource.get("nope", emu.resource_group)
    with pytest.raises(ResourceNotFoundError):
        client.iot_dps_resource.get(emu.dps_name, "other-rg")
    with pytest.raises(ResourceNotFoundError):
        client.iot_dps_resource.list_keys_for_key_name(emu.dps_name, "nope", emu.resource_group)


def test_arm_refuses_bad_tokens(emu):
    class Forged:
        def get_token(self, *scopes, **kwargs):
            return AccessToken("a.b.c", int(time.time()) + 3600)

    with pytest.raises(ClientAuthenticationError):
        _client(emu, Forged()).iot_dps_resource.get(emu.dps_name, emu.resource_group)
    # a token for the DPS data plane is not an ARM token
    dps_scoped = IotDpsClient(MsalCredential(emu), emu.subscription, base_url=emu.arm_endpoint,
                              credential_scopes=["https://azure-devices-provisioning.net/.default"],
                              connection_verify=emu.ca_bundle)
    with pytest.raises(ClientAuthenticationError):
        dps_scoped.iot_dps_resource.get(emu.dps_name, emu.resource_group)
    with pytest.raises(ClientAuthenticationError):
        _client(emu, MsalCredential(emu, secret="wrong")).iot_dps_resource.get(emu.dps_name, emu.resource_group)
    r = requests.get(f"{emu.url}/subscriptions", verify=emu.ca_bundle, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "AuthenticationFailed"
    assert "authorization_uri" in r.headers["WWW-Authenticate"]


def test_identity_errors_are_aad_shaped(emu):
    url = f"{emu.identity_endpoint}/{emu.tenant}/oauth2/v2.0/token"
    base = {"grant_type": "client_credentials", "client_id": emu.sp.app_id, "client_secret": emu.sp.secret}
    r = requests.post(url, data={**base, "scope": "https://unknown.example/.default"}, verify=emu.ca_bundle)
    assert r.status_code == 400 and r.json()["error"] == "invalid_resource"
    r = requests.post(url, verify=emu.ca_bundle,
                      data={**base, "client_id": "nobody", "scope": "https://azure-devices-provisioning.net/.default"})
    assert r.status_code == 400 and r.json()["error_codes"] == [700016]
    r = requests.post(f"{emu.identity_endpoint}/other-tenant/oauth2/v2.0/token",
                      data={**base, "scope": "https://azure-devices-provisioning.net/.default"}, verify=emu.ca_bundle)
    assert r.status_code == 400 and "AADSTS90002" in r.json()["error_description"]
    cfg = requests.get(f"{emu.identity_endpoint}/{emu.tenant}/v2.0/.well-known/openid-configuration",
                       verify=emu.ca_bundle).json()
    assert cfg["token_endpoint"] == url and cfg["issuer"] == f"{emu.identity_endpoint}/{emu.tenant}/v2.0"


AZ = os.path.join(os.path.dirname(sys.executable), "az")


@pytest.mark.skipif(not os.path.exists(AZ), reason="the real az is not installed in this environment")
def test_real_az_login_with_a_custom_cloud(emu, tmp_path):
    """``az cloud register`` (endpoints discovered from the emulator's ARM metadata), ``az login
    --service-principal`` and ``az account get-access-token``, unpatched, against the emulator.

    One setting is needed: ``core.instance_discovery=false`` (here as the environment variable
    AZURE_CORE_INSTANCE_DISCOVERY), because MSAL otherwise asks login.microsoftonline.com
    whether a non-Microsoft authority is known, and that host is unreachable."""
    env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / "az"), AZURE_EXTENSION_DIR=str(tmp_path / "ext"),
               AZURE_CORE_COLLECT_TELEMETRY="no", AZURE_CORE_NO_COLOR="1", AZURE_CORE_ONLY_SHOW_ERRORS="1",
               AZURE_CORE_INSTANCE_DISCOVERY="false", REQUESTS_CA_BUNDLE=emu.ca_bundle)

    def az(*args, check=True):
        proc = subprocess.run([AZ, *args, "-o", "json"], env=env, capture_output=True, text=True, timeout=120)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    az("cloud", "register", "-n", emu.cloud_name, "--endpoint-resource-manager", emu.arm_endpoint)
    az("cloud", "set", "-n", emu.cloud_name)
    cloud = json.loads(az("cloud", "show").stdout)
    assert cloud["endpoints"]["activeDirectory"] == emu.identity_endpoint
    assert cloud["endpoints"]["activeDirectoryResourceId"] == emu.arm_audience

    bad = az("login", "--service-principal", "-u", emu.sp.app_id, "-p", "not-the-secret",
             "--tenant", emu.tenant, check=False)
    assert bad.returncode != 0 and "AADSTS7000215" in bad.stderr

    secret_file = tmp_path / "sp-secret.txt"  # @file: the secret on no command line, never read as an option
    with os.fdopen(os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(emu.sp.secret)
    accounts = json.loads(az("login", "--service-principal", "-u", emu.sp.app_id, "-p", f"@{secret_file}",
                             "--tenant", emu.tenant).stdout)
    assert [(a["id"], a["tenantId"], a["user"]["type"]) for a in accounts] == [
        (emu.subscription, emu.tenant, "servicePrincipal")]

    dps_token = json.loads(az("account", "get-access-token", "--resource",
                              "https://azure-devices-provisioning.net").stdout)["accessToken"]
    r = requests.get(f"{emu.url}/enrollments/not-there?api-version=2021-10-01",
                     headers={"Authorization": f"Bearer {dps_token}"}, verify=emu.ca_bundle, timeout=10)
    assert r.status_code == 404 and r.json()["errorCode"] == 404201  # authenticated, just absent

    arm_token = json.loads(az("account", "get-access-token").stdout)["accessToken"]
    r = requests.get(f"{emu.arm_endpoint}subscriptions/{emu.subscription}/resourceGroups/{emu.resource_group}"
                     f"/providers/Microsoft.Devices/provisioningServices/{emu.dps_name}?api-version=2021-10-15",
                     headers={"Authorization": f"Bearer {arm_token}"}, verify=emu.ca_bundle, timeout=10)
    assert r.status_code == 200 and r.json()["properties"]["idScope"] == emu.id_scope
    assert emu.counters()["endpoint.POST /{tenant}/oauth2/v2.0/token.200"] >= 2


def test_cli_serve_writes_the_section(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "devkit.dps", "serve", "--dir", str(tmp_path), "--port", "0",
                             "--host-ip", "127.0.0.1"], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        section = json.loads(open(info["section_file"], encoding="utf-8").read())
        assert oct(os.stat(info["section_file"]).st_mode & 0o777) == "0o600"
        assert section["ca_bundle"] == info["ca_bundle"] and section["device_endpoint"] == info["device_endpoint"]
        assert section["connection_string"].startswith(f"HostName={section['service_host']};")
        for key in ("id_scope", "arm_endpoint", "identity_endpoint", "subscription", "resource_group", "dps_name",
                    "iot_hubs", "sp", "admin_url", "global_endpoint"):
            assert section[key], key
        assert requests.get(section["admin_url"] + "/health", timeout=5).json() == {"ok": True}
        r = requests.get(f"https://{section['service_host']}/enrollments/x?api-version=2021-10-01",
                         verify=section["ca_bundle"], timeout=5)
        assert r.status_code == 401
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
