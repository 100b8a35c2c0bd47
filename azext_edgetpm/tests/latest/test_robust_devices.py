"""Hostile input and malicious device output, on simulated devices.

* Shell metacharacters, quotes, newlines, NUL and unicode in every value that can reach a
  device: each value is refused with one error or travels quoted; a canary file (on the device
  and on this machine) proves that none executes.
* A device whose tpm2-tools print garbage or endless output, or whose os-release is garbage:
  one clear error, no traceback, and the memory of az stays bounded.
* After an install, the files it wrote have their intended owners and modes.
* A full provision with --debug leaks no secret (output, az config dir, device files).
* A slow link still works; a link too slow for --ssh-timeout and a device that stops answering
  (before or in the middle of a command) end in one clear timeout error.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from azure.cli.core.azclierror import AzCLIError

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.faults import record
from azext_edgetpm.tests.latest.test_robust_faults import (  # noqa: F401  (module fixtures)
    dps, enroll, host_args, install, read)

pytestmark = pytest.mark.devkit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CANARY = "/tmp/edgetpm-canary"
HOSTILE = (
    f"$(touch {CANARY})", f"`touch {CANARY}`", f"x'; touch {CANARY}; '", f'x"; touch {CANARY}; "',
    f"x\ntouch {CANARY}", f"\u00fc\x00 \U0001f642|touch {CANARY}&", f"-o;touch {CANARY}",
)
PAYLOAD = "/var/secrets/aziot/identityd/dps-additional-data.json"
DEVICE_CA = "/usr/local/share/ca-certificates/devkit-dps-ca.crt"


@pytest.fixture(scope="module")
def installed(rig, dps, repo, tmp_path_factory):
    """One device with IoT Edge installed (and a payload), enrolled and assigned."""
    dev = rig.add_device("fresh")
    with open(dps.section["ca_bundle"], encoding="ascii") as handle:
        dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=handle.read(), check=True)
    enroll(dev, dps)
    payload = tmp_path_factory.mktemp("payload") / "payload.json"
    payload.write_text('{"modelId": "dtmi:contoso:gw;1"}')
    first = install(dev, dps, repo, "--payload", str(payload))
    assert first.rc == 0, f"{first.message} | {first.recommendation}"
    yield dev
    rig.remove_device(dev)


def escaped(dev) -> bool:
    return dev.exec(["test", "-e", CANARY]).returncode == 0 or os.path.exists(CANARY)


def test_files_written_have_their_owners_and_modes(installed):
    def stat(path):
        return installed.exec(["stat", "-c", "%a %U %G", path], check=True).stdout.split()
    assert stat("/etc/aziot/config.toml") == ["600", "root", "root"]
    assert stat(PAYLOAD) == ["640", "root", "aziotid"]
    assert stat(os.path.dirname(PAYLOAD)) == ["750", "root", "aziotid"]
    assert stat("/etc/docker/daemon.json")[1:] == ["root", "root"]
    assert int(stat("/etc/docker/daemon.json")[0], 8) & 0o022 == 0  # nobody else may write it
    for source in installed.exec("ls /etc/apt/sources.list.d/", check=True).stdout.split():
        mode, owner, group = stat("/etc/apt/sources.list.d/" + source)
        assert (owner, group) == ("root", "root") and int(mode, 8) & 0o022 == 0, source
    for name in installed.exec("ls /etc/aziot/", check=True).stdout.split():
        if name.startswith("config.toml") and name != "config.toml.edge.template":  # (the package's)
            assert stat("/etc/aziot/" + name) == ["600", "root", "root"], name  # backups: same settings
    # (the udev rule of --tpm-access udev needs a kernel TPM device: its mode is covered by the
    # plan tests in test_edge_units; simulated devices have a swtpm)


def test_hostile_values_are_refused_or_quoted_never_executed(installed, dps, repo, tmp_path):
    dev = installed
    scope = ["--id-scope", dps.section["id_scope"], "--global-endpoint", dps.section["device_endpoint"]]
    # --flag=value: a value may start with "-". The install runs are dry runs (their checks send
    # the values to the device), but for --tcti and --edge-version, which go to the device's TPM
    # and apt for real and fail there.
    base = ["edge-tpm", "install", *host_args(dev), "--package-source", repo["config_package_url"]]
    dry = [*base, "--dry-run", "--tcti", dev.tcti]
    fields = {
        "ek show --tcti": lambda v: ["edge-tpm", "ek", "show", *host_args(dev), "--tcti=" + v],
        "install --tcti": lambda v: [*base, *scope, "--tcti=" + v],
        "install --edge-version": lambda v: [*base, *scope, "--tcti", dev.tcti, "--edge-version=" + v],
        "install --registration-id": lambda v: [*dry, *scope, "--registration-id=" + v],
        "install --log-driver": lambda v: [*dry, *scope, "--log-driver=" + v],
        "install --global-endpoint": lambda v: [*dry, "--id-scope", dps.section["id_scope"], "--global-endpoint=" + v],
        "install --id-scope": lambda v: [*dry, "--global-endpoint", dps.section["device_endpoint"], "--id-scope=" + v],
        "install --package-source": lambda v: ["edge-tpm", "install", *host_args(dev), *scope, "--tcti", dev.tcti,
                                               "--dry-run",
                                               "--package-source=" + f"deb [trusted=yes] {repo['base_url']} ./ {v}"],
        "install --payload (content)": lambda v: [*dry, *scope, "--payload",
                                                  _file(tmp_path, "p.json", json.dumps({"x": v}))],
        "install --payload (file name)": lambda v: [*dry, *scope, "--payload",
                                                    _file(tmp_path, v.replace("/", "_").replace("\x00", "0"), "{}")],
        "enrollment create --device-id": lambda v: ["edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key",
                                                    _ek(dev), "--registration-id", "hostile-1", "--device-id=" + v],
        "enrollment create --initial-twin-tags": lambda v: [
            "edge-tpm", "enrollment", "create", *dps.login, "--endorsement-key", _ek(dev), "--registration-id",
            "hostile-2", "--initial-twin-tags", json.dumps({"site": v}), "--force"],
    }
    tried = tracebacks = escapes = 0
    failures = []
    for field, build in fields.items():
        for value in HOSTILE:
            result = az(*build(value))
            tried += 1
            if "Traceback" in result.stderr or (result.error is not None
                                                and not isinstance(result.error, (AzCLIError, SystemExit))):
                tracebacks += 1
                failures.append(f"{field} {value!r}: {type(result.error).__name__}: {result.message[:200]}")
            if escaped(dev):
                escapes += 1
                failures.append(f"{field} {value!r}: the canary appeared")
                dev.exec(["rm", "-f", CANARY])
                if os.path.exists(CANARY):
                    os.unlink(CANARY)
            if result.rc != 0:
                assert len(result.message) < 2000, (field, value, len(result.message))
    record("hostile inputs tried", tried)
    record("escapes", escapes)
    record("tracebacks", tracebacks)
    assert failures == []
    # and the device still works: a normal run leaves it installed and assigned
    again = install(dev, dps, repo)
    assert again.rc == 0, f"{again.message} | {again.recommendation}"


def _file(directory, name, text):
    path = directory / (name or "empty")
    path.write_text(text, encoding="utf-8")
    return str(path)


_EK = {}


def _ek(dev):
    if dev.name not in _EK:
        _EK[dev.name] = dev.exec("tpm2_readpublic -c 0x81010001 -o /tmp/ek.pub >/dev/null && base64 -w0 /tmp/ek.pub",
                                 env=dev.tpm_env, check=True).stdout
    return _EK[dev.name]


# A small launcher runs az and reports its child's peak RSS (RUSAGE_CHILDREN). (az's own
# RUSAGE_SELF would not do: Linux keeps the peak across fork and execve, so a process started by
# a big pytest process reports at least pytest's size.)
_PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; sys.stderr.write("
         "'@@PEAK %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def az_process(*args, timeout=180):
    """The real az in a process of its own; returns (rc, stdout, stderr, its peak RSS in MiB)."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "azure.cli", *args],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ), timeout=timeout,
                          check=False)
    err, _, peak = proc.stderr.rpartition("@@PEAK ")
    return proc.returncode, proc.stdout, err, int(peak.split()[0]) / 1024


FAKES = {
    # endless output from the TPM query the EK read starts with
    "tpm2_getcap (24 MiB of output)": (
        "tpm2_getcap", "#!/bin/sh\nyes 'TPM2_PT_GARBAGE: 0xffffffffffffffff' | head -c 25165824\n", "MiB"),
    # binary garbage where the properties should be
    "tpm2_getcap (garbage)": ("tpm2_getcap", "#!/bin/sh\nhead -c 20000 /dev/urandom\n", None),
    # an "EK" that is random bytes
    "tpm2_readpublic (garbage EK)": (
        "tpm2_readpublic", '#!/bin/sh\nfor a; do [ "$prev" = -o ] && head -c 316 /dev/urandom > "$a"; prev=$a; done\n'
        'head -c 3000 /dev/urandom\n', "endorsement key"),
}


def test_malicious_tool_output_gives_one_clear_error_and_bounded_memory(new_device):
    dev = new_device("mfg")
    args = ["edge-tpm", "ek", "show", "--host", f"root@{dev.host}:{dev.port}", "--ssh-key", dev.key("root"),
            "--known-hosts", dev.known_hosts, "--tcti", dev.tcti, "--no-create"]
    rc, _, err, baseline = az_process(*args)
    assert rc == 0, err
    limit = baseline + 48  # what az needs anyway, plus a bounded share of a device's output
    tracebacks = 0
    for what, (tool, script, expected) in FAKES.items():
        path = f"/usr/local/bin/{tool}"
        dev.exec(f"cat > {path} && chmod 755 {path}", input=script, check=True)
        try:
            rc, out, err, peak = az_process(*args)
        finally:
            dev.exec(["rm", "-f", path], check=True)
        record("hostile inputs tried")
        tracebacks += "Traceback" in err
        assert "Traceback" not in err, (what, err[-2000:])
        assert peak < limit, (what, f"az peaked at {peak:.0f} MiB, {baseline:.0f} MiB on a sound device")
        if expected is None:
            assert rc == 0 or ("ERROR:" in err and len(err) < 5000), (what, err[-1000:])
        else:
            assert rc != 0 and expected in err, (what, err[-1000:])
            assert len(err) < 5000, (what, len(err))
    # os-release: garbage, huge, or no ID at all
    for what, content in {"binary": "head -c 4000 /dev/urandom", "huge": "yes 'NAME=x' | head -c 20000000",
                          "no ID": "printf 'NAME=\"Mystery OS\"\\nVERSION_ID=\"1\"\\n'"}.items():
        dev.exec(f"rm -f /etc/os-release && ({content}) > /etc/os-release", check=True)
        rc, out, err, peak = az_process("edge-tpm", "install", "--host", f"root@{dev.host}:{dev.port}", "--ssh-key",
                                        dev.key("root"), "--known-hosts", dev.known_hosts, "--tcti", dev.tcti,
                                        "--id-scope", "0ne00000001", "--registration-id", "os-check", "--dry-run")
        record("hostile inputs tried")
        tracebacks += "Traceback" in err
        assert "Traceback" not in err, (what, err[-2000:])
        assert rc != 0 and "ERROR:" in err and len(err) < 5000, (what, rc, err[-1500:])
        assert peak < limit, (what, f"az peaked at {peak:.0f} MiB, {baseline:.0f} MiB on a sound device")
    # A config.toml beyond what a device file may hold: refused by name, not read (issue 21).
    dev.exec("mkdir -p /etc/aziot && yes '# filler' | head -c 6000000 > /etc/aziot/config.toml", check=True)
    rc, out, err, peak = az_process("edge-tpm", "install", "--host", f"root@{dev.host}:{dev.port}", "--ssh-key",
                                    dev.key("root"), "--known-hosts", dev.known_hosts, "--tcti", dev.tcti,
                                    "--id-scope", "0ne00000001", "--registration-id", "os-check", "--dry-run")
    record("hostile inputs tried")
    tracebacks += "Traceback" in err
    assert rc != 0 and "/etc/aziot/config.toml" in err and "6,000,000 bytes" in err, err[-1500:]
    assert "Traceback" not in err and peak < limit, (err[-1500:], peak)
    record("tracebacks", tracebacks)


SAS = re.compile(r"SharedAccessSignature sr=|[?&]sig=[A-Za-z0-9%+/=]{20,}")
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}")
# az's own credential stores (what `az login` itself keeps, by its design): not ours to judge
AZ_CREDENTIAL_STORES = ("msal_token_cache", "service_principal_entries", "msal_http_cache")


def device_files_with(dev, secrets):
    """Files the device wrote (its overlay's upper layer, /tmp, /run) that hold one of `secrets`."""
    with open(f"/proc/{dev.pid}/mountinfo", encoding="utf-8") as handle:
        root = next(line for line in handle if line.split()[4] == "/" and "overlay" in line)
    upper = re.search(r"upperdir=([^,\s]+)", root).group(1)
    patterns = "\n".join(secrets) + "\n"
    found = []
    for argv in (["nsenter", "-t", str(dev.pid), "-m", "grep", "-rlaF", "-f", "-", upper],
                 ["grep", "-rlaF", "-f", "-", f"/proc/{dev.pid}/root/tmp", f"/proc/{dev.pid}/root/run"]):
        proc = subprocess.run(argv, input=patterns, capture_output=True, text=True, check=False)
        found += proc.stdout.split()
    return found


def test_full_debug_run_leaks_no_secret(rig, dps, repo, new_device, tmp_path):
    """`az edge-tpm provision` end to end with --debug, DPS found through ARM with `az login
    --service-principal`, as a user whose sudo needs a password: neither stdout, stderr, the az
    config directory nor the files left on the device hold the DPS keys, a SAS signature, a
    bearer token, the service principal's secret or the sudo password."""
    from azext_edgetpm.tests.latest.test_dps_support import ArmLogin
    dev = new_device("fresh")
    with open(dps.section["ca_bundle"], encoding="ascii") as handle:
        dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=handle.read(), check=True)
    password = dev.users["pwadmin"]["password"]
    secrets = dps.secrets() + [password]
    login = ArmLogin(dps)
    try:
        env = dict(os.environ, AZ_EDGETPM_SUDO_PASSWORD=password)
        proc = subprocess.run(
            [sys.executable, "-m", "azure.cli", "edge-tpm", "provision", "--host", f"pwadmin@{dev.host}:{dev.port}",
             "--ssh-key", dev.key("pwadmin"), "--known-hosts", dev.known_hosts, "--tcti", dev.tcti,
             "--dps-name", dps.section["dps_name"], "-g", dps.section["resource_group"],
             "--package-source", repo["config_package_url"], "--debug", "-o", "json"],
            capture_output=True, text=True, cwd=REPO, env=env, timeout=600, check=False)
    finally:
        login.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    result = out[0] if isinstance(out, list) else out
    assert result["status"] == "assigned", result
    assert "azext_edgetpm" in proc.stderr  # --debug was on
    hits = []
    for where, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        hits += [f"{where}: {s[:4]}…" for s in secrets if s in text]
        hits += [f"{where}: {m.group(0)[:30]}…" for rx in (SAS, JWT) for m in rx.finditer(text)]
    config_dir = os.environ["AZURE_CONFIG_DIR"]
    for base, _, names in os.walk(config_dir):
        for name in names:
            if name.startswith(AZ_CREDENTIAL_STORES):
                continue
            with open(os.path.join(base, name), encoding="utf-8", errors="replace") as handle:
                text = handle.read()
            hits += [f"{name}: {s[:4]}…" for s in secrets if s in text]
            hits += [f"{name}: {m.group(0)[:30]}…" for rx in (SAS, JWT) for m in rx.finditer(text)]
    scanned = sum(len(files) for _, _, files in os.walk(config_dir))
    assert scanned > 0
    hits += [f"device {path}" for path in device_files_with(dev, secrets)]
    # (the scan finds what is there: the registration ID is in the device's config.toml)
    assert any(p.endswith("/etc/aziot/config.toml") for p in device_files_with(dev, [result["registrationId"]]))
    record("secret hits", len(hits))
    assert hits == []


class SlowLink:
    """A TCP relay in front of a device's sshd that delays every chunk by `delay` seconds in each
    direction. (This kernel has no netem qdisc for `tc`, so the latency is added in user space on
    the path between az and the device.) `hold_banner` delays the device's first bytes further."""

    def __init__(self, host, port, delay, hold_banner=0.0):
        import socket
        import threading
        self.target, self.delay, self.hold_banner = (host, port), delay, hold_banner
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            for src, dst, first_delay in ((client, upstream, 0.0), (upstream, client, self.hold_banner)):
                self.threading.Thread(target=self._pump, args=(src, dst, first_delay), daemon=True).start()

    def _pump(self, src, dst, first_delay):
        import time as clock
        extra = first_delay
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                clock.sleep(self.delay + extra)
                extra = 0.0
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self):
        self.server.close()


def _known_hosts_for(dev, port, path):
    path.write_text("".join(f"[127.0.0.1]:{port} {key}\n" for key in dev.host_keys))
    return str(path)


def test_slow_link_works_and_a_device_that_stops_answering_times_out_clearly(new_device, tmp_path):
    dev = new_device("mfg")

    def ek_show(port, known_hosts, *extra):
        return az("edge-tpm", "ek", "show", "--host", f"root@127.0.0.1:{port}", "--ssh-key", dev.key("root"),
                  "--known-hosts", known_hosts, "--tcti", dev.tcti, "--no-create", *extra)

    # 150 ms each way on every chunk: slower, but it works
    link = SlowLink(dev.host, dev.port, 0.15)
    try:
        slow = ek_show(link.port, _known_hosts_for(dev, link.port, tmp_path / "kh1"))
        assert slow.rc == 0, slow.message
    finally:
        link.close()
    # a link so slow that the SSH banner comes after --ssh-timeout: one clear timeout error
    link = SlowLink(dev.host, dev.port, 0.05, hold_banner=6.0)
    try:
        started = time.monotonic()
        late = ek_show(link.port, _known_hosts_for(dev, link.port, tmp_path / "kh2"), "--ssh-timeout", "2")
        took = time.monotonic() - started
    finally:
        link.close()
    record("faults injected")
    assert late.rc != 0 and "Traceback" not in late.stderr
    assert "Timed out after 2s" in late.message and "--ssh-timeout" in late.recommendation, late.message
    assert took < 30
    # the device stops answering (every process frozen, TCP still accepted by its kernel)
    from devkit import netns
    def signal_all(pids, signum):
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass  # a short-lived process (an ended SSH session) that is gone already

    pids = netns.netns_pids(dev.netns)
    signal_all(pids, signal.SIGSTOP)
    try:
        started = time.monotonic()
        frozen = az("edge-tpm", "ek", "show", "--host", f"root@{dev.host}:{dev.port}", "--ssh-key", dev.key("root"),
                    "--known-hosts", dev.known_hosts, "--tcti", dev.tcti, "--no-create", "--ssh-timeout", "3")
        took = time.monotonic() - started
    finally:
        signal_all(pids, signal.SIGCONT)
    record("faults injected")
    assert frozen.rc != 0 and "Traceback" not in frozen.stderr
    assert "Timed out after 3s" in frozen.message and frozen.recommendation, frozen.message
    assert took < 30
    # the device stops answering in the middle of a command (frozen while its TPM query runs):
    # az notices within --ssh-timeout instead of waiting out the command's own timeout
    import threading
    from azext_edgetpm.tests.latest.faults import Severer
    severer = Severer(dev, tools=("tpm2_getcap",)).install()
    severer.arm(r"^tpm2_getcap", hold=True)
    result = {}
    runner = threading.Thread(target=lambda: result.update(run=az(
        "edge-tpm", "ek", "show", "--host", f"root@{dev.host}:{dev.port}", "--ssh-key", dev.key("root"),
        "--known-hosts", dev.known_hosts, "--tcti", dev.tcti, "--no-create", "--ssh-timeout", "3")))
    runner.start()
    try:
        severer.wait_fired(1, timeout=60)
        pids = netns.netns_pids(dev.netns)
        started = time.monotonic()
        signal_all(pids, signal.SIGSTOP)
        runner.join(timeout=60)
        took = time.monotonic() - started
    finally:
        signal_all(pids, signal.SIGCONT)
    severer.remove()
    record("faults injected")
    assert not runner.is_alive()
    stuck = result["run"]
    assert stuck.rc != 0 and "Traceback" not in stuck.stderr
    assert "stopped answering" in stuck.message and "--ssh-timeout" in stuck.recommendation, stuck.message
    assert took < 30, took
    # and once it answers again, so does the command
    again = az("edge-tpm", "ek", "show", "--host", f"root@{dev.host}:{dev.port}", "--ssh-key", dev.key("root"),
               "--known-hosts", dev.known_hosts, "--tcti", dev.tcti, "--no-create")
    assert again.rc == 0, again.message
