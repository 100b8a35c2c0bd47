"""EK validation and registration IDs, on key structures made with tpm2-pytss (no TPM needed:
only the public area's bytes are under test here; the dev-kit tests read real TPMs)."""
import base64
import hashlib
import os

import pytest

from azext_edgetpm.errors import DeviceError, UserInputError
from azext_edgetpm.tpm.ek import decode_endorsement_key, parse_endorsement_key, registration_id

tss = pytest.importorskip("tpm2_pytss")


def _ek_blob() -> bytes:
    from tpm2_pytss.internal.templates import ek_rsa2048
    from tpm2_pytss.types import TPM2B_PUBLIC
    public = TPM2B_PUBLIC(publicArea=ek_rsa2048.template.publicArea)
    public.publicArea.unique.rsa = os.urandom(256)
    return public.marshal()


def _srk_blob() -> bytes:
    from tpm2_pytss.types import TPM2B_PUBLIC
    public = TPM2B_PUBLIC.parse(
        "rsa2048:aes128cfb",
        objectAttributes="fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt")
    public.publicArea.unique.rsa = os.urandom(256)
    return public.marshal()


def _base32_by_hand(data: bytes) -> str:
    """RFC 4648 base32 (lower case, no padding) written out bit by bit, independent of the
    standard library's codec that the product uses."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    bits = "".join(f"{byte:08b}" for byte in data)
    bits += "0" * (-len(bits) % 5)
    return "".join(alphabet[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))


def test_valid_ek_and_both_id_formats():
    blob = _ek_blob()
    ek = parse_endorsement_key(blob)
    assert ek.key_type == "RSA-2048" and ek.validated_with == "tpm2-pytss"
    assert blob[:2] == b"\x01\x3a" and len(blob) == 316  # as tpm2_createek writes it (rig.md)
    assert ek.registration_id("sha256") == hashlib.sha256(blob).hexdigest()
    legacy = registration_id(blob, "legacy")
    assert legacy == _base32_by_hand(hashlib.sha256(blob).digest())
    assert len(legacy) == 52 and legacy == legacy.lower() and "=" not in legacy


def test_base64_round_trip_and_whitespace():
    blob = _ek_blob()
    text = base64.b64encode(blob).decode()
    assert decode_endorsement_key("  " + text[:40] + "\n" + text[40:] + " ") == blob


@pytest.mark.parametrize("make, expected", [
    (lambda b: b[2:], "TPMT_PUBLIC without the 2-byte size prefix"),
    (lambda b: b[-256:], "raw RSA modulus"),
    (lambda b: b + b"\x00\x00", "size prefix does not match"),
    (lambda b: b[:8], "only 8 bytes"),
])
def test_common_mistakes_are_named(make, expected):
    with pytest.raises(UserInputError) as info:
        parse_endorsement_key(make(_ek_blob()))
    assert expected in str(info.value)
    assert "tpm2_readpublic" in info.value.hint


def test_storage_key_is_not_an_ek():
    with pytest.raises(UserInputError) as info:
        parse_endorsement_key(_srk_blob())
    assert "not those of an endorsement key" in str(info.value)
    assert "0x81010001" in info.value.hint


def test_pem_and_bad_base64():
    with pytest.raises(UserInputError, match="PEM"):
        decode_endorsement_key("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----")
    with pytest.raises(UserInputError, match="not valid base64"):
        decode_endorsement_key("not*base64")


def test_garbage_with_a_plausible_size_prefix():
    with pytest.raises(UserInputError, match="does not unmarshal"):
        parse_endorsement_key(b"\x00\x0e" + b"\xff" * 14)


def test_device_output_that_is_not_base64_is_one_clean_error():
    from azext_edgetpm.remote.session import Result
    from azext_edgetpm.tpm.remote import parse_output
    with pytest.raises(DeviceError, match="not what tpm2-tools prints"):
        parse_output(Result(0, "@@CREATED\n@@EK not*base64\n", ""), "root@device:22", None)


@pytest.mark.parametrize("template", ["ek_rsa2048", "ek_ecc256", "ek_high_rsa2048"])
def test_structural_parse_reads_the_same_key_as_tpm2_pytss(template):
    """Where tpm2-pytss is missing the EK is read field by field: same key as the TSS reads."""
    from tpm2_pytss.internal import templates
    from tpm2_pytss.types import TPM2B_PUBLIC
    from azext_edgetpm.tpm.ek import _parse_structure, _parse_with_tss
    public = TPM2B_PUBLIC(publicArea=getattr(templates, template).template.publicArea)
    if "ecc" in template:
        public.publicArea.unique.ecc.x, public.publicArea.unique.ecc.y = os.urandom(32), os.urandom(32)
    else:
        public.publicArea.unique.rsa = os.urandom(256)
    blob = public.marshal()
    by_tss, by_structure = _parse_with_tss(blob), _parse_structure(blob)
    assert by_structure.validated_with == "structure"
    for field in ("key_type", "rsa_modulus", "rsa_exponent", "ecc_point"):
        assert getattr(by_structure, field) == getattr(by_tss, field)
    assert by_structure.rsa_modulus or by_structure.ecc_point
    with pytest.raises(UserInputError, match="ends in the middle"):
        _parse_structure(blob[:-5])
