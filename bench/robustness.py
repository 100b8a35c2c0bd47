"""The robustness suite's figures: runs its tests (on the dev kit, as root) and prints what they
did and found.

    .venv/bin/python bench/robustness.py          # the whole suite (a few minutes)
    .venv/bin/python bench/robustness.py -k inputs

Figures: faults injected (SSH sessions cut at every install step, power cuts, DPS 429/503 and a
DPS restart), runs resumed after a fault, devices assigned at the end, duplicate device
registrations (must be 0), hostile inputs tried (hypothesis examples, hostile values, fake
tools), escapes (a canary that ran: must be 0), tracebacks (must be 0), secret hits in a full
--debug run (must be 0). The tests add to the figures through EDGETPM_ROBUSTNESS_FIGURES.
Exit status: non-zero when a test failed or a must-be-zero figure is not zero.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = ("azext_edgetpm/tests/latest/test_robust_faults.py", "azext_edgetpm/tests/latest/test_robust_devices.py",
         "azext_edgetpm/tests/latest/test_robust_inputs.py", "azext_edgetpm/tests/latest/test_untrusted_inputs.py")
FIGURES = OrderedDict((
    ("faults injected", None), ("runs resumed", None), ("devices assigned", None), ("duplicates", 0),
    ("hostile inputs tried", None), ("escapes", 0), ("tracebacks", 0), ("secret hits", 0),
))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("-k", default=None, help="pytest -k expression (a part of the suite)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgetpm-robustness-") as tmp:
        figures_file = os.path.join(tmp, "figures.jsonl")
        env = dict(os.environ, EDGETPM_ROBUSTNESS_FIGURES=figures_file)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITE]
        if args.k:
            cmd += ["-k", args.k]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - started
        totals = OrderedDict((name, 0) for name in FIGURES)
        if os.path.exists(figures_file):
            with open(figures_file, encoding="utf-8") as handle:
                for line in handle:
                    entry = json.loads(line)
                    totals[entry["name"]] = totals.get(entry["name"], 0) + entry["value"]
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(no pytest output)"
    print(f"robustness suite: {summary} ({elapsed:.0f} s)")
    bad = []
    for name, value in totals.items():
        must = FIGURES.get(name)
        flag = "" if must is None or value == must else f"   <-- must be {must}"
        if flag:
            bad.append(name)
        print(f"  {name:<22} {value:>7}{flag}")
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-2000:])
    return 1 if proc.returncode != 0 or bad else 0


if __name__ == "__main__":
    sys.exit(main())
