"""How much the extension adds to az's start: the time to import it and build its command
table and arguments, next to a bare azure-cli-core baseline (importing azure.cli.core and
creating a CLI object), both measured in the same run, each in fresh interpreters.

    .venv/bin/python bench/load_time.py [--runs N]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from devkit import loadprobe  # noqa: E402

# Fresh interpreters print milliseconds: the baseline starts azure-cli-core (import + CLI
# object + invocation); the extension's figure is its own load on top of that.
BASELINE = "import time; t0 = time.perf_counter()\n" + loadprobe.SETUP + "print((time.perf_counter() - t0) * 1000)\n"
EXTENSION = (loadprobe.SETUP + "import time; t0 = time.perf_counter()\n" + loadprobe.LOAD
             + "print((time.perf_counter() - t0) * 1000)\n")


def sample(code: str, runs: int) -> list:
    out = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out.append(float(proc.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    start = time.perf_counter()
    base = sample(BASELINE, args.runs)
    ext = sample(EXTENSION, args.runs)
    b, e = statistics.median(base), statistics.median(ext)
    print(f"azure-cli-core baseline (import + CLI + invocation): median {b:7.1f} ms  (min {min(base):.1f})")
    print(f"edge-tpm load (import + command table + args): median {e:7.1f} ms  (min {min(ext):.1f})")
    print(f"ratio extension/baseline: {e / b:.3f}   runs: {args.runs}   wall: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
