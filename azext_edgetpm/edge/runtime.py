"""Asks the IoT Edge runtime on a device how it is, in one remote script (as root): version,
services, modules, `iotedge check --output json`, the identity service's device_info and the
provisioning lines of the logs.
"""
import re
import shlex
from typing import Optional

from . import health

_SCRIPT = r"""
echo "@@VERSION"; iotedge version 2>&1
echo "@@STATUS"; iotedge system status 2>&1
echo "@@LIST"; iotedge list 2>&1; echo "@@LISTRC $?"
{check}
echo "@@DEVICEINFO"; head -c 4096 {device_info} 2>/dev/null; echo
echo "@@LOGS"; iotedge system logs -- -n {lines} 2>&1 | tail -n {lines}
echo "@@END"
"""
# (the exit code is kept before the echo that ends the JSON line)
_CHECK = 'echo "@@CHECK"; iotedge check --output json{dont_run} 2>/dev/null; rc=$?; echo; echo "@@CHECKRC $rc"'


def _sections(stdout: str) -> dict:
    out, current = {}, None
    for line in stdout.splitlines():
        match = re.match(r"^@@(VERSION|STATUS|LIST|CHECK|DEVICEINFO|LOGS|END)$", line)
        if match:
            current = match.group(1)
            out[current] = []
            continue
        if line.startswith("@@LISTRC ") or line.startswith("@@CHECKRC "):
            key, _, value = line.partition(" ")
            out[key[2:]] = value.strip()
            continue
        if current:
            out[current].append(line)
    return out


def collect(session, with_check: bool = True, log_lines: int = 400, dont_run=()) -> dict:
    """The runtime's own view of itself (as root, through sudo for other users). `dont_run`:
    ids of `iotedge check` not to run (the direct AMQP/MQTT ones behind a proxy). Passwords of
    URLs in what the device says (a proxy's, in check details or logs) are replaced by ***."""
    from .proxy import redact
    skip = (" --dont-run " + " ".join(shlex.quote(c) for c in dont_run)) if dont_run else ""
    script = _SCRIPT.format(check=_CHECK.format(dont_run=skip) if with_check else "",
                            lines=shlex.quote(str(int(log_lines))), device_info=shlex.quote(health.DEVICE_INFO))
    result = session.run(script, sudo=True, timeout=600)
    parts = _sections(redact(result.stdout))
    version_text = " ".join(parts.get("VERSION", [])).strip()
    match = re.search(r"iotedge\s+(\S+)", version_text)
    logs = [line for line in parts.get("LOGS", []) if line.strip()]
    services = health.parse_system_status("\n".join(parts.get("STATUS", [])))
    modules = health.parse_list("\n".join(parts.get("LIST", []))) if parts.get("LISTRC") == "0" else []
    check = health.parse_check("\n".join(parts.get("CHECK", []))) if with_check else None
    if check is not None and str(parts.get("CHECKRC", "")).isdigit():
        check["exitCode"] = int(parts["CHECKRC"])   # 1 when any check is an error (iotedge check)
    report = {
        "version": match.group(1) if match else None,
        "services": services,
        "healthy": health.services_healthy(services),
        "modules": modules,
        "checks": check,
        "provisioning": health.provisioning(logs, "\n".join(parts.get("DEVICEINFO", []))),
    }
    if not report["healthy"] or (check and check["errors"]) or report["provisioning"]["state"] == "failed":
        window = logs[-150:]
        if report["provisioning"]["state"] == "failed":
            # The identity and TPM services' own lines say why provisioning failed; the other units
            # only see its consequence (aziot-edged cannot get the device identity).
            window = [line for line in window if "identityd" in line or "tpmd" in line] or window
        report["problems"] = health.diagnose(window)
    return report


def summary(report: dict) -> str:
    """One line for humans: services, provisioning, checks."""
    services = report.get("services") or {}
    down = [f"{name} {s['state']}" + (f" ({s['detail']})" if s.get("detail") else "")
            for name, s in services.items() if s["state"] not in ("Running", "Ready")]
    parts = ["services: " + ("all running" if services and not down else ", ".join(down) or "unknown")]
    prov = report.get("provisioning") or {}
    if prov.get("state") == "assigned":
        parts.append(f"assigned to {prov.get('assignedHub')}" +
                     (f" as {prov['deviceId']}" if prov.get("deviceId") else ""))
    elif prov.get("state") == "failed":
        parts.append(f"provisioning failed: {prov.get('error') or prov.get('lastMessage')}")
    else:
        parts.append(f"provisioning: {prov.get('state', 'unknown')}")
    check = report.get("checks")
    if check:
        counts = check.get("counts") or {}
        parts.append("checks: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "; ".join(parts)


def first_problem(report: dict) -> Optional[dict]:
    problems = report.get("problems") or []
    return problems[0] if problems else None
