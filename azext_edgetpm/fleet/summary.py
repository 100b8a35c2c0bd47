"""What a fleet run tells its user: progress lines on stderr, the per-device results and the
failure report (which devices failed, at which step, why)."""
import sys
import time
from typing import List

from azext_edgetpm.operations.provision import result_from_record


def results(outcomes, journal) -> List:
    """ProvisionResults in inventory order (finished-earlier devices from their old record)."""
    out = []
    for outcome in outcomes:
        record = journal.record(outcome.key)
        host = outcome.context.job.host if outcome.context else outcome.key
        result = result_from_record(host, record, outcome.status, outcome.seconds)
        if outcome.error and not result.error:
            result.error, result.recommendation = outcome.error.get("error"), outcome.error.get("recommendation")
        out.append(result)
    return out


def counts(results_) -> dict:
    out = {"devices": len(results_), "assigned": 0, "failed": 0, "doneEarlier": 0}
    for r in results_:
        if r.status == "assigned":
            out["assigned"] += 1
            out["doneEarlier"] += int(r.skipped)
        else:
            out["failed"] += 1
    return out


def failure_text(results_) -> str:
    failed = [r for r in results_ if r.status != "assigned"]
    lines = [f"{len(failed)} of {len(results_)} devices failed:"]
    for r in failed:
        where = f" at step {r.failed_step}" if r.failed_step else ""
        lines.append(f"  {r.host}{where}: {r.error or r.status}")
    return "\n".join(lines)


class StderrReporter:
    """Plain progress lines for pipeline logs (a terminal gets az's progress bar instead)."""

    def __init__(self, stream=None, every: float = 10.0):
        self.stream = stream or sys.stderr
        self.every = every
        self._last = 0.0

    def __call__(self, progress, text):
        now = time.monotonic()
        ended = text.endswith(": done") or " failed: " in text or text.endswith("skipped")
        if ended or now - self._last >= self.every:
            self._last = now
            self.stream.write(f"[{progress.line()}] {text}\n")
            self.stream.flush()
