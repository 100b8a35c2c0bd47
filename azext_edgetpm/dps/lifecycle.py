"""Enrollment and registration-record changes after provisioning: disable, delete, change many
enrollments at once (bulk, guarded by etags).

Every function reads the current state first and changes only what differs, reporting a
`Change` (`ok`: nothing to do, `changed`, or `would-change` under dry_run), so a second run of
a half-finished deprovision or reprovision does nothing twice.
"""
import copy
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from azext_edgetpm.dps.client import DpsClient, DpsConflictError
from azext_edgetpm.dps.enrollment import _READ_ONLY, EnrollmentSpec, differences
from azext_edgetpm.errors import ConflictError, NotFoundError

OK, CHANGED, WOULD_CHANGE, FAILED = "ok", "changed", "would-change", "failed"


@dataclass
class Change:
    """What one step did (or would do) to one registration ID."""
    status: str
    detail: str
    data: dict = field(default_factory=dict)


def _writable(enrollment: dict) -> dict:
    body = copy.deepcopy(enrollment)
    for key in _READ_ONLY:
        body.pop(key, None)
    return body


def registration_summary(state: Optional[dict]) -> dict:
    """The part of a registration record worth keeping once it is deleted."""
    state = state or {}
    return {k: state.get(k) for k in ("status", "assignedHub", "deviceId", "substatus", "etag",
                                      "lastUpdatedDateTimeUtc") if state.get(k) is not None}


def disable_enrollment(client: DpsClient, registration_id: str, dry_run: bool = False) -> Change:
    """provisioningStatus disabled (If-Match: the etag just read): the device can no longer register."""
    current = client.find_enrollment(registration_id)
    if current is None:
        return Change(OK, "no enrollment (deleted already)", {"enrollment": "absent"})
    if current.get("provisioningStatus") == "disabled":
        return Change(OK, "enrollment already disabled", {"enrollment": "disabled"})
    if dry_run:
        return Change(WOULD_CHANGE, "would disable the enrollment", {"enrollment": "enabled"})
    # (the registration state it shows: where the device's hub identity is, for --delete-hub-device)
    registered = registration_summary(current.get("registrationState"))
    body = _writable(current)
    body["provisioningStatus"] = "disabled"
    try:
        client.put_enrollment(body, etag=current.get("etag"))
    except DpsConflictError as exc:
        raise ConflictError(f"The enrollment {registration_id!r} changed while it was being disabled: {exc}",
                            "Someone else changed it meanwhile; run the command again.") from exc
    return Change(CHANGED, "enrollment disabled", {"enrollment": "disabled", "registrationState": registered})


def delete_enrollment(client: DpsClient, registration_id: str, dry_run: bool = False) -> Change:
    """Delete the enrollment (If-Match: the etag just read)."""
    current = client.find_enrollment(registration_id)
    if current is None:
        return Change(OK, "no enrollment (deleted already)", {"enrollment": "absent"})
    # deleting it deletes the registration record too: keep where the device's hub identity is
    registered = registration_summary(current.get("registrationState"))
    if dry_run:
        return Change(WOULD_CHANGE, "would delete the enrollment", {"enrollment": current.get("provisioningStatus"),
                                                                    "registrationState": registered})
    try:
        client.delete_enrollment(registration_id, etag=current.get("etag"))
    except DpsConflictError as exc:
        raise ConflictError(f"The enrollment {registration_id!r} changed while it was being deleted: {exc}",
                            "Someone else changed it meanwhile; look at it with `az edge-tpm enrollment show` "
                            "and run the command again.") from exc
    return Change(CHANGED, "enrollment deleted", {"enrollment": "absent", "registrationState": registered})


def delete_registration_state(client: DpsClient, registration_id: str, dry_run: bool = False) -> Change:
    """Delete the device's registration record (If-Match: its etag); keeps what it said in `data`."""
    state = client.find_registration(registration_id)
    if state is None:
        return Change(OK, "no registration record", {"registration": None})
    summary = registration_summary(state)
    if dry_run:
        return Change(WOULD_CHANGE, f"would delete the registration record ({state.get('status')})",
                      {"registration": summary})
    try:
        client.delete_registration(registration_id, etag=state.get("etag"))
    except NotFoundError:
        return Change(OK, "no registration record", {"registration": summary})
    except DpsConflictError as exc:
        raise ConflictError(f"The registration record of {registration_id!r} changed while it was being "
                            f"deleted (the device registered again?): {exc}",
                            "Make sure the device no longer registers (its enrollment disabled or deleted), "
                            "then run the command again.") from exc
    return Change(CHANGED, f"registration record deleted (was {state.get('status')})", {"registration": summary})


def update_enrollments(client: DpsClient, specs: Dict[str, EnrollmentSpec], dry_run: bool = False,
                       before_write: Optional[Callable[[List[str]], None]] = None) -> Dict[str, Change]:
    """Apply `specs` (registration ID → the fields to set; None fields kept) to existing
    enrollments: read each, then write those that differ through the bulk API in calls of ten,
    each item guarded by its own etag (updateIfMatchETag). Per-item refusals fail that ID only."""
    out: Dict[str, Change] = {}
    pending: Dict[str, dict] = {}
    for rid, spec in specs.items():
        current = client.find_enrollment(rid)
        if current is None:
            out[rid] = Change(FAILED, f"no enrollment {rid!r} in this DPS")
            continue
        desired = spec.apply(current)
        changes = differences(current, desired)
        if not changes:
            out[rid] = Change(OK, "enrollment unchanged", {"changes": []})
        elif dry_run:
            out[rid] = Change(WOULD_CHANGE, "would change " + ", ".join(changes), {"changes": changes})
        else:
            desired["etag"] = current.get("etag")
            pending[rid] = {"body": desired, "changes": changes}
    if pending:
        if before_write:
            before_write(list(pending))
        result = client.bulk("updateIfMatchETag", [p["body"] for p in pending.values()])
        refused = {str(e.get("registrationId") or "").lower(): e for e in result.get("errors") or []}
        for rid, item in pending.items():
            err = refused.get(rid.lower())
            if err:
                out[rid] = Change(FAILED, f"DPS refused the change: {err.get('errorStatus')} "
                                          f"(errorCode {err.get('errorCode')})", {"changes": item["changes"]})
            else:
                out[rid] = Change(CHANGED, "changed " + ", ".join(item["changes"]), {"changes": item["changes"]})
    return out
