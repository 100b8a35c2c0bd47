"""A per-device pipeline: steps that share one context (and one SSH connection).

The fleet runner (fleet/runner.py) runs a pipeline for many devices in parallel and journals
every step; `az edge-tpm provision --host` runs the same pipeline for one device.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

OK, CHANGED, FAILED, SKIPPED = "ok", "changed", "failed", "skipped"
DONE_STATES = (OK, CHANGED, SKIPPED)


class Step:
    """One step of a device pipeline. `run(ctx)` returns a dict for the journal (at least
    "status": ok | changed | skipped, optionally "detail" and whatever a resumed run needs) or
    raises. `reuse(ctx, recorded)` says whether a step an earlier run recorded as done may be
    skipped now; it restores from `recorded` what later steps need."""
    name = "step"

    def run(self, ctx: "DeviceContext") -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def reuse(self, ctx: "DeviceContext", recorded: dict) -> bool:  # pylint: disable=unused-argument
        return False


@dataclass
class DeviceContext:
    """What the steps of one device share."""
    job: Any                                   # the device's typed options (e.g. provision.DeviceJob)
    services: Any                              # what the whole run shares (DPS client, budget, enroller)
    record: dict                               # this device's journal record as the run started
    data: Dict[str, Any] = field(default_factory=dict)   # results of the steps so far
    _session: Any = None

    @property
    def key(self) -> str:
        return self.job.key

    def session(self):
        """The device's one SSH connection, opened on first use."""
        if self._session is None:
            session = self.job.ssh.session()
            session.connect()
            self._session = session
        return self._session

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None


@dataclass
class DeviceOutcome:
    """What every lifecycle result holds: the device, how it ended, its steps and why it failed.
    Subclasses add their own fields and return them from `details()`."""
    host: str
    status: str                          # the command's success word | planned | failed | interrupted
    registration_id: Optional[str] = None
    steps: List[dict] = field(default_factory=list)
    error: Optional[str] = None
    recommendation: Optional[str] = None
    failed_step: Optional[str] = None
    skipped: bool = False                # finished by an earlier run (--state)
    seconds: float = 0.0
    state_mismatch: List[str] = field(default_factory=list)   # journal values their source contradicted

    def details(self) -> dict:
        return {}

    def to_output(self) -> dict:
        return {"host": self.host, "status": self.status, "registrationId": self.registration_id, **self.details(),
                "failedStep": self.failed_step, "error": self.error, "recommendation": self.recommendation,
                "doneEarlier": self.skipped, "seconds": round(self.seconds, 1), "steps": self.steps,
                **({"stateMismatch": list(self.state_mismatch)} if self.state_mismatch else {})}


def outcome_fields(host: str, record: dict, outcome: str, step_names, ok_status: str, dry_run: bool = False,
                   seconds: float = 0.0) -> dict:
    """The DeviceOutcome fields of one device from its journal record (this run's or an earlier one's)."""
    steps = record.get("steps") or {}
    status = ("planned" if dry_run and outcome == "done" else
              ok_status if outcome in ("done", "skipped") else outcome)
    fields = {"host": host, "status": status, "registration_id": (steps.get("identify") or {}).get("registrationId"),
              "steps": [{"name": n, "status": steps[n].get("status"), "seconds": steps[n].get("seconds"),
                         "detail": steps[n].get("detail")} for n in step_names if n in steps],
              "skipped": outcome == "skipped", "seconds": seconds,
              "state_mismatch": [steps[n]["stateMismatch"] for n in step_names
                                 if n in steps and steps[n].get("stateMismatch")]}
    if status not in (ok_status, "planned"):
        fields.update(error=record.get("error"), recommendation=record.get("recommendation"),
                      failed_step=record.get("failedStep"))
    return fields
