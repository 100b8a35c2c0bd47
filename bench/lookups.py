"""known_hosts, ~/.ssh/config and the --state journal alone, at fleet sizes (issue 17): the cost per
connection and per device must stay flat as the files grow. Synthetic files, no devices.

    .venv/bin/python bench/lookups.py [--sizes 1000,10000,100000] [--baseline]

Per size N it prints:
- known_hosts with N hosts (three keys each, as ssh-keyscan writes; plain names): the one read and
  index per run, then the cost per connection (load_known_hosts + this host's keys into paramiko's
  table); the same with every entry hashed (`ssh-keyscan -H`: one HMAC per hashed line and looked-up
  name, as OpenSSH does; linear in the file, so shown apart);
- ~/.ssh/config with one Host block per device: the cost per lookup after the one parse;
- the journal with N devices already in it: its load and compaction per run (and the memory its
  records take), then a sample of provisions appended (7 events each, 10 workers, real
  fdatasync): CPU-s and bytes per device.
With --baseline, paramiko's own per-connection load (what 0.2 did) at the sizes up to 1,000 (it is
quadratic in the file: 16 s per connection at 30,000 lines).

bench/scale.py calls known_hosts_figures() and journal_figures() for its "alone" section.
"""
import argparse
import base64
import os
import random
import struct
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ed25519_blob(seed: int) -> str:
    kind = b"ssh-ed25519"
    return base64.b64encode(struct.pack(">I", len(kind)) + kind + struct.pack(">I", 32)
                            + seed.to_bytes(32, "big")).decode()


def _host(i: int) -> str:
    return f"[10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}]:{2200 + i % 50}"


def write_known_hosts(path: str, hosts: int, hashed: bool = False) -> None:
    from paramiko import HostKeys
    with open(path, "w", encoding="ascii") as handle:
        for i in range(hosts):
            name = _host(i)
            for k in range(3):
                shown = HostKeys.hash_host(name) if hashed else name
                handle.write(f"{shown} ssh-ed25519 {_ed25519_blob(i * 3 + k + 1)}\n")


def known_hosts_figures(hosts: int, lookups: int = 300, hashed: bool = False, baseline: bool = False) -> dict:
    """Seconds to read and index a known_hosts of `hosts` hosts (three keys each) once, and
    milliseconds per connection (index lookup + this host's keys into a paramiko HostKeys)."""
    from paramiko import HostKeys
    from azext_edgetpm.remote import known_hosts as kh
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "known_hosts")
        write_known_hosts(path, hosts, hashed)
        kh.forget(path)
        started = time.process_time()
        kh.load_known_hosts(path)
        index_s = time.process_time() - started
        names = [_host(random.randrange(hosts)) for _ in range(lookups)]
        started = time.process_time()
        for name in names:
            table = HostKeys()
            kh.load_known_hosts(path).fill(table, name)
            assert len(table.lookup(name) or {}) == 1, name   # 3 ed25519 keys: paramiko keeps the last
        per_connection_ms = (time.process_time() - started) / lookups * 1000
        figures = {"hosts": hosts, "lines": hosts * 3, "bytes": os.path.getsize(path), "hashed": hashed,
                   "index_s": round(index_s, 3), "per_connection_ms": round(per_connection_ms, 4)}
        if baseline:
            started = time.process_time()
            HostKeys(path).lookup(names[0])      # what 0.2 did per connection (it also checked markers)
            figures["paramiko_per_connection_ms"] = round((time.process_time() - started) * 1000, 1)
        kh.forget(path)
    return figures


def ssh_config_figures(blocks: int, lookups: int = 300) -> dict:
    """Milliseconds per lookup in an ssh_config of `blocks` Host blocks (after the one parse)."""
    from azext_edgetpm.remote import target
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config")
        with open(path, "w", encoding="ascii") as handle:
            handle.write("Host *\n  ServerAliveInterval 30\n")
            for i in range(blocks):
                handle.write(f"Host dev-{i}\n  HostName 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}\n"
                             f"  Port {2200 + i % 50}\n  User admin\n")
        started = time.process_time()
        target._lookup_ssh_config("dev-0", path)   # pylint: disable=protected-access
        parse_s = time.process_time() - started
        started = time.process_time()
        for _ in range(lookups):
            i = random.randrange(blocks)
            assert target._lookup_ssh_config(f"dev-{i}", path)["port"] == str(2200 + i % 50)  # noqa
        per_lookup_ms = (time.process_time() - started) / lookups * 1000
        target._CONFIGS.pop(os.path.abspath(path), None)   # pylint: disable=protected-access
    return {"blocks": blocks, "parse_s": round(parse_s, 3), "per_lookup_ms": round(per_lookup_ms, 4)}


def _provision(journal, key: str, rid: str) -> None:
    """The events of one device's provision, shaped as the runner and steps write them."""
    journal.update(key, status="running", error=None, recommendation=None, failedStep=None)
    journal.step(key, "identify", {"status": "ok", "registrationId": rid, "created": False, "seconds": 1.2,
                                   "detail": "EK read (RSA 2048), registration ID derived (sha256)"})
    journal.step(key, "enroll", {"status": "changed", "registrationId": rid, "deviceId": rid, "result": "created",
                                 "etag": '"' + "e" * 32 + '"', "detail": "created", "seconds": 0.8})
    journal.step(key, "install", {"status": "changed", "edgeVersion": "1.5.21", "registrationId": rid,
                                  "changed": True, "detail": "aziot-edge 1.5.21 installed, config applied",
                                  "seconds": 14.1})
    journal.step(key, "wait", {"status": "ok", "assignedHub": "hub-1.azure-devices.net", "deviceId": rid,
                               "seconds": 3.4, "detail": "assigned"})
    journal.step(key, "status", {"status": "ok", "assignedHub": "hub-1.azure-devices.net", "state": "assigned",
                                 "seconds": 0.3})
    journal.update(key, status="done")


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


def journal_figures(devices: int, sample: int = 300, workers: int = 10) -> dict:
    """A journal that already holds `devices` provisioned devices: its load and compaction once per
    run (seconds per 1,000 devices), then `sample` more provisions appended by `workers` threads:
    CPU-ms and journal bytes per device, and the file's growth."""
    import json
    from azext_edgetpm.fleet.state import FORMAT, VERSION, Journal, provenance
    prov = provenance("provision", None, "bench", "0ne00BENCH")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.json")
        with Journal(None) as memory:              # one device's compacted record, as a run leaves it
            _provision(memory, "10.0.0.0:22", "dev-0")
            record = memory.record("10.0.0.0:22")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"format": FORMAT, "version": VERSION, "run": prov, "runs": []}) + "\n")
            for i in range(devices):
                handle.write(json.dumps({"e": "device", "d": f"10.1.{i // 256 % 256}.{i % 256}:{i}",
                                         "r": dict(record, steps={k: dict(v, registrationId=f"dev-{i}")
                                                                  for k, v in record["steps"].items()})},
                                        separators=(",", ":")) + "\n")
        size = os.path.getsize(path)
        rss_before = _rss_kb()
        started = time.process_time()
        journal = Journal(path, meta={"devices": devices + sample}, origin=prov)
        load_s = time.process_time() - started
        memory_kb = (_rss_kb() - rss_before) / max(devices, 1)
        compacted = os.path.getsize(path)
        todo = list(range(sample))
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                _provision(journal, f"10.2.{i // 256 % 256}.{i % 256}:22", f"new-{i}")
        threads = [threading.Thread(target=worker) for _ in range(workers)]
        started, wall = time.process_time(), time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cpu, wall = time.process_time() - started, time.monotonic() - wall
        journal.close()
        grown = os.path.getsize(path) - compacted
    return {"devices": devices, "file_bytes": size, "load_s": round(load_s, 3),
            "load_ms_per_1000": round(load_s / max(devices, 1) * 1e6, 1),
            "sample": sample, "cpu_ms_per_device": round(cpu / sample * 1000, 3),
            "wall_ms_per_device": round(wall / sample * 1000, 2), "bytes_per_device": round(grown / sample),
            "compacted_bytes_per_device": round(compacted / max(devices, 1)),
            "memory_kb_per_device": round(memory_kb, 2), "events_per_device": round(journal.writes / sample, 1)}


def state_refusal_figures() -> dict:
    """--state /dev/zero and a sparse 1 GB file: seconds until the error, in a fresh process, and
    its peak RSS (MB), next to a process that opens a new state file."""
    import subprocess
    code = ("import sys, time\nfrom azext_edgetpm.errors import LocalFileError\n"
            "from azext_edgetpm.fleet.state import Journal\nt = time.monotonic()\n"
            "try:\n    Journal(sys.argv[1], origin={'command': 'provision'})\n"
            "except LocalFileError:\n    pass\nelse:\n    assert sys.argv[1].endswith('new.json')\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0].split()[1]\n"
            "print(time.monotonic() - t, int(hwm) / 1024)\n")   # (VmHWM: ru_maxrss would count the parent)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        huge = os.path.join(tmp, "huge.json")
        with open(huge, "wb") as handle:
            handle.truncate(2**30)
        for name, path in (("baseline", os.path.join(tmp, "new.json")), ("dev_zero", "/dev/zero"),
                           ("sparse_1gb", huge)):
            proc = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True,
                                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            seconds, rss = proc.stdout.split()
            out[name] = {"seconds": round(float(seconds), 3), "peak_rss_mb": round(float(rss), 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--baseline", action="store_true", help="also paramiko's per-connection load (<= 10,000)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    random.seed(17)
    print("known_hosts (3 keys per host)      index once   per connection   hashed: per connection"
          + ("   paramiko per connection" if args.baseline else ""))
    first = None
    for n in sizes:
        plain = known_hosts_figures(n, baseline=args.baseline and n <= 1000)
        hashed = known_hosts_figures(n, lookups=20, hashed=True)
        first = first or plain
        extra = (f"   {plain['paramiko_per_connection_ms']:>10.1f} ms" if "paramiko_per_connection_ms" in plain
                 else "")
        print(f"  {n:>7,} hosts ({plain['bytes'] / 2**20:6.1f} MB)      {plain['index_s']:7.3f} s   "
              f"{plain['per_connection_ms']:9.4f} ms   {hashed['per_connection_ms']:12.2f} ms{extra}")
    ratio = plain["per_connection_ms"] / first["per_connection_ms"]
    print(f"  per connection at {sizes[-1]:,} / at {sizes[0]:,}: {ratio:.2f}x")
    print("ssh_config (one Host block per device)   parse once   per lookup")
    base = None
    for n in sizes:
        cfg = ssh_config_figures(n)
        base = base or cfg
        print(f"  {n:>7,} blocks                       {cfg['parse_s']:7.3f} s   {cfg['per_lookup_ms']:8.4f} ms")
    print(f"  per lookup at {sizes[-1]:,} / at {sizes[0]:,}: {cfg['per_lookup_ms'] / base['per_lookup_ms']:.2f}x")
    print("journal (devices already in it)   load+compact   per 1,000   appended: CPU per device   bytes per device"
          "   wall per device (10 workers, fdatasync)")
    base = None
    for n in sizes:
        jf = journal_figures(n)
        base = base or jf
        print(f"  {n:>7,} devices ({jf['file_bytes'] / 2**20:6.1f} MB)   {jf['load_s']:7.2f} s   "
              f"{jf['load_ms_per_1000']:7.1f} ms   {jf['cpu_ms_per_device']:10.3f} ms   {jf['bytes_per_device']:8,} B"
              f"   {jf['wall_ms_per_device']:8.2f} ms   ({jf['events_per_device']} events, compacted "
              f"{jf['compacted_bytes_per_device']:,} B and {jf['memory_kb_per_device']:.1f} KB of memory per device)")
    print(f"  CPU per appended device at {sizes[-1]:,} / at {sizes[0]:,}: "
          f"{jf['cpu_ms_per_device'] / base['cpu_ms_per_device']:.2f}x")
    refusal = state_refusal_figures()
    base = refusal.pop("baseline")
    print(f"--state refused before reading (peak RSS of a process that opens a new state file: "
          f"{base['peak_rss_mb']:.0f} MB): " + ", ".join(
              f"{name} {r['seconds']:.3f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['peak_rss_mb'] - base['peak_rss_mb']:+.0f} MB)" for name, r in refusal.items()))


if __name__ == "__main__":
    main()
