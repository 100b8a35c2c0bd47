"""Step `identify`: a device's endorsement key and its registration ID.

This is the one place a registration ID is derived from an EK (`registration_id_of`), so that
`ek show`, `enrollment create`, `install` and `provision` agree for every --id-format.
"""
from dataclasses import dataclass, field
from typing import List, Optional

from azext_edgetpm.errors import DeviceError

ID_FORMATS = ("sha256", "legacy")


def registration_id_of(ek, id_format: str = "sha256") -> str:
    """The registration ID of a parsed EK (tpm.ek.EndorsementKey) in the given format."""
    return ek.registration_id(str(id_format or "sha256"))


@dataclass
class Identity:
    """What `ek show` reports about one device's TPM."""
    device: str
    registration_id: str
    id_format: str
    endorsement_key: str                 # base64 of the marshalled TPM2B_PUBLIC, as DPS takes it
    key_type: Optional[str] = None
    validated_with: Optional[str] = None
    created_keys: List[str] = field(default_factory=list)
    ek_certificate: Optional[dict] = None
    tpm: dict = field(default_factory=dict)
    tcti: Optional[str] = None

    @property
    def created(self) -> bool:
        return bool(self.created_keys)

    def to_output(self) -> dict:
        return {
            "device": self.device,
            "registrationId": self.registration_id,
            "idFormat": self.id_format,
            "endorsementKey": self.endorsement_key,
            "keyType": self.key_type,
            "validatedWith": self.validated_with,
            "created": self.created,
            "createdKeys": list(self.created_keys),
            "ekCertificate": self.ek_certificate,
            "tpm": self.tpm,
            "tcti": self.tcti,
        }


def _identity(ek, id_format, device, created, cert_der=None, cert_index=None, tpm_info=None, tcti=None,
              ek_ca_bundle=None) -> Identity:
    """`ek_ca_bundle` (CA certificates, tpm.ekcert.load_ca_bundle): the EK certificate must chain to
    them and carry the EK, or a DeviceError says why."""
    from azext_edgetpm.tpm.ek import certificate_summary
    id_format = str(id_format or "sha256")  # az hands defaults over as a str subclass that JSON shows oddly
    cert = None
    if cert_der:
        cert = certificate_summary(cert_der, ek)
        cert["nvIndex"] = cert_index
    if ek_ca_bundle is not None:
        from azext_edgetpm.tpm.ekcert import verify_ek_certificate
        chain = verify_ek_certificate(cert_der, ek, ek_ca_bundle, device)
        cert["chain"] = chain
    return Identity(device=device, registration_id=registration_id_of(ek, id_format), id_format=id_format,
                    endorsement_key=ek.base64, key_type=ek.key_type, validated_with=ek.validated_with,
                    created_keys=list(created or []), ek_certificate=cert, tpm=tpm_info or {}, tcti=tcti)


def identify(session, tcti: Optional[str] = None, create: bool = True, id_format: str = "sha256",
             install_tools: bool = False, ek_ca_bundle=None) -> Identity:
    """Read (or create) the EK of the device behind a connected RemoteSession (and verify its
    certificate against `ek_ca_bundle` when given)."""
    from azext_edgetpm.errors import UserInputError
    from azext_edgetpm.tpm import remote
    from azext_edgetpm.tpm.ek import parse_endorsement_key
    raw = remote.read_ek(session, tcti=tcti, create=create, install_tools=install_tools)
    try:
        ek = parse_endorsement_key(raw.blob)
    except UserInputError as exc:
        raise DeviceError(f"The device {session.target.display} returned an invalid endorsement key: {exc}",
                          "Check the TPM at handle 0x81010001 on the device (tpm2_readpublic -c 0x81010001); "
                          "another key may have been persisted there.") from exc
    return _identity(ek, id_format, session.target.display, raw.created, raw.cert_der, raw.cert_index,
                     remote.describe_tpm(raw.properties), tcti, ek_ca_bundle)


def identify_local(tcti: Optional[str] = None, create: bool = True, id_format: str = "sha256",
                   ek_ca_bundle=None) -> Identity:
    """Read (or create) this machine's own EK through tpm2-pytss."""
    from azext_edgetpm.tpm import local
    from azext_edgetpm.tpm.ek import parse_endorsement_key
    raw = local.read_ek(tcti=tcti, create=create)
    ek = parse_endorsement_key(raw.blob)
    return _identity(ek, id_format, "local", raw.created, raw.cert_der, raw.cert_index, raw.tpm_info, tcti,
                     ek_ca_bundle)


def identity_from_key(endorsement_key: str, id_format: str = "sha256", device: str = "given") -> Identity:
    """An Identity from an EK the user gave (base64), validated locally before DPS sees it."""
    from azext_edgetpm.tpm.ek import decode_endorsement_key, parse_endorsement_key
    ek = parse_endorsement_key(decode_endorsement_key(endorsement_key))
    return _identity(ek, id_format, device, [])
