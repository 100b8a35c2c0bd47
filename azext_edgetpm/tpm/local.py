"""Reads (and, when absent, creates) this machine's own EK and SRK through tpm2-pytss, for
running az on the device itself (`az edge-tpm ek show --local`)."""
import os
from dataclasses import dataclass, field
from typing import List, Optional

from azext_edgetpm.errors import DeviceError, EdgeTpmError, option

from .properties import describe_tpm, from_capability
from .remote import SRK_ATTRIBUTES

EK_HANDLE = 0x81010001
SRK_HANDLE = 0x81000001


@dataclass
class LocalEk:
    blob: bytes
    created: List[str] = field(default_factory=list)
    cert_index: Optional[str] = None
    cert_der: Optional[bytes] = None
    tpm_info: dict = field(default_factory=dict)


def _import_tss():
    # The TSS libraries log TPM error responses (including the expected "no such handle" ones)
    # to stderr unless told otherwise; errors reach the user as az errors instead.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    try:
        import tpm2_pytss  # noqa: F401  pylint: disable=unused-import,import-error
    except (ImportError, OSError) as exc:
        raise DeviceError(  # (two recommendations, one per line as az prints them)
            f"{option('local')} needs tpm2-pytss and the tpm2-tss libraries, which are not installed here ({exc}).",
            "\n".join([how_to_add_tpm2_pytss(),
                       f"Or use {option('host')} to read the TPM of a Linux device over SSH."])) from exc


def how_to_add_tpm2_pytss() -> str:
    """The commands that add the optional tpm2-pytss next to the installed extension, with the
    Python that runs az (tpm2-pytss builds from source against the tpm2-tss libraries)."""
    import glob
    import shlex
    import sys
    ext_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pip = f"{shlex.quote(sys.executable)} -m pip install"
    if glob.glob(os.path.join(ext_dir, "edge_tpm-*.dist-info")):  # installed by `az extension add`
        pip += f" --target {shlex.quote(ext_dir)}"
    return (f"On Linux: install the TSS libraries and a compiler (Debian/Ubuntu: apt-get install libtss2-dev "
            f"pkg-config gcc python3-dev), then `{pip} tpm2-pytss`. Windows and macOS have no TSS libraries.")


def read_ek(tcti: Optional[str] = None, create: bool = True) -> LocalEk:
    _import_tss()
    from tpm2_pytss import ESAPI, TSS2_Exception  # pylint: disable=import-error
    try:
        ectx = ESAPI(tcti)
    except TSS2_Exception as exc:
        raise DeviceError(
            f"No TPM answered on this machine{' through ' + repr(tcti) if tcti else ''}: {exc}",
            "Check /dev/tpmrm0 and its permissions (run as root or a member of the tss group), or "
            f"pass the TPM's TCTI with {option('tcti')}.") from exc
    try:
        with ectx:
            return _read(ectx, create)
    except TSS2_Exception as exc:
        raise EdgeTpmError(f"The TPM refused a command: {exc}",
                           "Check that the TPM is not in lockout and has no hierarchy password set.") from exc


def _read(ectx, create: bool) -> LocalEk:
    # pylint: disable=import-error
    from tpm2_pytss.constants import ESYS_TR, TPM2_CAP, TPM2_PT
    from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    created = []
    nv_read = NVReadEK(ectx)
    cert, template = create_ek_template("EK-RSA2048", nv_read)
    ek_public = _read_persistent(ectx, EK_HANDLE)
    if ek_public is None:
        if not create:
            raise DeviceError("This machine's TPM has no endorsement key at 0x81010001.",
                              f"Run without {option('no_create')} to create the EK and SRK.")
        handle, ek_public, _, _, _ = ectx.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
        ectx.evict_control(ESYS_TR.OWNER, handle, EK_HANDLE)
        ectx.flush_context(handle)
        created.append("ek")
    if _read_persistent(ectx, SRK_HANDLE) is None and create:
        srk_template = TPM2B_PUBLIC.parse(
            "rsa2048:aes128cfb",
            objectAttributes=SRK_ATTRIBUTES)
        handle, _, _, _, _ = ectx.create_primary(TPM2B_SENSITIVE_CREATE(), srk_template, ESYS_TR.OWNER)
        ectx.evict_control(ESYS_TR.OWNER, handle, SRK_HANDLE)
        ectx.flush_context(handle)
        created.append("srk")
    _, data = ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.FIXED, 64)
    info = describe_tpm(from_capability({int(p.property): int(p.value) for p in data.data.tpmProperties}))
    return LocalEk(blob=ek_public.marshal(), created=created, cert_index="0x01C00002" if cert else None,
                   cert_der=cert, tpm_info=info)


def _read_persistent(ectx, handle: int):
    from tpm2_pytss import TSS2_Exception  # pylint: disable=import-error
    try:
        tr = ectx.tr_from_tpmpublic(handle)
    except TSS2_Exception:
        return None
    public, _, _ = ectx.read_public(tr)
    return public
