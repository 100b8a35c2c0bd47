"""EK certificate verification against the TPM makers' CA certificates (`--ek-ca-bundle`).

A TPM's maker stores an X.509 certificate for the endorsement key in the TPM (NV index
0x01C00002 for RSA, 0x01C0000A for ECC). Checked here with `cryptography` (which az ships):
the certificate is issued (signature and issuer name) by a certificate of the bundle, both are
within their validity period, the issuer is a CA, and the certificate's public key is the EK.
Every certificate in the bundle is trusted as given (the maker's root and, if it uses them, its
intermediate CAs); an issuer missing from the bundle is named in the error.
"""
import datetime
import os
from typing import List, Optional

from azext_edgetpm.errors import DeviceError, LocalFileError, option
from azext_edgetpm.files import LIMITS, read_bounded

BUNDLE_SUFFIXES = (".pem", ".crt", ".cer", ".der")
BUNDLE_LIMIT = LIMITS["ca_bundle"]


def load_ca_bundle(path: str) -> list:
    """The certificates of a PEM/DER file, or of every *.pem/*.crt/*.cer/*.der file in a directory."""
    from cryptography import x509
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(BUNDLE_SUFFIXES))
    else:
        files = [path]
    certs = []
    budget = BUNDLE_LIMIT  # (for a directory: all its files together)
    for name in files:
        data = read_bounded(name, budget, "The EK CA bundle", "ek_ca_bundle",
                            "Give a PEM or DER file, or a directory of them, of the TPM maker's CA certificates.")
        budget -= len(data)
        try:
            certs += (x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data
                      else [x509.load_der_x509_certificate(data)])
        except ValueError as exc:
            raise LocalFileError(f"{name} holds no readable X.509 certificate: {exc}",
                                 "Give the TPM maker's CA certificates as PEM or DER.", "ek_ca_bundle") from exc
    if not certs:
        raise LocalFileError(f"No CA certificate found in {path}.",
                             "Give a PEM or DER file, or a directory of .pem/.crt/.cer/.der files.", "ek_ca_bundle")
    return certs


def _name(cert) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _validity_problem(cert, what: str, now) -> Optional[str]:
    if now < cert.not_valid_before_utc:
        return f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}"
    if now > cert.not_valid_after_utc:
        return f"{what} expired on {cert.not_valid_after_utc.isoformat()}"
    return None


def _is_ca(cert) -> bool:
    from cryptography import x509
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.issuer == cert.subject  # an old self-signed root without the extension


def _issuer_in(cert, bundle: List) -> tuple:
    """(the bundle certificate that signed `cert`, None) or (None, why none did)."""
    from cryptography.exceptions import InvalidSignature
    named = [ca for ca in bundle if ca.subject == cert.issuer]
    if not named:
        return None, (f"its issuer ({cert.issuer.rfc4514_string()}) is not in the CA bundle")
    for ca in named:
        try:
            cert.verify_directly_issued_by(ca)
            return ca, None
        except (InvalidSignature, ValueError, TypeError):
            continue
    return None, f"its signature does not verify with the key of {cert.issuer.rfc4514_string()} in the CA bundle"


def verify_ek_certificate(cert_der: Optional[bytes], ek, bundle: List, device: str, now=None) -> dict:
    """The chain of an EK certificate (DER, as read from the TPM) to the bundle, or a DeviceError
    saying why the device's TPM cannot be trusted. `ek`: the parsed EK (tpm.ek.EndorsementKey)."""
    from cryptography import x509
    from azext_edgetpm.tpm.ek import certificate_summary, trim_der
    hint = (f"Check that {option('ek_ca_bundle')} holds the CA certificates of this TPM's maker (and its intermediate "
            "CAs); a device whose certificate does not verify must not be enrolled.")
    if not cert_der:
        raise DeviceError(f"{device}: the TPM holds no EK certificate (NV 0x01C00002/0x01C0000A), so it cannot be "
                          f"verified against {option('ek_ca_bundle')}.",
                          f"Enroll this device without {option('ek_ca_bundle')} only if you trust its TPM by other "
                          "means.")
    try:
        cert = x509.load_der_x509_certificate(trim_der(cert_der))
    except ValueError as exc:
        raise DeviceError(f"{device}: the TPM's EK certificate does not parse: {exc}", hint) from exc
    if certificate_summary(cert_der, ek).get("matchesEndorsementKey") is not True:
        raise DeviceError(f"{device}: the EK certificate's public key is not the TPM's endorsement key "
                          f"(certificate {format(cert.serial_number, 'x')} from {cert.issuer.rfc4514_string()}).",
                          "The certificate belongs to another key: the TPM's EK was replaced or the certificate "
                          "was copied from another TPM. Do not enroll this device.")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    problem = _validity_problem(cert, "the EK certificate", now)
    if problem:
        raise DeviceError(f"{device}: {problem}.", hint)
    issuer, why = _issuer_in(cert, bundle)
    if issuer is None:
        raise DeviceError(f"{device}: the EK certificate does not chain to {option('ek_ca_bundle')}: {why}.", hint)
    problem = _validity_problem(issuer, f"its issuer {_name(issuer)}", now)
    if problem or not _is_ca(issuer):
        raise DeviceError(f"{device}: the EK certificate does not chain to {option('ek_ca_bundle')}: "
                          f"{problem or f'its issuer {_name(issuer)} is not a CA certificate'}.", hint)
    return {"verified": True, "issuer": _name(issuer),
            "issuerFingerprint": issuer.fingerprint(_sha256()).hex()}


def _sha256():
    from cryptography.hazmat.primitives import hashes
    return hashes.SHA256()
