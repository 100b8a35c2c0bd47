"""What `az edge-tpm upgrade` costs next to `install` on the same dev-kit device, in the same run:

1. provision --edge-version 1.5.10 (enrollment + install of 1.5.10 + wait + status: a first install)
2. install again with the same settings (a second install run: nothing to change)
3. upgrade (1.5.10 -> the newest LTS line, 1.6.0 in the kit: packages, agent image, apply, verify)
4. upgrade again (a second run: the device is on the target, nothing to change)

Printed: wall seconds and our side's CPU seconds (the az process tree) of each, and the ratios
upgrade/provision (first runs) and upgrade/install (second runs). The machine is shared: wall
times include whatever else runs; CPU seconds are less sensitive to it.

Needs root (dev-kit devices). `--variant rhel9` measures a Red Hat Enterprise Linux device (dnf and
rpm) instead of Debian 12; several (`--variant fresh --variant rhel9`) are measured in the same run.

    .venv/bin/python bench/upgrade.py [--repeat 1] [--variant fresh|rhel9 ...]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
AZ = [sys.executable, "-m", "azure.cli"]


def timed(argv, env, cwd):
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[3:5])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return wall, json.loads(proc.stdout) if proc.stdout.strip() else None


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(argv, env, cwd):
    before = children_cpu()
    wall, out = timed(argv, env, cwd)
    return {"wall": wall, "cpu": children_cpu() - before, "out": out}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=1, help="devices measured one after the other")
    parser.add_argument("--variant", action="append", help="dev-kit device variant(s) (default: fresh, Debian 12)")
    args = parser.parse_args()
    variants = args.variant or ["fresh"]
    from devkit import azhome
    from devkit.devices import Rig
    workdir = tempfile.mkdtemp(prefix="bench-upgrade-")
    env = dict(os.environ, **azhome.prepare(os.path.join(workdir, "az")))
    rig = Rig(os.path.join(workdir, "rig"))
    rig.up([], services=["dps", "packages"])
    rows = []
    try:
        with open(rig.json_path, encoding="utf-8") as handle:
            kit = json.load(handle)
        dps, packages = kit["dps"], kit["packages"]
        env.update(REQUESTS_CA_BUNDLE=dps["ca_bundle"], AZURE_CORE_ONLY_SHOW_ERRORS="true")
        cs_file = os.path.join(workdir, "dps-connection-string")
        fd = os.open(cs_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(dps["connection_string"])
        for variant in [v for _ in range(args.repeat) for v in variants]:
            dev = rig.add_devices([variant], timeout=300)[0]
            ssh = ["--host", f"root@{dev.host}:{dev.port}", "--ssh-key", dev.key("root"),
                   "--known-hosts", rig.known_hosts]
            install_args = ["--tcti", dev.tcti, "--id-scope", dps["id_scope"], "--global-endpoint",
                            dps["device_endpoint"], "--package-source", packages["base_url"],
                            "--edge-version", "1.5.10"]
            row = {"variant": variant}
            row["provision"] = run_one(AZ + ["edge-tpm", "provision", *ssh, "--login", "@" + cs_file, *install_args,
                                             "-o", "json"], env, workdir)
            row["install2"] = run_one(AZ + ["edge-tpm", "install", *ssh, *install_args, "-o", "json"], env, workdir)
            row["upgrade"] = run_one(AZ + ["edge-tpm", "upgrade", *ssh, "-o", "json"], env, workdir)
            row["upgrade2"] = run_one(AZ + ["edge-tpm", "upgrade", *ssh, "-o", "json"], env, workdir)
            assert row["upgrade"]["out"]["status"] == "upgraded" and row["upgrade2"]["out"]["changes"] == []
            row["versions"] = (row["upgrade"]["out"]["current"]["aziot-edge"],
                               row["upgrade"]["out"]["installed"]["aziot-edge"])
            rows.append(row)
            rig.remove_device(dev)
    finally:
        rig.down()
    print(f"== one dev-kit device per round, {len(rows)} round(s); load average {os.getloadavg()[0]:.1f}")
    for i, row in enumerate(rows):
        print(f"round {i + 1} ({row['variant']}): aziot-edge {row['versions'][0]} -> {row['versions'][1]}")
        for name, label in (("provision", "provision --edge-version 1.5.10 (first install)"),
                            ("install2", "install again (second run, nothing to change)"),
                            ("upgrade", "upgrade to the newest LTS (first run)"),
                            ("upgrade2", "upgrade again (second run, nothing to change)")):
            print(f"  {label:52s} {row[name]['wall']:6.1f} s wall  {row[name]['cpu']:5.2f} s CPU (az side)")
        print(f"  ratio upgrade/provision (first runs): {row['upgrade']['wall'] / row['provision']['wall']:.2f} wall, "
              f"{row['upgrade']['cpu'] / row['provision']['cpu']:.2f} CPU")
        print(f"  ratio upgrade/install (second runs):  {row['upgrade2']['wall'] / row['install2']['wall']:.2f} wall, "
              f"{row['upgrade2']['cpu'] / row['install2']['cpu']:.2f} CPU")


if __name__ == "__main__":
    main()
