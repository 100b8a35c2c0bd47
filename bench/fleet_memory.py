"""Peak memory of the fleet runner and its result stream against the fleet's size, with
synthetic devices (no SSH, no DPS): each device's pipeline holds ~100 KB of working data while it
runs (as an install's reports do), and its result is made as it ends, as `provision` does.

Each size runs in a fresh interpreter; the figures are the peak RSS, and the growth per device
against the smallest size of the same run (what one finished device still costs: its small
result and its journal record). The journal is kept in memory here (no --state file).

    .venv/bin/python bench/fleet_memory.py [--sizes 1000 10000 100000] [--parallel 20]
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r'''
import resource, sys
from dataclasses import dataclass
sys.path.insert(0, sys.argv[3])
from azext_edgetpm.fleet import summary
from azext_edgetpm.fleet.runner import Runner
from azext_edgetpm.fleet.state import Journal
from azext_edgetpm.operations.pipeline import Step
from azext_edgetpm.operations.provision import result_from_record

@dataclass(frozen=True)
class Job:
    key: str
    host: str

class Work(Step):
    def __init__(self, name):
        self.name = name
    def run(self, ctx):
        ctx.data[self.name] = bytearray(100_000 // 5)      # working data, dropped with the device
        return {"status": "ok", "detail": self.name + " done", "registrationId": ctx.key.replace(":", "-")}

count, parallel = int(sys.argv[1]), int(sys.argv[2])
steps = [Work(n) for n in ("identify", "enroll", "install", "wait", "status")]
journal = Journal(None)
runner = Runner(steps, None, journal, max_parallel=parallel)
outputs, tally = [None] * count, summary.Tally()
jobs = (Job(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:22", f"root@10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        for i in range(count))
for index, outcome in runner.stream(jobs):
    result = summary.result_of(outcome, journal.record(outcome.key), result_from_record)
    tally.add(result)
    outputs[index] = result.to_output()
assert tally.ok == count, tally.counts()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
'''


def peak_kib(count: int, parallel: int) -> int:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(count), str(parallel), ROOT], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--parallel", type=int, default=20)
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    figures = [(n, peak_kib(n, args.parallel)) for n in sizes]
    base_n, base_kib = figures[0]
    print(f"{'devices':>9} {'peak RSS':>10} {'per device beyond ' + str(base_n):>26}")
    for n, kib in figures:
        extra = f"{(kib - base_kib) * 1024 / (n - base_n):,.0f} bytes" if n > base_n else "(baseline)"
        print(f"{n:>9,} {kib / 1024:>8.1f} MB {extra:>26}")
    print(f"(working data per running device ~100 KB, {args.parallel} at a time; journal in memory)")


if __name__ == "__main__":
    main()
