"""The parallel runner: a per-device pipeline of steps, run for many devices at once.

Generic: a pipeline is a list of `Step` objects (operations/provision.py defines the one of
`az edge-tpm provision`; other commands bring their own). For each device the runner opens at
most one SSH connection (lazily, on the first step that needs it), runs the steps in order,
records each step in the journal as it ends (so a killed run resumes), and stops that device at
its first failure; one device's failure never stops the others.

Memory stays flat however large the fleet: `max_parallel` worker threads take devices from a
bounded queue that the caller's job iterator fills as they free up, a device's working data
(its DeviceContext: connection, step results) is dropped when it ends, and `stream()` hands
each device's small Outcome to the caller as it ends (nothing is kept for the end).

Stopping (azext_edgetpm.stop): once STOP is set no further device starts; running steps give up
(a remote command is stopped on its device) and are marked `interrupted` in the journal; a
device that has not come back within `grace` seconds of the signal is marked interrupted by the
runner itself, and its thread (a daemon) is abandoned, so that the process can exit in time.
"""
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from azext_edgetpm.errors import InterruptedWork, describe
from azext_edgetpm.stop import STOP, stopped

from azext_edgetpm.operations.pipeline import DONE_STATES, FAILED, OK, DeviceContext, Step  # noqa: F401

INTERRUPTED, NOT_STARTED = "interrupted", "notStarted"
# Seconds after the signal until the runner stops waiting for running devices: remote commands get
# their signal and, after a little more, SIGKILL; the summary and the exit follow within 5 s.
STOP_GRACE = 2.5


@dataclass
class Outcome:
    key: str
    status: str                     # done | failed | skipped (done by an earlier run) | interrupted | notStarted
    host: Optional[str] = None      # as the user wrote it
    error: Optional[dict] = None
    seconds: float = 0.0


class Progress:
    """Counts of the run, handed to a reporter on every change."""

    def __init__(self, total: int, report: Optional[Callable[["Progress", str], None]] = None):
        self.total, self.done, self.failed, self.skipped, self.interrupted = total, 0, 0, 0, 0
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
                elif end in (INTERRUPTED, NOT_STARTED):
                    self.interrupted += 1
                else:
                    self.failed += 1
            elif step:
                self.running[key] = step
            if self._report:
                self._report(self, f"{key}: {text}")

    def line(self) -> str:
        stopped_ = f", {self.interrupted} interrupted or not started" if self.interrupted else ""
        return (f"{self.done + self.skipped + self.failed}/{self.total} finished ({self.done} done, "
                f"{self.skipped} already done, {self.failed} failed{stopped_}), {len(self.running)} in progress")


class Runner:
    """Runs `steps` for every job with at most `max_parallel` devices at a time."""

    def __init__(self, steps: List[Step], services, journal, max_parallel: int = 10,
                 progress: Optional[Progress] = None, grace: float = STOP_GRACE, budget=None):
        self.steps = steps
        self.services = services
        self.journal = journal
        self.max_parallel = max(1, int(max_parallel))
        self.progress = progress
        self.grace = grace
        self.budget = budget        # fleet/budget.py: a failure budget asked before each device starts
        self._lock = threading.Lock()
        self._active: Dict[int, Tuple[Any, Optional[str]]] = {}   # index -> (job, running step)
        self._closed = False        # the run has ended: a late thread's results are dropped

    def run(self, jobs: Iterable[Any], skip: Callable[[dict], bool] = lambda record: False) -> List[Outcome]:
        """Every job's Outcome, in the jobs' order."""
        found = dict(self.stream(jobs, skip))
        return [found[index] for index in sorted(found)]

    def stream(self, jobs: Iterable[Any], skip: Callable[[dict], bool] = lambda record: False
               ) -> Iterator[Tuple[int, Outcome]]:
        """(position of the job, its Outcome) as each device ends, in the order they end.
        `jobs` may be a generator: it is read as workers free up."""
        tasks: "queue.Queue" = queue.Queue(maxsize=self.max_parallel)
        ended: "queue.Queue" = queue.Queue()
        workers = [threading.Thread(target=self._worker, args=(tasks, ended), daemon=True,
                                    name=f"edgetpm-device-{n}") for n in range(self.max_parallel)]
        for worker in workers:
            worker.start()
        source = enumerate(jobs)
        pending, exhausted, outstanding = None, False, 0
        try:
            while True:
                while not exhausted and not STOP.is_set() and not self._halted():   # fill the queue, no further
                    if pending is None:
                        pending = next(source, None)
                        if pending is None:
                            exhausted = True
                            break
                        if skip(self.journal.record(pending[1].key, known_registration_id(pending[1]))):
                            yield pending[0], self._skipped(pending[1])
                            pending = None
                            continue
                    try:
                        tasks.put_nowait(pending)
                    except queue.Full:
                        break
                    pending, outstanding = None, outstanding + 1
                if outstanding == 0 and (exhausted or STOP.is_set() or self._halted()):
                    break
                try:
                    index, outcome = ended.get(timeout=0.2)
                except queue.Empty:
                    if STOP.is_set() and time.monotonic() - STOP.since >= self.grace:
                        break
                    continue
                outstanding -= 1
                yield index, outcome
        except KeyboardInterrupt:   # (a host application without on_signals: its Ctrl+C stops the workers too)
            STOP.request(signal.SIGINT)
            raise
        finally:
            for _ in workers:     # (workers see STOP or the end marker; a late one is a daemon)
                try:
                    tasks.put_nowait(None)
                except queue.Full:
                    break
        if not STOP.is_set() and not self._halted():
            return
        # Stopped (or the failure budget is spent): devices still running past the grace are marked
        # here; the rest never started.
        with self._lock:
            self._closed = True
            late = dict(self._active)
        for index, (job, step) in late.items():
            yield index, self._interrupted(job, step, late=True)
        for index, job in self._drain(tasks, pending, source):
            yield index, (self._skipped(job) if skip(self.journal.record(job.key, known_registration_id(job)))
                          else Outcome(job.key, NOT_STARTED, job.host, self._not_started_error()))

    def _halted(self) -> bool:
        return self.budget is not None and bool(self.budget.halted)

    def _not_started_error(self) -> Optional[dict]:
        return self.budget.not_started_error() if self._halted() and not STOP.is_set() else None

    @staticmethod
    def _drain(tasks, pending, source):
        while True:
            try:
                item = tasks.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                yield item
        if pending is not None:
            yield pending
        yield from source

    def _skipped(self, job) -> Outcome:
        if self.progress:
            self.progress.event(job.key, "done in an earlier run; skipped", end="skipped")
        return Outcome(job.key, "skipped", job.host)

    def _worker(self, tasks, ended) -> None:
        while not STOP.is_set():
            try:
                item = tasks.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None or STOP.is_set():
                if item is not None:
                    tasks.put_nowait(item)   # (not started: the runner reports it; the slot is free)
                return
            index, job = item
            if self.budget is not None and not self.budget.admit(job.key, STOP.is_set):
                if STOP.is_set():
                    tasks.put_nowait(item)
                    return
                ended.put((index, Outcome(job.key, NOT_STARTED, job.host, self._not_started_error())))
                continue
            with self._lock:
                self._active[index] = (job, None)
            outcome = self._device(index, job)
            if self.budget is not None:
                self.budget.ended(job.key, outcome.status == "failed")
            with self._lock:
                self._active.pop(index, None)
                if self._closed:
                    return
            ended.put((index, outcome))

    def _device(self, index: int, job) -> Outcome:
        started = time.monotonic()
        ctx = DeviceContext(job, self.services, self.journal.record(job.key, known_registration_id(job)))
        try:
            return self._pipeline(index, ctx, started)
        finally:
            ctx.close()   # (the context, its connection and step results go with this frame)

    def _journal(self, method: str, *args, **fields) -> bool:
        """Write to the journal unless the run has ended (a late thread's results are dropped)."""
        with self._lock:
            if self._closed:
                return False
            getattr(self.journal, method)(*args, **fields)
            return True

    def _pipeline(self, index: int, ctx: DeviceContext, started: float) -> Outcome:
        key, host = ctx.key, ctx.job.host
        steps_record = ctx.record.setdefault("steps", {})
        begun = False
        for step in self.steps:
            recorded = steps_record.get(step.name) or {}
            if STOP.is_set():
                if not begun:
                    return Outcome(key, NOT_STARTED, host)
                return self._interrupted(ctx.job, step.name, time.monotonic() - started, journal_step=False)
            if recorded.get("status") in DONE_STATES and step.reuse(ctx, recorded):
                continue
            if not begun:
                begun = True
                self._journal("update", key, status="running", error=None, recommendation=None, failedStep=None)
            with self._lock:
                self._active[index] = (ctx.job, step.name)
            if self.progress:
                self.progress.event(key, step.name, step=step.name)
            step_started = time.monotonic()
            try:
                entry = dict(step.run(ctx) or {})
            except Exception as exc:  # pylint: disable=broad-except  # recorded for this device only
                if STOP.is_set() or isinstance(exc, InterruptedWork):
                    return self._interrupted(ctx.job, step.name, time.monotonic() - started)
                err = describe(exc)
                entry = {"status": FAILED, "detail": err["error"]}
                entry.update(getattr(exc, "journal", None) or {})
                entry["seconds"] = round(time.monotonic() - step_started, 2)
                self._journal("step", key, step.name, entry, status="failed", failedStep=step.name, **_err(err))
                if self.progress:
                    self.progress.event(key, f"{step.name} failed: {err['error']}", end="failed")
                return Outcome(key, "failed", host, dict(err, step=step.name), time.monotonic() - started)
            entry.setdefault("status", OK)
            entry["seconds"] = round(time.monotonic() - step_started, 2)
            self._journal("step", key, step.name, entry)
        self._journal("update", key, status="done")
        if self.progress:
            self.progress.event(key, "done", end="done")
        return Outcome(key, "done", host, None, time.monotonic() - started)

    def _interrupted(self, job, step: Optional[str], seconds: float = 0.0, journal_step: bool = True,
                     late: bool = False) -> Outcome:
        """The device was stopped during `step` (None: before its first step): journaled so, and
        a re-run runs that step again (every step is idempotent). `late`: the runner marks a device
        whose thread did not come back in time (that thread's own mark is then dropped)."""
        err = describe(stopped())
        if step is None:
            outcome = Outcome(job.key, NOT_STARTED, job.host)
        else:
            outcome = Outcome(job.key, INTERRUPTED, job.host, dict(err, step=step), seconds)
        with self._lock:
            if self._closed and not late:
                return outcome   # (the runner has reported this device already)
            if step is not None and journal_step:
                self.journal.interrupted(job.key, step, **_err(err))
            elif step is not None:
                self.journal.update(job.key, status=INTERRUPTED, failedStep=step, **_err(err))
        if self.progress:
            self.progress.event(job.key, f"{step or 'not started'}: interrupted", end=INTERRUPTED)
        return outcome


def known_registration_id(job) -> Optional[str]:
    """The registration ID the inventory gives a device (None when it is derived from its EK): the
    journal then finds the device's record by it, wherever the device's address was before."""
    enroll = getattr(job, "enroll", None)
    return getattr(enroll, "registration_id", None) or getattr(job, "registration_id", None)


def _err(err: dict) -> dict:
    return {"error": err.get("error"), "recommendation": err.get("recommendation"), "errorKind": err.get("kind")}
