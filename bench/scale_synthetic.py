"""The synthetic parts of bench/scale.py: the product's known_hosts, ssh_config and journal code
on N synthetic entries (devices), each measurement in a child process with a time limit
(`python bench/scale_synthetic.py PART N WORKDIR SAMPLES` is the child)."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
HERE = os.path.abspath(__file__)
STEPS = ("identify", "enroll", "install", "wait", "status")


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


def _cpu():
    """The process's CPU-s (all threads) from getrusage: under RLIMIT_CPU (run_synthetic's limit)
    Linux samples the process CPU clock that time.process_time reads only at scheduler ticks, so
    a measurement shorter than a tick read 0."""
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _host(i):
    return "10.%d.%d.%d" % (100 + i // 65536, (i // 256) % 256, i % 256)


def synthetic_known_hosts(n, workdir, samples):
    from azext_edgetpm.remote.connect import Connector
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
        started = _cpu()
        client = Connector(path).new_client(target)  # what each connection does with known_hosts
        found = client.get_host_keys().lookup(host)  # what paramiko does during the handshake
        results.append(_cpu() - started)
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
        started = _cpu()
        resolve_target("dev%d" % ((s * 7919) % n), ssh_config=path)
        results.append(_cpu() - started)
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
    started = _cpu()
    journal = state.Journal(path, {"command": "provision", "synthetic": True})
    load = _cpu() - started
    print(json.dumps({"load": load}), flush=True)
    results, written = [], []
    for s in range(samples):
        key, rec = _record(n + s)
        io_before = _wchar()
        started = _cpu()
        journal.update(key, status="running")
        for name in STEPS:
            journal.step(key, name, rec["steps"][name])
        journal.update(key, status="done")
        results.append(_cpu() - started)
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
    """Run one part in a child limited to ``limit`` CPU-s (a loaded machine makes it slower, not
    shorter); return its last progress line (dict) and whether it finished."""
    import resource
    import signal

    def cpu_limit():
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 5))
    proc = subprocess.Popen([sys.executable, HERE, part, str(n), workdir, str(samples)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=cpu_limit)
    last = {}
    timer = threading.Timer(limit * 30, proc.kill)  # a machine 30 times oversubscribed
    timer.start()
    try:
        for line in proc.stdout:
            try:
                last = json.loads(line)
            except ValueError:
                pass
        proc.wait()
    finally:
        timer.cancel()
    finished = proc.returncode == 0
    if not finished and proc.returncode not in (-signal.SIGXCPU, -signal.SIGKILL):
        sys.stderr.write("synthetic %s %d failed: %s\n" % (part, n, proc.stderr.read()[-1500:]))
    return last, finished


def _median(values):
    return sorted(values)[len(values) // 2]


def synthetic(sizes, limit):
    workdir = tempfile.mkdtemp(prefix="bench-scale-synthetic-")
    print("== synthetic entries (product modules, no devices; CPU-s in one process; limit %d CPU-s per "
          "measurement)" % limit, flush=True)
    print("%-12s%10s  %s" % ("part", "entries", "per device / connection"))
    _keys(workdir)
    # one measurement at a time, each in its own process: run side by side they slowed each other
    # (caches, memory bandwidth) by up to 1.8x, more than any difference between the sizes
    jobs = [(part, n, samples) for part, samples in (("known_hosts", 300), ("ssh_config", 300), ("journal", 300))
            for n in sizes]
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = {(part, n): pool.submit(run_synthetic, part, n, workdir, samples, limit)
                   for part, n, samples in jobs}
    rows = {key: future.result() for key, future in futures.items()}
    for part, n, _samples in jobs:
        last, finished = rows[(part, n)]
        done = last.get("done", 0)
        cpu = last.get("cpu", [])
        if not done:
            text = "no sample within %d CPU-s (one %s costs more than that)" % (
                limit, "connection" if part == "known_hosts" else "device")
            if part == "journal" and "load" in last:
                text += "; opening the journal: %.2f CPU-s" % last["load"]
        else:
            text = "%.5f CPU-s (median of %d%s)" % (_median(cpu), done, "" if finished else ", stopped at the limit")
            if part != "journal" and len(cpu) > 1:   # the first one reads and indexes the file (once a run)
                text = "%.1f us CPU (median of the %d after the first%s); the first, which reads the file once a " \
                       "run: %.2f CPU-s" % (_median(cpu[1:]) * 1e6, done - 1,
                                            "" if finished else ", stopped at the limit", cpu[0])
            if part == "journal":
                written = last["bytes"]
                text += ", %.0f bytes written per device; opening: %.2f CPU-s (%.1f us per entry)" % (
                    sorted(written)[len(written) // 2], last["load"], last["load"] / n * 1e6)
        print("%-12s%10d  %s" % (part, n, text), flush=True)
    if len(sizes) > 1:
        small, big = sizes[0], sizes[-1]
        for part in ("known_hosts", "ssh_config", "journal"):
            a, b = rows[(part, small)][0].get("cpu"), rows[(part, big)][0].get("cpu")
            if part != "journal":
                a, b = a and a[1:], b and b[1:]   # per connection / device, the file read once apart
            if a and b:
                ratio = _median(b) / max(1e-9, _median(a))
                print("%s: per device at %d / at %d = %.2f (flat: ~1)" % (part, big, small, ratio))
            else:
                print("%s: per device at %d / at %d: not measurable within the limit (grows with the fleet)"
                      % (part, big, small))
    return rows


if __name__ == "__main__":
    synthetic_main(sys.argv[1:])
