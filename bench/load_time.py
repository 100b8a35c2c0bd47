"""How much the extension adds to az's start: the time to import it and build its command
table and arguments, next to a bare azure-cli-core baseline (importing azure.cli.core and
creating a CLI object), both measured in the same run, each in fresh interpreters.

    .venv/bin/python bench/load_time.py [--runs N]
"""
import argparse
import statistics
import subprocess
import sys
import time

BASELINE = r"""
import time; t0 = time.perf_counter()
from azure.cli.core.mock import DummyCli
cli = DummyCli()
print((time.perf_counter() - t0) * 1000)
"""

EXTENSION = r"""
import time
from azure.cli.core.mock import DummyCli
cli = DummyCli()
t0 = time.perf_counter()
from azext_edgetpm import EdgeTpmCommandsLoader
cli.invocation = cli.invocation_cls(cli_ctx=cli, parser_cls=cli.parser_cls,
                                    commands_loader_cls=cli.commands_loader_cls, help_cls=cli.help_cls)
loader = EdgeTpmCommandsLoader(cli_ctx=cli)
table = loader.load_command_table(None)
for name in table:
    cli.invocation.data = {"command_string": name}
    loader.command_name = name
    loader.load_arguments(name)
    loader.argument_registry  # arguments resolved for every command
print((time.perf_counter() - t0) * 1000)
"""


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
    print(f"azure-cli-core baseline (import + CLI object): median {b:7.1f} ms  (min {min(base):.1f})")
    print(f"edge-tpm load (import + command table + args): median {e:7.1f} ms  (min {min(ext):.1f})")
    print(f"ratio extension/baseline: {e / b:.3f}   runs: {args.runs}   wall: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
