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
Each measurement runs in a child process with a time limit: a part that grows with the fleet
prints how far it got instead of running for hours.

Needs root for the fleet runs (hollow devices). The machine is shared: figures are upper bounds.

    .venv/bin/python bench/scale.py [--sizes 100,1000] [--synthetic 10000,100000] [--max-parallel 32]
"""
import argparse
import builtins
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
HERE = os.path.abspath(__file__)
STEPS = ("identify", "enroll", "install", "wait", "status")


# --------------------------------------------------------------------------- the probe
# Runs inside the az process (`scale.py probe OUT STATE -- az arguments`): wraps the known_hosts
# module and paramiko's host key table with per-thread CPU timers, and the file calls with a
# byte counter for the state file; writes its figures to OUT when az exits.


class _Timer:
    def __init__(self):
        self.local = threading.local()
        self.cpu = 0.0
        self.lock = threading.Lock()

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if getattr(self.local, "inside", False):
                return fn(*args, **kwargs)
            self.local.inside = True
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.local.inside = False
                spent = time.thread_time() - started
                with self.lock:
                    self.cpu += spent
        return timed

    def wrap_module(self, module):
        for name, obj in list(vars(module).items()):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if isinstance(obj, type):
                for attr, member in list(vars(obj).items()):
                    if callable(member) and not isinstance(member, type) and (
                            not attr.startswith("__") or attr == "__init__"):
                        setattr(obj, attr, self.wrap(member))
            elif callable(obj):
                setattr(module, name, self.wrap(obj))


class _Counting:
    """A file object whose writes are counted."""

    def __init__(self, handle, counter):
        self._handle, self._counter = handle, counter

    def write(self, data):
        self._counter[0] += len(data.encode("utf-8") if isinstance(data, str) else data)
        return self._handle.write(data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __enter__(self):
        self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _install_probe(out, state):
    state = os.path.abspath(state)
    written = [0]
    timer = _Timer()

    def is_state(path):
        return isinstance(path, (str, bytes, os.PathLike)) and os.path.abspath(os.fsdecode(path)).startswith(state)

    def fd_path(fd):
        try:
            return os.readlink("/proc/self/fd/%d" % fd)
        except OSError:
            return ""

    real_open, real_fdopen, real_write = builtins.open, os.fdopen, os.write

    def counted_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        path = fd_path(file) if isinstance(file, int) else file
        return _Counting(handle, written) if any(c in mode for c in "wax+") and is_state(path) else handle

    def counted_fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        return _Counting(handle, written) if any(c in mode for c in "wax+") and is_state(fd_path(fd)) else handle

    def counted_write(fd, data):
        n = real_write(fd, data)
        if fd > 2 and is_state(fd_path(fd)):
            written[0] += n
        return n

    builtins.open, os.fdopen, os.write = counted_open, counted_fdopen, counted_write
    import paramiko.hostkeys
    from azext_edgetpm.remote import known_hosts
    timer.wrap_module(known_hosts)
    for attr in ("load", "add", "lookup", "check", "__init__"):
        setattr(paramiko.hostkeys.HostKeys, attr, timer.wrap(getattr(paramiko.hostkeys.HostKeys, attr)))

    import atexit

    def report():
        with real_open(out, "w", encoding="utf-8") as handle:
            json.dump({"journal_bytes": written[0], "known_hosts_cpu": timer.cpu}, handle)
    atexit.register(report)


def probe_main(argv):
    out, state = argv[0], argv[1]
    _install_probe(out, state)
    import runpy
    sys.argv = ["az"] + argv[3:]
    runpy.run_module("azure.cli", run_name="__main__")


# --------------------------------------------------------------------------- synthetic parts


def _keys(workdir):
    """Three real host public keys ("type blob"), made once."""
    lines = []
    for key_type in ("ed25519", "ecdsa", "rsa"):
        path = os.path.join(workdir, "k_" + key_type)
        if not os.path.exists(path):
            subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", path], check=True)
        with open(path + ".pub", encoding="ascii") as handle:
            lines.append(" ".join(handle.read().split()[:2]))
    return lines


def _host(i):
    return "10.%d.%d.%d" % (100 + i // 65536, (i // 256) % 256, i % 256)


def synthetic_known_hosts(n, workdir, samples):
    from azext_edgetpm.remote.session import RemoteSession
    from azext_edgetpm.remote.target import resolve_target
    path = os.path.join(workdir, "known_hosts-%d" % n)
    if not os.path.exists(path):
        keys = _keys(workdir)
        with open(path, "w", encoding="ascii") as handle:
            for i in range(n):
                handle.writelines("%s %s\n" % (_host(i), k) for k in keys)
    results = []
    for s in range(samples):
        host = _host((s * 7919) % n)
        target = resolve_target("root@" + host, ssh_config=os.devnull)
        started = time.process_time()
        session = RemoteSession(target, known_hosts=path)
        client = session._new_client(target)  # what each connection does with known_hosts
        found = client.get_host_keys().lookup(host)  # what paramiko does during the handshake
        results.append(time.process_time() - started)
        if not found:
            raise SystemExit("synthetic known_hosts: %s not found" % host)
        print(json.dumps({"done": s + 1, "cpu": results}), flush=True)


def synthetic_ssh_config(n, workdir, samples):
    from azext_edgetpm.remote.target import resolve_target
    path = os.path.join(workdir, "ssh_config-%d" % n)
    if not os.path.exists(path):
        with open(path, "w", encoding="ascii") as handle:
            for i in range(n):
                handle.write("Host dev%d\n    HostName %s\n    User root\n    Port 22\n\n" % (i, _host(i)))
    results = []
    for s in range(samples):
        started = time.process_time()
        resolve_target("dev%d" % ((s * 7919) % n), ssh_config=path)
        results.append(time.process_time() - started)
        print(json.dumps({"done": s + 1, "cpu": results}), flush=True)


def _record(i):
    key = "root@%s:22" % _host(i)
    rid = "%064x" % (i * 2654435761)
    steps = {name: {"status": "changed", "seconds": 1.0, "at": "2026-01-01T00:00:00Z", "detail": "synthetic",
                    "registrationId": rid} for name in STEPS}
    return key, {"status": "done", "steps": steps, "updated": "2026-01-01T00:00:00Z", "error": None,
                 "failedStep": None, "recommendation": None}


def synthetic_journal(n, workdir, samples):
    """The journal of n devices (the whole-document format every version reads), then the events
    of `samples` more devices through the product's Journal."""
    from azext_edgetpm.fleet import state
    path = os.path.join(workdir, "state-%d.json" % n)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"version": 1, "devices": dict(_record(i) for i in range(n))}, handle)
    io_before = _wchar()
    started = time.process_time()
    journal = state.Journal(path, {"command": "provision", "synthetic": True})
    load = time.process_time() - started
    print(json.dumps({"load": load}), flush=True)
    results, written = [], []
    for s in range(samples):
        key, rec = _record(n + s)
        io_before = _wchar()
        started = time.process_time()
        journal.update(key, status="running")
        for name in STEPS:
            journal.step(key, name, rec["steps"][name])
        journal.update(key, status="done")
        results.append(time.process_time() - started)
        written.append(_wchar() - io_before)
        print(json.dumps({"load": load, "done": s + 1, "cpu": results, "bytes": written}), flush=True)
    close = getattr(journal, "close", None)
    if close:
        close()


def _wchar():
    with open("/proc/self/io", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def synthetic_main(argv):
    part, n, workdir, samples = argv[0], int(argv[1]), argv[2], int(argv[3])
    {"known_hosts": synthetic_known_hosts, "ssh_config": synthetic_ssh_config,
     "journal": synthetic_journal}[part](n, workdir, samples)


def run_synthetic(part, n, workdir, samples, limit):
    """Run one part in a child with a time limit; return its last progress line (dict) and
    whether it finished."""
    proc = subprocess.Popen([sys.executable, HERE, "synthetic", part, str(n), workdir, str(samples)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    last, lines = {}, []
    timer = threading.Timer(limit, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            try:
                last = json.loads(line)
            except ValueError:
                pass
        proc.wait()
    finally:
        timer.cancel()
    finished = proc.returncode == 0
    if not finished and proc.returncode != -9:
        sys.stderr.write("synthetic %s %d failed: %s\n" % (part, n, proc.stderr.read()[-1500:]))
    return last, finished


def synthetic(sizes, limit):
    workdir = tempfile.mkdtemp(prefix="bench-scale-synthetic-")
    print("== synthetic entries (product modules, no devices; CPU-s in one process; limit %d s per "
          "measurement)" % limit, flush=True)
    print("%-12s%10s  %s" % ("part", "entries", "per device / connection"))
    rows = {}
    for part, samples in (("known_hosts", 3), ("ssh_config", 3), ("journal", 5)):
        for n in sizes:
            last, finished = run_synthetic(part, n, workdir, samples, limit)
            rows[(part, n)] = (last, finished)
            done = last.get("done", 0)
            cpu = last.get("cpu", [])
            if not done:
                text = "no sample within %d s (one %s costs more than that)" % (
                    limit, "connection" if part == "known_hosts" else "device")
                if part == "journal" and "load" in last:
                    text += "; opening the journal: %.2f CPU-s" % last["load"]
            else:
                text = "%.4f CPU-s (median of %d%s)" % (sorted(cpu)[len(cpu) // 2], done,
                                                        "" if finished else ", stopped at the limit")
                if part == "journal":
                    written = last["bytes"]
                    text += ", %.0f bytes written per device; opening: %.2f CPU-s (%.1f us per entry)" % (
                        sorted(written)[len(written) // 2], last["load"], last["load"] / n * 1e6)
            print("%-12s%10d  %s" % (part, n, text), flush=True)
    if len(sizes) > 1:
        small, big = sizes[0], sizes[-1]
        for part in ("known_hosts", "ssh_config", "journal"):
            a, b = rows[(part, small)][0].get("cpu"), rows[(part, big)][0].get("cpu")
            if a and b:
                ratio = sorted(b)[len(b) // 2] / max(1e-9, sorted(a)[len(a) // 2])
                print("%s: per device at %d / at %d = %.2f (flat: ~1)" % (part, big, small, ratio))
            else:
                print("%s: per device at %d / at %d: not measurable within the limit (grows with the fleet)"
                      % (part, big, small))
    return rows


# --------------------------------------------------------------------------- fleet runs


def admin(section, path, body=None):
    import urllib.request
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(section["admin_url"].rstrip("/") + path, data=data,
                                     method="POST" if data else "GET", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


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


def machine_cpu():
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


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
        argv = [sys.executable, HERE, "probe", probe_out, state, "--",
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
        with open(probe_out, encoding="utf-8") as handle:
            probe = json.load(handle)
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
        print("  %d devices: %.0f s wall, our CPU %.3f s/device, exit %d" % (n, wall, row["cpu_per_device"], row["exit"]),
              flush=True)
        if row["exit"] != 0:
            with open(os.path.join(self.dir, name + ".err"), encoding="utf-8") as handle:
                print("  (stderr tail: %s)" % handle.read()[-1500:].strip(), flush=True)
        return row


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
        print("%8d%9.0f%13.3f%10.0f%14.0f%10.2f%14.4f%14.2f%8d%10s%14.2f" % (
            r["devices"], r["wall"], r["cpu_per_device"], r["rss_mb"], r["journal_per_device"], r["ssh_per_device"],
            r["kh_per_connection"], r["dps_per_enrollment"], r["throttled"], "%d/%d" % (r["assigned"], r["devices"]),
            r["devices_cpu_per_device"]))
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
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        return probe_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "synthetic":
        return synthetic_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="fleet sizes, one run each (default 100,1000; "
                        "'' skips the fleet runs)")
    parser.add_argument("--synthetic", default="10000,100000",
                        help="entries of the synthetic parts (default 10000,100000; '' skips them)")
    parser.add_argument("--limit", type=int, default=120, help="seconds per synthetic measurement (default 120)")
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
