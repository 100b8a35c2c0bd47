"""Reads (and, when absent, creates) the EK and SRK of a remote device with tpm2-tools, in one
shell script over one SSH session, the way the seed document's script does by hand: EK at
0x81010001, SRK persisted at 0x81000001, transient handles flushed. The script works in a
private temporary directory that it always removes, so nothing stays behind on the device.
"""
import base64
import binascii
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from azext_edgetpm.echo import shown
from azext_edgetpm.errors import DeviceError, EdgeTpmError, option

from .properties import describe_tpm, parse_fixed_properties  # noqa: F401  pylint: disable=unused-import

EK_HANDLE = "0x81010001"
SRK_HANDLE = "0x81000001"
EK_CERT_INDICES = ("0x01C00002", "0x01C0000A")  # RSA, ECC (TCG EK credential profile)
# The SRK template of Microsoft's device SDKs (and of tpm/local.py): tpm2_createprimary's default
# lacks noDA, and a DA-protected SRK makes registration fail (TPM_RC_LOCKOUT at
# ActivateCredential) once anything drove the TPM into dictionary-attack lockout.
SRK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt"

# Exit codes of the script, one per failure a user can meet.
_RC_NO_TOOLS, _RC_NO_TPM, _RC_NO_EK, _RC_TPM_ERROR = 10, 11, 12, 13

_SCRIPT = r"""
set -u
{tcti_line}
if ! command -v tpm2_readpublic >/dev/null 2>&1; then echo "@@ERR notools"; exit 10; fi
D=$(mktemp -d) || exit 13
trap 'rm -rf "$D"' EXIT
trap 'exit 143' HUP INT TERM  # (a stopped command still removes its directory)
if ! tpm2_getcap properties-fixed >"$D/caps" 2>"$D/err"; then
  echo "@@ERR notpm"; sed 's/^/@@STDERR /' "$D/err"; exit 11
fi
sed 's/^/@@CAP /' "$D/caps"
fail() {{ echo "@@ERR tpm $1"; sed 's/^/@@STDERR /' "$D/err"; exit 13; }}
CREATED=""
FLUSHED=""
# Without a resource manager (a TPM simulator, /dev/tpm0), transient objects other tools left
# behind fill the TPM's few object slots; flush them before creating keys, as the seed does after.
flush() {{ [ -n "$FLUSHED" ] || tpm2_flushcontext -t >/dev/null 2>&1; FLUSHED=1; }}
if ! tpm2_readpublic -Q -c {ek} -o "$D/ek.pub" 2>"$D/err"; then
  [ {create} = 1 ] || {{ echo "@@ERR noek"; exit 12; }}
  flush
  tpm2_createek -c {ek} -G rsa -u "$D/ek.pub" >/dev/null 2>"$D/err" || fail tpm2_createek
  CREATED="$CREATED ek"
fi
if ! tpm2_readpublic -Q -c {srk} >/dev/null 2>&1; then
  if [ {create} = 1 ]; then
    flush
    tpm2_createprimary -Q -C o -a '{srk_attributes}' -c "$D/srk.ctx" >/dev/null 2>"$D/err" || fail tpm2_createprimary
    tpm2_evictcontrol -Q -C o -c "$D/srk.ctx" {srk} >/dev/null 2>"$D/err" || fail tpm2_evictcontrol
    CREATED="$CREATED srk"
  else
    echo "@@NOSRK"
  fi
fi
[ -n "$CREATED" ] && tpm2_flushcontext -t >/dev/null 2>&1
echo "@@CREATED$CREATED"
echo "@@EK $(base64 -w0 "$D/ek.pub")"
for idx in {cert_indices}; do
  if tpm2_nvread -Q -C "$idx" -o "$D/cert" "$idx" 2>/dev/null; then
    echo "@@CERT $idx $(base64 -w0 "$D/cert")"; break
  fi
done
exit 0
"""


@dataclass
class RemoteEk:
    """What the device's TPM said."""
    blob: bytes
    created: List[str] = field(default_factory=list)
    srk_present: bool = True
    cert_index: Optional[str] = None
    cert_der: Optional[bytes] = None
    properties: Dict[str, dict] = field(default_factory=dict)


def build_script(tcti: Optional[str], create: bool) -> str:
    """The shell script run on the device; every value in it is quoted."""
    tcti_line = f"export TPM2TOOLS_TCTI={shlex.quote(tcti)}" if tcti else ":"
    return _SCRIPT.format(tcti_line=tcti_line, ek=EK_HANDLE, srk=SRK_HANDLE, create=1 if create else 0,
                          cert_indices=" ".join(EK_CERT_INDICES), srk_attributes=SRK_ATTRIBUTES)


def read_ek(session, tcti: Optional[str] = None, create: bool = True, install_tools: bool = False) -> RemoteEk:
    """Run the script on the device (as root through sudo where needed) and parse its answer."""
    result = session.run(build_script(tcti, create), sudo=True, timeout=120)
    if result.rc == _RC_NO_TOOLS and install_tools:
        install_tpm2_tools(session)
        result = session.run(build_script(tcti, create), sudo=True, timeout=120)
    return parse_output(result, session.target.display, tcti)


def install_tpm2_tools(session) -> None:
    """Install the system's tpm2-tools package on the device (opt-in: --install-tools): with dnf on Red Hat
    Enterprise Linux (no apt-get there), else with apt-get (Debian, Ubuntu, Raspberry Pi OS)."""
    result = session.run("if ! command -v apt-get >/dev/null 2>&1 && command -v dnf >/dev/null 2>&1; then "
                         "dnf -y -q install tpm2-tools; else "
                         "export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null 2>&1; "
                         "apt-get install -y -q tpm2-tools; fi", sudo=True, timeout=600)
    if not result.ok:
        tail = "\n".join(result.stderr.strip().splitlines()[-3:])
        raise EdgeTpmError(
            f"Installing tpm2-tools on {session.target.display} failed: {tail}",
            "Check the device's package sources (apt-get update; dnf repolist on Red Hat Enterprise Linux) or "
            "install tpm2-tools by hand.")


def parse_output(result, display: str, tcti: Optional[str]) -> RemoteEk:
    lines = result.stdout.splitlines()
    stderr = "\n".join(line[len("@@STDERR "):] for line in lines if line.startswith("@@STDERR "))
    if result.rc == _RC_NO_TOOLS:
        raise DeviceError(  # a device-side problem: not exit code 3 (a missing Azure resource)
            f"tpm2-tools is not installed on {display}.",
            f"Install it on the device (sudo apt-get install tpm2-tools; sudo dnf install tpm2-tools on Red Hat "
            f"Enterprise Linux), or re-run with {option('install_tools')}.")
    if result.rc == _RC_NO_TPM:
        where = f"through TCTI {shown(tcti)}" if tcti else "(no /dev/tpmrm0, /dev/tpm0 or TPM simulator answered)"
        raise DeviceError(  # a device-side problem: not exit code 3 (a missing Azure resource)
            f"No TPM answered on {display} {where}: {_last_line(stderr)}",
            "Check that the device has a TPM 2.0 enabled in its firmware and that the kernel exposes "
            f"/dev/tpmrm0; for a TPM simulator or a resource manager, pass its TCTI with {option('tcti')}.")
    if result.rc == _RC_NO_EK:
        raise DeviceError(  # a device-side problem: not exit code 3 (a missing Azure resource)
            f"The TPM of {display} has no endorsement key at {EK_HANDLE}.",
            f"Run without {option('no_create')} to create the EK and SRK as the IoT Edge documentation does.")
    if result.rc == _RC_TPM_ERROR:
        step = next((line.split()[2] for line in lines if line.startswith("@@ERR tpm")), "tpm2-tools")
        raise EdgeTpmError(
            f"{step} failed on {display}: {tpm_error_text(stderr) or 'no error text'}",
            "A TPM in lockout or with an owner/endorsement password set refuses key creation: clear the "
            "lockout (tpm2_dictionarylockout) or provide the hierarchy authorization, then run again.")
    if result.rc != 0:
        raise EdgeTpmError(
            f"Reading the EK on {display} failed (exit {result.rc}): {_last_line(result.stderr)}",
            "Run the command again with --debug for details.")
    try:
        return _collect(lines)
    except (binascii.Error, ValueError) as exc:
        raise DeviceError(f"The device {display} answered with output that is not what tpm2-tools prints: {exc}",
                          "Run the command again with --debug, and check tpm2_readpublic on the device.") from exc


def _collect(lines: List[str]) -> RemoteEk:
    ek = RemoteEk(blob=b"")
    for line in lines:
        if line.startswith("@@EK "):
            ek.blob = base64.b64decode(line[5:].strip() or "")
        elif line.startswith("@@CREATED"):
            ek.created = line[len("@@CREATED"):].split()
        elif line.startswith("@@NOSRK"):
            ek.srk_present = False
        elif line.startswith("@@CERT "):
            _, index, data = (line.split(" ", 2) + [""])[:3]
            ek.cert_index, ek.cert_der = index, base64.b64decode(data.strip() or "")
    ek.properties = parse_fixed_properties([line[6:] for line in lines if line.startswith("@@CAP ")])
    if not ek.blob:
        raise ValueError("no endorsement key in the output")
    return ek


def tpm_error_text(stderr: str) -> str:
    """The lines of tpm2-tools' stderr that say what the TPM answered (e.g.
    "Esys_EvictControl(0x9A2) - tpm:session(1):authorization failure without DA implications"),
    without the TSS's source-location noise and the final "Unable to run" line."""
    useful = [line[len("ERROR: "):].strip() for line in (stderr or "").splitlines()
              if line.startswith("ERROR: ") and "Unable to run" not in line]
    return "; ".join(useful) or _last_line(stderr)


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
