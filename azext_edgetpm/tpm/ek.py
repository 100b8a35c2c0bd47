"""Endorsement key (EK) parsing and validation, and registration IDs derived from it.

Small pure functions over bytes, in the spirit of tpm2-pytss's `utils`. The EK DPS accepts is
the marshalled TPM2B_PUBLIC (2-byte size prefix, then TPMT_PUBLIC) of an EK made from a TCG
EK template; we check exactly that, with tpm2-pytss where it is installed (Linux). Where it
is not (Windows and macOS, where the TSS C libraries do not exist), the EK still read over SSH
by the device's own tpm2-tools is checked structurally: size prefix, key type and the EK
template's object attributes, and the key itself read field by field (TPM 2.0 Part 2).
"""
import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from typing import Optional

from azext_edgetpm.errors import UserInputError, option

ID_FORMATS = ("sha256", "legacy")

# TPM 2.0 constants (TCG "Trusted Platform Module Library" Part 2), used only by the
# structural check when tpm2-pytss is missing.
_ALG_RSA, _ALG_ECC = 0x0001, 0x0023
_ALG_AES, _ALG_CFB, _ALG_NULL = 0x0006, 0x0043, 0x0010
_ECC_NIST_P256 = 0x0003
_FIXED_TPM, _FIXED_PARENT, _SENSITIVE_DATA_ORIGIN = 0x2, 0x10, 0x20
_USER_WITH_AUTH, _ADMIN_WITH_POLICY, _RESTRICTED, _DECRYPT, _SIGN = 0x40, 0x80, 0x10000, 0x20000, 0x40000
_EK_REQUIRED = _FIXED_TPM | _FIXED_PARENT | _SENSITIVE_DATA_ORIGIN | _ADMIN_WITH_POLICY | _RESTRICTED | _DECRYPT
_EK_ALLOWED = _EK_REQUIRED | _USER_WITH_AUTH

_HOW_TO_READ = ("Read it on the device with `tpm2_readpublic -c 0x81010001 -o ek.pub` and pass "
                f"`base64 -w0 ek.pub`, or let az edge-tpm read it with {option('host')}.")


def tss_available() -> bool:
    """Whether tpm2-pytss (and the TSS libraries behind it) can be imported here."""
    try:
        import tpm2_pytss  # noqa: F401  pylint: disable=unused-import,import-error
    except (ImportError, OSError):
        return False
    return True


@dataclass
class EndorsementKey:
    """A validated EK: the marshalled TPM2B_PUBLIC bytes and what they say."""
    blob: bytes
    key_type: str            # "RSA-2048" | "ECC-NIST-P256"
    validated_with: str      # "tpm2-pytss" | "structure"
    rsa_modulus: Optional[int] = None
    rsa_exponent: Optional[int] = None
    ecc_point: Optional[tuple] = None

    @property
    def base64(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")

    def registration_id(self, id_format: str = "sha256") -> str:
        return registration_id(self.blob, id_format)


def registration_id(ek_blob: bytes, id_format: str = "sha256") -> str:
    """The registration ID of a device from its marshalled EK.

    sha256: lower-case hex SHA-256 of the marshalled TPM2B_PUBLIC (the seed document's
    `sha256sum ek.pub`). legacy: the C SDK's tpm_device_provision form, base32 of the same
    digest, lower case, padding stripped.
    """
    digest = hashlib.sha256(ek_blob).digest()
    if id_format == "sha256":
        return digest.hex()
    if id_format == "legacy":
        return base64.b32encode(digest).decode("ascii").lower().rstrip("=")
    raise UserInputError(f"Unknown {option('id_format')} {id_format!r}.", f"Use one of: {', '.join(ID_FORMATS)}.")


def decode_endorsement_key(value: str) -> bytes:
    """Base64 text (as DPS and the seed script show it) to bytes, with the usual mistakes named."""
    text = (value or "").strip()
    if text.startswith("-----BEGIN"):
        raise UserInputError(
            "The endorsement key is a PEM document; DPS expects the base64 of the marshalled "
            "TPM2B_PUBLIC structure, not a PEM public key.", _HOW_TO_READ)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UserInputError("The endorsement key is not valid base64.", _HOW_TO_READ) from exc


def parse_endorsement_key(blob: bytes) -> EndorsementKey:
    """Validate a marshalled TPM2B_PUBLIC as an EK; raise a clear error for anything else."""
    if len(blob) < 2 + 10:
        raise UserInputError(
            f"The endorsement key is only {len(blob)} bytes long; it is not a marshalled TPM2B_PUBLIC.",
            _HOW_TO_READ)
    size = struct.unpack(">H", blob[:2])[0]
    if size != len(blob) - 2:
        if len(blob) in (256, 384, 512) or (blob[:1] == b"\x00" and len(blob) in (257, 385, 513)):
            hint = "It looks like a raw RSA modulus."
        elif struct.unpack(">H", blob[:2])[0] in (_ALG_RSA, _ALG_ECC):
            hint = "It looks like a TPMT_PUBLIC without the 2-byte size prefix of TPM2B_PUBLIC."
        else:
            hint = "Its size prefix does not match its length."
        raise UserInputError(
            f"The endorsement key is not a marshalled TPM2B_PUBLIC. {hint}", _HOW_TO_READ)
    if tss_available():
        return _parse_with_tss(blob)
    return _parse_structure(blob)


def _parse_with_tss(blob: bytes) -> EndorsementKey:
    # pylint: disable=import-error
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC
    from tpm2_pytss.types import TPM2B_PUBLIC
    try:
        public, used = TPM2B_PUBLIC.unmarshal(blob)
    except (TSS2_Exception, ValueError) as exc:
        raise UserInputError(f"The endorsement key does not unmarshal as TPM2B_PUBLIC: {exc}",
                             _HOW_TO_READ) from exc
    if used != len(blob):
        raise UserInputError(
            f"The endorsement key does not unmarshal as a TPM2B_PUBLIC (the TSS could read {used} of its "
            f"{len(blob)} bytes).", _HOW_TO_READ)
    area = public.publicArea
    _check_attributes(int(area.objectAttributes))
    if area.type in (TPM2_ALG.RSA, TPM2_ALG.ECC):
        detail = area.parameters.rsaDetail if area.type == TPM2_ALG.RSA else area.parameters.eccDetail
        symmetric = detail.symmetric
        algorithm = int(symmetric.algorithm)
        _check_symmetric(algorithm, int(symmetric.keyBits.sym) if algorithm != _ALG_NULL else None,
                         int(symmetric.mode.sym) if algorithm != _ALG_NULL else None)
    if area.type == TPM2_ALG.RSA:
        bits = int(area.parameters.rsaDetail.keyBits)
        if bits != 2048:
            raise UserInputError(f"The endorsement key is RSA-{bits}; DPS takes RSA-2048 or ECC P-256 EKs.",
                                 "Use the TPM's RSA-2048 EK (handle 0x81010001).")
        exponent = int(area.parameters.rsaDetail.exponent) or 65537
        return EndorsementKey(blob, "RSA-2048", "tpm2-pytss",
                              rsa_modulus=int.from_bytes(bytes(area.unique.rsa), "big"), rsa_exponent=exponent)
    if area.type == TPM2_ALG.ECC:
        if area.parameters.eccDetail.curveID != TPM2_ECC.NIST_P256:
            raise UserInputError("The endorsement key uses an ECC curve other than NIST P-256.",
                                 "Use the TPM's RSA-2048 EK (handle 0x81010001).")
        point = (int.from_bytes(bytes(area.unique.ecc.x), "big"), int.from_bytes(bytes(area.unique.ecc.y), "big"))
        return EndorsementKey(blob, "ECC-NIST-P256", "tpm2-pytss", ecc_point=point)
    raise UserInputError("The endorsement key is neither an RSA nor an ECC key.", _HOW_TO_READ)


class _Reader:
    """Big-endian reads over a marshalled TPM structure."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise UserInputError(
                "The endorsement key ends in the middle of its TPMT_PUBLIC structure.", _HOW_TO_READ)
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def sized(self) -> bytes:
        return self.take(self.u16())


def _parse_structure(blob: bytes) -> EndorsementKey:
    """The TPMT_PUBLIC of an RSA or ECC EK read field by field (TPM 2.0 Part 2), for where
    tpm2-pytss is not installed: enough to validate the EK and compare it with a certificate."""
    reader = _Reader(blob[2:])
    key_type, _name_alg, attributes = reader.u16(), reader.u16(), reader.u32()
    _check_attributes(attributes)
    if key_type not in (_ALG_RSA, _ALG_ECC):
        raise UserInputError("The endorsement key is neither an RSA nor an ECC key.", _HOW_TO_READ)
    reader.sized()                                  # authPolicy
    algorithm, bits, mode = reader.u16(), None, None  # symmetric: algorithm [, keyBits, mode]
    if algorithm != _ALG_NULL:
        bits, mode = reader.u16(), reader.u16()
    _check_symmetric(algorithm, bits, mode)
    if reader.u16() != _ALG_NULL:                   # scheme and its hash
        reader.take(2)
    if key_type == _ALG_RSA:
        bits, exponent = reader.u16(), reader.u32()
        modulus = reader.sized()
        _check_consumed(reader)
        if bits != 2048:
            raise UserInputError(f"The endorsement key is RSA-{bits}; DPS takes RSA-2048 or ECC P-256 EKs.",
                                 "Use the TPM's RSA-2048 EK (handle 0x81010001).")
        return EndorsementKey(blob, "RSA-2048", "structure", rsa_modulus=int.from_bytes(modulus, "big"),
                              rsa_exponent=exponent or 65537)
    curve = reader.u16()
    if reader.u16() != _ALG_NULL:                   # kdf and its hash
        reader.take(2)
    x, y = reader.sized(), reader.sized()
    _check_consumed(reader)
    if curve != _ECC_NIST_P256:
        raise UserInputError("The endorsement key uses an ECC curve other than NIST P-256.",
                             "Use the TPM's RSA-2048 EK (handle 0x81010001).")
    return EndorsementKey(blob, "ECC-NIST-P256", "structure",
                          ecc_point=(int.from_bytes(x, "big"), int.from_bytes(y, "big")))


def _check_consumed(reader: _Reader) -> None:
    if reader.pos != len(reader.data):
        raise UserInputError(
            f"The endorsement key has {len(reader.data) - reader.pos} bytes after its TPMT_PUBLIC structure.",
            _HOW_TO_READ)


def _check_symmetric(algorithm: int, bits: Optional[int], mode: Optional[int]) -> None:
    """DPS wraps the credential of its TPM challenge with the EK's symmetric definition and takes
    only the TCG EK templates' AES-128-CFB (a restricted decryption key always has one)."""
    if (algorithm, bits, mode) != (_ALG_AES, 128, _ALG_CFB):
        names = {_ALG_AES: "AES", _ALG_NULL: "none", 0x0026: "SM4", 0x0025: "Camellia"}
        what = names.get(algorithm, f"algorithm 0x{algorithm:04x}")
        if algorithm != _ALG_NULL:
            what += f"-{bits}" + ("-CFB" if mode == _ALG_CFB else f" in mode 0x{(mode or 0):04x}")
        raise UserInputError(
            f"The endorsement key's symmetric algorithm is {what}; DPS requires AES-128-CFB (the TCG EK "
            "template's), so its TPM attestation would fail.",
            "Use the TPM's EK made from the TCG default template (tpm2_createek -G rsa, handle 0x81010001).")


def _check_attributes(attributes: int) -> None:
    if attributes & _EK_REQUIRED != _EK_REQUIRED or attributes & ~_EK_ALLOWED or attributes & _SIGN:
        raise UserInputError(
            f"The key's object attributes (0x{attributes:08x}) are not those of an endorsement key "
            "(fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted, decrypt); "
            "it may be a storage or signing key.",
            "Read the EK at handle 0x81010001 (tpm2_readpublic -c 0x81010001), not the SRK at 0x81000001.")


def certificate_summary(der: bytes, ek: EndorsementKey) -> dict:
    """Subject, issuer, validity of an EK certificate and whether its key is the EK."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    der = trim_der(der)
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return {"error": f"The NV index holds no parsable X.509 certificate: {exc}"}
    key = cert.public_key()
    matches = None
    if isinstance(key, rsa.RSAPublicKey) and ek.rsa_modulus is not None:
        numbers = key.public_numbers()
        matches = numbers.n == ek.rsa_modulus and numbers.e == ek.rsa_exponent
    elif isinstance(key, ec.EllipticCurvePublicKey) and ek.ecc_point is not None:
        numbers = key.public_numbers()
        matches = (numbers.x, numbers.y) == ek.ecc_point
    elif isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        matches = None  # not comparable without tpm2-pytss's full parse
    else:
        matches = False
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serialNumber": format(cert.serial_number, "x"),
        "notBefore": cert.not_valid_before_utc.isoformat(),
        "notAfter": cert.not_valid_after_utc.isoformat(),
        "matchesEndorsementKey": matches,
    }


def trim_der(der: bytes) -> bytes:
    """NV indices can be larger than the certificate; keep the outer DER SEQUENCE only."""
    if len(der) < 4 or der[0] != 0x30:
        return der
    first = der[1]
    if first < 0x80:
        return der[:2 + first]
    count = first & 0x7F
    length = int.from_bytes(der[2:2 + count], "big")
    return der[:2 + count + length]
