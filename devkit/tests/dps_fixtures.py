"""pytest fixtures for the DPS emulator; import them into a test module to use them::

    from devkit.tests.dps_fixtures import dps_emulator, emu, soft_tpm  # noqa: F401
"""

from __future__ import annotations

import shutil
import uuid

import pytest
import requests

from devkit.dps import Emulator
from devkit.dps.testing import ServiceClient, SoftTpm

DEFAULTS = dict(
    service_ops_per_minute=1000, service_burst=1000,
    device_registrations_per_minute=1000, device_burst=1000,
    polls_per_10s=5, local_auth_disabled=False, assignment_delay_s=0.0,
    operation_retry_after_s=0, echo_payload=False, clear_faults=True,
)


@pytest.fixture(scope="session")
def dps_emulator(tmp_path_factory):
    """One emulator for the session (fast assignment: no delay, Retry-After 0 while assigning)."""
    emu = Emulator(str(tmp_path_factory.mktemp("dps")), host_ips=["127.0.0.1"], persist=False,
                   assignment_delay_s=0.0, operation_retry_after_s=0).start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(dps_emulator):
    """The session emulator with default limits, no faults and zeroed counters."""
    dps_emulator.configure(**DEFAULTS, reset_counters=True)
    yield dps_emulator
    dps_emulator.configure(**DEFAULTS)


@pytest.fixture
def trust_emulator(emu, monkeypatch):
    """REQUESTS_CA_BUNDLE = the emulator's CA, as the product and az are configured. (requests
    lets this variable override a Session's own ``verify``, so MSAL needs it.)"""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", emu.ca_bundle)
    return emu.ca_bundle


@pytest.fixture
def svc(emu) -> ServiceClient:
    """A service API client with the owner policy."""
    return ServiceClient.for_emulator(emu)


@pytest.fixture(scope="session")
def soft_tpm():
    """A swtpm with EK (0x81010001) and SRK (0x81000001) on the host."""
    for tool in ("swtpm", "tpm2_createek", "tpm2_createprimary", "tpm2_evictcontrol", "tpm2_flushcontext"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    with SoftTpm() as tpm:
        yield tpm


def unique_id(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def entra_token(emu, resource: str) -> str:
    """A client-credentials token from the emulator's identity endpoint."""
    r = requests.post(
        f"{emu.identity_endpoint}/{emu.tenant}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": emu.sp.app_id,
              "client_secret": emu.sp.secret, "scope": resource.rstrip("/") + "/.default"},
        verify=emu.ca_bundle, timeout=30,
    )
    r.raise_for_status()
    return r.json()["access_token"]


def tpm_enrollment(registration_id: str, ek_b64: str, **extra) -> dict:
    body = {"registrationId": registration_id,
            "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek_b64}},
            "capabilities": {"iotEdge": True}}
    body.update(extra)
    return body
