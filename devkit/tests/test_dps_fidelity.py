"""The emulator's TPM challenge has the shape of real DPS's: the 401 body's fields, the issued
key's attributes (``sign | noDA | userWithAuth``), the trailing ``encUriData``; and registration
works with the TPM in dictionary-attack lockout, as it does against real DPS."""

from __future__ import annotations

import base64
import os
import subprocess

import pytest
import requests

from devkit import tpmclient
from devkit.dps.testing import SoftTpm
from devkit.tests.dps_fixtures import (  # noqa: F401 (fixtures)
    dps_emulator, emu, soft_tpm, svc, tpm_enrollment, unique_id,
)

REAL_DPS_KEY_ATTRIBUTES = 0x00040440  # sign | noDA | userWithAuth, as real DPS issues the key


def _challenge(emu, tpm, rid):
    with open(os.path.join(tpm.directory, "srk.pub"), "rb") as handle:
        srk = handle.read()
    url = f"{emu.device_endpoint}/{emu.id_scope}/registrations/{rid}/register?api-version=2021-06-01"
    body = {"registrationId": rid, "tpm": {"endorsementKey": tpm.ek_b64,
                                           "storageRootKey": base64.b64encode(srk).decode()}}
    return requests.put(url, json=body, verify=emu.ca_bundle, timeout=10)


@pytest.fixture
def srk_pub(soft_tpm):
    path = os.path.join(soft_tpm.directory, "srk.pub")
    if not os.path.exists(path):
        subprocess.run(["tpm2_readpublic", "-c", "0x81000001", "-o", path], check=True, capture_output=True,
                       env=dict(os.environ, TPM2TOOLS_TCTI=soft_tpm.tcti), timeout=30)
    return path


def test_challenge_body_and_blob_are_shaped_as_real_dps(emu, svc, soft_tpm, srk_pub):
    rid = unique_id("shape")
    assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, soft_tpm.ek_b64)).status_code == 200
    sizes = set()
    for _ in range(6):
        r = _challenge(emu, soft_tpm, rid)
        assert r.status_code == 401, r.text
        body = r.json()
        assert set(body) == {"message", "authenticationKey", "unencryptedAuthenticationKey", "keyName"}
        assert body["keyName"] == "registration"
        assert body["unencryptedAuthenticationKey"] is None
        assert body["message"] == "Authorization required, resend request using supplied key"
        key = tpmclient.parse_authentication_key(body["authenticationKey"])
        assert int(key.public.publicArea.objectAttributes) == REAL_DPS_KEY_ATTRIBUTES
        blob = base64.b64decode(body["authenticationKey"])
        used = sum(len(part.marshal()) for part in (key.credential_blob, key.ek_secret, key.duplicate,
                                                    key.import_seed, key.public))
        trailer = blob[used:]
        size = int.from_bytes(trailer[:2], "big")
        assert len(trailer) == 2 + size and 108 <= size <= 154
        sizes.add(size)
    assert len(sizes) > 1  # not one fixed length


def test_device_clients_read_the_trailing_enc_uri_data(soft_tpm, srk_pub):
    """The devkit TPM client (which the stand-in runtime runs) reads the trailer real DPS sends,
    also takes a blob without it, and refuses one whose trailer is cut short or overlong."""
    from tpm2_pytss.types import TPM2B_PUBLIC
    from devkit.dps import tpm as dps_tpm
    with open(srk_pub, "rb") as handle:
        srk, _ = TPM2B_PUBLIC.unmarshal(handle.read())
    ek, _ = TPM2B_PUBLIC.unmarshal(soft_tpm.ek_pub)
    blob = base64.b64decode(dps_tpm.build_challenge(ek, srk).authentication_key)
    head = _head(blob)
    trailer = blob[head:]
    assert 108 <= int.from_bytes(trailer[:2], "big") == len(trailer) - 2 <= 154
    enc = lambda b: base64.b64encode(b).decode()  # noqa: E731
    assert tpmclient.parse_authentication_key(enc(blob)).public.marshal() == \
        tpmclient.parse_authentication_key(enc(blob[:head])).public.marshal()
    for bad in (blob[:-1], blob + b"\x00", blob[:head + 1]):
        with pytest.raises(tpmclient.TpmClientError):
            tpmclient.parse_authentication_key(enc(bad))


def _head(blob: bytes) -> int:
    """Length of the five TPM2B fields before encUriData (each a 2-byte size + data)."""
    pos = 0
    for _ in range(5):
        pos += 2 + int.from_bytes(blob[pos:pos + 2], "big")
    return pos


def _tools(tpm, *argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check, cwd=tpm.directory,
                          env=dict(os.environ, TPM2TOOLS_TCTI=tpm.tcti))


def _in_lockout(tpm) -> bool:
    out = _tools(tpm, "tpm2_getcap", "properties-variable").stdout
    block = out.split("TPM2_PT_PERMANENT:", 1)[1].split("TPM2_PT_STARTUP_CLEAR", 1)[0]
    return "inLockout:                 1" in block or "inLockout: 1" in " ".join(block.split())


def test_registration_works_with_the_tpm_in_dictionary_attack_lockout(emu, svc):
    """A private TPM driven into DA lockout (one wrong password on a DA-protected key with
    maxTries 1): a DA-protected key cannot be used any more, yet registration succeeds, because
    the challenge's key is noDA (as real DPS makes it)."""
    with SoftTpm() as tpm:
        _tools(tpm, "tpm2_dictionarylockout", "--setup-parameters", "--max-tries=1",
               "--recovery-time=3600", "--lockout-recovery-time=3600")
        _tools(tpm, "tpm2_create", "-C", "0x81000001", "-G", "hmac", "-p", "right", "-u", "k.pub", "-r", "k.priv")
        _tools(tpm, "tpm2_load", "-C", "0x81000001", "-u", "k.pub", "-r", "k.priv", "-c", "k.ctx")
        _tools(tpm, "tpm2_evictcontrol", "-C", "o", "-c", "k.ctx", "0x81000200")
        _tools(tpm, "tpm2_flushcontext", "-t")
        with open(os.path.join(tpm.directory, "msg"), "wb") as handle:
            handle.write(b"hello")
        wrong = _tools(tpm, "tpm2_hmac", "-c", "0x81000200", "-p", "wrong", "msg", check=False)
        assert wrong.returncode != 0
        assert _in_lockout(tpm), "the TPM should now be in dictionary-attack lockout"
        locked = _tools(tpm, "tpm2_hmac", "-c", "0x81000200", "-p", "right", "msg", check=False)
        assert locked.returncode != 0 and "lockout" in (locked.stderr + locked.stdout).lower()

        rid = tpm.registration_id
        assert svc.call("PUT", f"/enrollments/{rid}", tpm_enrollment(rid, tpm.ek_b64)).status_code == 200
        state = tpmclient.register(tpm.tcti, emu.device_endpoint, emu.id_scope, rid, ca_bundle=emu.ca_bundle)
        assert state["status"] == "assigned", state
        assert _in_lockout(tpm)  # still locked out: registration did not need to lift it
