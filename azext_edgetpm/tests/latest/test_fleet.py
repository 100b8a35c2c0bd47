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
def repo(rig):
    from devkit.packages.service import AptService
    service = AptService()
    try:
        section = service.up(rig)
    except Exception as exc:  # pylint: disable=broad-except  # e.g. dpkg-dev missing
        pytest.skip(f"stand-in package repository unavailable: {exc}")
    yield section
    service.down(rig, section)


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
        dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=ca, check=True)
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
    # One device failed: exit non-zero, and the error names it and why.
    assert result.rc != 0
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
    state = json.loads((tmp_path / "state.json").read_text())
    assert sum(1 for r in state["devices"].values() if r["status"] == "done") == FLEET
