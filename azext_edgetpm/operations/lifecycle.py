"""What `deprovision`, `reprovision` and `rekey` share: the job of one device, the step that
finds its registration ID, and the steps that make it register again and check the outcome.

The steps run in the per-device pipeline of operations/pipeline.py (one device, or a fleet
through fleet/runner.py with its journal): each records what a resumed run needs, and a step
recorded as done for the same registration ID is not run again.

The journal (--state) is a record of what was done, never the authority for what to do next:
the registration ID is always read from its source (the inventory row or argument, else the
device's config.toml, else its EK: the ID derived from it, or the journal's ID when DPS's
enrollment of that ID holds this EK), never restored from the journal; a journal record naming another
ID is not this device's record and is set aside (the device runs as without it, and its
result says so: `stateMismatch`); when the source cannot be read (the device out of reach and
no ID in the row), the device stops with an error naming the journal's value.
"""
import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Optional

from azext_edgetpm import stop
from azext_edgetpm.errors import ConflictError, DeviceError, EdgeTpmError, MissingInputError, NotFoundError, option
from azext_edgetpm.operations.pipeline import CHANGED, OK, Step

WOULD_CHANGE, SKIPPED = "would-change", "skipped"


@dataclass(frozen=True)
class LifecycleJob:
    """One device of a lifecycle command, with everything resolved."""
    key: str                               # host:port, the journal's key
    host: str
    ssh: object                            # operations.device.SshOptions
    registration_id: Optional[str] = None  # None: read from the device's config.toml
    id_format: str = "sha256"
    tcti: Optional[str] = None
    source: Optional[str] = None           # "row 3 of fleet.csv"


def ek_digest(endorsement_key: Optional[str]) -> Optional[str]:
    """A short, comparable name of an EK (SHA-256 of its bytes, 16 hex digits)."""
    import base64
    import binascii
    try:
        blob = base64.b64decode("".join(str(endorsement_key or "").split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return hashlib.sha256(blob).hexdigest()[:16] if blob else None


def configured_registration_id(session) -> Optional[str]:
    """The registration ID in the device's /etc/aziot/config.toml (None when there is none)."""
    import shlex
    from azext_edgetpm.edge import configtoml
    from azext_edgetpm.edge.facts import FILE_LIMIT
    result = session.run(f"head -c {FILE_LIMIT} -- {shlex.quote(configtoml.CONFIG_PATH)} 2>/dev/null", sudo=True,
                         timeout=60)  # (bounded: a config.toml beyond it is no config this tool wrote)
    if result.rc != 0 or not result.stdout.strip():
        return None
    try:
        summary = configtoml.summarize(result.stdout)
    except ValueError:
        return None
    configured = summary.get("registrationId")
    return str(configured).lower() if configured else None


def rid(ctx) -> str:
    return ctx.data["registration_id"]


class ResolveStep(Step):
    """The device's registration ID: given, else from its config.toml, else (when `derive`)
    from its EK. `needs_device` opens the device's connection even when the ID is given (so a
    device that cannot be reached fails before anything changes)."""
    name = "identify"

    def __init__(self, derive: bool = True, needs_device: bool = False):
        self.derive, self.needs_device = derive, needs_device

    def reuse(self, ctx, recorded):
        # Only an ID this run read from its source (reprovision's two phases); never the journal's alone.
        confirmed = getattr(ctx.services, "confirmed", None) or {}
        if self.needs_device or not confirmed.get(ctx.key) or confirmed[ctx.key] != recorded.get("registrationId"):
            return False
        ctx.data["registration_id"] = confirmed[ctx.key]
        return True

    def run(self, ctx):
        recorded = ((ctx.record.get("steps") or {}).get(self.name) or {}).get("registrationId")
        found, source = self._from_source(ctx, recorded)
        ctx.data["registration_id"] = found
        entry = {"status": OK, "registrationId": found, "source": source, "detail": f"from {source}"}
        if recorded and str(recorded).lower() != found:
            entry["stateMismatch"] = set_aside(ctx, self.name, "registration ID", recorded, found, source=source)
            entry["detail"] += f"; {entry['stateMismatch']}"
        confirmed = getattr(ctx.services, "confirmed", None)
        if confirmed is not None:
            confirmed[ctx.key] = found
        return entry

    def _from_source(self, ctx, recorded):
        if ctx.job.registration_id and not self.needs_device:
            return ctx.job.registration_id.lower(), "argument"
        try:
            session = ctx.session()
        except EdgeTpmError as exc:
            if recorded and not ctx.job.registration_id:
                exc.prefix(f"The state file names the registration ID {recorded!r} for {ctx.job.host}, which only the "
                           "device can confirm (a state file is not trusted to name an enrollment; to act without the "
                           f"device, give its ID in the inventory's registration_id or {option('registration_id')}): ")
            raise
        if ctx.job.registration_id:
            found, source = ctx.job.registration_id.lower(), "argument"
        else:
            found, source = configured_registration_id(session), "config.toml"
        if not found and self.derive:
            from azext_edgetpm.operations.identify import identify
            identity = identify(session, tcti=ctx.job.tcti, create=False, id_format=ctx.job.id_format)
            found, source = identity.registration_id, "endorsement key"
            if recorded and str(recorded).lower() != found and _holds_key(ctx, str(recorded), identity):
                # (a custom ID, or a TPM rekeyed: DPS's enrollment of that ID holds this TPM's EK)
                found, source = str(recorded).lower(), "enrollment holding the device's EK"
        if not found:
            raise MissingInputError(
                f"{session.target.display} has no registration ID in its IoT Edge configuration.",
                f"Give the enrollment's registration ID ({option('registration_id')}, or registration_id in the "
                "inventory).",
                "registration_id")
        return found, source


def _holds_key(ctx, registration_id: str, identity) -> bool:
    """Whether DPS's enrollment `registration_id` holds the device's EK (DPS confirms the ID, not the journal)."""
    from azext_edgetpm.dps.enrollment import same_endorsement_key
    enrollment = ctx.services.client.find_enrollment(registration_id)
    return bool(enrollment) and same_endorsement_key(enrollment, identity.endorsement_key)


def set_aside(ctx, step_name: str, what: str, recorded, found, *, source: str) -> str:
    """The journal's record of this device names another `what` than its source: it is not this
    device's record (addresses changed, another run's file, or a tampered one). Its steps are
    forgotten for this run (none is reused) and the note says both values."""
    steps = ctx.record.get("steps")
    if isinstance(steps, dict):
        for name in [n for n in steps if n != step_name]:
            del steps[name]          # (in place: the runner reads this dict for the steps after this one)
    note = mismatch(ctx, what, recorded, found, source=source)
    return note + ": that record is not this device's and was not used"


def mismatch(ctx, what: str, recorded, found, *, source: str) -> str:
    """The note of a journal value its source contradicts (both named; the source's is the one acted on)."""
    return f"the state file's record of {ctx.job.host} names the {what} {recorded!r}, the {source} says {found!r}"


class ReregisterStep(Step):
    """The device registers again (`iotedge system reprovision`); then DPS's record must be a new
    one (another etag than before) that says assigned."""
    name = "reregister"

    def reuse(self, ctx, recorded):
        # (done by an earlier run: the verify step then compares with DPS's record, not the journal's)
        return recorded.get("registrationId") == ctx.data.get("registration_id")

    def run(self, ctx):
        from azext_edgetpm.dps.registration import wait_for_assignment
        services = ctx.services
        before = services.client.find_registration(rid(ctx)) or {}
        if services.dry_run:
            return {"status": WOULD_CHANGE, "registrationId": rid(ctx), "previousHub": before.get("assignedHub"),
                    "detail": "would run iotedge system reprovision and wait for the new assignment"}
        budget = getattr(services, "budget", None)
        if budget is not None:
            budget.tpm_registration()   # the device registers with DPS now
        session = ctx.session()
        result = session.run("iotedge system reprovision", sudo=True, timeout=600)
        if result.rc != 0:
            raise DeviceError(f"iotedge system reprovision failed on {session.target.display} (exit {result.rc}): "
                              f"{(result.stderr or result.stdout).strip()[-300:]}",
                              "Check that IoT Edge is installed and configured (`az edge-tpm status`).")
        state = wait_for_assignment(services.client, rid(ctx), timeout=services.timeout,
                                    interval=services.wait_interval, previous_etag=before.get("etag"))
        entry = {"status": CHANGED, "registrationId": rid(ctx), "previousHub": before.get("assignedHub"),
                 "assignedHub": state.get("assignedHub"), "deviceId": state.get("deviceId"),
                 "substatus": state.get("substatus"),
                 "detail": f"assigned to {state.get('assignedHub')} ({state.get('substatus')})"}
        ctx.data["assignment"] = entry
        return entry


class VerifyStep(Step):
    """What the device itself reports: the hub DPS assigned."""
    name = "verify"

    def run(self, ctx):
        from azext_edgetpm.edge import runtime
        if ctx.services.dry_run:
            return {"status": SKIPPED, "detail": "dry run"}
        wanted = (ctx.data.get("assignment") or {}).get("assignedHub")
        if not wanted:  # registered in an earlier run: DPS's record says where, not the journal
            wanted = (ctx.services.client.find_registration(rid(ctx)) or {}).get("assignedHub")
        session = ctx.session()
        deadline = time.monotonic() + ctx.services.timeout
        while True:  # the runtime may report its new assignment a little after DPS made it
            report = runtime.collect(session, with_check=False, log_lines=200)
            prov = report.get("provisioning") or {}
            matches = prov.get("state") == "assigned" and (
                not wanted or (prov.get("assignedHub") or "").lower() == wanted.lower())
            if matches or time.monotonic() >= deadline:
                break
            # (stop.sleep: ends at once when a fleet run is stopping)
            stop.sleep(min(ctx.services.wait_interval, max(0.0, deadline - time.monotonic())))
        if not matches:
            raise DeviceError(f"{session.target.display} reports provisioning {prov.get('state')}"
                              f"{' to ' + prov['assignedHub'] if prov.get('assignedHub') else ''}, "
                              f"not the assignment DPS made ({wanted}).",
                              "Look at `sudo iotedge system logs` on the device, then run the command again.")
        return {"status": OK, "assignedHub": prov.get("assignedHub"), "deviceId": prov.get("deviceId"),
                "healthy": report.get("healthy"), "detail": f"the device reports {prov.get('assignedHub')}"}


def confirm_or_stop(confirm: Optional[Callable[[str], bool]], question: str) -> None:
    """Ask (when a confirmation callback is given); a 'no' stops this device."""
    if confirm is not None and not confirm(question):
        raise ConflictError(f"Not confirmed: {question}",
                            f"Run the command again and confirm, or pass {option('yes')}.")


def require_enrollment(enrollment: Optional[dict], registration_id: str) -> dict:
    if enrollment is None:
        raise NotFoundError(f"DPS has no enrollment {registration_id!r}.",
                            "Enroll the device first: az edge-tpm provision (or enrollment create).",
                            "registration_id")
    return enrollment
