"""--report FILE: a fleet run as one self-contained HTML page (inline CSS, inline script, an
inline SVG chart; nothing fetched from the network), to keep as a pipeline artifact or open from
a terminal run.

The page also carries the run as data, for programs (`az edge-tpm report merge` reads it back):
a JSON island, `<script type="application/json" id="run">`, holding the object

    {"format": "az-edge-tpm-report", "version": 1, "command": "provision", "okStatus": "assigned",
     "started": 1796650000.0, "startedUtc": "2026-12-07T14:10:00Z", "counts": {...},
     "rows": [{"name", "device_id", "registration_id", "status", "failed", "step", "message",
               "seconds", "start", "end", "done_earlier"}, ...], "merged": [...]}

`started` is the run's start (seconds since the epoch, wall clock); each row's `start` and `end`
are seconds after it; the rows are fleet/observe.Row's fields. `merged` is only in a merged report:
the reports it was made from (file, command, started), its rows on the clock of the earliest.

The page has the counts, a table of the devices (sortable by any column, status and duration
included), each failure's step and message, and a timeline: a stacked chart of how many devices
were waiting, running, done and failed over the run's time.
"""
import dataclasses
import html
import json
import os
import time

STATES = (("waiting", "#c9ced6"), ("running", "#2f7ed8"), ("done", "#3aa55d"), ("failed", "#d9534f"))
WIDTH, HEIGHT, SAMPLES = 720, 220, 120

_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 8px}
.counts span{display:inline-block;margin-right:18px;font-weight:600}
table{border-collapse:collapse;margin-top:12px;width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{cursor:pointer;background:#f3f4f6;user-select:none}
th:after{content:" \\2195";color:#999}
tr.failed td{background:#fdecea}
.legend span{margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
"""

_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var body = th.closest('table').tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var asc = th.getAttribute('data-dir') !== 'asc';
    th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    var numeric = th.getAttribute('data-type') === 'number';
    rows.sort(function(a, b){
      var x = a.cells[col].getAttribute('data-value'), y = b.cells[col].getAttribute('data-value');
      var r = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? r : -r;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def timeline(rows, samples: int = SAMPLES):
    """(times, {state: [count at each time]}) over the run: a device waits until it starts, runs
    until it ends, then is done or failed (devices done in an earlier run count as done from 0)."""
    span = max((r.end for r in rows), default=0.0) or 1.0
    times = [span * i / (samples - 1) for i in range(samples)]
    series = {name: [] for name, _ in STATES}
    for t in times:
        counts = dict.fromkeys(series, 0)
        for r in rows:
            if r.done_earlier:
                counts["done"] += 1
            elif r.status == "notStarted" or t < r.start:
                counts["waiting"] += 1
            elif t < r.end:
                counts["running"] += 1
            else:
                counts["failed" if r.failed else "done"] += 1
        for name in series:
            series[name].append(counts[name])
    return times, series


def chart_svg(rows) -> str:
    times, series = timeline(rows)
    total = max(1, len(rows))
    span = times[-1] or 1.0
    left, bottom, plot_w, plot_h = 40, HEIGHT - 24, WIDTH - 50, HEIGHT - 34
    x = [left + plot_w * t / span for t in times]
    base = [0] * len(times)
    shapes = []
    for name, colour in STATES:
        top = [b + v for b, v in zip(base, series[name])]
        upper = " ".join(f"{xi:.1f},{bottom - plot_h * v / total:.1f}" for xi, v in zip(x, top))
        lower = " ".join(f"{xi:.1f},{bottom - plot_h * v / total:.1f}" for xi, v in reversed(list(zip(x, base))))
        shapes.append(f'<polygon class="state-{name}" fill="{colour}" points="{upper} {lower}"/>')
        base = top
    axes = (f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#444"/>'
            f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{bottom - plot_h}" stroke="#444"/>'
            f'<text x="{left - 6}" y="{bottom - plot_h + 4}" text-anchor="end" font-size="11">{total}</text>'
            f'<text x="{left - 6}" y="{bottom}" text-anchor="end" font-size="11">0</text>'
            f'<text x="{left + plot_w}" y="{HEIGHT - 8}" text-anchor="end" font-size="11">{span:.0f} s</text>'
            f'<text x="{left}" y="{HEIGHT - 8}" font-size="11">0 s</text>')
    return (f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="devices per state over time">'
            + "".join(shapes) + axes + "</svg>")


def _cell(text, value=None) -> str:
    value = text if value is None else value
    return f'<td data-value="{html.escape(str(value), quote=True)}">{html.escape(str(text))}</td>'


FORMAT, VERSION = "az-edge-tpm-report", 1


def utc(wall: float) -> str:
    """A wall-clock time as the run data writes it: 2026-12-07T14:10:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


def island(command: str, ok_status: str, rows, counts: dict, began_wall: float, merged=None) -> dict:
    """The run as data (the module's docstring says what each key holds)."""
    data = {"format": FORMAT, "version": VERSION, "command": command, "okStatus": ok_status,
            "started": began_wall, "startedUtc": utc(began_wall),
            "counts": counts, "rows": [dataclasses.asdict(r) for r in rows]}
    if merged is not None:
        data["merged"] = merged
    return data


def render(command: str, rows, counts: dict, began_wall: float, budget_text=None, ok_status: str = "ok",
           merged=None) -> str:
    """The page; `merged` (the reports a merged report was made from) adds a line naming them."""
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(began_wall))
    count_line = "".join(f"<span>{html.escape(str(k))}: {v}</span>" for k, v in counts.items())
    body = []
    for r in rows:
        device = r.device_id or (r.registration_id[:12] if r.registration_id else "")
        body.append(f'<tr class="{"failed" if r.failed else "ok"}">' + _cell(r.name) + _cell(device)
                    + _cell(r.status) + _cell(f"{r.seconds:.1f}", f"{r.seconds:.3f}") + _cell(r.step or "")
                    + _cell(r.message or "") + "</tr>")
    legend = "".join(f'<span><i style="background:{c}"></i>{n}</span>' for n, c in STATES)
    # (every "<" escaped: no tag, nor "<!--", can end or change the script element)
    data = json.dumps(island(command, ok_status, rows, counts, began_wall, merged)).replace("<", "\\u003c")
    note = budget_text
    if merged:
        note = (f"Merged from {len(merged)} reports: "
                + ", ".join(f"{m['file']} (started {m['startedUtc']})" for m in merged) + "."
                + (f" {budget_text}" if budget_text else ""))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>az edge-tpm {html.escape(command)}: report</title><style>{_CSS}</style></head><body>"
            f"<h1>az edge-tpm {html.escape(command)}</h1><p>Started {started}.</p>"
            f'<div class="counts" id="counts">{count_line}</div>'
            + (f'<p id="note">{html.escape(note)}</p>' if note else "")
            + f'<h2>Timeline</h2><div class="legend">{legend}</div>{chart_svg(rows)}'
            '<h2>Devices</h2><table class="sortable" id="devices"><thead><tr>'
            '<th data-type="text">Host</th><th data-type="text">Device</th><th data-type="text">Status</th>'
            '<th data-type="number">Seconds</th><th data-type="text">Failed step</th>'
            '<th data-type="text">Message</th></tr></thead><tbody>' + "".join(body) + "</tbody></table>"
            f'<script type="application/json" id="run">{data}</script><script>{_SCRIPT}</script></body></html>\n')


def write(path: str, command: str, rows, counts: dict, began_wall: float, budget_text=None,
          ok_status: str = "ok", merged=None) -> None:
    """The page, written whole or not at all (a partial file renamed into place)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(render(command, rows, counts, began_wall, budget_text, ok_status, merged))
    os.replace(partial, path)
