"""IoT Edge's LTS lines on the dev kit (the stand-in repository serves 1.5.9, 1.5.10 and 1.6.0 in
Debian 12's pool, 1.5 only in Debian 11's, as packages.microsoft.com does):

- provision without --edge-version installs the newest LTS line for the system (1.6.0-1, agent
  image :1.6); a 1.5.10 pin gives 1.5.10-1, :1.5 and the out-of-support warning;
- `upgrade` of devices installed with 1.5.10: --dry-run, the upgrade (same hub, same device ID, no
  new registration), a second run that changes nothing, a canary whose source lacks 1.6 failing
  with nothing changed and the run stopped before the next device, and a device unhealthy after
  the upgrade put back byte for byte, and a run killed half-way (SIGKILL) resumed with its --state,
  the device upgraded once;
- a Debian 11 device refused without a pin, assigned with 1.5.10.

One module rig of four Debian 12 devices, provisioned once; the tests use them in order. The
devices' state is read from inside them (the rig's exec), never through the product.
"""
import json
import os
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import REPO, ok
from azext_edgetpm.tests.latest.test_edge_install import (  # noqa: F401,F811  (dps: a module fixture)
    DEVICE_CA, changed_since_mark, dps, mark)
from azext_edgetpm.tests.latest.test_lifecycle import write_inventory

pytestmark = [pytest.mark.devkit, pytest.mark.timeout(1500)]

AGENT = "mcr.microsoft.com/azureiotedge-agent:"
WARNING = "IoT Edge 1.5 LTS was serviced until 2026-11-10"


def trust_dps(dev, dps):
    with open(dps.section["ca_bundle"], encoding="ascii") as handle:
        dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=handle.read(), check=True,
                 timeout=300)


def version_of(dev, package):
    return dev.exec(["dpkg-query", "-W", "-f=${Version}", package], check=True).stdout


def config_text(dev):
    return dev.exec(["cat", "/etc/aziot/config.toml"], check=True).stdout


def agent_image(dev):
    return tomllib.loads(config_text(dev))["agent"]["config"]["image"]


def device_info(dev):
    return dev.exec(["cat", "/var/lib/aziot/identityd/device_info"], check=True).stdout


def provision(rig, dps, repo, devices, path, *args):
    inventory = write_inventory(path, devices)
    return ok("edge-tpm", "provision", "--inventory", inventory, *dps.login, "--id-scope", dps.section["id_scope"],
              "--global-endpoint", dps.section["device_endpoint"], "--package-source", repo["base_url"],
              "--known-hosts", rig.known_hosts, "--max-parallel", "3", *args).out


def upgrade(rig, devices, path, *args):
    inventory = write_inventory(path, devices)
    return az("edge-tpm", "upgrade", "--inventory", inventory, "--known-hosts", rig.known_hosts, *args)


@pytest.fixture(scope="module")
def fleet(rig, repo, dps, tmp_path_factory):
    """Four Debian 12 devices: [0] provisioned without a pin, [1..3] with --edge-version 1.5.10."""
    if "1.6.0-1" not in repo.get("edge_versions", ()) or "sources" not in repo:
        pytest.skip("the dev kit's package repository of this checkout has no 1.6 line (devkit/packages)")
    started = rig.add_devices(["fresh"] * 4)
    try:
        for dev in started:
            trust_dps(dev, dps)
        where = tmp_path_factory.mktemp("lts")
        newest = provision(rig, dps, repo, started[:1], where / "newest.csv")
        pinned = provision(rig, dps, repo, started[1:], where / "pinned.csv", "--edge-version", "1.5.10")
        yield {"devices": started, "results": newest + pinned}
    finally:
        for dev in started:
            rig.remove_device(dev)


def test_provision_installs_the_newest_lts_line_and_a_pin_its_own(fleet):
    devices, results = fleet["devices"], fleet["results"]
    assert [r["status"] for r in results] == ["assigned"] * 4, json.dumps(results)[:3000]
    assert version_of(devices[0], "aziot-edge") == "1.6.0-1"
    assert version_of(devices[0], "aziot-identity-service") == "1.6.0-1"
    assert agent_image(devices[0]) == AGENT + "1.6"
    assert results[0]["warnings"] == []
    for dev, result in zip(devices[1:], results[1:]):
        assert version_of(dev, "aziot-edge") == "1.5.10-1"
        assert agent_image(dev) == AGENT + "1.5"
        assert any(WARNING in w for w in result["warnings"]), result["warnings"]


def test_upgrade_dry_run_shows_versions_and_changes_nothing(rig, fleet, tmp_path):
    devices = fleet["devices"][1:3]
    for dev in devices:
        mark(dev)
    plan = upgrade(rig, devices, tmp_path / "dry.csv", "--dry-run")
    assert plan.rc == 0, plan.message
    for row in plan.out:
        assert row["status"] == "planned" and row["current"]["aziot-edge"] == "1.5.10-1"
        assert row["target"] == {"aziot-edge": "1.6.0-1", "aziot-identity-service": "1.6.0-1"}
        assert any("agent.config.image" in c for c in row["changes"]), row["changes"]
    for dev in devices:
        assert changed_since_mark(dev) == []


def test_upgrade_keeps_provisioning_then_a_second_run_changes_nothing(rig, fleet, dps, tmp_path):
    devices, results = fleet["devices"][1:3], fleet["results"][1:3]
    before = {r["registrationId"]: dps.emu.store.get_registration(r["registrationId"]) for r in results}
    infos = [device_info(dev) for dev in devices]
    texts = [config_text(dev) for dev in devices]
    state = tmp_path / "state.json"
    done = upgrade(rig, devices, tmp_path / "up.csv", "--state", str(state))
    assert done.rc == 0, f"{done.message} | {done.recommendation}"
    for dev, row, info, text in zip(devices, done.out, infos, texts):
        assert row["status"] == "upgraded" and row["installed"]["aziot-edge"] == "1.6.0-1", row
        assert version_of(dev, "aziot-edge") == "1.6.0-1" and version_of(dev, "aziot-identity-service") == "1.6.0-1"
        assert agent_image(dev) == AGENT + "1.6"
        # only the image moved: every other line (comments included) is the file it had
        after = config_text(dev).splitlines()
        moved = [(a, b) for a, b in zip(text.splitlines(), after) if a != b]
        assert len(after) == len(text.splitlines()) and len(moved) == 1, moved
        assert moved[0][0].startswith(f'image = "{AGENT}1.5"') and moved[0][1].startswith(f'image = "{AGENT}1.6"')
        assert device_info(dev) == info          # same hub, same device ID: the identity service's backup
        assert "azureiotedge-hub:1.6" in row["hubSide"]["note"] and "set-modules" in row["hubSide"]["command"]
        docker = dev.exec("docker inspect --format '{{.Config.Image}}' edgeAgent", check=True).stdout.strip()
        assert docker == AGENT + "1.6"
    for rid, record in before.items():          # no new registration with DPS
        assert dps.emu.store.get_registration(rid)["etag"] == record["etag"]
    # the same --state: finished devices are skipped; a fresh run finds them on the target
    again = upgrade(rig, devices, tmp_path / "up.csv", "--state", str(state))
    assert again.rc == 0 and all(r["doneEarlier"] for r in again.out), again.out
    for dev in devices:
        mark(dev)
    fresh = upgrade(rig, devices, tmp_path / "up.csv")
    assert fresh.rc == 0 and [r["status"] for r in fresh.out] == ["upgraded"] * 2
    assert all(r["changes"] == [] for r in fresh.out), fresh.out
    for dev in devices:
        assert changed_since_mark(dev) == []


def test_upgrade_refuses_bad_targets_changing_nothing(rig, fleet, tmp_path):
    dev = fleet["devices"][0]          # on 1.6.0
    mark(dev)
    missing = upgrade(rig, [dev], tmp_path / "a.csv", "--edge-version", "1.6.7")
    assert missing.rc != 0 and "does not offer aziot-edge 1.6.7" in missing.out[0]["error"], missing.out
    older = upgrade(rig, [dev], tmp_path / "a.csv", "--edge-version", "1.5.10")
    assert older.rc != 0 and "older than the version installed" in older.out[0]["error"]
    assert "--allow-downgrade" in older.out[0]["recommendation"]
    unknown = upgrade(rig, [dev], tmp_path / "a.csv", "--edge-version", "1.4.0")
    assert unknown.rc != 0 and "1.5, 1.6" in unknown.out[0]["error"]
    assert changed_since_mark(dev) == []


def test_a_failing_canary_stops_the_run_before_the_others_start(rig, fleet, repo, tmp_path):
    canary, other = fleet["devices"][3], fleet["devices"][0]
    # The canary's source becomes Debian 11's pool, which has no 1.6 (as on packages.microsoft.com).
    canary.exec(f"echo {repo['sources']['debian11']!r} > /etc/apt/sources.list.d/microsoft-prod.list && "
                "apt-get -q update >/dev/null", check=True, timeout=300)
    mark(canary)
    state = tmp_path / "state.json"
    run = upgrade(rig, [canary, other], tmp_path / "b.csv", "--canary", "1", "--state", str(state))
    assert run.rc != 0
    first, second = run.out
    assert first["status"] == "failed" and "does not offer a version of IoT Edge 1.6 LTS" in first["error"], first
    assert changed_since_mark(canary) == [] and version_of(canary, "aziot-edge") == "1.5.10-1"
    assert second["status"] == "notStarted" and "--canary 1" in second["error"], second
    assert other.host not in state.read_text()    # never started: a re-run with this state starts it
    canary.exec(f"echo {repo['sources']['debian12']!r} > /etc/apt/sources.list.d/microsoft-prod.list && "
                "apt-get -q update >/dev/null", check=True, timeout=300)


# A dpkg hook on the device that makes the container engine unreachable (its socket moved aside)
# while aziot-edge 1.6 is installed, and brings it back otherwise: the upgraded runtime fails for
# real (aziot-edged cannot start edgeAgent), the rolled back one runs.
BREAK_16 = ("DPkg::Post-Invoke { \"case $(dpkg-query -W -f='${Version}' aziot-edge 2>/dev/null) in "
            "1.6*) [ -S /var/run/docker.sock ] && mv /var/run/docker.sock /var/run/docker.sock.aside || true;; "
            "*) [ -S /var/run/docker.sock.aside ] && mv /var/run/docker.sock.aside /var/run/docker.sock || true;; "
            "esac\"; };\n")


def test_unhealthy_after_the_upgrade_is_rolled_back_byte_for_byte(rig, fleet, repo, tmp_path):
    dev = fleet["devices"][3]
    text = config_text(dev)
    dev.exec("cat > /etc/apt/apt.conf.d/99break-16", input=BREAK_16, check=True)
    try:
        failed = upgrade(rig, [dev], tmp_path / "c.csv", "--settle-timeout", "20")
        assert failed.rc != 0
        row = failed.out[0]
        assert row["status"] == "failed" and row["rolledBack"] == "healthy", row
        assert "put back on aziot-edge 1.5.10-1" in row["error"]
        assert version_of(dev, "aziot-edge") == "1.5.10-1"
        assert version_of(dev, "aziot-identity-service") == repo["identity_versions"]["1.5.10-1"]
        assert config_text(dev) == text          # byte for byte
        status = ok("edge-tpm", "status", "--host", f"{dev.users['admin']['user']}@{dev.host}:{dev.port}",
                    "--ssh-key", dev.key("admin"), "--known-hosts", rig.known_hosts).out
        assert status["healthy"] and status["provisioning"]["state"] == "assigned", status["summary"]
    finally:
        dev.exec("rm -f /etc/apt/apt.conf.d/99break-16")


def test_upgrade_killed_mid_run_resumes_and_upgrades_once(rig, fleet, tmp_path):
    """SIGKILL while the device's packages are being upgraded, then the same command with the same
    --state: the device ends on 1.6.0, and dpkg upgraded aziot-edge to it once over both runs."""
    dev = fleet["devices"][3]            # back on 1.5.10 after the rollback above
    assert version_of(dev, "aziot-edge") == "1.5.10-1"
    upgrades = "grep -c ' upgrade aziot-edge:[a-z0-9]* 1.5.10-1 1.6.0-1' /var/log/dpkg.log || true"
    before = int(dev.exec(upgrades).stdout.strip() or 0)
    offset = int(dev.exec(["stat", "-c", "%s", "/var/log/dpkg.log"], check=True).stdout) + 1
    state = tmp_path / "state.json"
    args = ["edge-tpm", "upgrade", "--inventory", write_inventory(tmp_path / "k.csv", [dev]), "--known-hosts",
            rig.known_hosts, "--state", str(state)]
    proc = subprocess.Popen([sys.executable, "-m", "azure.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ), cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        # dpkg has begun to change IoT Edge's packages in this run: the upgrade is half-way
        while dev.exec(f"tail -c +{offset} /var/log/dpkg.log | grep -q -E "
                       "' (upgrade|status half-installed) aziot-(edge|identity-service)'").returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its packages changed"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert state.read_text().strip()   # the journal of the killed run
    again = ok(*args).out[0]
    assert again["status"] == "upgraded" and not again["doneEarlier"], again
    assert version_of(dev, "aziot-edge") == "1.6.0-1" and agent_image(dev) == AGENT + "1.6"
    assert int(dev.exec(upgrades).stdout.strip() or 0) == before + 1       # upgraded once
    assert ok(*args).out[0]["doneEarlier"]
