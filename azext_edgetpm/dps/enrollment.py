"""TPM individual enrollments: building the body, and an idempotent create.

`create_enrollment` checks the current state first and changes only what differs (the Ansible
module contract): it reports `"result": "created" | "updated" | "unchanged"` at the top level of
the enrollment it returns, with `"changes"` naming the fields it changed. An enrollment that
exists with another endorsement key is a conflict unless `force`; then it is replaced through an
update guarded by the etag just read (If-Match), never a blind overwrite.
"""
import base64
import binascii
import copy
import re
from dataclasses import dataclass
from typing import List, Optional

from azext_edgetpm.dps.client import DpsClient, DpsConflictError
from azext_edgetpm.errors import UserInputError, option

# --reprovision-policy as the azure-iot extension names it → (updateHubAssignment, migrateDeviceData)
REPROVISION_POLICIES = {
    "reprovisionandmigratedata": (True, True),
    "reprovisionandresetdata": (True, False),
    "never": (False, False),
}
ALLOCATION_POLICIES = ("hashed", "geoLatency", "static")
PROVISIONING_STATUSES = ("enabled", "disabled")

# DPS: a case-insensitive string of at most 128 characters, alphanumerics and - . _ : , whose last
# character is alphanumeric or a dash (so "." and ".." are not registration IDs).
_REGISTRATION_ID = re.compile(r"^[a-z0-9\-._:]{0,127}[a-z0-9\-]$")
# IoT Hub device IDs: case-sensitive, at most 128 ASCII characters: alphanumerics and - . % _ * ? ! ( ) , : = @ $ '
_DEVICE_ID = re.compile(r"^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$")

# What DPS keeps about an enrollment but a client never sends back.
_READ_ONLY = ("registrationState", "createdDateTimeUtc", "lastUpdatedDateTimeUtc")

# The fields `changes` names, as paths into the enrollment.
_COMPARED = (
    ("attestation", ("attestation", "type")),
    ("endorsementKey", ("attestation", "tpm", "endorsementKey")),
    ("deviceId", ("deviceId",)),
    ("iotEdge", ("capabilities", "iotEdge")),
    ("iotHubs", ("iotHubs",)),
    ("allocationPolicy", ("allocationPolicy",)),
    ("initialTwinTags", ("initialTwin", "tags")),
    ("initialTwinProperties", ("initialTwin", "properties", "desired")),
    ("provisioningStatus", ("provisioningStatus",)),
    ("reprovisionPolicy", ("reprovisionPolicy",)),
)


def normalize_registration_id(value: str, what: Optional[str] = None) -> str:
    """Registration IDs compare case-insensitively in DPS; lower case is the safe form. `what`
    names the input in the error (default: the option registration_id)."""
    from azext_edgetpm.echo import shown
    what = what or option("registration_id")
    rid = (value or "").strip().lower()
    if not _REGISTRATION_ID.match(rid):
        raise UserInputError(
            f"{what} {shown(value)} is not a valid DPS registration ID.",
            "Use at most 128 characters: letters, digits and - . _ : , ending in a letter, a digit or - "
            "(or omit it to derive the ID from the EK).")
    return rid


def validate_device_id(value: str, what: Optional[str] = None) -> str:
    """IoT Hub's device ID rules, checked before DPS stores an ID the hub would refuse. `what`
    names the input in the error (default: the option device_id)."""
    from azext_edgetpm.echo import shown
    what = what or option("device_id")
    if not _DEVICE_ID.match(value or ""):
        raise UserInputError(
            f"{what} {shown(value)} is not a valid IoT Hub device ID.",
            "Use at most 128 ASCII characters: letters, digits and - . % _ * ? ! ( ) , : = @ $ ' "
            "(or omit it: the device ID is then the registration ID).")
    return value


def _ek_bytes(value) -> Optional[bytes]:
    try:
        return base64.b64decode("".join(str(value or "").split()), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _get(doc, path):
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _set(doc, path, value):
    for key in path[:-1]:
        if not isinstance(doc.get(key), dict):
            doc[key] = {}
        doc = doc[key]
    doc[path[-1]] = value


@dataclass
class EnrollmentSpec:
    """What the user asked for. None means "not given": kept as it is on an existing enrollment."""
    registration_id: str
    endorsement_key: str                       # base64 of the marshalled TPM2B_PUBLIC
    device_id: Optional[str] = None
    edge_enabled: Optional[bool] = True
    iot_hubs: Optional[List[str]] = None
    allocation_policy: Optional[str] = None
    initial_twin_tags: Optional[dict] = None
    initial_twin_properties: Optional[dict] = None
    provisioning_status: Optional[str] = None
    reprovision_policy: Optional[str] = None

    def apply(self, base: dict, replace_ek: bool = False) -> dict:
        """`base` (an existing enrollment, or a fresh one) with the given fields set."""
        body = copy.deepcopy(base)
        for key in _READ_ONLY:
            body.pop(key, None)
        body["registrationId"] = _get(base, ("registrationId",)) or self.registration_id
        if replace_ek or _get(body, ("attestation", "tpm", "endorsementKey")) is None:
            # A new key means a new device: the storage root key DPS learnt from the old one goes too.
            body["attestation"] = {"type": "tpm", "tpm": {"endorsementKey": self.endorsement_key}}
        if self.device_id is not None:
            body["deviceId"] = self.device_id
        if self.edge_enabled is not None:
            _set(body, ("capabilities", "iotEdge"), bool(self.edge_enabled))
        if self.iot_hubs is not None:
            body["iotHubs"] = list(self.iot_hubs)
        if self.allocation_policy is not None:
            body["allocationPolicy"] = self.allocation_policy
        if self.initial_twin_tags is not None:
            _set(body, ("initialTwin", "tags"), self.initial_twin_tags)
        if self.initial_twin_properties is not None:
            _set(body, ("initialTwin", "properties", "desired"), self.initial_twin_properties)
        if self.provisioning_status is not None:
            body["provisioningStatus"] = self.provisioning_status
        if self.reprovision_policy is not None:
            update, migrate = REPROVISION_POLICIES[self.reprovision_policy.lower()]
            body["reprovisionPolicy"] = {"updateHubAssignment": update, "migrateDeviceData": migrate}
        return body

    def new_body(self) -> dict:
        """The body of a new enrollment: the given fields, DPS's defaults for the rest, and the
        device ID made explicit (DPS would default it to the registration ID too)."""
        body = self.apply({"registrationId": self.registration_id})
        body.setdefault("deviceId", self.registration_id)
        body.setdefault("provisioningStatus", "enabled")
        return body


def same_endorsement_key(enrollment: dict, endorsement_key: str) -> bool:
    if _get(enrollment, ("attestation", "type")) not in (None, "tpm"):
        return False
    current = _ek_bytes(_get(enrollment, ("attestation", "tpm", "endorsementKey")))
    return current is not None and current == _ek_bytes(endorsement_key)


def differences(before: dict, after: dict) -> List[str]:
    """The compared fields that differ (EKs as bytes, so base64 line breaks do not count)."""
    changed = []
    for name, path in _COMPARED:
        a, b = _get(before, path), _get(after, path)
        if name == "endorsementKey":
            a, b = _ek_bytes(a), _ek_bytes(b)
        elif name == "iotHubs":
            a, b = sorted(h.lower() for h in a or []), sorted(h.lower() for h in b or [])
        elif name == "iotEdge":
            a, b = bool(a), bool(b)
        if a != b:
            changed.append(name)
    return changed


def for_output(enrollment: dict) -> dict:
    """An enrollment as shown: symmetric keys of enrollments made by other tools are hidden."""
    out = copy.deepcopy(enrollment)
    sym = _get(out, ("attestation", "symmetricKey"))
    if isinstance(sym, dict):
        for key in ("primaryKey", "secondaryKey"):
            if sym.get(key):
                sym[key] = None
    return out


def _key_digest(value) -> str:
    import hashlib
    blob = _ek_bytes(value)
    return hashlib.sha256(blob).hexdigest()[:16] if blob else "none"


def _marked(enrollment: dict, result: str, changes=None) -> dict:
    out = for_output(enrollment)
    out["result"] = result
    out["changes"] = list(changes or [])
    return out


def create_enrollment(client: DpsClient, spec: EnrollmentSpec, force: bool = False) -> dict:
    """Create, update or leave alone the enrollment `spec` describes; see the module doc."""
    normalize_registration_id(spec.registration_id)
    if spec.device_id is not None:
        validate_device_id(spec.device_id)
    existing = client.find_enrollment(spec.registration_id)
    if existing is None:
        try:
            return _marked(client.put_enrollment(spec.new_body()), "created")
        except DpsConflictError:
            # Created by someone else between our read and our write: compare with theirs.
            existing = client.get_enrollment(spec.registration_id)
    same_ek = same_endorsement_key(existing, spec.endorsement_key)
    if not same_ek and not force:
        current = _get(existing, ("attestation", "tpm", "endorsementKey"))
        kind = _get(existing, ("attestation", "type")) or "unknown"
        held = (f"an endorsement key with SHA-256 {_key_digest(current)}…" if kind == "tpm"
                else f"{kind} attestation")
        raise DpsConflictError(
            f"The enrollment {spec.registration_id!r} exists with {held}, not the given key "
            f"(SHA-256 {_key_digest(spec.endorsement_key)}…).",
            f"If the device was replaced or its TPM cleared, add {option('force')} to replace the key (an update "
            f"guarded by the enrollment's etag); otherwise use another {option('registration_id')}.")
    desired = spec.apply(existing, replace_ek=not same_ek)
    changes = differences(existing, desired)
    if not changes:
        return _marked(existing, "unchanged")
    etag = existing.get("etag")
    if not etag:
        raise DpsConflictError(f"DPS returned the enrollment {spec.registration_id!r} without an etag, so it "
                               "cannot be updated safely.", "Run the command again.")
    try:
        updated = client.put_enrollment(desired, etag=etag)
    except DpsConflictError as exc:
        current = client.find_enrollment(spec.registration_id)
        if current is not None and not differences(current, desired):
            # Our own write landed and an automatic retry of it met the new etag.
            return _marked(current, "updated", changes)
        raise DpsConflictError(
            f"The enrollment {spec.registration_id!r} changed while it was being updated (its etag {etag} no "
            f"longer matches): {exc}",
            "Someone else changed it meanwhile; look at it with `az edge-tpm enrollment show` and run the "
            "command again.") from exc
    return _marked(updated, "updated", changes)


def plan_enrollment(client: DpsClient, spec: EnrollmentSpec, force: bool = False) -> dict:
    """What create_enrollment would do, read-only: {"action": create | update | unchanged, "changes": [...]}
    (a different EK without `force` is the same conflict create_enrollment raises)."""
    normalize_registration_id(spec.registration_id)
    existing = client.find_enrollment(spec.registration_id)
    if existing is None:
        return {"action": "create", "changes": []}
    same_ek = same_endorsement_key(existing, spec.endorsement_key)
    if not same_ek and not force:
        raise DpsConflictError(
            f"The enrollment {spec.registration_id!r} exists with another endorsement key.",
            f"If the device was replaced or its TPM cleared, add {option('force')} to replace the key; otherwise "
            f"use another {option('registration_id')}.")
    changes = differences(existing, spec.apply(existing, replace_ek=not same_ek))
    return {"action": "update" if changes else "unchanged", "changes": changes}


def list_enrollments(client: DpsClient, top: Optional[int] = None, page_size: Optional[int] = None) -> list:
    """All enrollments (every page), or the first `top`."""
    out = []
    for item in client.query_enrollments(page_size=page_size):
        out.append(for_output(item))
        if top is not None and len(out) >= top:
            break
    return out
