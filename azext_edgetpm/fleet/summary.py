"""What a fleet run tells its user (progress on stderr: fleet/progress.py): the per-device results as each
device ends, the failure report (which devices failed, at which step, why), the stop report
(what finished, what was interrupted, how to resume) and the exit code.

Exit codes of every fleet command (`provision`, `deprovision`, `reprovision`, `rekey`, `upgrade`):
  0    every device done (or done by an earlier run); or, with --max-fail-percentage, the
       failures stayed within it (fleet/budget.py)
  1    the run as a whole failed (e.g. the inventory, DPS credentials): az's code for an error
  2    the command line is wrong (az's usage error)
  4    some devices failed, the others finished (the results list all; like Ansible's
       "hosts failed"): EXIT_SOME_FAILED; also a spent --max-fail-percentage or a failed --canary
  130  stopped by SIGINT (Ctrl+C; Azure Pipelines' cancel), 143 stopped by SIGTERM: 128 + signal
(az itself uses 3 for a missing resource.)
"""
from typing import List, Optional

EXIT_SOME_FAILED = 4
# Per-device lines kept for the report at the end (the rest are counted, and in the results).
REPORT_LINES = 50


def result_of(outcome, record: dict, build):
    """A device's result as soon as it ends: `build(host, record, status, seconds)` (e.g.
    operations.provision.result_from_record), with the outcome's own error (a device that did
    not start, or the runner's interruption) over an earlier run's."""
    result = build(outcome.host or outcome.key, record, outcome.status, outcome.seconds)
    if outcome.error:
        result.error, result.recommendation = outcome.error.get("error"), outcome.error.get("recommendation")
        result.failed_step = outcome.error.get("step") or result.failed_step
    elif outcome.status == "notStarted":
        result.error, result.recommendation, result.failed_step = "Not started: the run was stopped first.", None, None
    return result


class Tally:
    """Counts and the report's lines, fed one result at a time (nothing else is kept)."""

    def __init__(self, ok_status: str = "assigned"):
        self.ok_status = ok_status
        self.devices = self.ok = self.done_earlier = 0
        self.failed = self.interrupted = self.not_started = 0
        self.failed_lines: List[str] = []
        self.interrupted_lines: List[str] = []

    def add(self, result) -> None:
        self.devices += 1
        where = f" at step {result.failed_step}" if result.failed_step else ""
        if result.status in (self.ok_status, "planned"):
            self.ok += 1
            self.done_earlier += int(bool(result.skipped))
        elif result.status == "interrupted":
            self.interrupted += 1
            if len(self.interrupted_lines) < REPORT_LINES:
                self.interrupted_lines.append(f"  {result.host}{where}")
        elif result.status == "notStarted":
            self.not_started += 1
        else:
            self.failed += 1
            if len(self.failed_lines) < REPORT_LINES:
                self.failed_lines.append(f"  {result.host}{where}: {result.error or result.status}")

    def counts(self) -> dict:
        return {"devices": self.devices, self.ok_status: self.ok, "failed": self.failed,
                "doneEarlier": self.done_earlier, "interrupted": self.interrupted, "notStarted": self.not_started}


def _more(lines: List[str], total: int) -> List[str]:
    return lines + ([f"  ... and {total - len(lines)} more (see the results)"] if total > len(lines) else [])


def failure_text(tally: Tally) -> str:
    not_started = [f"{tally.not_started} devices not started (the failure budget was spent)."] \
        if tally.not_started else []
    return "\n".join([f"{tally.failed} of {tally.devices} devices failed:"] + _more(tally.failed_lines, tally.failed)
                     + not_started)


def stop_text(tally: Tally, signal_name: str) -> str:
    lines = [f"Stopped by {signal_name}: {tally.ok + tally.failed} of {tally.devices} devices finished "
             f"({tally.ok} {tally.ok_status}, {tally.done_earlier} of them done earlier, {tally.failed} failed), "
             f"{tally.interrupted} interrupted, {tally.not_started} not started."]
    if tally.interrupted:
        lines += ["Interrupted (the step runs again on a re-run):"] + _more(tally.interrupted_lines, tally.interrupted)
    if tally.failed:
        lines += ["Failed:"] + _more(tally.failed_lines, tally.failed)
    return "\n".join(lines)


def resume_text(state: Optional[str], option_name: str = "--state") -> str:
    if state:
        return (f"Run the same command again with {option_name} {state}: finished devices are skipped, interrupted "
                "steps run again and the devices not started start.")
    return ("Run the same command again (every step checks first and changes only what differs); next time add "
            f"{option_name} FILE, so that a re-run skips the finished devices.")
