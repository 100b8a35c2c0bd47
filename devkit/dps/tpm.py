"""The service side of DPS's TPM attestation, built from tpm2-pytss's pure functions.

* :func:`parse_endorsement_key` accepts only base64 of a marshalled TPM2B_PUBLIC (2-byte size
  prefix, then a TPMT_PUBLIC of an RSA or ECC restricted decryption key), as DPS does.
* :func:`build_challenge` makes the ``authenticationKey`` blob of the first 401 answer: a random
  HMAC-SHA256 keyedHash key K (``sign | noDA | userWithAuth``, 0x00040440, as real DPS issues
  it), a random 16-byte W, MakeCredential(EK, W, Name(SRK)), a software Duplicate of K to the
  SRK with W as inner wrap key (AES-128-CFB), then a trailing ``encUriData`` field (a 2-byte
  size and 108-154 opaque bytes, as real DPS sends; clients read and ignore it).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE,
    TPMT_KEYEDHASH_SCHEME,
    TPMT_SYM_DEF_OBJECT,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)
from tpm2_pytss.utils import make_credential, wrap

from . import errors

HMAC_KEY_BYTES = 32
# Real DPS's key: sign | noDA | userWithAuth. noDA matters: a TPM in dictionary-attack lockout
# still signs with it (a DA-protected key would fail with TPM_RC_LOCKOUT).
AUTH_KEY_ATTRIBUTES = TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.NODA | TPMA_OBJECT.USERWITHAUTH
# Real DPS ends the blob with a TPM2B "encUriData" of 108-154 bytes (seen in public captures).
ENC_URI_DATA_SIZES = (108, 154)
INNER_WRAP = TPMT_SYM_DEF_OBJECT(
    algorithm=TPM2_ALG.AES,
    keyBits=TPMU_SYM_KEY_BITS(sym=128),
    mode=TPMU_SYM_MODE(sym=TPM2_ALG.CFB),
)


def _invalid(what: str) -> errors.DpsError:
    return errors.DpsError(errors.ENDORSEMENT_KEY_INVALID, f"{what} is invalid.")


def parse_public(b64: object, what: str = "Endorsement key", restricted_decrypt: bool = True) -> TPM2B_PUBLIC:
    """Decode and validate base64 of a marshalled TPM2B_PUBLIC; raise DPS error 400004."""
    if not isinstance(b64, str) or not b64.strip():
        raise _invalid(what)
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(what) from exc
    if len(raw) < 4 or int.from_bytes(raw[:2], "big") != len(raw) - 2:
        raise _invalid(what)
    try:
        pub, consumed = TPM2B_PUBLIC.unmarshal(raw)
    except (TSS2_Exception, ValueError) as exc:
        raise _invalid(what) from exc
    if consumed != len(raw):
        raise _invalid(what)
    area = pub.publicArea
    if area.type not in (TPM2_ALG.RSA, TPM2_ALG.ECC):
        raise _invalid(what)
    if restricted_decrypt:
        attrs = int(area.objectAttributes)
        need = int(TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT)
        if attrs & need != need or attrs & int(TPMA_OBJECT.SIGN_ENCRYPT):
            raise _invalid(what)
        sym = area.parameters.asymDetail.symmetric
        if sym.algorithm != TPM2_ALG.AES:
            raise _invalid(what)
    return pub


def parse_endorsement_key(b64: object) -> TPM2B_PUBLIC:
    return parse_public(b64, "Endorsement key")


def parse_storage_root_key(b64: object) -> TPM2B_PUBLIC:
    return parse_public(b64, "Storage root key")


def same_key(a: TPM2B_PUBLIC, b: TPM2B_PUBLIC) -> bool:
    """Two public areas are the same key when their TPM names match."""
    return bytes(a.get_name()) == bytes(b.get_name())


CHALLENGE_MESSAGE = "Authorization required, resend request using supplied key"


@dataclass
class Challenge:
    """What the emulator keeps (``hmac_key``) and what it sends (``authentication_key``)."""

    hmac_key: bytes
    authentication_key: str  # base64

    def response_body(self) -> dict:
        """The 401 body, with the fields real DPS sends (``keyName`` is the SAS ``skn``)."""
        return {"message": CHALLENGE_MESSAGE, "authenticationKey": self.authentication_key,
                "unencryptedAuthenticationKey": None, "keyName": "registration"}


def build_challenge(ek: TPM2B_PUBLIC, srk: TPM2B_PUBLIC) -> Challenge:
    """Build the ``authenticationKey`` blob for a device with this EK and SRK."""
    key = secrets.token_bytes(HMAC_KEY_BYTES)
    scheme = TPMT_KEYEDHASH_SCHEME(scheme=TPM2_ALG.HMAC)
    scheme.details.hmac.hashAlg = TPM2_ALG.SHA256
    sensitive, public = TPM2B_SENSITIVE.keyedhash_from_secret(
        key,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=AUTH_KEY_ATTRIBUTES,
        scheme=scheme,
    )
    w = secrets.token_bytes(16)
    credential_blob, ek_secret = make_credential(ek, w, srk.get_name())
    _, duplicate, import_seed = wrap(srk.publicArea, public, sensitive, symkey=w, symdef=INNER_WRAP)
    low, high = ENC_URI_DATA_SIZES
    enc_uri_data = secrets.token_bytes(low + secrets.randbelow(high - low + 1))
    blob = (
        credential_blob.marshal()
        + ek_secret.marshal()
        + duplicate.marshal()
        + import_seed.marshal()
        + public.marshal()
        + len(enc_uri_data).to_bytes(2, "big") + enc_uri_data
    )
    return Challenge(hmac_key=key, authentication_key=base64.b64encode(blob).decode("ascii"))
