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
