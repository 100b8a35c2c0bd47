"""`az edge-tpm provision --dry-run`: per device, what provision would change, changing nothing.

The plan's steps read only: identify reads the EK (never creates it; a device without one is
planned with "the EK would be created"), enroll reads the enrollment and compares it
(dps.enrollment.plan_enrollment: create, update with the fields, unchanged, or the conflict
provision would meet), install runs the install plan's checks alone (edge/install.py with
dry_run). No DPS write, no change on the device, no state file written.
"""
import dataclasses
from typing import List

from azext_edgetpm.errors import DeviceError
from azext_edgetpm.operations.pipeline import OK, Step

PLAN_STEP_NAMES = ("identify", "enroll", "install")


class PlanIdentifyStep(Step):
    name = "identify"

    def run(self, ctx):
        from azext_edgetpm.edge import facts, platform
        from azext_edgetpm.operations.identify import identify
        found = facts.gather(ctx.session(), files=())
        platform.detect(found.os_release, platform.debian_arch(found.dpkg_arch, found.uname_machine),
                        ctx.session().target.display)
        try:
            identity = identify(ctx.session(), tcti=ctx.job.tcti, create=False, id_format=ctx.job.id_format,
                                ek_ca_bundle=ctx.services.ek_ca_bundle)
        except DeviceError as exc:
            if "No TPM answered" in str(exc) or "tpm2-tools" in str(exc):
                raise
            ctx.data["identity"] = None
            return {"status": OK, "detail": f"the EK would be created ({exc})", "plan": "create EK"}
        ctx.data["identity"] = identity
        rid = (ctx.job.enroll.registration_id or identity.registration_id).lower()
        return {"status": OK, "registrationId": rid, "detail": "EK read", "plan": "EK present"}


class PlanEnrollStep(Step):
    name = "enroll"

    def run(self, ctx):
        from azext_edgetpm.dps.enrollment import plan_enrollment
        identity = ctx.data.get("identity")
        if identity is None:
            return {"status": OK, "plan": "create", "changes": [],
                    "detail": "would create the enrollment (its registration ID comes from the EK made then)"}
        rid = (ctx.job.enroll.registration_id or identity.registration_id).lower()
        planned = plan_enrollment(ctx.services.client, ctx.job.enroll.spec(rid, identity.endorsement_key),
                                  force=ctx.job.enroll.force)
        changes = planned["changes"]
        return {"status": OK, "plan": planned["action"], "changes": changes, "registrationId": rid,
                "detail": f"would {planned['action']} the enrollment" + (f" ({', '.join(changes)})" if changes else "")
                if planned["action"] != "unchanged" else "enrollment unchanged"}


class PlanInstallStep(Step):
    name = "install"

    def run(self, ctx):
        from azext_edgetpm.operations.install import install
        identity = ctx.data.get("identity")
        rid = (ctx.job.enroll.registration_id or identity.registration_id).lower() if identity else None
        settings = dataclasses.replace(ctx.job.install, registration_id=rid, dry_run=True)
        result = install(ctx.session(), settings, id_format=ctx.job.id_format)
        if result.failed:
            raise result.failure
        would = [s["name"] for s in result.steps if s.get("status") == "would-change"]
        return {"status": OK, "plan": would, "detail": result.report.get("summary")}


def plan_pipeline() -> List[Step]:
    return [PlanIdentifyStep(), PlanEnrollStep(), PlanInstallStep()]


def plan_of(record: dict) -> dict:
    """The plan of one device from its (in-memory) record."""
    steps = record.get("steps") or {}
    return {"ek": (steps.get("identify") or {}).get("plan"), "enrollment": (steps.get("enroll") or {}).get("plan"),
            "enrollmentChanges": (steps.get("enroll") or {}).get("changes") or [],
            "install": (steps.get("install") or {}).get("plan")}
