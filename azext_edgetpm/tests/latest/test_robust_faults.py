"""Faults during `az edge-tpm install`, on simulated devices, and what must hold after them.

* The SSH connection (and the remote command with it) killed at every step of an install, the
  install run again after each: the device finishes; config.toml is always the old file or the
  new one, never a mix; no staging file is left; `dpkg --audit` is clean.
* The device loses power in the middle of the install (packages being unpacked): the re-run
  completes.
* DPS throttles and fails (429/503) at a high rate and restarts mid-run with its state kept:
  every device still ends assigned.
* A slow link and a device that stops answering: clear timeouts, no traceback.
"""
import os
import shlex
import re
import time
import tomllib

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.faults import Severer, record
from azext_edgetpm.tests.latest.test_dps_support import EmulatorEnv, ok, start_emulator

pytestmark = pytest.mark.devkit

CONFIG = "/etc/aziot/config.toml"
DEVICE_CA = "/usr/local/share/ca-certificates/devkit-dps-ca.crt"
# Files an install stages on the device that must not outlive a run (its own names).
# (Private mktemp directories of a remote script killed by SIGKILL, which no trap can catch, stay
# in the device's /tmp until its next boot, as on any Linux: they hold nothing of ours.)
# (The checkout the tests run from is left out: a clone in /tmp/edgetpm-... is visible in the device's
# root too, and is not a leftover.)
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LEFTOVERS = (f"find /tmp /var/tmp /etc /var/secrets -xdev -path {shlex.quote(_REPO)} -prune -o "
             "\\( -name '*.tmp-edgetpm' -o -name 'edgetpm-*' "
             "-o -name '*.dpkg-new' -o -name '*.dpkg-tmp' \\) -print 2>/dev/null; "
             "find /var/lib/edge-tpm/staging -type f -print 2>/dev/null")


@pytest.fixture(scope="module")
def dps(rig, tmp_path_factory):
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("robust-dps"), host_ips=[rig.host_ip],
                                     assignment_delay_s=0.0, operation_retry_after_s=0))
    yield env
    env.close()


@pytest.fixture
def device(new_device, dps):
    def make(variant="fresh"):
        dev = new_device(variant)
        with open(dps.section["ca_bundle"], encoding="ascii") as handle:
            dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=handle.read(), check=True)
        return dev
    return make


def host_args(dev, user="admin"):
    return ["--host", f"{dev.users[user]['user']}@{dev.host}:{dev.port}", "--ssh-key", dev.key(user),
            "--known-hosts", dev.known_hosts]


def install(dev, dps, repo, *extra):
    return az("edge-tpm", "install", *host_args(dev), "--tcti", dev.tcti, "--id-scope", dps.section["id_scope"],
              "--global-endpoint", dps.section["device_endpoint"], "--package-source", repo["config_package_url"],
              *extra)


def enroll(dev, dps):
    return ok("edge-tpm", "enrollment", "create", *host_args(dev, "root"), "--tcti", dev.tcti, *dps.login).out


def read(dev, path):
    proc = dev.exec(["cat", path])
    return proc.stdout if proc.returncode == 0 else None


def statuses(result):
    return {s["name"]: s["status"] for s in result.out["steps"]}


def assert_consistent(dev, old_config, new_config=None, settled=True):
    """config.toml is the old file or a complete new one; once a run finished (`settled`), no
    staging file is left."""
    text = read(dev, CONFIG)
    if text != old_config:
        assert text is not None
        data = tomllib.loads(text)  # complete: parses
        assert data["provisioning"]["source"] == "dps"
        if new_config is not None:
            assert text == new_config
    if settled:
        assert dev.exec(LEFTOVERS).stdout.split() == []


def dpkg_audit(dev):
    return dev.exec(["dpkg", "--audit"]).stdout.strip()


# Where the connection is cut, step by step through one install (regular expressions over the
# shimmed calls "tool args"): each is the first call of that step's change on a fresh device.
CUTS = (
    ("os", r"^dpkg-query "),                                    # reading the device's state
    ("package-source", r"^dpkg (-i|--install)|^apt-get .*update"),
    ("container-engine", r"^apt-get .* install .*moby-engine"),
    ("iotedge", r"^apt-get .* install .*aziot-edge"),
    ("config", r"^mv .*config\.toml"),                            # staged, not yet renamed
    ("tpm-access", r"^dpkg-query "),                              # the read after config (skipped step on swtpm)
    ("runtime", r"^iotedge config apply"),
)


def test_connection_killed_at_every_step_then_rerun_finishes(device, repo, dps):
    dev = device()
    enroll(dev, dps)
    old_config = "# kept until the new file is complete\nhostname = \"site-gw\"\n"
    dev.exec(f"mkdir -p /etc/aziot && cat > {CONFIG} && chmod 600 {CONFIG}", input=old_config, check=True)
    severer = Severer(dev).install()
    fired = []
    try:
        for step, pattern in CUTS:
            severer.arm(pattern)
            run = install(dev, dps, repo)
            if not severer.fired()[len(fired):]:
                # this step had nothing left to do: the previous re-run already passed it
                severer.disarm()
                assert run.rc == 0, run.message
                continue
            fired = severer.fired()
            record("faults injected")
            assert run.rc != 0, f"cut at {step} ({fired[-1]}) but the run succeeded"
            assert "Traceback" not in run.stderr
            assert "connection" in run.message.lower() or "ssh" in run.message.lower(), run.message
            assert "again" in run.recommendation, run.recommendation
            assert_consistent(dev, old_config, settled=False)
        severer.disarm()
        final = install(dev, dps, repo)
        record("runs resumed", len(fired))
    finally:
        severer.remove()
    assert final.rc == 0, f"{final.message} | {final.recommendation}"
    assert final.out["runtime"]["provisioning"]["state"] == "assigned", final.out["runtime"]
    record("devices assigned")
    assert len(fired) >= 5, fired  # every step that changes something was cut
    new_config = read(dev, CONFIG)
    assert_consistent(dev, old_config, new_config)
    assert tomllib.loads(new_config)["hostname"] == "site-gw"
    assert dpkg_audit(dev) == ""
    again = install(dev, dps, repo)
    assert again.rc == 0 and not again.out["changed"], again.out["summary"]


def test_power_cut_in_the_middle_of_install_then_rerun_completes(rig, device, repo, dps):
    """The power goes while dpkg configures aziot-edge (its postinst half run): after the reboot
    the re-run repairs dpkg's state and completes. (apt runs dpkg by absolute path, so the
    freeze is on usermod, shimmed in place, which the package's maintainer script calls.)"""
    from devkit.devices import state_supported
    if not state_supported():
        pytest.skip("power cycles need a tmpfs at /dev/shm apart from /")
    import threading
    dev = device()
    enroll(dev, dps)
    severer = Severer(dev).install().replace("/usr/sbin/usermod")
    try:
        severer.arm(r"^usermod -aG \S+ iotedge$", hold=True)
        result = {}
        runner = threading.Thread(target=lambda: result.update(run=install(dev, dps, repo)))
        runner.start()
        severer.wait_fired(1, timeout=60)
        assert "aziot-edge" in dpkg_audit(dev)  # caught in the middle: half configured
        rig.power_cycle(dev)
        record("faults injected")
        runner.join(timeout=120)
        assert not runner.is_alive()
        cut = result["run"]
        assert cut.rc != 0 and "Traceback" not in cut.stderr
        assert "connection" in cut.message.lower(), cut.message
        assert dpkg_audit(dev) != ""  # the reboot did not repair anything by itself
        again = install(dev, dps, repo)
        record("runs resumed")
    finally:
        severer.remove()
    assert again.rc == 0, f"{again.message} | {again.recommendation}"
    assert again.out["runtime"]["provisioning"]["state"] == "assigned", again.out["runtime"]
    record("devices assigned")
    assert dpkg_audit(dev) == ""
    assert_consistent(dev, None)


def restart_emulator(dps):
    """Stop the emulator and start it again on the same port and directory (state kept)."""
    from devkit.dps import Emulator
    old = dps.emu
    port = int(old.url.rsplit(":", 1)[1].split("/")[0])
    old.stop()
    new = Emulator(old.directory, host_ips=[dps.section["device_endpoint"].split("//")[1].rsplit(":", 1)[0]],
                   port=port, assignment_delay_s=0.0, operation_retry_after_s=0).start()
    dps.emu = new
    return new


def test_dps_throttling_failing_and_restarting_mid_run_every_device_ends_assigned(rig, device, repo, dps, tmp_path):
    """A fleet run while DPS answers 503 (then 429) to a third of all requests and restarts in
    the middle with its state kept: every device ends assigned, each exactly once."""
    import csv
    import json
    import threading
    devices = [device() for _ in range(2)]
    inventory = tmp_path / "fleet.csv"
    with open(inventory, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["host", "ssh_key", "tcti"])
        writer.writeheader()
        for dev in devices:
            writer.writerow({"host": f"root@{dev.host}:{dev.port}", "ssh_key": dev.key("root"), "tcti": dev.tcti})
    faults = {"fail_probability": {"service": 0.33, "device": 0.33}, "retry_after": 1, "seed": 8}
    dps.emu.configure(faults=dict(faults, status=503), reset_counters=True)
    args = ["edge-tpm", "provision", "--inventory", str(inventory), *dps.login, "--id-scope", dps.section["id_scope"],
            "--global-endpoint", dps.section["device_endpoint"], "--package-source", repo["base_url"],
            "--known-hosts", rig.known_hosts, "--max-parallel", "2", "--state", str(tmp_path / "state.json")]
    result = {}
    runner = threading.Thread(target=lambda: result.update(run=az(*args)))
    runner.start()
    deadline = time.monotonic() + 120
    while not any(k.startswith("endpoint.PUT /{scope}/registrations/{id}/register") for k in dps.emu.counters()):
        assert runner.is_alive() and time.monotonic() < deadline, "no device reached DPS"
        time.sleep(0.05)
    injected = dps.emu.counters().get("service.faults_injected", 0) + dps.emu.counters().get("device.faults_injected", 0)
    restart_emulator(dps).configure(faults=dict(faults, status=429))  # devices are registering now
    runner.join(timeout=300)
    counters = dps.emu.counters()
    injected += counters.get("service.faults_injected", 0) + counters.get("device.faults_injected", 0)
    dps.emu.configure(clear_faults=True)
    record("faults injected", injected + 1)  # + the restart
    run = result["run"]
    assert run.rc == 0, f"{run.message} | {run.recommendation} | {run.stderr[-1500:]}"
    out = json.loads(run.text)
    assert [r["status"] for r in out] == ["assigned"] * len(devices), [r.get("error") for r in out]
    assert injected >= 3, counters

    registrations = [dps.emu.store.get_registration(r["registrationId"]) for r in out]
    assert [r["status"] for r in registrations] == ["assigned"] * len(devices)
    device_ids = [r["deviceId"] for r in registrations]
    duplicates = len(device_ids) - len(set(device_ids))
    record("devices assigned", len(devices))
    record("duplicates", duplicates)
    assert duplicates == 0
