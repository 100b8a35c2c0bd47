"""What the extension adds to az's start, next to az's own start in the same run.

Each figure is a median over fresh interpreters (samples interleaved, so a busy machine weighs on
all figures alike), of the CPU time the interpreter spent (what the load costs, whatever else runs
on the machine) and of the wall time (CPU time and waiting for a core on a busy machine):
  az start      importing azure.cli.core and creating the CLI object and its invocation (baseline)
  table         importing the extension and building its command table
  one command   the table, then the arguments of `az edge-tpm provision` as az loads them when that
                command runs (or shows -h): the function's signature from custom_fleet.py, _params.py
  whole table   the table, then every command's arguments (az's path for docs and `az find`)
With bytecode cached, as in an installed extension (pip compiles it; a private cache directory,
filled by a first run, holds it here), and the extension compiled from source every time, as in
a checkout that cannot write __pycache__ (az's own modules keep their bytecode).

    .venv/bin/python bench/load_time.py [--runs N]
"""
import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from devkit import loadprobe  # noqa: E402

_CLOCK = "import time; t0, c0 = time.perf_counter(), time.process_time()\n"
_PRINT = "print((time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000)\n"
# The extension's modules compiled from source: no bytecode is found (a cache under os.devnull
# cannot exist) and none is written. Set after az's start, so az keeps its own bytecode.
_FROM_SOURCE = "import os, sys; sys.pycache_prefix = os.path.join(os.devnull, 'none'); sys.dont_write_bytecode = True\n"

FIGURES = {
    "az start": _CLOCK + loadprobe.SETUP + _PRINT,
    "table": loadprobe.SETUP + _CLOCK + loadprobe.TABLE + _PRINT,
    "one command": loadprobe.SETUP + _CLOCK + loadprobe.TABLE + loadprobe.arguments(loadprobe.COMMAND) + _PRINT,
    "whole table": loadprobe.SETUP + _CLOCK + loadprobe.TABLE + loadprobe.arguments(None) + _PRINT,
}
FROM_SOURCE = ("one command", "whole table")


def run(code: str, env: dict) -> tuple:
    """(wall ms, CPU ms) of one fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                          cwd=REPO)
    wall, cpu = proc.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    start = time.perf_counter()
    cache = tempfile.mkdtemp(prefix="edgetpm-bytecode-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPYCACHEPREFIX=cache, PYTHONPATH=os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")])))
    probes = dict(FIGURES)
    probes.update({f"{name}, from source": loadprobe.SETUP + _FROM_SOURCE + FIGURES[name].split(
        loadprobe.SETUP, 1)[1] for name in FROM_SOURCE})
    try:
        for code in probes.values():  # fills the bytecode cache (not counted)
            run(code, env)
        samples = {name: [] for name in probes}
        for _ in range(args.runs):
            for name, code in probes.items():
                samples[name].append(run(code, env))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    wall_base = statistics.median(w for w, _ in samples["az start"])
    cpu_base = statistics.median(c for _, c in samples["az start"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{datetime.date.today()}  {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end;"
          f"  Python {platform.python_version()}, runs {args.runs}")
    print(f"{'medians (ratio to az start)':28} {'CPU ms':>7} {'ratio':>6} {'min CPU':>8} {'wall ms':>8} {'ratio':>6}")
    for name, values in samples.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{name:28} {cpu:7.1f} {cpu / cpu_base:6.3f} {min(c for _, c in values):8.1f} {wall:8.1f} "
              f"{wall / wall_base:6.3f}")
    print(f"(one command: `az {loadprobe.COMMAND}`; wall {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
