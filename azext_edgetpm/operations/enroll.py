"""Step `enroll`: create or confirm a device's individual enrollment, one at a time or in bulk.

One at a time: dps.enrollment.create_enrollment (read, compare, create/update guarded by the
etag). In bulk (a fleet): DPS's bulk `create` in calls of at most ten; an item DPS reports as
existing goes through the one-at-a-time path, so the same etag/--force rules hold per device and
a conflict fails that device only.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from azext_edgetpm.errors import ConflictError, ServiceError


@dataclass(frozen=True)
class EnrollOptions:
    """What the user asks of the enrollment. None means "not given" (kept on an existing one)."""
    registration_id: Optional[str] = None     # default: the device's derived registration ID
    device_id: Optional[str] = None
    edge_enabled: Optional[bool] = True
    iot_hubs: Optional[tuple] = None
    allocation_policy: Optional[str] = None
    initial_twin_tags: Optional[dict] = field(default=None, hash=False)
    initial_twin_properties: Optional[dict] = field(default=None, hash=False)
    provisioning_status: Optional[str] = None
    reprovision_policy: Optional[str] = None
    force: bool = False

    def spec(self, registration_id: str, endorsement_key: str):
        from azext_edgetpm.dps.enrollment import EnrollmentSpec
        return EnrollmentSpec(
            registration_id=registration_id, endorsement_key=endorsement_key, device_id=self.device_id,
            edge_enabled=self.edge_enabled, iot_hubs=list(self.iot_hubs) if self.iot_hubs is not None else None,
            allocation_policy=self.allocation_policy, initial_twin_tags=self.initial_twin_tags,
            initial_twin_properties=self.initial_twin_properties, provisioning_status=self.provisioning_status,
            reprovision_policy=self.reprovision_policy)


@dataclass
class EnrollResult:
    registration_id: str
    result: str                          # created | updated | unchanged
    changes: List[str] = field(default_factory=list)
    enrollment: dict = field(default_factory=dict)
    device_id: Optional[str] = None

    def to_output(self) -> dict:
        out = dict(self.enrollment)
        out["result"] = self.result
        out["changes"] = list(self.changes)
        return out


def _result(enrollment: dict) -> EnrollResult:
    return EnrollResult(registration_id=enrollment.get("registrationId"), result=enrollment.get("result"),
                        changes=list(enrollment.get("changes") or []),
                        enrollment={k: v for k, v in enrollment.items() if k not in ("result", "changes")},
                        device_id=enrollment.get("deviceId"))


def enroll(client, identity, options: EnrollOptions) -> EnrollResult:
    """Create, update or confirm the enrollment of one device (identity: operations.identify.Identity)."""
    from azext_edgetpm.dps.enrollment import create_enrollment
    rid = options.registration_id or identity.registration_id
    return _result(create_enrollment(client, options.spec(rid, identity.endorsement_key), force=options.force))


_EXISTS = ("409",)  # DPS errorCode 409xxx: the enrollment exists already


def enroll_many(client, items: List[tuple]) -> Dict[str, object]:
    """Bulk enrollment of (identity, options) pairs: {registrationId: EnrollResult or an exception}.

    One bulk `create` call per ten new enrollments; items DPS reports as existing are compared
    and updated (or refused) one at a time, as `enrollment create` does.
    """
    from azext_edgetpm.dps.client import BULK_MAX
    from azext_edgetpm.dps.enrollment import for_output
    wanted = {}
    for identity, options in items:
        rid = (options.registration_id or identity.registration_id).lower()
        wanted[rid] = (identity, options, options.spec(rid, identity.endorsement_key))
    out: Dict[str, object] = {}
    rids = list(wanted)
    for start in range(0, len(rids), BULK_MAX):
        chunk = rids[start:start + BULK_MAX]
        bodies = [wanted[rid][2].new_body() for rid in chunk]
        try:
            answer = client.bulk("create", bodies)
        except Exception as exc:  # pylint: disable=broad-except  # the whole call failed: each item fails
            for rid in chunk:
                out[rid] = exc
            continue
        errors = {str(e.get("registrationId") or "").lower(): e for e in answer.get("errors") or []}
        for rid, body in zip(chunk, bodies):
            err = errors.get(rid)
            if err is None:
                created = for_output(body)
                out[rid] = EnrollResult(registration_id=rid, result="created", enrollment=created,
                                        device_id=created.get("deviceId"))
            elif str(err.get("errorCode", "")).startswith(_EXISTS):
                identity, options, _spec = wanted[rid]
                try:
                    out[rid] = enroll(client, identity, options)
                except Exception as exc:  # pylint: disable=broad-except  # recorded per device
                    out[rid] = exc
            else:
                code = err.get("errorCode")
                cls = ConflictError if str(code).startswith("412") else ServiceError
                out[rid] = cls(f"DPS refused the enrollment {rid!r} in a bulk create: {err.get('errorStatus')} "
                               f"(errorCode {code}).",
                               "Fix the cause DPS names; the device is retried on the next run.")
    return out
