"""The DPS emulator as a rig service, and a simulated device registering through its own swtpm
from inside its network namespace (the path the stand-in runtime takes)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys

import pytest
import requests

from devkit import services
from devkit.devices import Rig
from devkit.dps import sas
from devkit.pytest_plugin import require_devices

pytestmark = pytest.mark.devkit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def dps_rig(tmp_path_factory):
    require_devices()
    services.register("dps", "devkit.dps.service:DpsService")
    rig = Rig(tmp_path_factory.mktemp("dps-rig"), owner_pid=os.getpid())
    rig.up(["mfg"], services=["dps"], timeout=60)
    try:
        yield rig
    finally:
        rig.down()


def test_device_registers_from_its_namespace(dps_rig, monkeypatch):
    with open(dps_rig.json_path, encoding="utf-8") as f:
        section = json.load(f)["dps"]
    assert section["device_endpoint"] == f"https://{dps_rig.host_ip}:{section['service_host'].rsplit(':', 1)[1]}"
    dev = dps_rig.devices[0]
    script = ("tpm2_createprimary -C o -c /tmp/srk.ctx >/dev/null && "
              "tpm2_evictcontrol -C o -c /tmp/srk.ctx 0x81000001 >/dev/null && "
              "tpm2_readpublic -c 0x81010001 -o /tmp/ek.pub >/dev/null && base64 -w0 /tmp/ek.pub")
    r = dev.exec(["sh", "-c", script], user="root", env=dev.tpm_env)
    assert r.returncode == 0, r.stderr
    ek = r.stdout.strip() if isinstance(r.stdout, str) else r.stdout.decode().strip()
    rid = hashlib.sha256(base64.b64decode(ek)).hexdigest()

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", section["ca_bundle"])
    cs = dict(p.split("=", 1) for p in section["connection_string"].split(";"))
    auth = sas.generate(cs["HostName"], cs["SharedAccessKey"], cs["SharedAccessKeyName"])
    body = {"registrationId": rid, "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}},
            "capabilities": {"iotEdge": True}}
    url = f"https://{section['service_host']}/enrollments/{rid}?api-version=2021-10-01"
    assert requests.put(url, json=body, headers={"Authorization": auth}, timeout=10).status_code == 200

    # the SRK's transient copy is still loaded: the client flushes orphans when the TPM is full
    # The device's root is an overlay over the host's: this checkout and its interpreter are
    # visible inside at the same paths (this clone's code, wherever it lives).
    r = dev.exec([sys.executable, "-m", "devkit.tpmclient", "register", "--tcti", dev.tcti,
                  "--endpoint", section["device_endpoint"], "--id-scope", section["id_scope"],
                  "--registration-id", rid, "--ca-bundle", section["device_ca_bundle"]],
                 user="root", env={**dev.tpm_env, "PYTHONPATH": REPO})
    out = r.stdout if isinstance(r.stdout, str) else r.stdout.decode()
    assert r.returncode == 0, out + str(r.stderr)
    state = json.loads(out)
    assert state["status"] == "assigned" and state["assignedHub"] in section["iot_hubs"]
    record = requests.get(f"https://{section['service_host']}/registrations/{rid}?api-version=2021-10-01",
                          headers={"Authorization": auth}, timeout=10).json()
    assert record["status"] == "assigned"
