"""`az edge-tpm provision`: identify -> enroll (create or confirm) -> install -> wait -> status,
as a per-device pipeline (operations/pipeline.py) that one device and a fleet share.

The steps record in the journal what a resumed run needs: a device whose enrollment is
recorded for the same registration ID and EK is not enrolled again.
"""
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import List, Optional

from azext_edgetpm.operations.pipeline import CHANGED, OK, DeviceContext, DeviceOutcome, Step, outcome_fields

STEP_NAMES = ("identify", "enroll", "install", "wait", "status")


@dataclass(frozen=True)
class DeviceJob:
    """One device to provision, with every option resolved (typed)."""
    key: str                          # stable identity in journals and shards: host:port
    host: str                         # as the user wrote it
    ssh: object                       # operations.device.SshOptions
    enroll: object                    # operations.enroll.EnrollOptions
    install: object                   # edge.plan.InstallSettings (registration_id: None = derived)
    id_format: str = "sha256"
    tcti: Optional[str] = None
    wait_timeout: float = 300.0
    source: Optional[str] = None      # where it was defined ("row 3 of fleet.csv")


class SingleEnroller:
    """Enrollment one device at a time (create_enrollment: read, compare, write if needed)."""

    def __init__(self, client):
        self.client = client

    def enroll(self, identity, options):
        from azext_edgetpm.operations.enroll import enroll
        return enroll(self.client, identity, options)


@dataclass
class ProvisionServices:
    """What every device of a run shares: ONE DPS client (and its budget), the enroller."""
    client: object
    enroller: object
    budget: object = None
    wait_interval: float = 5.0
    ek_ca_bundle: object = None       # CA certificates every device's EK certificate must chain to


def _ek_digest(identity) -> str:
    return hashlib.sha256(identity.endorsement_key.encode("ascii")).hexdigest()[:16]


def _rid(ctx: DeviceContext) -> str:
    return (ctx.job.enroll.registration_id or ctx.data["identity"].registration_id).lower()


class IdentifyStep(Step):
    name = "identify"

    def run(self, ctx):
        from azext_edgetpm.edge import facts, platform
        from azext_edgetpm.operations.identify import identify
        # A system IoT Edge does not support is refused before its TPM gets keys or DPS an
        # enrollment (install would refuse it only after both).
        found = facts.gather(ctx.session(), files=())
        display = ctx.session().target.display
        platform.detect(found.os_release, platform.debian_arch(found.dpkg_arch, found.uname_machine), display,
                        ctx.job.install.edge_version)
        identity = identify(ctx.session(), tcti=ctx.job.tcti, create=True, id_format=ctx.job.id_format,
                            ek_ca_bundle=ctx.services.ek_ca_bundle)
        ctx.data["identity"] = identity
        entry = {"status": CHANGED if identity.created else OK, "registrationId": _rid(ctx),
                 "ekSha256": _ek_digest(identity), "keyType": identity.key_type,
                 "detail": ("created " + ", ".join(identity.created_keys)) if identity.created else "EK read"}
        recorded = ((ctx.record.get("steps") or {}).get(self.name) or {}).get("registrationId")
        if recorded and recorded != entry["registrationId"]:   # another device's record (addresses changed?)
            from azext_edgetpm.operations.lifecycle import set_aside
            source = "row" if ctx.job.enroll.registration_id else "device's EK"
            entry["stateMismatch"] = set_aside(ctx, self.name, "registration ID", recorded, entry["registrationId"],
                                               source=source)
        return entry


class EnrollStep(Step):
    name = "enroll"

    def reuse(self, ctx, recorded):
        identity = ctx.data.get("identity")
        return bool(identity and recorded.get("registrationId") == _rid(ctx)
                    and recorded.get("ekSha256") == _ek_digest(identity))

    def run(self, ctx):
        result = ctx.services.enroller.enroll(ctx.data["identity"], ctx.job.enroll)
        return {"status": CHANGED if result.result in ("created", "updated") else OK,
                "detail": result.result + (f" ({', '.join(result.changes)})" if result.changes else ""),
                "result": result.result, "registrationId": _rid(ctx), "deviceId": result.device_id,
                "ekSha256": _ek_digest(ctx.data["identity"])}


class InstallStep(Step):
    name = "install"

    def run(self, ctx):
        from azext_edgetpm.operations.install import install
        budget = getattr(ctx.services, "budget", None)
        # The runtime registers with DPS when it is applied: the registration budget is taken there.
        settings = dataclasses.replace(ctx.job.install, registration_id=_rid(ctx),
                                       before_registration=budget.tpm_registration if budget is not None else None)
        result = install(ctx.session(), settings, id_format=ctx.job.id_format)
        ctx.data["install"] = result
        steps = {s["name"]: s["status"] for s in result.steps}
        if result.failed:
            result.failure.journal = {"steps": steps}
            raise result.failure
        return {"status": CHANGED if result.changed else OK, "detail": result.report.get("summary"),
                "steps": steps, "edgeVersion": result.runtime_version,
                "warnings": list(result.report.get("warnings") or [])}


class WaitStep(Step):
    name = "wait"

    def run(self, ctx):
        from azext_edgetpm.operations.wait import from_device, wait
        installed = ctx.data.get("install")
        result = from_device(_rid(ctx), installed.provisioning) if installed else None
        if result is None:
            result = wait(ctx.services.client, _rid(ctx), timeout=ctx.job.wait_timeout,
                          interval=ctx.services.wait_interval)
        ctx.data["wait"] = result
        return {"status": OK, "detail": f"assigned to {result.assigned_hub} (reported by {result.source})",
                "assignedHub": result.assigned_hub, "deviceId": result.device_id, "source": result.source}


class StatusStep(Step):
    name = "status"

    def run(self, ctx):
        from azext_edgetpm.operations.status import status
        result = status(ctx.session())
        ctx.data["status"] = result
        return {"status": OK, "detail": result.summary, "edgeVersion": result.runtime_version,
                "healthy": result.healthy, "provisioning": result.provisioning_state}


def pipeline() -> List[Step]:
    return [IdentifyStep(), EnrollStep(), InstallStep(), WaitStep(), StatusStep()]


@dataclass
class ProvisionResult(DeviceOutcome):
    """One device's outcome, as `provision` prints it (status: assigned | failed | interrupted)."""
    device_id: Optional[str] = None
    assigned_hub: Optional[str] = None
    edge_version: Optional[str] = None
    healthy: Optional[bool] = None
    warnings: List[str] = field(default_factory=list)   # e.g. a runtime line out of support
    plan: Optional[dict] = None       # --dry-run: what would change (operations/plan.py)

    def details(self) -> dict:
        out = {"deviceId": self.device_id, "assignedHub": self.assigned_hub, "edgeVersion": self.edge_version,
               "healthy": self.healthy, "warnings": list(self.warnings)}
        if self.plan is not None:
            out["plan"] = self.plan
        return out


def plan_from_record(host: str, record: dict, outcome_status: str, seconds: float = 0.0) -> ProvisionResult:
    """A --dry-run's ProvisionResult (status planned, with the plan)."""
    from azext_edgetpm.operations.plan import PLAN_STEP_NAMES, plan_of
    return ProvisionResult(**outcome_fields(host, record, outcome_status, PLAN_STEP_NAMES, "assigned", dry_run=True,
                                            seconds=seconds), plan=plan_of(record))


def result_from_record(host: str, record: dict, outcome_status: str, seconds: float = 0.0) -> ProvisionResult:
    """A ProvisionResult from a device's journal record (this run's or an earlier one's)."""
    steps = record.get("steps") or {}

    def field_of(name, *step_names):
        for step in step_names:
            value = (steps.get(step) or {}).get(name)
            if value is not None:
                return value
        return None

    return ProvisionResult(
        **outcome_fields(host, record, outcome_status, STEP_NAMES, "assigned", seconds=seconds),
        device_id=field_of("deviceId", "wait", "enroll"), assigned_hub=field_of("assignedHub", "wait"),
        edge_version=field_of("edgeVersion", "status", "install"), healthy=field_of("healthy", "status"),
        warnings=list(field_of("warnings", "install") or []))
