"""What a fleet run hands to the outside as its devices end: Azure Pipelines logging commands
(fleet/ci.py), the JUnit XML file (fleet/junit.py), the HTML report (fleet/report.py) and the
Markdown summary a pipeline shows on its run's page.

A `RunRecord` is fed each device's result as it ends (the same results the command prints); it
keeps one small row per device only when a JUnit file or a report was asked for (the CI output
and the summary need counts and the failed devices' lines alone).
"""
import os
import tempfile
import time
from dataclasses import dataclass
from typing import List, Optional

from azext_edgetpm.fleet import ci

# Failed devices listed in the Markdown summary (the rest are counted).
SUMMARY_LINES = 50


@dataclass
class Row:
    """One device of the run, as the reports show it."""
    name: str                 # host as written
    device_id: Optional[str]
    registration_id: Optional[str]
    status: str               # the command's success word | planned | failed | interrupted | notStarted
    failed: bool
    step: Optional[str]
    message: Optional[str]
    seconds: float
    start: float              # seconds after the run began
    end: float
    done_earlier: bool


def count_key(status: str, failed: bool) -> str:
    """Which of the run's counts a device's end adds to (ok: the command's success word or a plan)."""
    return status if status in ("failed", "interrupted", "notStarted") else ("failed" if failed else "ok")


def new_counts() -> dict:
    return {"devices": 0, "ok": 0, "failed": 0, "interrupted": 0, "notStarted": 0, "doneEarlier": 0}


class RunRecord:
    def __init__(self, command: str, total: int, ok_status: str, ci_format: Optional[str] = None,
                 junit_xml: Optional[str] = None, report: Optional[str] = None, summary_dir: Optional[str] = None,
                 stream=None):
        self.command, self.total, self.ok_status = command, total, ok_status
        self.junit_xml, self.report = junit_xml, report
        self.ci = ci.AzurePipelines(total, stream) if ci.detect(ci_format) == ci.AZURE_PIPELINES else None
        # The Markdown summary goes next to the JUnit file or report (published with them), else to
        # the agent's temp directory.
        beside = junit_xml or report
        self.summary_dir = summary_dir or (os.path.dirname(os.path.abspath(beside)) if beside else None) \
            or os.environ.get("AGENT_TEMPDIRECTORY") or tempfile.gettempdir()
        self.keep_rows = bool(junit_xml or report)
        self.rows: List[Row] = []
        self.began, self.began_wall = time.monotonic(), time.time()
        self.counts = new_counts()
        self.failed_lines: List[str] = []
        self.durations: List[float] = []

    def failed(self, result) -> bool:
        return result.status not in (self.ok_status, "planned")

    def add(self, result) -> None:
        now = time.monotonic() - self.began
        failed = self.failed(result)
        self.counts["devices"] += 1
        self.counts[count_key(result.status, failed)] += 1
        self.counts["doneEarlier"] += int(bool(result.skipped))
        if not result.skipped and result.status != "notStarted":
            self.durations.append(float(result.seconds or 0.0))
        if failed and result.status != "notStarted" and len(self.failed_lines) < SUMMARY_LINES:
            self.failed_lines.append(failed_line(result.host, getattr(result, "device_id", None), result.failed_step,
                                                 result.error or result.status))
        if self.ci:
            self.ci.device_ended(result, failed and result.status != "notStarted")
        if self.keep_rows:
            seconds = 0.0 if result.skipped else float(result.seconds or 0.0)
            self.rows.append(Row(result.host, getattr(result, "device_id", None), result.registration_id,
                                 result.status, failed, result.failed_step, result.error, seconds,
                                 max(0.0, now - seconds), now, bool(result.skipped)))

    def markdown(self, budget_text: Optional[str] = None) -> str:
        return markdown(f"az edge-tpm {self.command}", self.ok_status, self.counts, self.durations,
                        self.failed_lines, time.monotonic() - self.began, budget_text)

    def shown_counts(self) -> dict:
        return shown_counts(self.counts, self.ok_status)

    def finish(self, budget_text: Optional[str] = None) -> None:
        """Write the files asked for, and the CI's summary and task result."""
        if self.junit_xml:
            from azext_edgetpm.fleet import junit
            junit.write(self.junit_xml, self.command, self.rows, self.began_wall)
        if self.report:
            from azext_edgetpm.fleet import report
            report.write(self.report, self.command, self.rows, self.shown_counts(), self.began_wall,
                         budget_text, self.ok_status)
        if self.ci:
            os.makedirs(self.summary_dir, exist_ok=True)
            name = "-".join(w.strip("-") for w in self.command.split())
            path = os.path.join(self.summary_dir, f"edge-tpm-{name}-summary.md")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(self.markdown(budget_text))
            self.ci.summary(path)


    def partial_success(self, text: str) -> None:
        """The run's failures stayed within the failure budget: the CI task succeeds with issues."""
        if self.ci:
            self.ci.complete("SucceededWithIssues", text)


def failed_line(host: str, device_id: Optional[str], step: Optional[str], reason: str) -> str:
    """A failed device's line of the summary's table (the device as ci.device_name names it)."""
    who = f"{host} (device {device_id})" if device_id else host
    return f"| {_md(who)} | {_md(step or '')} | {_md(reason)} |"


def markdown(title: str, ok_status: str, counts: dict, durations: List[float], failed_lines: List[str],
             run_seconds: float, budget_text: Optional[str] = None) -> str:
    """The Markdown recap of a run (or of merged runs) for a pipeline's summary page: counts
    (as new_counts has them), durations, the failed devices (at most SUMMARY_LINES lines)."""
    c = counts
    lines = [f"## {title}", "",
             f"**{c['devices']} devices**: {c['ok']} {ok_status} "
             f"({c['doneEarlier']} done in an earlier run), {c['failed']} failed"
             + (f", {c['interrupted']} interrupted" if c["interrupted"] else "")
             + (f", {c['notStarted']} not started" if c["notStarted"] else "") + "."]
    if durations:
        ordered = sorted(durations)
        lines += ["", f"Durations per device: median {ordered[len(ordered) // 2]:.1f} s, "
                      f"longest {ordered[-1]:.1f} s; run {run_seconds:.0f} s."]
    if budget_text:
        lines += ["", budget_text]
    if failed_lines:
        lines += ["", "| Failed device | Step | Reason |", "|---|---|---|"] + list(failed_lines)
        if c["failed"] > len(failed_lines):
            lines.append(f"\n... and {c['failed'] - len(failed_lines)} more (see the command's results).")
    return "\n".join(lines) + "\n"


def shown_counts(counts: dict, ok_status: str) -> dict:
    """The counts as output shows them: "ok" named by the command's success word."""
    return {("ok" == k and ok_status) or k: v for k, v in counts.items()}


def _md(text) -> str:
    """A Markdown table cell: one line, no column breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")
