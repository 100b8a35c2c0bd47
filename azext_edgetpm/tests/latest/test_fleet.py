"""`az edge-tpm provision --inventory` on a fleet of simulated devices, for real: the devkit's
devices (netns + sshd + swtpm), its DPS emulator and its stand-in IoT Edge packages.

One rig of fresh devices is shared by the module: the fleet run (10 devices + one unreachable),
then two concurrent shards over the same devices; a run killed half-way gets devices of its own.
What happened is read from the emulator (its request counters and enrollments) and from the
devices (sshd's accepted logins, files), never from the product alone.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_edge_install import DEVICE_CA, accepted_logins, read
from azext_edgetpm.tests.latest.test_dps_support import EmulatorEnv, REPO, start_emulator

pytestmark = pytest.mark.devkit

FLEET = 10
PASSWORD_ENV = "FLEET_TEST_SUDO_PASSWORD"


@pytest.fixture(scope="module")
def dps(rig, tmp_path_factory):
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("fleet-dps"), host_ips=[rig.host_ip]))
    yield env
    env.close()


def add_devices(rig, dps, count):
    devices = rig.add_devices(["fresh"] * count)
    with open(dps.section["ca_bundle"], encoding="ascii") as handle:
        ca = handle.read()
    for dev in devices:
        dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=ca, check=True, timeout=300)
    return devices


@pytest.fixture(scope="module")
def fleet(rig, dps):
    devices = add_devices(rig, dps, FLEET)
    yield devices
    for dev in devices:
        rig.remove_device(dev)


def user_of(index):
    """Most devices as root, some through NOPASSWD sudo, some through sudo with a password."""
    return ("root", "admin", "root", "pwadmin")[index % 4]


def write_inventory(path, devices, extra_rows=()):
    """A CSV inventory (written with the csv module: a TCTI holds commas)."""
    import csv
    rows = []
    for index, dev in enumerate(devices):
        user = user_of(index)
        rows.append({"host": f"{dev.users[user]['user']}@{dev.host}:{dev.port}", "ssh_key": dev.key(user),
                     "tcti": dev.tcti, "sudo_password_env": PASSWORD_ENV if user == "pwadmin" else "",
                     "tags": json.dumps({"fleet": "test", "n": index})})
    rows.extend(extra_rows)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["host", "ssh_key", "tcti", "sudo_password_env", "tags"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def provision_args(dps, repo, inventory, *extra):
    return ["edge-tpm", "provision", "--inventory", inventory, *dps.login, "--id-scope", dps.section["id_scope"],
            "--global-endpoint", dps.section["device_endpoint"], "--package-source", repo["base_url"],
            "--known-hosts", rig_known_hosts(dps), *extra]


def rig_known_hosts(_dps):
    return KNOWN_HOSTS[0]


KNOWN_HOSTS = [None]


@pytest.fixture(scope="module", autouse=True)
def known_hosts(rig):
    KNOWN_HOSTS[0] = rig.known_hosts
    return rig.known_hosts


def sudo_env(devices):
    return {PASSWORD_ENV: devices[0].users["pwadmin"]["password"]}


def test_fleet_all_assigned_in_one_run_one_unreachable_fails_alone(fleet, dps, repo, rig, tmp_path):
    unreachable = {"host": f"root@{rig.host_ip}:1", "ssh_key": fleet[0].key("root")}
    inventory = write_inventory(tmp_path / "fleet.csv", fleet, [unreachable])
    dps.emu.reset_counters()
    logins = {dev.name: accepted_logins(dev) for dev in fleet}
    started = time.monotonic()
    result = az(*provision_args(dps, repo, inventory, "--max-parallel", "10", "--state",
                                str(tmp_path / "state.json")), env=sudo_env(fleet))
    elapsed = time.monotonic() - started
    # One device failed: the fleet's "some devices failed" exit code, and the error names it and why.
    from azext_edgetpm.fleet.summary import EXIT_SOME_FAILED
    assert result.rc == EXIT_SOME_FAILED == 4
    assert f"{rig.host_ip}:1" in result.message and "refused the connection" in result.message
    assert "1 of 11 devices failed" in result.message and result.recommendation
    # The JSON (printed all the same) has every device; the ten good ones assigned.
    out = json.loads(result.text)
    assert len(out) == FLEET + 1
    good, bad = out[:FLEET], out[FLEET]
    assert [r["status"] for r in good] == ["assigned"] * FLEET, [r["error"] for r in good]
    assert bad["status"] == "failed" and bad["failedStep"] == "identify" and "refused" in bad["error"]
    for r, dev in zip(good, fleet):
        assert r["assignedHub"] in dps.section["iot_hubs"]
        assert [s["name"] for s in r["steps"]] == ["identify", "enroll", "install", "wait", "status"]
        assert r["edgeVersion"] == repo["latest_edge_version"].rsplit("-", 1)[0]
        # DPS agrees, and the device's config holds the registration ID it enrolled with.
        assert dps.emu.store.get_registration(r["registrationId"])["status"] == "assigned"
        assert r["registrationId"] in read(dev, "/etc/aziot/config.toml")
        # One SSH connection per device for the whole run.
        assert accepted_logins(dev) - logins[dev.name] == 1, dev.name
    # DPS service calls per enrollment (bulk creates, no per-device polling).
    calls = dps.count("service.requests")
    print(f"\nfleet of {FLEET}: {elapsed:.1f} s, {calls} DPS service calls ({calls / FLEET:.2f} per enrollment)")
    assert calls / FLEET <= 0.2
    state = read_state(tmp_path / "state.json")
    assert sum(1 for r in state.values() if r["status"] == "done") == FLEET


def az_process(args, env, **kwargs):
    """The real az in a process of its own (so that it can be killed, or run beside another)."""
    return subprocess.Popen([sys.executable, "-m", "azure.cli", *args, "-o", "json"], env=dict(os.environ, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, **kwargs)


def read_state(path):
    """The per-device view of a state file (the journal's own reader: the file is JSON lines)."""
    from azext_edgetpm.fleet.state import read_records
    return read_records(str(path))


def test_two_shards_run_concurrently_provision_every_device_exactly_once(fleet, dps, repo, tmp_path):
    inventory = write_inventory(tmp_path / "fleet.csv", fleet)
    logins = {dev.name: accepted_logins(dev) for dev in fleet}
    procs = [az_process(provision_args(dps, repo, inventory, "--shard", f"{i}/2", "--state",
                                       str(tmp_path / f"state-{i}.json")), sudo_env(fleet)) for i in (1, 2)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    results = [json.loads(out) for out, _err in outputs]
    hosts = [{r["host"] for r in shard} for shard in results]
    assert hosts[0] and hosts[1] and not hosts[0] & hosts[1]
    assert len(hosts[0] | hosts[1]) == FLEET
    assert all(r["status"] == "assigned" for shard in results for r in shard)
    states = [set(read_state(tmp_path / f"state-{i}.json")) for i in (1, 2)]
    assert not states[0] & states[1] and len(states[0] | states[1]) == FLEET
    # Each device was worked on by one shard only: exactly one SSH login each.
    assert {dev.name: accepted_logins(dev) - logins[dev.name] for dev in fleet} == {dev.name: 1 for dev in fleet}


def test_one_device_with_host_returns_one_result_with_its_steps(fleet, dps, repo):
    dev = fleet[1]  # admin, through NOPASSWD sudo
    result = az("edge-tpm", "provision", "--host", f"admin@{dev.host}:{dev.port}", "--ssh-key", dev.key("admin"),
                "--tcti", dev.tcti, *dps.login, "--id-scope", dps.section["id_scope"], "--global-endpoint",
                dps.section["device_endpoint"], "--package-source", repo["base_url"], "--known-hosts",
                rig_known_hosts(dps))
    assert result.rc == 0, result.message
    out = result.out
    assert out["status"] == "assigned" and out["assignedHub"] in dps.section["iot_hubs"]
    assert [s["name"] for s in out["steps"]] == ["identify", "enroll", "install", "wait", "status"]
    assert all(s["status"] in ("ok", "changed") and s["seconds"] is not None for s in out["steps"])
    steps = {s["name"]: s for s in out["steps"]}
    assert "unchanged" in steps["enroll"]["detail"] or "created" in steps["enroll"]["detail"]


def test_a_sudo_password_is_never_prompted_for_in_a_fleet(fleet, dps, repo, tmp_path):
    dev = fleet[3]
    assert user_of(3) == "pwadmin"
    inventory = write_inventory(tmp_path / "fleet.csv", fleet[:4])
    # The variable the row names is not set: that device fails at once with the reason, nobody is asked.
    result = az(*provision_args(dps, repo, inventory, "--only", f"{dev.host}:{dev.port}"),
                env={PASSWORD_ENV: ""})
    assert result.rc != 0 and "1 of 1 devices failed" in result.message
    out = json.loads(result.text)[0]
    assert out["status"] == "failed" and f"{PASSWORD_ENV} is not set" in out["error"]
    assert "parallel work never prompts" in out["error"]


def test_killed_half_way_then_resumed_with_the_same_state(rig, dps, repo, tmp_path):
    devices = add_devices(rig, dps, 4)
    try:
        inventory = write_inventory(tmp_path / "fleet.csv", devices)
        state = tmp_path / "state.json"
        args = provision_args(dps, repo, inventory, "--max-parallel", "2", "--state", str(state))
        proc = az_process(args, sudo_env(devices))
        from devkit.wait import wait_until

        def some_done():  # some devices done and some not: then a real SIGKILL
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            return [k for k, r in read_state(state).items() if r.get("status") == "done"]
        wait_until(some_done, timeout=400, interval=0.2, what="a device finishing")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        records = read_state(state)
        finished = {k for k, r in records.items() if r.get("status") == "done"}
        assert 1 <= len(finished) < len(devices), records
        by_key = {f"{dev.host}:{dev.port}": dev for dev in devices}
        done_devs = [by_key[k] for k in finished]
        rest = [dev for k, dev in by_key.items() if k not in finished]
        etags = {k: dps.emu.store.get_enrollment(records[k]["steps"]["enroll"]["registrationId"])["etag"]
                 for k in finished}
        configs = {dev.name: dev.exec(["stat", "-c", "%Y %Z", "/etc/aziot/config.toml"], check=True).stdout
                   for dev in done_devs}
        logins = {dev.name: accepted_logins(dev) for dev in devices}
        dps.emu.reset_counters()

        again = az(*args, env=sudo_env(devices))
        assert again.rc == 0, again.message
        out = {r["host"].split("@", 1)[1]: r for r in again.out}
        assert all(r["status"] == "assigned" for r in out.values())
        for key in finished:
            assert out[key]["doneEarlier"]
            # No second enrollment write: the enrollment is the very one (same etag).
            assert dps.emu.store.get_enrollment(out[key]["registrationId"])["etag"] == etags[key]
        for dev in done_devs:
            # Not one install step re-run: nobody even logged in, and config.toml is untouched.
            assert accepted_logins(dev) == logins[dev.name]
            assert dev.exec(["stat", "-c", "%Y %Z", "/etc/aziot/config.toml"], check=True).stdout == configs[dev.name]
        for dev in rest:
            assert accepted_logins(dev) - logins[dev.name] == 1
            assert out[f"{dev.host}:{dev.port}"]["status"] == "assigned" and not out[f"{dev.host}:{dev.port}"]["doneEarlier"]
        print(f"\nkilled with {len(finished)} of {len(devices)} done; resumed: DPS service calls "
              f"{dps.count('service.requests')} for {len(rest)} devices")
    finally:
        for dev in devices:
            rig.remove_device(dev)
