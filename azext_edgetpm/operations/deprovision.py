"""`az edge-tpm deprovision`: the enrollment disabled (or deleted), the device's registration
record deleted, and on the device IoT Edge stopped and its configuration reset (optionally
uninstalled), as a per-device pipeline that one device and a fleet share.

identify -> enrollment [-> hub] -> registration -> device. The cloud side comes first, so that a device
that cannot be reached still gets it (unless require_device); every step reads the current
state and changes only what differs, so a re-run after an interruption finishes the work and
does nothing twice. With `hubs` (--delete-hub-device) the hub step deletes the device's identity in
the IoT hub DPS assigned it to, as DPS says it now (its registration record, or the enrollment's
registration state this run read before deleting the enrollment took the record with it), never
as a state file says; a hub that cannot be reached, or refuses, leaves it there without failing
the device (status `left`, said in `remains`), and the registration record is then kept (`kept`)
so that a resumed run can confirm the hub from DPS, try again, and delete the record after.
With --mode delete the record goes with the enrollment: a hub identity left then is named in
`remains`, and a resumed run cannot confirm it any more (it says so and deletes nothing).
"""
from dataclasses import dataclass, field
from typing import List, Optional

from azext_edgetpm.operations.lifecycle import (
    SKIPPED, WOULD_CHANGE, ResolveStep, rid)
from azext_edgetpm.operations.pipeline import CHANGED, OK, DeviceOutcome, Step, outcome_fields

MODES = ("disable", "delete")
STEP_NAMES = ("identify", "enrollment", "hub", "registration", "device")
LEFT = "left"   # dps.hub.LEFT: a hub identity not deleted (the hub out of reach, or refusing)
KEPT = "kept"   # the registration record, while the hub identity is left (a resumed run confirms the hub from it)


@dataclass
class DeprovisionServices:
    """What every device of a run shares."""
    client: object                       # ONE dps.client.DpsClient
    mode: str = "disable"
    uninstall: bool = False
    keep_device: bool = False
    require_device: bool = False
    dry_run: bool = False
    budget: object = None
    hubs: object = None                  # dps.hub.HubClients: delete the hub identity (--delete-hub-device)


def _status(change) -> str:
    return {"ok": OK, "changed": CHANGED, "would-change": WOULD_CHANGE}[change.status]


class _CloudStep(Step):
    """A base of the cloud steps: each implements change(ctx) -> the step's journal entry."""

    def change(self, ctx) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def reuse(self, ctx, recorded):
        # (what the entry says of DPS is not restored: the hub step asks DPS itself)
        return (recorded.get("registrationId") == ctx.data.get("registration_id")
                and recorded.get("mode") == ctx.services.mode)

    def run(self, ctx):
        entry = self.change(ctx)
        ctx.data[self.name] = entry
        return entry


class EnrollmentStep(_CloudStep):
    name = "enrollment"

    def change(self, ctx):
        from azext_edgetpm.dps import lifecycle
        act = lifecycle.disable_enrollment if ctx.services.mode == "disable" else lifecycle.delete_enrollment
        change = act(ctx.services.client, rid(ctx), dry_run=ctx.services.dry_run)
        return {"status": _status(change), "detail": change.detail, "registrationId": rid(ctx),
                "mode": ctx.services.mode, "enrollment": change.data.get("enrollment"),
                "registrationState": change.data.get("registrationState") or None}


class RegistrationStep(_CloudStep):
    name = "registration"

    def reuse(self, ctx, recorded):
        return recorded.get("status") != KEPT and super().reuse(ctx, recorded)

    def change(self, ctx):
        from azext_edgetpm.dps import lifecycle
        # (--mode delete: the record went with the enrollment, nothing to keep)
        if (ctx.data.get("hub") or {}).get("status") == LEFT and ctx.services.mode == "disable" \
                and not ctx.services.dry_run:
            return {"status": KEPT, "registrationId": rid(ctx), "mode": ctx.services.mode,
                    "detail": "registration record kept while the hub identity is left (a re-run confirms the "
                              "hub from it, then deletes it)"}
        change = lifecycle.delete_registration_state(ctx.services.client, rid(ctx), dry_run=ctx.services.dry_run)
        return {"status": _status(change), "detail": change.detail, "registrationId": rid(ctx),
                "mode": ctx.services.mode, "registration": change.data.get("registration")}


def _assignment(data: dict) -> dict:
    """The hub and device ID DPS assigned: the registration record's, else the enrollment's view of it."""
    for found in ((data.get("registration") or {}).get("registration"),
                  (data.get("enrollment") or {}).get("registrationState")):
        if found and found.get("assignedHub") and found.get("deviceId"):
            return found
    return {}


def _recorded_assignment(record: dict) -> dict:
    """What the journal says of the assignment (compared with DPS's answer, never acted on)."""
    steps = record.get("steps") or {}
    hub = steps.get("hub") or {}
    if hub.get("hub") and hub.get("deviceId"):
        return {"assignedHub": hub["hub"], "deviceId": hub["deviceId"]}
    return _assignment(steps)


class HubStep(Step):
    """The device's identity in its IoT hub deleted (--delete-hub-device), after the enrollment is
    disabled or deleted (so the device cannot register again) and before the registration record
    goes. The hub and device ID are DPS's answer: the registration record read now, else the
    enrollment's registration state this run's enrollment step read; the journal's are only compared."""
    name = "hub"

    def reuse(self, ctx, recorded):
        return recorded.get("registrationId") == ctx.data.get("registration_id")

    def run(self, ctx):
        from azext_edgetpm.dps.hub import delete_device_identity
        from azext_edgetpm.dps.lifecycle import registration_summary
        from azext_edgetpm.operations.lifecycle import mismatch
        record = registration_summary(ctx.services.client.find_registration(rid(ctx)))
        assigned = _assignment({"registration": {"registration": record}, "enrollment": ctx.data.get("enrollment")})
        journal = _recorded_assignment(ctx.record)
        entry = {"registrationId": rid(ctx)}
        said = (journal.get("assignedHub"), journal.get("deviceId"))
        if journal and assigned and said != (assigned["assignedHub"], assigned["deviceId"]):
            entry["stateMismatch"] = mismatch(ctx, "hub identity", f"{said[1]} in {said[0]}",
                                              f"{assigned['deviceId']} in {assigned['assignedHub']}", source="DPS")
        if not assigned:
            detail = "no hub identity known (DPS has no registration record of the device)"
            if journal:
                detail = (f"DPS no longer records where the device was assigned; the state file names the device "
                          f"identity {said[1]!r} in {said[0]!r}, which is not trusted without DPS: nothing deleted")
            return dict(entry, status=OK, identity="unknown", detail=detail,
                        unconfirmed={"hub": said[0], "deviceId": said[1]} if journal else None)
        change = delete_device_identity(ctx.services.hubs, assigned["assignedHub"], assigned["deviceId"],
                                        dry_run=ctx.services.dry_run)
        words = {"ok": "already gone", "changed": "deleted", "would-change": "would delete"}
        identity = words.get(change.status, change.status)
        detail = change.detail + (f"; {entry['stateMismatch']}" if entry.get("stateMismatch") else "")
        entry.update(status=change.status, detail=detail, identity=identity, hub=assigned["assignedHub"],
                     deviceId=assigned["deviceId"], reason=change.data.get("reason"))
        ctx.data[self.name] = entry
        return entry


class DeviceStep(Step):
    name = "device"

    def reuse(self, ctx, recorded):
        if recorded.get("registrationId") != ctx.data.get("registration_id"):
            return False                          # (another device's record, or one of an older version)
        if recorded.get("status") == SKIPPED:     # --keep-device then; maybe not now
            return ctx.services.keep_device
        return bool(recorded.get("uninstalled")) or not ctx.services.uninstall

    def run(self, ctx):
        from azext_edgetpm.edge.deprovision import DeprovisionSettings, deprovision
        if ctx.services.keep_device:
            return {"status": SKIPPED, "detail": "left alone (--keep-device)", "registrationId": rid(ctx)}
        try:
            session = ctx.session()
        except Exception as exc:  # pylint: disable=broad-except  # recorded: the device was not reached
            exc.journal = {"reached": False}
            raise
        try:
            report = deprovision(session, DeprovisionSettings(uninstall=ctx.services.uninstall,
                                                              dry_run=ctx.services.dry_run))
        except Exception as exc:  # pylint: disable=broad-except  # keeps the device's step report
            if getattr(exc, "report", None) is not None:
                exc.journal = {"steps": {s["name"]: s["status"] for s in getattr(exc, "report")}}
            raise
        steps = {s["name"]: s["status"] for s in report["steps"]}
        status = WOULD_CHANGE if report["wouldChange"] else CHANGED if report["changed"] else OK
        details = [f"{s['name']}: {s['detail']}" for s in report["steps"] if s["status"] != "skipped"]
        return {"status": status, "steps": steps, "detail": "; ".join(details) or "nothing to do",
                "configBackup": report.get("configBackup"), "uninstalled": ctx.services.uninstall,
                "registrationId": rid(ctx)}


def pipeline(require_device: bool = False, delete_hub_device: bool = False) -> List[Step]:
    return [ResolveStep(derive=True, needs_device=require_device), EnrollmentStep(),
            *([HubStep()] if delete_hub_device else []), RegistrationStep(), DeviceStep()]


def finished(record: dict, services: DeprovisionServices) -> bool:
    """Whether a device an earlier run (--state) recorded needs nothing more: done, and with
    --delete-hub-device its hub identity not left behind (then only the hub step runs again)."""
    if record.get("status") != "done":
        return False
    hub = (record.get("steps") or {}).get("hub") or {}
    return services.hubs is None or hub.get("status") != LEFT


@dataclass
class DeprovisionResult(DeviceOutcome):
    """One device's outcome, and what is left where."""
    mode: str = "disable"
    enrollment: Optional[str] = None     # disabled | absent (after the run)
    assigned_hub: Optional[str] = None   # the hub the device was assigned to
    device_id: Optional[str] = None
    device: Optional[str] = None         # reset | uninstalled | left alone | not reached | not started | not finished
    hub_identity: Optional[str] = None   # kept (no --delete-hub-device) | deleted | already gone | left | unknown
    #                                      | would delete | would be left | not started
    remains: List[str] = field(default_factory=list)

    def details(self) -> dict:
        return {"mode": self.mode, "enrollment": self.enrollment, "assignedHub": self.assigned_hub,
                "deviceId": self.device_id, "device": self.device, "hubIdentity": self.hub_identity,
                "remains": list(self.remains)}


def result_from_record(host: str, record: dict, outcome: str, services: DeprovisionServices,
                       seconds: float = 0.0) -> DeprovisionResult:
    """The result of one device from its journal record (this run's or an earlier one's)."""
    steps = record.get("steps") or {}

    def step(name):
        return steps.get(name) or {}

    def done(name):
        return step(name).get("status") in (OK, CHANGED, SKIPPED)

    registration = _assignment(steps) or step("registration").get("registration") or {}
    result = DeprovisionResult(
        **outcome_fields(host, record, outcome, STEP_NAMES, "done", services.dry_run, seconds), mode=services.mode,
        enrollment=step("enrollment").get("enrollment"), assigned_hub=registration.get("assignedHub"),
        device_id=registration.get("deviceId"))
    planned = result.status == "planned"
    hub_step = step("hub")
    if services.hubs is None:
        result.hub_identity = "kept"
    elif not hub_step:
        result.hub_identity = "not started"
    elif hub_step.get("status") == "left":
        result.hub_identity = "would be left" if services.dry_run else "left"
    else:
        result.hub_identity = hub_step.get("identity")
    result.hub_identity = result.hub_identity if result.device_id or services.hubs is not None else None
    if services.keep_device:
        result.device = "left alone"
    elif done("device"):
        result.device = "uninstalled" if step("device").get("uninstalled") else "reset"
    else:
        failed_at = record.get("failedStep")
        result.device = ("not reached" if failed_at == "identify" or step("device").get("reached") is False else
                         "not finished" if failed_at == "device" else "not started")
    if not planned:
        result.remains = _remains(result, step("device"), done("enrollment"), done("registration"), hub_step,
                                  step("registration").get("status"))
    return result


def _remains(result: DeprovisionResult, device_step: dict, enrollment_done: bool,  # pylint: disable=too-many-arguments
             registration_done: bool, hub_step: dict, registration_status: Optional[str] = None) -> list:
    """What is still there after this run, side by side (cloud, hub, device)."""
    out = []
    rid_text = result.registration_id or "the device's registration ID"
    if not enrollment_done:
        out.append(f"DPS: the enrollment {rid_text} is unchanged (the run stopped before it)")
    elif result.mode == "disable":
        out.append(f"DPS: the enrollment {rid_text}, disabled (--mode delete removes it)")
    if registration_status == KEPT:
        out.append(f"DPS: the registration record of {rid_text}, kept while the hub identity is left (a re-run "
                   "confirms the hub from it, deletes the identity, then the record)")
    elif not registration_done:
        out.append(f"DPS: the registration record of {rid_text} (the run stopped before it)")
    unconfirmed = hub_step.get("unconfirmed") or {}
    if unconfirmed.get("hub"):
        out.append(f"IoT hub: maybe the device identity {unconfirmed.get('deviceId')!r} in {unconfirmed['hub']!r}, "
                   "as the state file says; DPS no longer confirms it, so nothing was deleted (check it in the hub)")
    if result.assigned_hub and result.device_id and result.hub_identity not in ("deleted", "already gone"):
        from azext_edgetpm.dps.hub import removal_command
        why = ("DPS never deletes it; --delete-hub-device does" if result.hub_identity == "kept" else
               f"not deleted: {hub_step.get('reason')}" if hub_step.get("reason") else "not deleted")
        out.append(f"IoT hub: the device identity {result.device_id} in {result.assigned_hub} ({why}; "
                   f"{removal_command(result.assigned_hub, result.device_id)})")
    if result.device == "left alone":
        out.append("device: IoT Edge installed and configured (--keep-device)")
    elif result.device in ("not reached", "not started"):
        out.append("device: IoT Edge installed and configured as before (run again when the device is reachable)")
    elif result.device == "not finished":
        out.append("device: IoT Edge partly reset (" + ", ".join(
            f"{name} {status}" for name, status in (device_step.get("steps") or {}).items()) +
            "); run again when the device is reachable")
    else:
        if result.device == "reset":
            out.append("device: the IoT Edge packages (--uninstall removes them)")
        if device_step.get("configBackup"):
            out.append(f"device: the previous configuration in {device_step['configBackup']}")
        out.append("device: the container engine (moby-engine), the package source and the TPM's EK and SRK")
    return out
