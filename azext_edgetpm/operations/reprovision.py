"""`az edge-tpm reprovision`: the device registers again (after an enrollment change such as a
new hub, tags or allocation) and reports its new hub.

With an enrollment change, a fleet run has two phases over the same journal: first every
device's registration ID is found (`identify_pipeline`), then the changed enrollments are
written through DPS's bulk API in calls of ten, each guarded by its etag (`enrollment_changes`,
recorded as each device's `enrollment` step); then each device runs the `pipeline`, whose
`enrollment` step finds its recorded change (one device alone writes its change there).
A device whose change DPS refused fails alone.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from azext_edgetpm.operations.lifecycle import (
    WOULD_CHANGE, ResolveStep, ReregisterStep, VerifyStep, rid)
from azext_edgetpm.operations.pipeline import FAILED, OK, DeviceOutcome, Step, outcome_fields

STEP_NAMES = ("identify", "enrollment", "reregister", "verify")


@dataclass(frozen=True)
class EnrollmentChange:
    """The enrollment fields to set (None: keep)."""
    iot_hubs: Optional[tuple] = None
    allocation_policy: Optional[str] = None
    initial_twin_tags: Optional[dict] = field(default=None, hash=False)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.iot_hubs, self.allocation_policy, self.initial_twin_tags))

    def spec(self, registration_id: str):
        from azext_edgetpm.dps.enrollment import EnrollmentSpec
        return EnrollmentSpec(registration_id=registration_id, endorsement_key="", edge_enabled=None,
                              iot_hubs=list(self.iot_hubs) if self.iot_hubs is not None else None,
                              allocation_policy=self.allocation_policy, initial_twin_tags=self.initial_twin_tags)


@dataclass
class ReprovisionServices:
    client: object
    change: EnrollmentChange = field(default_factory=EnrollmentChange)
    dry_run: bool = False
    timeout: float = 300.0
    wait_interval: float = 2.0
    budget: object = None
    confirmed: dict = field(default_factory=dict)   # device key -> the registration ID this run read from its source


class EnrollmentStep(Step):
    """The enrollment change of this device: applied by the bulk phase of a fleet run (and found
    recorded in the journal), else applied here for this one device."""
    name = "enrollment"

    def reuse(self, ctx, recorded):
        return recorded.get("registrationId") == ctx.data.get("registration_id")

    def run(self, ctx):
        from azext_edgetpm.errors import ServiceError
        recorded = (ctx.record.get("steps") or {}).get(self.name) or {}
        if recorded.get("registrationId") == rid(ctx) and recorded.get("status") == FAILED:
            raise ServiceError(recorded.get("detail") or "DPS refused the enrollment change.",
                               "Fix the cause DPS names, then run the command again.")
        if recorded.get("registrationId") == rid(ctx) and recorded.get("status") == WOULD_CHANGE:
            return dict(recorded)
        if not ctx.services.change:
            return {"status": OK, "detail": "no enrollment change asked", "registrationId": rid(ctx)}
        entry = enrollment_changes(ctx.services, [rid(ctx)])[rid(ctx)]
        if entry["status"] == FAILED:
            raise ServiceError(entry["detail"], "Fix the cause DPS names, then run the command again.")
        return entry


def enrollment_changes(services: ReprovisionServices, registration_ids: List[str]) -> Dict[str, dict]:
    """Write the enrollment change of these registration IDs (bulk, ten per call, each guarded by
    its etag); the journal entry of each ID's `enrollment` step."""
    from azext_edgetpm.dps.lifecycle import update_enrollments
    changes = update_enrollments(services.client, {r: services.change.spec(r) for r in registration_ids},
                                 dry_run=services.dry_run)
    return {r: {"status": c.status, "detail": c.detail, "registrationId": r, "changes": c.data.get("changes")}
            for r, c in changes.items()}


def identify_pipeline() -> List[Step]:
    return [ResolveStep(derive=True)]


def pipeline() -> List[Step]:
    return [ResolveStep(derive=True), EnrollmentStep(), ReregisterStep(), VerifyStep()]


@dataclass
class ReprovisionResult(DeviceOutcome):
    enrollment: Optional[str] = None     # what the enrollment step did
    previous_hub: Optional[str] = None
    assigned_hub: Optional[str] = None
    substatus: Optional[str] = None
    device_reports: Optional[str] = None

    def details(self) -> dict:
        return {"enrollment": self.enrollment, "previousHub": self.previous_hub, "assignedHub": self.assigned_hub,
                "substatus": self.substatus, "deviceReports": self.device_reports}


def result_from_record(host: str, record: dict, outcome: str, dry_run: bool = False,
                       seconds: float = 0.0) -> ReprovisionResult:
    steps = record.get("steps") or {}

    def step(name):
        return steps.get(name) or {}

    return ReprovisionResult(
        **outcome_fields(host, record, outcome, STEP_NAMES, "assigned", dry_run, seconds),
        enrollment=step("enrollment").get("detail"), previous_hub=step("reregister").get("previousHub"),
        assigned_hub=step("reregister").get("assignedHub"), substatus=step("reregister").get("substatus"),
        device_reports=step("verify").get("assignedHub"))
