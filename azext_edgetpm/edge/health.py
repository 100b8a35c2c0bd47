"""Reads what the IoT Edge runtime says about itself (pure parsers, no I/O):
`iotedge system status`, `iotedge check --output json`, `iotedge list`, the identity service's
device backup (/var/lib/aziot/identityd/device_info) and the provisioning lines of
`iotedge system logs`, with the known failure messages of ../shared/docs/iotedge.md mapped to
what the user should do.

Where each fact comes from in the real runtime (Azure/iotedge, Azure/iot-identity-service 1.5):
- device_info: TOML `hub_name`, `local_gateway_hostname`, `device_id` (or the word
  `unprovisioned`), written by identity/aziot-identityd/src/identity.rs after every provisioning
  and read back at start-up, when the identity service uses it whatever config.toml says now.
- log lines: identityd's "Provisioning starting. Reason: Startup|Api", "Provisioned with backup
  for D.", "Successfully provisioned with DPS.", "Failed to provision with IoT Hub, and no valid
  device backup was found: ..." (identity.rs, lib.rs); aziot-edged's "Device is D on HUB"
  (edgelet/aziot-edged/src/provision.rs). No line names the hub at registration, and edged's
  watchdog adds two lines a minute, so a window of the log may hold no provisioning line at all:
  device_info comes first.
- systemd writes its own lines into the same journal (restarts, "State 'stop-sigterm' timed
  out"); they say nothing about why the runtime failed and are left out of the diagnosis.
"""
import json
import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from azext_edgetpm.errors import option, render

DEVICE_INFO = "/var/lib/aziot/identityd/device_info"
SERVICES = ("aziot-edged", "aziot-identityd", "aziot-keyd", "aziot-certd", "aziot-tpmd")


# -- iotedge system status -------------------------------------------------------------------
def parse_system_status(text: str) -> Dict[str, dict]:
    """{service: {"state": "Running"|"Ready"|"Down"|..., "detail": str}} for the aziot services."""
    states = {}
    for line in (text or "").splitlines():
        match = re.match(r"^\s+(aziot-[a-z]+)\s{2,}(\S.*?)\s*$", line)
        if not match or match.group(1) in states:
            continue
        shown = match.group(2)
        state, _, detail = shown.partition(" - ")
        states[match.group(1)] = {"state": state.strip(), "detail": detail.strip()}
    return states


def services_healthy(states: Dict[str, dict]) -> bool:
    """Every service Running or Ready (idle, socket-activated)."""
    return bool(states) and all(s["state"] in ("Running", "Ready") for s in states.values())


# -- iotedge check --output json ---------------------------------------------------------------
def parse_check(text: str) -> Optional[dict]:
    """Summary of `iotedge check --output json`: counts per result and the non-ok checks."""
    text = (text or "").strip()
    start = text.find("{")
    if start < 0:
        return None
    try:
        data = json.loads(text[start:])
    except ValueError:
        return None
    checks = data.get("checks") or {}
    counts: Dict[str, int] = {}
    problems = []
    for check_id, entry in checks.items():
        result = entry.get("result") if isinstance(entry, dict) else None
        if isinstance(result, dict):
            status, details = result.get("result"), result.get("details")
        else:
            status, details = result, None
        status = str(status or "unknown")
        counts[status] = counts.get(status, 0) + 1
        if status in ("warning", "error", "fatal"):
            if isinstance(details, str):
                details = [details]
            problems.append({"id": check_id, "result": status,
                             "details": [str(d) for d in (details or []) if str(d).strip()]})
    return {"counts": counts, "problems": problems,
            "errors": [p["id"] for p in problems if p["result"] in ("error", "fatal")],
            "warnings": [p["id"] for p in problems if p["result"] == "warning"]}


# -- iotedge list --------------------------------------------------------------------------------
def parse_list(text: str) -> List[dict]:
    """Rows of `iotedge list` (columns by header position). The real header is
    "NAME STATUS DESCRIPTION Config" (edgelet/iotedge/src/list.rs), matched without case."""
    lines = [line.rstrip() for line in (text or "").splitlines() if line.strip()]
    if not lines or not lines[0].lstrip().startswith("NAME"):
        return []
    header = lines[0].upper()
    names = ["NAME", "STATUS", "DESCRIPTION", "CONFIG"]
    starts = [header.find(n) for n in names]
    if any(s < 0 for s in starts):
        return []
    rows = []
    for line in lines[1:]:
        cells = []
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            cells.append(line[start:end].strip())
        rows.append({"name": cells[0], "status": cells[1], "description": cells[2], "config": cells[3]})
    return rows


# -- logs: provisioning outcome and known failures -------------------------------------------------
@dataclass(frozen=True)
class KnownFailure:
    """A failure message the runtime logs, and what the user should do about it."""
    key: str
    pattern: str
    meaning: str
    recommendation: str


KNOWN_FAILURES = (
    KnownFailure(
        "tpm-permission", r"(?:Failed to open|open).{0,80}/dev/tpm(?:rm)?0.{0,40}Permission denied|"
                          r"Permission denied.{0,40}/dev/tpm(?:rm)?0",
        "aziot-tpmd may not open the TPM device (/dev/tpmrm0: permission denied).",
        f"Give the aziottpm user access to the TPM: re-run az edge-tpm install with {option('tpm_access')} udev "
        f"(default) or {option('tpm_access')} tss-group; if the rule is in place but the device node kept its "
        "owner, reboot the device so that udev applies it."),
    KnownFailure(
        "tcti", r"Could not initialize TCTI|tcti:IO failure|Tss2_Tcti\w*.*(?:fail|error)|"
                r"TCTI.{0,40}(?:Connection refused|No such file)",
        "aziot-tpmd could not open the TPM through its TCTI.",
        "Check [tpm] tcti in /etc/aziot/config.toml (" + option("tcti") + "): 'device' needs /dev/tpmrm0 and TPM "
        "access for aziottpm (" + option("tpm_access") + "); a TPM simulator or resource manager needs its own TCTI "
        "(e.g. swtpm:host=127.0.0.1,port=2321) and must be running."),
    KnownFailure(
        "evict-control", r"Esys_EvictControl.{0,80}(?:0x14c|0x0000014c|14c)|Esys_EvictControl",
        "The TPM refused to persist the authentication key (Esys_EvictControl, often 0x14c after an upgrade).",
        "Keep [tpm] auth_key_index at 0x00_01_00 (an integer) and the SRK at 0x81000001; remove a stale "
        "persistent key at that index (tpm2_evictcontrol) and run iotedge config apply again."),
    KnownFailure(
        "hierarchy-auth", r"TPM_RC_BAD_AUTH|0x9a2|0x98e|authorization HMAC check failed|hierarchy.{0,30}auth",
        "The TPM's owner or endorsement hierarchy has a password (the TPM was 'taken ownership' of).",
        "Add the passwords under [tpm.hierarchy_authorization] (owner, endorsement) in /etc/aziot/config.toml, "
        "or clear them on the device, then run iotedge config apply."),
    KnownFailure(
        # Before dps-unreachable and dps-auth: a TPM service that did not start makes the identity
        # service fail to provision too ("Connection refused" on its socket, "DPS client error"),
        # and the way out is on the device, not in DPS.
        "tpm-service", r"aziot-tpmd is not running|could not get TPM keys|Failed to start.{0,40}(?:aziot-tpmd|"
                       r"TPM Service)|aziot-tpmd\.service.{0,40}(?:failed|exited)|tpmd\.sock.{0,60}"
                       r"(?:Connection refused|No such file)",
        "The TPM service (aziot-tpmd) is not running, so the identity service cannot use the TPM.",
        "Find why aziot-tpmd stopped (`iotedge system logs` on the device, often its [tpm] tcti or the aziottpm "
        f"user's access to /dev/tpmrm0): fix {option('tcti')} or {option('tpm_access')} with az edge-tpm install, "
        "then run `sudo iotedge config apply`."),
    KnownFailure(
        "dps-unreachable", r"name resolution|Name or service not known|Could not resolve|Connection refused|"
                           r"Connection timed out|timed out|No route to host|Network is unreachable|"
                           r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|SSL.{0,20}error",
        "The device cannot reach the DPS endpoint (network, DNS, proxy or TLS trust).",
        f"Check {option('global_endpoint')} and that the device reaches it (DNS, firewall, proxy: outbound 443, "
        "or 8883/5671 for other protocols); a DPS behind a private CA needs that CA in the device's trust store "
        "(/usr/local/share/ca-certificates + update-ca-certificates)."),
    KnownFailure(
        "dps-auth", r"DPS client error|\b401\b.{0,40}(?:Unauthorized|DPS)|\b404\b.{0,60}(?:DPS|enrollment|"
                    r"registration)|status (?:failed|disabled)|Failed to provision with IoT Hub",
        "DPS did not assign the device.",
        "Check that an enrollment exists for this registration ID with this TPM's endorsement key and is "
        "enabled (az edge-tpm enrollment show / enrollment create " + option("host") + " DEVICE), and that "
        + option("id_scope") + " is "
        "the DPS instance's ID scope."),
    KnownFailure(
        "config", r"could not parse config file|Command failed: .*(?:invalid|unknown variant|missing field|"
                  r"relative URL)|not supported in nested mode",
        "iotedge config apply rejected /etc/aziot/config.toml.",
        "Fix /etc/aziot/config.toml on the device as the message says (or restore the backup that "
        "az edge-tpm install kept next to it), then run the command again."),
    KnownFailure(
        "service-users", r"could not query \w+ user information",
        "A service user of aziot-identity-service or aziot-edge is missing.",
        "Reinstall the packages on the device (apt-get install --reinstall aziot-identity-service aziot-edge; "
        "dnf reinstall aziot-identity-service aziot-edge on Red Hat Enterprise Linux), "
        "which create the users aziotks, aziotcs, aziotid, aziottpm and iotedge."),
    KnownFailure(
        "container-engine", r"could not connect to unix:///var/run/docker\.sock|A module runtime error occurred",
        "aziot-edged cannot reach the container engine.",
        "Check that moby-engine is installed and running (systemctl status docker) and that "
        "/etc/docker/daemon.json is valid JSON."),
)

_ASSIGNED = re.compile(r"Assigned to IoT hub:\s*(\S+)")            # (older stand-ins)
_DEVICE_IS = re.compile(r"Device is (\S+) on (\S+)")                 # aziot-edged
_BACKUP = re.compile(r"Provisioned with backup for (\S+?)\.?$")        # identityd, backup used
_REGISTERED = re.compile(r"Successfully provisioned with DPS|Updated device info for")
_START = re.compile(r"Provisioning starting|Starting Azure IoT Identity Service")
_FAILED = re.compile(r"Failed to provision|DPS registration failed|Failed to reprovision")
_CAUSE = re.compile(r"caused by:\s*(.*)")
_SYSTEMD = re.compile(r"^\w{3} +\d+ [\d:]+ \S+ systemd(?:\[\d+\])?: ")
# What ends a wait for provisioning (a grep -E pattern on the device): the outcome lines.
OUTCOME_PATTERN = ("Provisioned with backup for|Successfully provisioned with DPS|Failed to provision with IoT Hub|"
                   "Skipping provisioning with IoT Hub|Updated device info for")


def runtime_lines(lines: List[str]) -> List[str]:
    """The runtime's own journal lines (systemd's lines about the units left out)."""
    return [line for line in lines if not _SYSTEMD.match(line)]


def parse_device_info(text: Optional[str]) -> Optional[dict]:
    """{"hub": ..., "deviceId": ..., "gateway": ...} from device_info, None when there is none
    (absent, "unprovisioned" or not the TOML identity.rs writes)."""
    text = (text or "").strip()
    if not text or text == "unprovisioned":
        return None
    found = {}
    for line in text.splitlines():
        match = re.match(r'^\s*([a-z_]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*$', line)
        if match:
            found[match.group(1)] = match.group(2)
    if not found.get("hub_name") or not found.get("device_id"):
        return None
    return {"hub": found["hub_name"], "deviceId": found["device_id"],
            "gateway": found.get("local_gateway_hostname")}


def diagnose(lines: List[str]) -> List[dict]:
    """The known failures found in log lines, latest occurrence first, one entry per kind."""
    found: Dict[str, dict] = {}
    for line in reversed(runtime_lines(lines)):
        for failure in KNOWN_FAILURES:
            if failure.key in found:
                continue
            if re.search(failure.pattern, line, re.IGNORECASE):
                found[failure.key] = {"kind": failure.key, "line": _message_of(line),
                                      "meaning": failure.meaning, "recommendation": render(failure.recommendation)}
                break
    return list(found.values())


def _message_of(line: str) -> str:
    """The message part of a journal line (after 'unit[pid]: ')."""
    match = re.match(r"^\w{3} +\d+ [\d:]+ \S+ [\w@.\-]+(?:\[\d+\])?: (.*)$", line)
    message = (match.group(1) if match else line).strip()
    # aziot's own prefix: "<timestamp> [LEVEL] - "
    return re.sub(r"^\S+ \[[A-Z!]+\] - ", "", message)


def provisioning(lines: List[str], device_info: Optional[str] = None) -> dict:
    """The device's provisioning: from device_info when it holds an identity (the identity
    service runs on it), else the latest attempt in the runtime's log lines."""
    lines = runtime_lines(lines)
    state, hub, device_id, message, cause, source = "unknown", None, None, None, None, "logs"
    for line in lines:
        if _START.search(line):
            state, message, cause = "provisioning", None, None
        match = _DEVICE_IS.search(line) or _ASSIGNED.search(line)
        if match:
            if match.re is _DEVICE_IS:
                device_id, hub = match.group(1), match.group(2)
            else:
                hub = match.group(1)
            state, message = "assigned", _message_of(line)
            continue
        match = _BACKUP.search(_message_of(line))
        if match or _REGISTERED.search(line):
            if state != "assigned" or match:
                state, message = "assigned", _message_of(line)
                device_id = match.group(1) if match else device_id
            continue
        if _FAILED.search(line):
            state, hub, device_id, message = "failed", None, None, _message_of(line)
            continue
        match = _CAUSE.search(line)
        if match and state == "failed" and "identityd" in line and cause is None:
            cause = match.group(1).strip()
            if cause in ("DPS client error", "service encountered an error"):
                cause = None   # the chain goes on with the reason
    saved = parse_device_info(device_info)
    if saved:
        if state != "assigned":
            message = f"{DEVICE_INFO}: {saved['deviceId']} on {saved['hub']}"
        state, hub, device_id, source = "assigned", saved["hub"], saved["deviceId"], "device_info"
    result = {"state": state, "assignedHub": hub, "deviceId": device_id, "lastMessage": message,
              "source": source}
    if state == "failed":
        result["error"] = cause or message
        problems = diagnose([line for line in lines if "identityd" in line or "tpmd" in line][-50:])
        # A cause on the device comes before DPS's refusal, which is often only its consequence.
        problems.sort(key=lambda p: p["kind"] == "dps-auth")
        result["recommendation"] = (problems[0]["recommendation"] if problems else
                                    "Run iotedge system logs on the device for details.")
    return result
