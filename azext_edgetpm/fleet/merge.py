"""`az edge-tpm report merge`: the HTML reports of a run's parallel shards (fleet/report.py, each
with its run data island) as ONE report: every device once, the counts summed, one timeline on a
common clock (each report's rows moved by its run's start after the earliest one's).

A device in two reports (a shard run again) keeps the row of the later run, and the result names
it. Each input is read bounded (files.py); a file that is not one of our reports, one written by
another version, a merged report, or one of another command ends in one LocalFileError or
UsageError naming the file.
"""
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import List, Optional

from azext_edgetpm.errors import LocalFileError, UsageError, option
from azext_edgetpm.files import LIMITS, name, read_text_bounded
from azext_edgetpm.fleet import observe, report

ISLAND = '<script type="application/json" id="run">'
HINT = ("Give the HTML files that az edge-tpm fleet commands wrote with --report (version 0.3.0 or later), "
        "e.g. each pipeline shard's report.html.")
_TEXT = (str, type(None))
_FIELDS = {"name": (str,), "device_id": _TEXT, "registration_id": _TEXT, "status": (str,), "failed": (bool,),
           "step": _TEXT, "message": _TEXT, "seconds": (int, float), "start": (int, float), "end": (int, float),
           "done_earlier": (bool,)}


@dataclass
class ShardReport:
    """One input: its run's command, start (wall clock) and rows (times after that start)."""
    path: str
    command: str
    ok_status: str
    started: float
    rows: List[observe.Row]


@dataclass
class Replaced:
    """A device in two reports: the row of the later run is kept."""
    device: str
    kept: str
    dropped: str


@dataclass
class MergeResult:
    report: str
    command: str
    started: float
    inputs: List[str]
    counts: dict
    replaced: List[Replaced]
    summary: Optional[str] = None

    def to_output(self) -> dict:
        """The merged counts at the top (devices, the command's success word, failed, ...), with the
        report (and summary) written, its inputs and the devices whose later run replaced an earlier one."""
        return {"report": self.report, **({"summary": self.summary} if self.summary else {}),
                "command": self.command, "started": report.utc(self.started), **self.counts,
                "inputs": list(self.inputs), "replaced": [dataclasses.asdict(r) for r in self.replaced]}


def _not_ours(path: str, why: str) -> LocalFileError:
    return LocalFileError(f"{name(path)} is not a report of az edge-tpm that can be merged: {why}.", HINT,
                          "inputs")


def read(path: str) -> ShardReport:
    """The run data of one report (bounded read; one clear error for anything else)."""
    text = read_text_bounded(path, LIMITS["report"], "The report", field="inputs", hint=HINT)
    start = text.find(ISLAND)
    end = text.find("</script>", start) if start >= 0 else -1
    if start < 0 or end < 0:
        raise _not_ours(path, "it holds no run data (the page's <script id=\"run\"> island)")
    try:
        data = json.loads(text[start + len(ISLAND):end])
    except (ValueError, RecursionError) as exc:   # (RecursionError: nested beyond what the parser takes)
        raise _not_ours(path, f"its run data is not JSON ({str(exc)[:200]})") from exc
    if not isinstance(data, dict) or data.get("format") != report.FORMAT:
        raise _not_ours(path, "its run data is not az edge-tpm's (written by a version before 0.3.0, or by "
                              "something else)")
    if data.get("version") != report.VERSION:
        raise _not_ours(path, f"its run data has version {str(data.get('version'))[:20]!r}; this az edge-tpm "
                              f"reads version {report.VERSION} (update the extension)")
    if "merged" in data:
        count = len(data["merged"]) if isinstance(data["merged"], list) else "several"
        raise UsageError(f"{name(path)} is itself a merged report (of {count} reports).",
                         "Give the reports it was made from instead (each shard's own report).", "inputs")
    for key, kinds in (("command", (str,)), ("okStatus", (str,)), ("started", (int, float)), ("rows", (list,))):
        value = data.get(key)
        if (not isinstance(value, kinds) or isinstance(value, bool)
                or (isinstance(value, float) and not math.isfinite(value))):
            raise _not_ours(path, f"its run data has no valid {key!r}")
    return ShardReport(path, data["command"], data["okStatus"], float(data["started"]),
                       [_row(path, i, r) for i, r in enumerate(data["rows"], 1)])


def _row(path: str, number: int, row) -> observe.Row:
    if not isinstance(row, dict) or set(row) != set(_FIELDS):
        raise _not_ours(path, f"row {number:,} of its run data does not have the fields of a device row")
    for key, kinds in _FIELDS.items():
        value = row[key]
        if (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
                or (isinstance(value, float) and not math.isfinite(value))):
            raise _not_ours(path, f"row {number:,} of its run data has a wrong {key!r}")
    return observe.Row(**row)


def merge(paths: List[str], out: str, summary: Optional[str] = None) -> MergeResult:
    """Read every report, keep each device's row of the latest run, write the merged report (and,
    with `summary`, its Markdown recap as fleet commands write theirs for a pipeline's summary page)."""
    seen, unique = set(), []
    for path in paths:   # (a file given twice, e.g. by a glob and by name, counts once)
        key = os.path.realpath(os.path.expanduser(path))
        if key not in seen:
            seen.add(key)
            unique.append(path)
    for dest, target in (("report_file", out), ("summary_file", summary)):
        if target and os.path.realpath(os.path.expanduser(target)) in seen:
            raise UsageError(f"{name(target)} is both an input and a file to write; writing it would replace "
                             "that input.", f"Give {option(dest)} another file name.", dest)
    shards = [read(path) for path in unique]
    first = shards[0]
    for shard in shards[1:]:
        if shard.command != first.command:
            raise UsageError(f"{name(shard.path)} is a report of `{shard.command}`, {name(first.path)} one of "
                             f"`{first.command}`: a merged report holds the runs of one command.",
                             "Merge the reports of one command at a time.", "inputs")
    began = min(s.started for s in shards)
    kept, replaced = {}, []
    # (oldest run first: a later run's row replaces an earlier one's, in its place in the table)
    for shard in sorted(shards, key=lambda s: s.started):
        offset = shard.started - began
        for row in shard.rows:
            if row.name in kept:
                replaced.append(Replaced(row.name, shard.path, kept[row.name][1]))
            kept[row.name] = (dataclasses.replace(row, start=row.start + offset, end=row.end + offset), shard.path)
    rows = [row for row, _ in kept.values()]
    counts = observe.new_counts()
    for row in rows:
        counts["devices"] += 1
        counts[observe.count_key(row.status, row.failed)] += 1
        counts["doneEarlier"] += int(row.done_earlier)
    shown = observe.shown_counts(counts, first.ok_status)
    merged = [{"file": s.path, "command": s.command, "started": s.started, "startedUtc": report.utc(s.started),
               "devices": len(s.rows)} for s in shards]
    _write(out, "report_file", lambda: report.write(out, first.command, rows, shown, began,
                                                    ok_status=first.ok_status, merged=merged))
    if summary:
        text = _markdown(first, len(shards), rows, counts)
        _write(summary, "summary_file", lambda: _write_text(summary, text))
    return MergeResult(out, first.command, began, [s.path for s in shards], shown, replaced, summary)


def _markdown(first: ShardReport, reports: int, rows: List[observe.Row], counts: dict) -> str:
    ran = [r for r in rows if not r.done_earlier and r.status != "notStarted"]
    failed = [observe.failed_line(r.name, r.device_id, r.step, r.message or r.status)
              for r in rows if r.failed and r.status != "notStarted"][:observe.SUMMARY_LINES]
    return observe.markdown(f"az edge-tpm {first.command} ({reports} reports merged)", first.ok_status, counts,
                            [r.seconds for r in ran], failed, max((r.end for r in rows), default=0.0))


def _write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".partial", "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(path + ".partial", path)


def _write(path: str, dest: str, write) -> None:
    try:
        write()
    except OSError as exc:
        raise LocalFileError(f"Cannot write {name(path)}: {exc.strerror or exc}.",
                             "Give a file in a folder you can write to.", dest) from exc
