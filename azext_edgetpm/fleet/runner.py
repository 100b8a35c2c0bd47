"""The parallel runner: a per-device pipeline of steps, run for many devices at once.

Generic: a pipeline is a list of `Step` objects (operations/provision.py defines the one of
`az edge-tpm provision`; other commands bring their own). For each device the runner opens at
most one SSH connection (lazily, on the first step that needs it), runs the steps in order,
records each step in the journal as it ends (so a killed run resumes), and stops that device at
its first failure; one device's failure never stops the others.
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from azext_edgetpm.errors import InterruptedWork, describe, option

from azext_edgetpm.operations.pipeline import DONE_STATES, FAILED, OK, DeviceContext, Step  # noqa: F401


@dataclass
class Outcome:
    key: str
    status: str                     # done | failed | skipped (done by an earlier run) | interrupted
    context: Optional[DeviceContext] = None
    error: Optional[dict] = None
    seconds: float = 0.0


class Progress:
    """Counts of the run, handed to a reporter on every change."""

    def __init__(self, total: int, report: Optional[Callable[["Progress", str], None]] = None):
        self.total, self.done, self.failed, self.skipped = total, 0, 0, 0
        self.running: Dict[str, str] = {}
        self._lock = threading.Lock()
        self._report = report

    def event(self, key: str, text: str, step: Optional[str] = None, end: Optional[str] = None):
        with self._lock:
            if end:
                self.running.pop(key, None)
                if end == "done":
                    self.done += 1
                elif end == "skipped":
                    self.skipped += 1
                else:
                    self.failed += 1
            elif step:
                self.running[key] = step
            if self._report:
                self._report(self, f"{key}: {text}")

    def line(self) -> str:
        return (f"{self.done + self.skipped + self.failed}/{self.total} finished ({self.done} done, "
                f"{self.skipped} already done, {self.failed} failed), {len(self.running)} in progress")


class Runner:
    """Runs `steps` for every job with at most `max_parallel` devices at a time."""

    def __init__(self, steps: List[Step], services, journal, max_parallel: int = 10,
                 progress: Optional[Progress] = None):
        self.steps = steps
        self.services = services
        self.journal = journal
        self.max_parallel = max(1, int(max_parallel))
        self.progress = progress
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.in_flight = 0

    def run(self, jobs: List[Any], skip: Callable[[dict], bool] = lambda record: False) -> List[Outcome]:
        outcomes: Dict[str, Outcome] = {}
        todo = []
        for job in jobs:
            record = self.journal.record(job.key, known_registration_id(job))
            if skip(record):
                outcomes[job.key] = Outcome(job.key, "skipped", DeviceContext(job, self.services, record))
                if self.progress:
                    self.progress.event(job.key, "done in an earlier run; skipped", end="skipped")
            else:
                todo.append(job)
        with ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="edgetpm-device") as pool:
            futures = {job.key: pool.submit(self._device, job) for job in todo}
            try:
                for key, future in futures.items():
                    outcomes[key] = future.result()
            except BaseException:  # Ctrl-C / SIGTERM: no new device starts; running ones stop at their next step
                self.stop.set()
                for future in futures.values():
                    future.cancel()
                raise
        return [outcomes[job.key] for job in jobs]

    def _device(self, job) -> Outcome:
        started = time.monotonic()
        record = self.journal.record(job.key, known_registration_id(job))
        ctx = DeviceContext(job, self.services, record)
        with self._lock:
            self.in_flight += 1
        try:
            return self._pipeline(ctx, started)
        finally:
            with self._lock:
                self.in_flight -= 1
            ctx.close()

    def _pipeline(self, ctx: DeviceContext, started: float) -> Outcome:
        key = ctx.key
        steps_record = ctx.record.setdefault("steps", {})
        self.journal.update(key, status="running", error=None, recommendation=None, failedStep=None)
        for step in self.steps:
            if self.stop.is_set():
                err = describe(InterruptedWork("The run was stopped before this device finished.",
                                               f"Run the same command again with the same {option('state')} "
                                               "file."))
                self.journal.update(key, status="interrupted", **_err(err))
                return Outcome(key, "interrupted", ctx, err, time.monotonic() - started)
            recorded = steps_record.get(step.name) or {}
            if recorded.get("status") in DONE_STATES and step.reuse(ctx, recorded):
                continue
            if self.progress:
                self.progress.event(key, step.name, step=step.name)
            step_started = time.monotonic()
            try:
                entry = dict(step.run(ctx) or {})
            except Exception as exc:  # pylint: disable=broad-except  # recorded for this device only
                err = describe(exc)
                entry = {"status": FAILED, "detail": err["error"]}
                entry.update(getattr(exc, "journal", None) or {})
                entry["seconds"] = round(time.monotonic() - step_started, 2)
                self.journal.step(key, step.name, entry, status="failed", failedStep=step.name, **_err(err))
                if self.progress:
                    self.progress.event(key, f"{step.name} failed: {err['error']}", end="failed")
                return Outcome(key, "failed", ctx, dict(err, step=step.name), time.monotonic() - started)
            entry.setdefault("status", OK)
            entry["seconds"] = round(time.monotonic() - step_started, 2)
            self.journal.step(key, step.name, entry)
        self.journal.update(key, status="done")
        if self.progress:
            self.progress.event(key, "done", end="done")
        return Outcome(key, "done", ctx, None, time.monotonic() - started)


def known_registration_id(job) -> Optional[str]:
    """The registration ID the inventory gives a device (None when it is derived from its EK): the
    journal then finds the device's record by it, wherever the device's address was before."""
    enroll = getattr(job, "enroll", None)
    return getattr(enroll, "registration_id", None) or getattr(job, "registration_id", None)


def _err(err: dict) -> dict:
    return {"error": err.get("error"), "recommendation": err.get("recommendation"), "errorKind": err.get("kind")}
