"""What `az edge-tpm provision --inventory` costs as the fleet grows: 100 and 1,000 hollow devices
(devkit/hollow) in one run, and the parts that grow with the fleet alone, on synthetic entries.

For each fleet size, one `provision --inventory` over that many fresh hollow devices:
- wall; our process's CPU-s per device (rusage of the az process); its peak RSS;
- journal bytes written per device (every write into the --state file or its temporary files,
  counted inside the az process by a probe that wraps the file calls);
- SSH connections (counted at the devices: the hollow supervisors accept every one) per device;
- known_hosts CPU per connection (the probe times the product's known_hosts module and
  paramiko's host key table, per thread);
- DPS service calls per enrollment and 429s (the emulator's counters), registrations assigned
  (the emulator's own records).
Then the ratio of CPU-s per device at the largest size to the smallest (goal <= 1.2, i.e. linear),
against the goals: <= 0.10 CPU-s per device, peak RSS < 400 MB, journal < 8 KB per device, all
assigned.

The synthetic part (no devices, no root) times with the product's modules, at 10,000 and 100,000
entries (devices: three host key lines each in known_hosts, as ssh-keyscan writes them; one Host
block each in an ssh_config; one record each in the --state journal):
- known_hosts: what one SSH connection does with the file (the session's host key set-up and
  paramiko's lookup), CPU-s per connection;
- ssh_config: resolving one device's target, CPU-s per device;
- journal: opening the journal of N devices, then the events of a few more devices (five step
  ends and two updates each, as provision writes them): CPU-s and bytes written per device.
Each measurement runs in a child process limited in CPU time: a part that grows with the fleet
prints how far it got instead of running for hours.

Needs root for the fleet runs (hollow devices). The machine is shared: figures are upper bounds.

    .venv/bin/python bench/scale.py [--sizes 100,1000] [--synthetic 10000,100000] [--max-parallel 32]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scale_probe.py")
from bench.fleet import admin, machine_cpu  # noqa: E402  (the 20-device benchmark's emulator helpers)
from bench.scale_synthetic import synthetic  # noqa: E402


# --------------------------------------------------------------------------- fleet runs


def emulator_registrations(dps_dir):
    """The emulator's registration records (its state file, written within a second)."""
    path = os.path.join(dps_dir, "state.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return {r["registrationId"]: r for r in json.load(handle).get("registrations", [])}
    except (OSError, ValueError):
        return {}


def supervisors_cpu(devices):
    """CPU-s of the hollow devices (their supervisors and every process they reaped)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in {d.pid for d in devices}:
        try:
            with open("/proc/%d/stat" % pid, encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])
        except OSError:
            pass
    return total / tick


class Fleet:
    def __init__(self, args):
        from devkit import azhome
        from devkit.devices import Rig
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="bench-scale-")
        self.env = dict(os.environ, **azhome.prepare(os.path.join(self.dir, "az")))
        self.rig = Rig(os.path.join(self.dir, "rig"))

    def run(self, sizes):
        from devkit import hollow
        print("\n== rig: DPS emulator + package repository; hollow devices; max parallel %d; workdir %s"
              % (self.args.max_parallel, self.dir), flush=True)
        self.rig.up([], services=["dps", "packages"])
        rows = []
        try:
            with open(self.rig.json_path, encoding="utf-8") as handle:
                kit = json.load(handle)
            self.dps, self.packages = kit["dps"], kit["packages"]
            self.env.update(REQUESTS_CA_BUNDLE=self.dps["ca_bundle"], AZURE_CORE_ONLY_SHOW_ERRORS="true")
            self.cs_file = os.path.join(self.dir, "dps-connection-string")
            fd = os.open(self.cs_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.dps["connection_string"])
            for n in sizes:
                started = time.monotonic()
                devices = self.rig.add_hollow(n, timeout=max(120, n))
                print("  %d hollow devices up in %.1f s" % (n, time.monotonic() - started), flush=True)
                rows.append(self.provision(devices, hollow))
        finally:
            self.rig.down()
        return rows

    def provision(self, devices, hollow):
        import csv
        n = len(devices)
        name = "fleet-%d" % n
        inventory = os.path.join(self.dir, name + ".csv")
        with open(inventory, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["host", "ssh_key", "tcti"])
            for dev in devices:
                writer.writerow(["root@%s:%d" % (dev.host, dev.port), dev.key("root"), dev.tcti])
        state = os.path.join(self.dir, name + "-state.json")
        probe_out = os.path.join(self.dir, name + "-probe.json")
        argv = [sys.executable, PROBE, probe_out, state, "--",
                "edge-tpm", "provision", "--inventory", inventory, "--login", "@" + self.cs_file,
                "--id-scope", self.dps["id_scope"], "--global-endpoint", self.dps["device_endpoint"],
                "--package-source", self.packages["apt_line"], "--known-hosts", self.rig.known_hosts,
                "--max-parallel", str(self.args.max_parallel), "--state", state, "-o", "json", "--only-show-errors"]
        names = {d.name for d in devices}
        ssh_before = sum(v for k, v in hollow.stats(self.rig)["ssh"].items() if k in names)
        counters_before = admin(self.dps, "/counters")
        regs_before = emulator_registrations(os.path.join(self.rig.dir, "dps"))
        dev_cpu_before, machine_before = supervisors_cpu(devices), machine_cpu()
        started = time.monotonic()
        with open(os.path.join(self.dir, name + ".json"), "w", encoding="utf-8") as out, \
                open(os.path.join(self.dir, name + ".err"), "w", encoding="utf-8") as err:
            proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=err, cwd=self.dir)
            _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        time.sleep(1.5)  # the emulator writes its records within SAVE_DELAY_S
        counters_after = admin(self.dps, "/counters")
        regs_after = emulator_registrations(os.path.join(self.rig.dir, "dps"))
        ssh_after = sum(v for k, v in hollow.stats(self.rig)["ssh"].items() if k in names)
        dev_cpu, machine_after = supervisors_cpu(devices) - dev_cpu_before, machine_cpu()
        try:
            with open(probe_out, encoding="utf-8") as handle:
                probe = json.load(handle)
        except FileNotFoundError:  # az was killed: no figures from inside it
            probe = {"journal_bytes": float("nan"), "known_hosts_cpu": float("nan")}
        with open(os.path.join(self.dir, name + ".json"), encoding="utf-8") as handle:
            text = handle.read()
        results = json.loads(text) if text.strip() else []
        ids = {r.get("registrationId") for r in results if r.get("registrationId")}
        new_assigned = sum(1 for rid, r in regs_after.items()
                           if r.get("status") == "assigned" and rid in ids
                           and r.get("lastUpdatedDateTimeUtc") != regs_before.get(rid, {}).get("lastUpdatedDateTimeUtc"))
        delta = lambda key: counters_after.get(key, 0) - counters_before.get(key, 0)  # noqa: E731
        throttled = sum(delta(k) for k in counters_after if k.endswith(".throttled") and k.count(".") == 1)
        ssh = ssh_after - ssh_before
        cpu = usage.ru_utime + usage.ru_stime
        row = {"devices": n, "wall": wall, "cpu": cpu, "cpu_per_device": cpu / n, "rss_mb": usage.ru_maxrss / 1024,
               "journal_per_device": probe["journal_bytes"] / n, "ssh": ssh, "ssh_per_device": ssh / n,
               "kh_per_connection": probe["known_hosts_cpu"] / max(1, ssh),
               "dps_per_enrollment": delta("service.requests") / n, "throttled": throttled,
               "assigned": new_assigned, "reported_assigned": sum(1 for r in results if r.get("status") == "assigned"),
               "devices_cpu_per_device": dev_cpu / n,
               "busy": (machine_after[0] - machine_before[0]) / max(1, machine_after[1] - machine_before[1]),
               "exit": os.waitstatus_to_exitcode(status)}
        print("  %d devices: %.0f s wall, our CPU %.3f s/device, exit %d\n  %s" % (
            n, wall, row["cpu_per_device"], row["exit"], row_line(row)), flush=True)
        if row["exit"] != 0:
            with open(os.path.join(self.dir, name + ".err"), encoding="utf-8") as handle:
                print("  (stderr tail: %s)" % handle.read()[-1500:].strip(), flush=True)
        return row


def row_line(r):
    return "%8d%9.0f%13.3f%10.0f%14.0f%10.2f%14.4f%14.2f%8d%10s%14.2f" % (
        r["devices"], r["wall"], r["cpu_per_device"], r["rss_mb"], r["journal_per_device"], r["ssh_per_device"],
        r["kh_per_connection"], r["dps_per_enrollment"], r["throttled"], "%d/%d" % (r["assigned"], r["devices"]),
        r["devices_cpu_per_device"])


def report(rows):
    print("\n== provision --inventory on hollow devices (our CPU and RSS: the az process; SSH connections "
          "counted at the devices)")
    head = ("%8s%9s%13s%10s%14s%10s%14s%14s%8s%10s%14s" % (
        "devices", "wall s", "CPU-s/dev", "RSS MB", "journal B/dev", "SSH/dev", "known_hosts", "DPS calls", "429s",
        "assigned", "devices CPU"))
    print(head)
    print("%8s%9s%13s%10s%14s%10s%14s%14s%8s%10s%14s" % ("", "", "", "(peak)", "", "", "CPU-s/conn", "/enrollment",
                                                         "", "(DPS)", "s/dev"))
    for r in rows:
        print(row_line(r))
    if not rows:
        return
    big, small = rows[-1], rows[0]
    goals = []
    if len(rows) > 1:
        ratio = big["cpu_per_device"] / small["cpu_per_device"]
        goals.append(("CPU-s per device at %d / at %d = %.2f" % (big["devices"], small["devices"], ratio), ratio <= 1.2,
                      "<= 1.2"))
    goals += [("CPU-s per device at %d = %.3f" % (big["devices"], big["cpu_per_device"]), big["cpu_per_device"] <= 0.10,
               "<= 0.10"),
              ("peak RSS at %d = %.0f MB" % (big["devices"], big["rss_mb"]), big["rss_mb"] < 400, "< 400 MB"),
              ("journal bytes per device at %d = %.0f" % (big["devices"], big["journal_per_device"]),
               big["journal_per_device"] < 8192, "< 8 KB"),
              ("assigned at %d (emulator's records) = %d" % (big["devices"], big["assigned"]),
               big["assigned"] == big["devices"], "all")]
    print("\ngoals:")
    for text, met, goal in goals:
        print("  %-55s goal %-8s %s" % (text, goal, "met" if met else "NOT met"))
    print("machine CPU busy during the runs: %s" % ", ".join("%.0f%%" % (r["busy"] * 100) for r in rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="fleet sizes, one run each (default 100,1000; "
                        "'' skips the fleet runs)")
    parser.add_argument("--synthetic", default="10000,100000",
                        help="entries of the synthetic parts (default 10000,100000; '' skips them)")
    parser.add_argument("--limit", type=int, default=60, help="CPU-s per synthetic measurement (default 60)")
    parser.add_argument("--max-parallel", type=int, default=32, help="provision's --max-parallel (default 32)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.synthetic:
        synthetic([int(s) for s in args.synthetic.split(",") if s], args.limit)
    if sizes:
        if os.geteuid() != 0:
            sys.exit("the fleet runs need root (hollow devices)")
        report(Fleet(args).run(sizes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
