"""Published Python clients of the DPS service API against the emulator, to show it speaks the
public API and not only our own client's dialect.

* azure-iot-deviceprovisioning 1.0.0b1 (azure-core pipeline, api-version 2021-10-01): SAS from a
  connection string and Entra ID tokens.
* azure-iothub-provisioningserviceclient 1.2.0 (2018, msrest, api-version 2018-09-01-preview):
  installs and runs on Python 3.11.
"""

from __future__ import annotations

import time

import msal
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from devkit.tests.dps_fixtures import (  # noqa: F401 (fixtures)
    dps_emulator, emu, soft_tpm, tpm_enrollment, trust_emulator, unique_id,
)

deviceprovisioning = pytest.importorskip("azure.iot.deviceprovisioning")


class _Credential:
    def __init__(self, emu):
        self.app = msal.ConfidentialClientApplication(
            emu.sp.app_id, client_credential=emu.sp.secret, authority=f"{emu.identity_endpoint}/{emu.tenant}",
            instance_discovery=False)

    def get_token(self, *scopes, **kwargs):
        r = self.app.acquire_token_for_client(list(scopes))
        return AccessToken(r["access_token"], int(time.time()) + int(r["expires_in"]))


def test_azure_iot_deviceprovisioning_with_connection_string(emu, soft_tpm, trust_emulator):
    client = deviceprovisioning.DeviceProvisioningClient.from_connection_string(
        emu.connection_string(), connection_verify=emu.ca_bundle)
    rid = unique_id("sdk")
    created = client.enrollment.create_or_update(id=rid, enrollment=tpm_enrollment(rid, soft_tpm.ek_b64))
    assert created["registrationId"] == rid and created["capabilities"]["iotEdge"] is True
    assert client.enrollment.get(id=rid)["etag"] == created["etag"]
    # like the real DPS (azure-sdk-for-python#35187): no etag on an existing one -> ResourceExistsError
    with pytest.raises(ResourceExistsError):
        client.enrollment.create_or_update(id=rid, enrollment=tpm_enrollment(rid, soft_tpm.ek_b64))
    updated = client.enrollment.create_or_update(
        id=rid, enrollment=tpm_enrollment(rid, soft_tpm.ek_b64, provisioningStatus="disabled"),
        if_match=created["etag"])
    assert updated["provisioningStatus"] == "disabled"

    more = [unique_id("sdkbulk") for _ in range(4)]
    result = client.enrollment.run_bulk_operation(
        bulk_operation={"mode": "create", "enrollments": [tpm_enrollment(i, soft_tpm.ek_b64) for i in more]})
    assert result["isSuccessful"] is True
    listed = [e["registrationId"] for e in client.enrollment.query(query_specification={"query": "*"}, top=2)]
    assert set(more) | {rid} <= set(listed)  # ItemPaged followed x-ms-continuation through all pages
    assert len(listed) == len(set(listed))

    with pytest.raises(ResourceNotFoundError):
        client.device_registration_state.get(id=rid)
    client.enrollment.delete(id=rid, if_match=updated["etag"])
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(id=rid)


def test_azure_iot_deviceprovisioning_with_entra_id(emu, soft_tpm, trust_emulator):
    emu.configure(local_auth_disabled=True)
    client = deviceprovisioning.DeviceProvisioningClient(
        endpoint=emu.url, credential=_Credential(emu), connection_verify=emu.ca_bundle)
    rid = unique_id("aad")
    client.enrollment.create_or_update(id=rid, enrollment=tpm_enrollment(rid, soft_tpm.ek_b64))
    assert client.enrollment.get(id=rid)["registrationId"] == rid
    sas_client = deviceprovisioning.DeviceProvisioningClient.from_connection_string(
        emu.connection_string(), connection_verify=emu.ca_bundle)
    from azure.core.exceptions import ClientAuthenticationError

    with pytest.raises(ClientAuthenticationError):
        sas_client.enrollment.get(id=rid)


def test_legacy_provisioningserviceclient(emu, soft_tpm, trust_emulator):
    psc = pytest.importorskip("provisioningserviceclient")
    from provisioningserviceclient.models import AttestationMechanism, DeviceCapabilities, IndividualEnrollment

    client = psc.ProvisioningServiceClient.create_from_connection_string(emu.connection_string())
    rid = unique_id("legacy")
    enrollment = IndividualEnrollment.create(
        rid, AttestationMechanism.create_with_tpm(soft_tpm.ek_b64),
        device_id="legacy-edge", device_capabilities=DeviceCapabilities.create(iot_edge=True))
    created = client.create_or_update(enrollment)
    assert created.registration_id == rid and created.etag
    assert created.capabilities.iot_edge is True
    fetched = client.get_individual_enrollment(rid)
    assert fetched.device_id == "legacy-edge"
    fetched.provisioning_status = "disabled"
    assert client.create_or_update(fetched).provisioning_status == "disabled"  # etag sent as If-Match
    query = client.create_individual_enrollment_query(psc.QuerySpecification("*"), page_size=2)
    ids = [e.registration_id for page in query for e in page]  # Query iterates pages
    assert rid in ids
    client.delete_individual_enrollment_by_param(rid)
    with pytest.raises(psc.ProvisioningServiceError):
        client.get_individual_enrollment(rid)
