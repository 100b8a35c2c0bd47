"""`az edge-tpm rekey`: a device whose TPM was cleared or replaced has a new endorsement key;
its enrollment gets that key (an update guarded by the etag just read, after a confirmation
that shows the old and the new key), then the device registers again and must be assigned.

identify (the registration ID the device is configured with) -> ek (the TPM's EK now, created
as `ek show` does when the clear removed it) -> enrollment -> reregister -> verify.
A key that another enrollment holds is refused: one TPM, one enrollment.
"""
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from azext_edgetpm.errors import ConflictError, option
from azext_edgetpm.operations.lifecycle import (
    WOULD_CHANGE, ResolveStep, ReregisterStep, VerifyStep, confirm_or_stop, ek_digest,
    require_enrollment, rid)
from azext_edgetpm.operations.pipeline import CHANGED, OK, DeviceOutcome, Step, outcome_fields

STEP_NAMES = ("identify", "ek", "enrollment", "reregister", "verify")


@dataclass
class RekeyServices:
    client: object
    dry_run: bool = False
    timeout: float = 300.0
    wait_interval: float = 2.0
    confirm: Optional[Callable[[str], bool]] = None   # asked before an enrollment's key is replaced
    budget: object = None
    _keys: Optional[Dict[str, str]] = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def holder_of(self, endorsement_key: str) -> Optional[str]:
        """The registration ID of the enrollment holding this EK (all enrollments read once a run)."""
        with self._lock:
            if self._keys is None:
                from azext_edgetpm.dps.enrollment import list_enrollments
                self._keys = {}
                for item in list_enrollments(self.client):
                    digest = ek_digest(((item.get("attestation") or {}).get("tpm") or {}).get("endorsementKey"))
                    if digest:
                        self._keys[digest] = item["registrationId"].lower()
            return self._keys.get(ek_digest(endorsement_key))

    def moved(self, endorsement_key: str, registration_id: str) -> None:
        with self._lock:
            if self._keys is not None:
                self._keys = {k: v for k, v in self._keys.items() if v != registration_id}
                self._keys[ek_digest(endorsement_key)] = registration_id


class EkStep(Step):
    name = "ek"

    def run(self, ctx):
        from azext_edgetpm.operations.identify import identify
        try:
            identity = identify(ctx.session(), tcti=ctx.job.tcti, create=not ctx.services.dry_run,
                                id_format=ctx.job.id_format)
        except Exception as exc:  # pylint: disable=broad-except  # a dry run never creates keys
            if not ctx.services.dry_run or "no endorsement key" not in str(exc):
                raise
            ctx.data["identity"] = None
            return {"status": WOULD_CHANGE, "detail": "the TPM holds no EK: would create the EK and SRK"}
        ctx.data["identity"] = identity
        return {"status": CHANGED if identity.created else OK, "ekSha256": ek_digest(identity.endorsement_key),
                "detail": ("created " + ", ".join(identity.created_keys)) if identity.created else "EK read"}


class EnrollmentKeyStep(Step):
    name = "enrollment"

    def reuse(self, ctx, recorded):
        identity = ctx.data.get("identity")
        return bool(identity and recorded.get("registrationId") == rid(ctx)
                    and recorded.get("ekSha256") == ek_digest(identity.endorsement_key))

    def run(self, ctx):
        from azext_edgetpm.dps.enrollment import EnrollmentSpec, same_endorsement_key
        services, identity = ctx.services, ctx.data["identity"]
        if identity is None:  # (dry run on a TPM without EK)
            return {"status": WOULD_CHANGE, "registrationId": rid(ctx),
                    "detail": "would replace the enrollment's EK with the one the TPM creates"}
        new_key, digest = identity.endorsement_key, ek_digest(identity.endorsement_key)
        current = require_enrollment(services.client.find_enrollment(rid(ctx)), rid(ctx))
        old_digest = ek_digest(((current.get("attestation") or {}).get("tpm") or {}).get("endorsementKey"))
        entry = {"registrationId": rid(ctx), "ekSha256": digest, "previousEkSha256": old_digest}
        if same_endorsement_key(current, new_key):
            return dict(entry, status=OK, detail="the enrollment already holds the device's EK")
        holder = services.holder_of(new_key)
        if holder and holder != rid(ctx):
            raise ConflictError(
                f"The endorsement key of {ctx.job.host} (SHA-256 {digest}…) belongs to the enrollment {holder!r}, "
                f"not to {rid(ctx)!r}.",
                "One TPM, one enrollment: deprovision the other enrollment first (az edge-tpm deprovision "
                f"{option('registration_id')} {holder} {option('mode')} delete), or check that {option('host')} "
                "names the right device.")
        question = (f"Replace the endorsement key of enrollment {rid(ctx)!r} (SHA-256 {old_digest}…) with the key "
                    f"the TPM of {ctx.job.host} holds now (SHA-256 {digest}…)?")
        if services.dry_run:
            return dict(entry, status=WOULD_CHANGE, detail=f"would replace EK {old_digest}… with {digest}…")
        confirm_or_stop(services.confirm, question)
        body = EnrollmentSpec(registration_id=rid(ctx), endorsement_key=new_key, edge_enabled=None).apply(
            current, replace_ek=True)
        try:
            services.client.put_enrollment(body, etag=current.get("etag"))
        except Exception as exc:  # pylint: disable=broad-except  # an etag mismatch, said in our words
            if getattr(exc, "dps", {}).get("status") in (409, 412):
                raise ConflictError(f"The enrollment {rid(ctx)!r} changed while its key was being replaced.",
                                    "Someone else changed it meanwhile; run the command again.") from exc
            raise
        services.moved(new_key, rid(ctx))
        return dict(entry, status=CHANGED, detail=f"EK {old_digest}… replaced with {digest}…")


def pipeline() -> List[Step]:
    return [ResolveStep(derive=False), EkStep(), EnrollmentKeyStep(), ReregisterStep(), VerifyStep()]


@dataclass
class RekeyResult(DeviceOutcome):
    previous_ek_sha256: Optional[str] = None
    ek_sha256: Optional[str] = None
    enrollment: Optional[str] = None
    assigned_hub: Optional[str] = None

    def details(self) -> dict:
        return {"previousEkSha256": self.previous_ek_sha256, "ekSha256": self.ek_sha256,
                "enrollment": self.enrollment, "assignedHub": self.assigned_hub}


def result_from_record(host: str, record: dict, outcome: str, dry_run: bool = False,
                       seconds: float = 0.0) -> RekeyResult:
    steps = record.get("steps") or {}

    def step(name):
        return steps.get(name) or {}

    return RekeyResult(
        **outcome_fields(host, record, outcome, STEP_NAMES, "assigned", dry_run, seconds),
        previous_ek_sha256=step("enrollment").get("previousEkSha256"),
        ek_sha256=step("enrollment").get("ekSha256") or step("ek").get("ekSha256"),
        enrollment=step("enrollment").get("detail"), assigned_hub=step("reregister").get("assignedHub"))
