"""Table transformers for `-o table` (plain functions over the JSON results, no imports)."""


def ek_table(result):
    cert = result.get("ekCertificate") or {}
    tpm = result.get("tpm") or {}
    return {
        "Device": result.get("device"),
        "RegistrationId": result.get("registrationId"),
        "IdFormat": result.get("idFormat"),
        "KeyType": result.get("keyType"),
        "Created": ",".join(result.get("createdKeys") or []) or "no",
        "EkCertificate": ("matches EK" if cert.get("matchesEndorsementKey") else
                          "present" if cert else "none"),
        "Manufacturer": tpm.get("manufacturer"),
    }


def _enrollment_row(e):
    return {
        "EnrollmentId": e.get("registrationId"),
        "DeviceId": e.get("deviceId"),
        "Attestation": (e.get("attestation") or {}).get("type"),
        "IotEdge": bool((e.get("capabilities") or {}).get("iotEdge")),
        "Status": e.get("provisioningStatus"),
        "Allocation": e.get("allocationPolicy"),
        "IotHubs": ",".join(e.get("iotHubs") or []),
        "Registration": ((e.get("registrationState") or {}).get("status")),
        **({"Result": e["result"]} if "result" in e else {}),
    }


def enrollment_table(result):
    """enrollment create | show (one enrollment) and list (many)."""
    if isinstance(result, list):
        return [_enrollment_row(e) for e in result]
    return _enrollment_row(result or {})


def registration_table(result):
    r = result or {}
    return {
        "RegistrationId": r.get("registrationId"),
        "Status": r.get("status"),
        "DeviceId": r.get("deviceId"),
        "AssignedHub": r.get("assignedHub"),
        "ErrorCode": r.get("errorCode"),
        "LastUpdated": r.get("lastUpdatedDateTimeUtc"),
    }


def edge_install_table(result):
    """One row per install step."""
    return [{"Step": s.get("name"), "Status": s.get("status"), "Detail": s.get("detail")}
            for s in (result or {}).get("steps") or []]


def edge_status_table(result):
    r = result or {}
    services = r.get("services") or {}
    running = sum(1 for s in services.values() if s.get("state") in ("Running", "Ready"))
    prov = r.get("provisioning") or {}
    counts = (r.get("checks") or {}).get("counts") or {}
    return {
        "Device": r.get("device"),
        "Version": (r.get("runtime") or {}).get("version"),
        "Services": f"{running}/{len(services)} up",
        "Modules": ",".join(m.get("name", "") for m in r.get("modules") or []),
        "Provisioning": prov.get("state"),
        "AssignedHub": prov.get("assignedHub"),
        "Checks": " ".join(f"{k}:{v}" for k, v in sorted(counts.items())),
    }


def short_id(registration_id):
    """A 64-hex registration ID cut to its first 12 characters for a table (as git shows commits;
    the JSON output keeps the whole ID). Other IDs stay as they are."""
    rid = registration_id or ""
    return rid[:12] + "…" if len(rid) > 16 and all(c in "0123456789abcdef" for c in rid) else registration_id


def _provision_row(r):
    return {
        "Host": r.get("host"),
        "Status": r.get("status") + (" (earlier run)" if r.get("doneEarlier") else ""),
        "Id": short_id(r.get("registrationId")),
        "AssignedHub": r.get("assignedHub"),
        "EdgeVersion": r.get("edgeVersion"),
        "Seconds": r.get("seconds"),
        "Error": ((r.get("failedStep") + ": ") if r.get("failedStep") else "") + (r.get("error") or "")
        if r.get("error") else "",
    }


def provision_table(result):
    """One row per device (one device: its steps)."""
    if isinstance(result, list):
        return [_provision_row(r) for r in result]
    r = result or {}
    return [{"Step": s.get("name"), "Status": s.get("status"), "Seconds": s.get("seconds"),
             "Detail": s.get("detail")} for s in r.get("steps") or []] or [_provision_row(r)]


def _rows(result, row):
    return [row(r) for r in result] if isinstance(result, list) else row(result or {})


def deprovision_table(result):
    return _rows(result, lambda r: {
        "Host": r.get("host"), "Status": r.get("status"), "Id": short_id(r.get("registrationId")),
        "Enrollment": r.get("enrollment"), "Device": r.get("device"),
        "Remains": len(r.get("remains") or []), "Error": r.get("error")})


def reprovision_table(result):
    return _rows(result, lambda r: {
        "Host": r.get("host"), "Status": r.get("status"), "Id": short_id(r.get("registrationId")),
        "PreviousHub": r.get("previousHub"), "AssignedHub": r.get("assignedHub"),
        "DeviceReports": r.get("deviceReports"), "Error": r.get("error")})


def rekey_table(result):
    return _rows(result, lambda r: {
        "Host": r.get("host"), "Status": r.get("status"), "Id": short_id(r.get("registrationId")),
        "PreviousEk": r.get("previousEkSha256"), "Ek": r.get("ekSha256"), "AssignedHub": r.get("assignedHub"),
        "Error": r.get("error")})


def upgrade_table(result):
    return _rows(result, lambda r: {
        "Host": r.get("host"), "Status": r.get("status"),
        "Current": (r.get("current") or {}).get("aziot-edge"), "Target": (r.get("target") or {}).get("aziot-edge"),
        "Installed": (r.get("installed") or {}).get("aziot-edge"), "RolledBack": r.get("rolledBack"),
        "Error": r.get("error")})


def report_merge_table(result):
    """One row: the merged report, its inputs and the summed counts."""
    r = result or {}
    counts = {k[:1].upper() + k[1:]: v for k, v in r.items()
              if k not in ("report", "summary", "command", "started", "inputs", "replaced")}
    return {"Report": r.get("report"), "Command": r.get("command"), "Inputs": len(r.get("inputs") or []),
            **counts, "Replaced": len(r.get("replaced") or [])}
