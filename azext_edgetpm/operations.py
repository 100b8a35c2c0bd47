"""Single-device operations, shared by every command (and, later, by the fleet runner).

Data flows one way: custom.py → these operations → the adapters (remote, tpm, dps, edge).
"""
from dataclasses import dataclass
from typing import Optional

from azure.cli.core.azclierror import RequiredArgumentMissingError


@dataclass
class SshOptions:
    """Everything needed to open a RemoteSession to one device."""
    host: str
    ssh_user: Optional[str] = None
    ssh_port: Optional[int] = None
    ssh_key: Optional[str] = None
    ssh_config: Optional[str] = None
    known_hosts: Optional[str] = None
    accept_new_host_key: bool = False
    ssh_timeout: Optional[float] = None

    @classmethod
    def from_args(cls, host, **kwargs) -> "SshOptions":
        if not host:
            raise RequiredArgumentMissingError("No device given.",
                                               "Pass --host [user@]host[:port] (or --local for this machine's TPM).")
        return cls(host=host, **kwargs)

    def target(self):
        from azext_edgetpm.remote.target import resolve_target
        return resolve_target(self.host, ssh_user=self.ssh_user, ssh_port=self.ssh_port, ssh_key=self.ssh_key,
                              ssh_config=self.ssh_config, connect_timeout=self.ssh_timeout or 15.0)

    def open(self):
        """A connected RemoteSession (use it as a context manager)."""
        from azext_edgetpm.remote.session import RemoteSession
        return RemoteSession(self.target(), known_hosts=self.known_hosts,
                             accept_new_host_key=self.accept_new_host_key).connect()


def identity_result(ek, id_format: str, device: str, created, cert_der=None, cert_index=None,
                    tpm_info=None, tcti=None) -> dict:
    """The JSON shape of `ek show` (and of the identity part of later commands)."""
    from azext_edgetpm.tpm.ek import certificate_summary
    id_format = str(id_format)  # az hands defaults over as a str subclass that JSON shows oddly
    cert = None
    if cert_der:
        cert = certificate_summary(cert_der, ek)
        cert["nvIndex"] = cert_index
    return {
        "device": device,
        "registrationId": ek.registration_id(id_format),
        "idFormat": id_format,
        "endorsementKey": ek.base64,
        "keyType": ek.key_type,
        "validatedWith": ek.validated_with,
        "created": bool(created),
        "createdKeys": list(created),
        "ekCertificate": cert,
        "tpm": tpm_info or {},
        "tcti": tcti,
    }


def device_identity(opts: SshOptions, tcti=None, create=True, id_format="sha256", install_tools=False,
                    session=None) -> dict:
    """Read (or create) a remote device's EK over SSH and derive its registration ID."""
    from azext_edgetpm.tpm import remote
    from azext_edgetpm.tpm.ek import parse_endorsement_key
    if session is None:
        with opts.open() as own:
            return device_identity(opts, tcti, create, id_format, install_tools, session=own)
    from azure.cli.core.azclierror import InvalidArgumentValueError, ValidationError
    raw = remote.read_ek(session, tcti=tcti, create=create, install_tools=install_tools)
    try:
        ek = parse_endorsement_key(raw.blob)
    except InvalidArgumentValueError as exc:
        raise ValidationError(f"The device {session.target.display} returned an invalid endorsement key: {exc}",
                              "Check the TPM at handle 0x81010001 on the device (tpm2_readpublic -c 0x81010001); "
                              "another key may have been persisted there.") from exc
    return identity_result(ek, id_format, session.target.display, raw.created, raw.cert_der, raw.cert_index,
                           remote.describe_tpm(raw.properties), tcti)


def local_identity(tcti=None, create=True, id_format="sha256") -> dict:
    """Read (or create) this machine's own EK through tpm2-pytss."""
    from azext_edgetpm.tpm import local
    from azext_edgetpm.tpm.ek import parse_endorsement_key
    raw = local.read_ek(tcti=tcti, create=create)
    ek = parse_endorsement_key(raw.blob)
    return identity_result(ek, id_format, "local", raw.created, raw.cert_der, raw.cert_index, raw.tpm_info, tcti)


def edge_install(opts: SshOptions, settings, progress=None, session=None) -> dict:
    """Install and configure IoT Edge on a device (azext_edgetpm.edge), reading the registration
    ID from the device's EK when settings.registration_id is not given."""
    from azext_edgetpm.edge.install import install
    if session is None:
        with opts.open() as own:
            return edge_install(opts, settings, progress, session=own)

    def read_registration_id(create: bool) -> dict:
        return device_identity(opts, tcti=settings.tcti, create=create, session=session)

    return install(session, settings, read_registration_id, progress)


def edge_status(opts: SshOptions, session=None) -> dict:
    """Health of IoT Edge on a device: versions, services, modules, checks, provisioning."""
    from azext_edgetpm.edge.install import status
    if session is None:
        with opts.open() as own:
            return edge_status(opts, session=own)
    return status(session)
