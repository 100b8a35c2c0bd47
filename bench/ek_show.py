"""What `az edge-tpm ek show` costs next to doing it by hand: the seed document's script run
over plain OpenSSH (`ssh root@device sh -s < script`) on the same simulated device, both
measured in this run. Needs root (it starts a dev-kit device).

    .venv/bin/python bench/ek_show.py [--runs N]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The seed document's script, reading an EK that exists (the keys are created before timing).
SEED_SCRIPT = """
tpm2_readpublic -Q -c 0x81010001 -o ek.pub 2> /dev/null
printf "Registration Id:\\n%s\\nEndorsement Key:\\n%s\\n" $(sha256sum -b ek.pub | cut -d' ' -f1) $(base64 -w0 ek.pub)
rm ek.pub
"""


def timed(fn, runs):
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    from devkit import azhome
    os.environ.update(azhome.prepare(tempfile.mkdtemp(prefix="bench-az-")), AZURE_CORE_ONLY_SHOW_ERRORS="true")
    from devkit.devices import Rig
    from azure.cli.core import get_default_cli

    rig = Rig(tempfile.mkdtemp(prefix="bench-rig-"))
    rig.up(["fresh"], services=[])
    try:
        dev = rig.devices[0]
        host = f"root@{dev.host}"
        ssh = dev.ssh_argv("root") + ["sh", "-s"]
        env_line = f"export TPM2TOOLS_TCTI='{dev.tcti}'\n"
        az_args = ["edge-tpm", "ek", "show", "--host", f"{host}:{dev.port}", "--ssh-key", dev.key(),
                   "--known-hosts", dev.known_hosts, "--tcti", dev.tcti, "-o", "none", "--only-show-errors"]

        def by_hand():
            subprocess.run(ssh, input=env_line + SEED_SCRIPT, capture_output=True, text=True, check=True)

        def product():
            if get_default_cli().invoke(az_args) != 0:
                raise RuntimeError("az edge-tpm ek show failed")

        product()  # creates the EK and SRK once, and warms imports
        hand = timed(by_hand, args.runs)
        ours = timed(product, args.runs)
        h, o = statistics.median(hand), statistics.median(ours)
        print(f"seed script over OpenSSH (baseline): median {h:7.1f} ms  (min {min(hand):.1f})")
        print(f"az edge-tpm ek show (in-process):    median {o:7.1f} ms  (min {min(ours):.1f})")
        print(f"ratio ek show/baseline: {o / h:.2f}   runs: {args.runs}")
    finally:
        rig.down()


if __name__ == "__main__":
    main()
