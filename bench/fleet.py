"""What `az edge-tpm provision --inventory` costs next to what a user can script today, on the
same kind of dev-kit devices and in the same run:

- fleet:      ONE `az edge-tpm provision --inventory --max-parallel P` over N fresh devices, and
              again over fewer (--small): the difference is what one more device costs, with
              what a run pays once (az start-up, imports) cancelled out;
- xargs:      the five single-device commands (ek show, enrollment create, install,
              registration wait, status) per device, devices run with `xargs -P P`;
- sequential: the same five commands per device, one device after the other (S devices).

For each: wall time, our side's CPU-seconds per device (the az processes only: rusage of the
process tree we started, not the devices'), the devices' CPU, the machine's CPU busy %, DPS
service calls per enrollment, 429 answers, peak concurrent SSH connections. Then ratios.

`--quota L` adds a quota-bound run: the emulator limited to L service operations and L device
registrations a minute, provision told the same (--dps-ops-per-minute/--dps-registrations-per-
minute), and the achieved rates printed against L.

Needs root (dev-kit devices). The machine is shared: busy % includes whatever else runs.

    .venv/bin/python bench/fleet.py [--devices 20] [--small 4] [--max-parallel 10] [--sequential 3] [--quota 10]
"""
import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
AZ = [sys.executable, "-m", "azure.cli"]

ONE_DEVICE = """#!/bin/bash
# The five single-device commands, as a user scripts them today. $1=user@host:port $2=key $3=tcti
set -euo pipefail
ssh=(--host "$1" --ssh-key "$2" --known-hosts "$KNOWN_HOSTS")
rid=$($AZ edge-tpm ek show "${ssh[@]}" --tcti "$3" --query registrationId -o tsv)
$AZ edge-tpm enrollment create "${ssh[@]}" --tcti "$3" --login "@$CS_FILE" -o none
$AZ edge-tpm install "${ssh[@]}" --tcti "$3" --id-scope "$ID_SCOPE" --global-endpoint "$ENDPOINT" \\
    --package-source "$PACKAGE_SOURCE" --registration-id "$rid" -o none
$AZ edge-tpm registration wait --registration-id "$rid" --login "@$CS_FILE" --interval 1 -o none
$AZ edge-tpm status "${ssh[@]}" -o none
"""


def machine_cpu():
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def devices_cpu(devices):
    """CPU seconds of every process in the devices' PID namespaces (incl. their reaped children)."""
    tick = os.sysconf("SC_CLK_TCK")
    namespaces = set()
    for dev in devices:
        try:
            namespaces.add(os.stat(f"/proc/{dev.pid}/ns/pid").st_ino)
        except OSError:
            pass
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/pid").st_ino not in namespaces:
                continue
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


class SshSampler(threading.Thread):
    """Peak number of established TCP connections from this host to port 22 in the rig's /24."""

    def __init__(self, subnet_prefix):
        super().__init__(daemon=True)
        octets = [int(o) for o in subnet_prefix.split(".")[:3]]
        self.net_hex = "".join(f"{o:02X}" for o in reversed(octets))  # little-endian in /proc/net/tcp
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            count = 0
            with open("/proc/net/tcp", encoding="ascii") as handle:
                for line in handle.readlines()[1:]:
                    parts = line.split()
                    remote, state = parts[2], parts[3]
                    if state == "01" and remote.endswith(":0016") and remote[2:8] == self.net_hex:
                        count += 1
            self.peak = max(self.peak, count)
            self.stop.wait(0.1)


def admin(section, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(section["admin_url"].rstrip("/") + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def counters(section):
    c = admin(section, "/counters")
    return {"service": c.get("service.requests", 0),
            "throttled": sum(v for k, v in c.items() if k.endswith(".throttled") and k.count(".") == 1)}


class Bench:
    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="bench-fleet-")
        from devkit import azhome
        from devkit.devices import Rig
        self.env = dict(os.environ, **azhome.prepare(os.path.join(self.dir, "az")))
        self.rig = Rig(os.path.join(self.dir, "rig"))

    def fresh_devices(self, count):
        for dev in list(self.rig.devices):
            self.rig.remove_device(dev)
        return self.rig.add_devices(["fresh"] * count, timeout=300)

    def measure(self, name, devices, argv, stdout_path):
        before_c, before_m, before_d = counters(self.dps), machine_cpu(), devices_cpu(devices)
        sampler = SshSampler(self.rig.host_ip)
        sampler.start()
        started = time.monotonic()
        with open(stdout_path, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.PIPE, text=True, cwd=self.dir)
            err = proc.stderr.read()
            _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        sampler.stop.set()
        after_c, after_m, after_d = counters(self.dps), machine_cpu(), devices_cpu(devices)
        busy = (after_m[0] - before_m[0]) / max(1, after_m[1] - before_m[1])
        n = len(devices)
        row = {"name": name, "devices": n, "wall": wall, "wall_per_device": wall / n,
               "our_cpu": usage.ru_utime + usage.ru_stime, "devices_cpu": after_d - before_d, "busy": busy,
               "calls": after_c["service"] - before_c["service"], "throttled": after_c["throttled"] - before_c["throttled"],
               "peak_ssh": sampler.peak, "exit": os.waitstatus_to_exitcode(status)}
        row["our_cpu_per_device"] = row["our_cpu"] / n
        row["calls_per_enrollment"] = row["calls"] / n
        if row["exit"] != 0:
            print(f"  ({name} exited {row['exit']}: {err.strip()[-1500:]})", flush=True)
        print(f"  {name}: {wall:.1f} s wall, our CPU {row['our_cpu_per_device']:.2f} s/device, exit {row['exit']}",
              flush=True)
        return row

    def inventory(self, devices, name):
        path = os.path.join(self.dir, name)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["host", "ssh_key", "tcti"])
            for dev in devices:
                writer.writerow([f"root@{dev.host}:{dev.port}", dev.key("root"), dev.tcti])
        return path

    def common(self):
        return ["--login", "@" + self.cs_file, "--id-scope", self.dps["id_scope"], "--global-endpoint",
                self.dps["device_endpoint"], "--package-source", self.packages["apt_line"], "--known-hosts",
                self.rig.known_hosts]

    def fleet(self, count, name="fleet", extra=()):
        devices = self.fresh_devices(count)
        inv = self.inventory(devices, f"{name}.csv")
        argv = AZ + ["edge-tpm", "provision", "--inventory", inv, *self.common(), "--max-parallel",
                     str(self.args.max_parallel), "--state", os.path.join(self.dir, f"{name}-state.json"),
                     "-o", "json", "--only-show-errors", *extra]
        row = self.measure(name, devices, argv, os.path.join(self.dir, f"{name}.json"))
        with open(os.path.join(self.dir, f"{name}.json"), encoding="utf-8") as handle:
            text = handle.read()
        results = json.loads(text) if text.strip() else []
        row["assigned"] = sum(1 for r in results if r.get("status") == "assigned")
        row["results"] = results
        return row

    def scripted(self, count, parallel, name):
        devices = self.fresh_devices(count)
        script = os.path.join(self.dir, "one-device.sh")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(ONE_DEVICE)
        lines = os.path.join(self.dir, f"{name}.args")
        with open(lines, "w", encoding="utf-8") as handle:
            for dev in devices:
                handle.write(f"root@{dev.host}:{dev.port} {dev.key('root')} '{dev.tcti}'\n")
        self.env.update(AZ=" ".join(AZ), KNOWN_HOSTS=self.rig.known_hosts,
                        CS_FILE=self.cs_file, ID_SCOPE=self.dps["id_scope"], ENDPOINT=self.dps["device_endpoint"],
                        PACKAGE_SOURCE=self.packages["apt_line"])
        argv = ["xargs", "-P", str(parallel), "-L", "1", "bash", script]
        row = self.measure(name, devices, ["sh", "-c", f"{' '.join(argv)} < {lines}"],
                           os.path.join(self.dir, f"{name}.out"))
        return row

    def startup_cpu(self):
        """CPU-s of one az process that loads the extension, parses a provision command and stops at
        the (missing) inventory: the fixed cost a fleet run pays once and a scripted run per command."""
        samples = []
        for _ in range(3):
            proc = subprocess.Popen(AZ + ["edge-tpm", "provision", "--inventory", os.path.join(self.dir, "none.csv"),
                                          *self.common()], env=self.env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, cwd=self.dir)
            _pid, _status, usage = os.wait4(proc.pid, 0)
            samples.append(usage.ru_utime + usage.ru_stime)
        print(f"  az start-up (load, parse, stop): {min(samples):.2f} CPU-s", flush=True)
        return min(samples)

    def quota(self, limit, count):
        # Service operations: strict (a burst of one), so that only pacing avoids 429s. Device
        # registrations: a per-minute quota with half a minute's burst (the registrations happen at
        # the end of each device's install, whose length varies; DPS counts them per minute).
        admin(self.dps, "/config", {"service_ops_per_minute": limit, "service_burst": 1,
                                    "device_registrations_per_minute": limit, "device_burst": max(2, limit // 2)})
        before = admin(self.dps, "/counters")
        try:
            row = self.fleet(count, "quota", ["--dps-ops-per-minute", str(limit), "--dps-registrations-per-minute",
                                             str(limit)])
        finally:
            admin(self.dps, "/config", {"service_ops_per_minute": 1000, "service_burst": 1000,
                                        "device_registrations_per_minute": 1000, "device_burst": 1000})
        after = admin(self.dps, "/counters")
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        register = "endpoint.PUT /{scope}/registrations/{id}/register."
        row["register_requests"] = sum(v for k, v in delta.items() if k.startswith(register) and not k.endswith(".429"))
        row["throttled_by_kind"] = {k[:-len(".throttled")]: v for k, v in delta.items() if k.endswith(".throttled")}
        # When DPS assigned each device: its own registration records (read after the measured run,
        # with the limits lifted again).
        assigned = sorted(self.assigned_at(r["registrationId"]) for r in row["results"] if r.get("registrationId"))
        span = assigned[-1] - assigned[0] if len(assigned) > 1 else 0
        row["devices_per_minute"] = (len(assigned) - 1) / span * 60 if span else float("nan")
        row["limit"] = limit
        return row

    def assigned_at(self, registration_id):
        """When DPS last changed the device's registration record (its assignment), POSIX seconds."""
        from devkit.dps.testing import ServiceClient
        parts = dict(p.split("=", 1) for p in self.dps["connection_string"].split(";"))
        client = ServiceClient(f"https://{parts['HostName']}", self.dps["ca_bundle"], parts["HostName"],
                               parts["SharedAccessKey"], parts["SharedAccessKeyName"])
        answer = client.call("GET", f"/registrations/{registration_id}")
        answer.raise_for_status()
        stamp = answer.json()["lastUpdatedDateTimeUtc"]
        return datetime.datetime.strptime(stamp[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
            tzinfo=datetime.timezone.utc).timestamp()

    def run(self):
        args = self.args
        print(f"== rig: DPS emulator + package mirror; {args.devices} fresh devices per run, max parallel "
              f"{args.max_parallel}; workdir {self.dir}", flush=True)
        self.rig.up([], services=["dps", "packages"])
        try:
            with open(self.rig.json_path, encoding="utf-8") as handle:
                kit = json.load(handle)
            self.dps, self.packages = kit["dps"], kit["packages"]
            self.env.update(REQUESTS_CA_BUNDLE=self.dps["ca_bundle"], AZURE_CORE_ONLY_SHOW_ERRORS="true")
            self.cs_file = os.path.join(self.dir, "dps-connection-string")
            fd = os.open(self.cs_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.dps["connection_string"])
            self.startup = self.startup_cpu()
            rows = []
            if not args.quota_only:
                rows = [self.fleet(args.devices)]
                if args.small:
                    rows[0]["small"] = self.fleet(args.small, "fleet-small")
                rows.append(self.scripted(args.devices, args.max_parallel, "xargs"))
                if args.sequential:
                    rows.append(self.scripted(args.sequential, 1, "sequential"))
            quota = self.quota(args.quota, args.quota_devices) if args.quota else None
        finally:
            self.rig.down()
        report(rows, quota, args, self.startup)


def report(rows, quota, args, startup):
    if rows:
        report_runs(rows, args, startup)
    if quota:
        report_quota(quota)


def report_runs(rows, args, startup):
    print("\n== results (N devices per run; our CPU = the az processes' own CPU, rusage of the process tree)")
    head = (f"{'run':<11}{'devices':>8}{'wall s':>9}{'s/device':>10}{'our CPU-s/dev':>15}{'devices CPU-s':>15}"
            f"{'busy %':>8}{'DPS calls/enr':>15}{'429s':>6}{'peak SSH':>10}")
    print(head)
    for r in rows:
        print(f"{r['name']:<11}{r['devices']:>8}{r['wall']:>9.1f}{r['wall_per_device']:>10.2f}"
              f"{r['our_cpu_per_device']:>15.3f}{r['devices_cpu']:>15.1f}{r['busy'] * 100:>8.0f}"
              f"{r['calls_per_enrollment']:>15.2f}{r['throttled']:>6}{r['peak_ssh']:>10}")
    fleet, xargs = rows[0], rows[1]
    print(f"\nfleet assigned {fleet.get('assigned')} of {fleet['devices']}")
    print(f"wall: fleet / xargs -P {args.max_parallel} = {fleet['wall'] / xargs['wall']:.2f}")
    print(f"our CPU per device: fleet / xargs = {fleet['our_cpu_per_device'] / xargs['our_cpu_per_device']:.3f} "
          f"({fleet['our_cpu_per_device']:.3f} vs {xargs['our_cpu_per_device']:.3f} CPU-s; goal <= 0.15)")
    small = fleet.get("small")
    if small and small["devices"] < fleet["devices"]:
        # What one more device costs: the difference of two fleet runs, so that every cost paid once
        # per run (az start-up, imports, the DPS target) cancels out.
        each = (fleet["our_cpu"] - small["our_cpu"]) / (fleet["devices"] - small["devices"])
        print(f"our CPU per additional device (fleet of {fleet['devices']} minus fleet of {small['devices']}): "
              f"{each:.3f} CPU-s (goal <= 0.15); paid once per run: {small['our_cpu'] - each * small['devices']:.2f} "
              f"CPU-s")
    marginal = (fleet["our_cpu"] - startup) / fleet["devices"]
    print(f"our CPU per device beyond the one az start-up ({startup:.2f} CPU-s): fleet {marginal:.3f} CPU-s; "
          f"xargs pays the start-up 5 times per device ({5 * startup:.2f} CPU-s)")
    if len(rows) > 2:
        seq = rows[2]
        print(f"wall per device: fleet / sequential = {fleet['wall_per_device'] / seq['wall_per_device']:.2f} "
              f"({fleet['wall_per_device']:.2f} vs {seq['wall_per_device']:.2f} s)")
    print(f"DPS service calls per enrollment: fleet {fleet['calls_per_enrollment']:.2f}, xargs "
          f"{xargs['calls_per_enrollment']:.2f} (goal <= 0.2)")


def report_quota(quota):
    limit = quota["limit"]
    # A TPM registration is two register requests (the challenge, the signed one); DPS's device
    # registration limit counts requests, so at most limit/2 devices a minute can register.
    per_device = 2
    devices_limit = limit / per_device
    print(f"\n== quota-bound: emulator and provision limited to {limit} service operations and {limit} device "
          f"registrations a minute, {quota['devices']} devices")
    print(f"devices assigned per minute (DPS's records, first to last assignment): "
          f"{quota['devices_per_minute']:.2f} against {devices_limit:g} ({limit}/{per_device}: two register requests "
          f"per TPM registration) = {quota['devices_per_minute'] / devices_limit:.2f} of the limit")
    print(f"register requests: {quota['register_requests']} for {quota['devices']} devices; "
          f"{quota['devices_per_minute'] * per_device:.1f}/min against {limit}")
    print(f"DPS service calls {quota['calls']} in {quota['wall']:.0f} s ({quota['calls'] / quota['wall'] * 60:.1f}/min "
          f"against {limit}); assigned {quota.get('assigned')} of {quota['devices']}; failed "
          f"{quota['devices'] - (quota.get('assigned') or 0)}; 429s by kind {quota['throttled_by_kind'] or 'none'}; "
          f"our CPU {quota['our_cpu_per_device']:.2f} s/device")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20, help="devices per run (default 20)")
    parser.add_argument("--max-parallel", type=int, default=10, help="parallelism of fleet and xargs (default 10)")
    parser.add_argument("--sequential", type=int, default=3,
                        help="devices for the one-after-the-other baseline (default 3; 0 skips it)")
    parser.add_argument("--small", type=int, default=4,
                        help="devices of a second, smaller fleet run; the difference gives the CPU of one more device "
                             "(default 4; 0 skips it)")
    parser.add_argument("--quota", type=int, default=10,
                        help="limit per minute for the quota-bound run (default 10; 0 skips it)")
    parser.add_argument("--quota-devices", type=int, default=12, help="devices of the quota-bound run (default 12)")
    parser.add_argument("--quota-only", action="store_true", help="only the quota-bound run")
    Bench(parser.parse_args()).run()


if __name__ == "__main__":
    main()
