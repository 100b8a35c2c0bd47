"""IoT Edge's LTS lines on the dev kit (the stand-in repository serves 1.5.9, 1.5.10 and 1.6.0 in
Debian 12's pool, 1.5 only in Debian 11's, as packages.microsoft.com does):

- provision without --edge-version installs the newest LTS line for the system (1.6.0-1, agent
  image :1.6); a 1.5.10 pin gives 1.5.10-1 (1.5.10-1.el9 on rhel9), :1.5 and the out-of-support
  warning;
- `upgrade --inventory` of a MIXED fleet (Debian 12 and rhel9) installed with 1.5.10: --dry-run,
  a canary whose source lacks 1.6 failing with nothing changed and the run stopped before the next
  device, devices unhealthy after the upgrade put back byte for byte (apt and dnf downgrades to the
  recorded versions); then ONE run over the four devices (same hub, same device ID, no new
  registration) and a second run that changes nothing; the four put back on 1.5.10 with
  --allow-downgrade; a run over the four killed half-way (SIGKILL) resumed with its --state, every
  device upgraded once; bad targets refused;
- a Debian 11 device refused without a pin, assigned with 1.5.10.

One module rig of five devices, provisioned once: [0] Debian 12 without a pin, then rhel9, Debian
12, rhel9, Debian 12 pinned to 1.5.10, so that every upgrade test runs on both systems; the tests
use them in order (the canary and rollback tests on [3:5], the four-device runs on [1:5]). The
devices' state is read from inside them (the rig's exec: dpkg-query or rpm), never through the
product.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import REPO, ok
from azext_edgetpm.tests.latest.test_edge_install import (  # noqa: F401,F811  (dps: a module fixture)
    changed_since_mark, dps, is_rhel, mark, trust_dps)
from azext_edgetpm.tests.latest.test_lifecycle import write_inventory

pytestmark = [pytest.mark.devkit, pytest.mark.timeout(1500)]

AGENT = "mcr.microsoft.com/azureiotedge-agent:"
WARNING = "IoT Edge 1.5 LTS was serviced until 2026-11-10"


def version_of(dev, package):
    """The installed version as the device's own package manager reads it (rpm: VERSION-RELEASE)."""
    if is_rhel(dev):
        return dev.exec(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", package], check=True).stdout
    return dev.exec(["dpkg-query", "-W", "-f=${Version}", package], check=True).stdout


def pkg_version(dev, version):
    """A Debian package version (1.6.0-1) as the device's system names it (1.6.0-1.el9 on rhel9)."""
    return f"{version}.el{dev.variant.split('+')[0][len('rhel'):]}" if is_rhel(dev) else version


def changed(dev):
    """changed_since_mark, less what merely reading writes on rhel: dnf's metadata cache (`dnf repoquery`,
    how the product reads what the source offers, refreshes /var/cache/dnf by itself: dnf.conf(5)
    metadata_expire) and the SQLite side files of the rpm database that any `rpm -q` opens."""
    return [p for p in changed_since_mark(dev) if not p.startswith("/var/cache/dnf/")
            and p not in ("/var/lib/rpm/rpmdb.sqlite-shm", "/var/lib/rpm/rpmdb.sqlite-wal")]


def systems(devices):
    return sorted({"rhel" if is_rhel(dev) else "debian" for dev in devices})


def config_text(dev):
    return dev.exec(["cat", "/etc/aziot/config.toml"], check=True).stdout


def agent_image(dev):
    return tomllib.loads(config_text(dev))["agent"]["config"]["image"]


def device_info(dev):
    return dev.exec(["cat", "/var/lib/aziot/identityd/device_info"], check=True).stdout


def provision(rig, dps, repo, devices, path, *args, edge_versions=None):
    inventory = write_inventory(path, devices, edge_versions=edge_versions)
    return ok("edge-tpm", "provision", "--inventory", inventory, *dps.login, "--id-scope", dps.section["id_scope"],
              "--global-endpoint", dps.section["device_endpoint"], "--package-source", repo["base_url"],
              "--known-hosts", rig.known_hosts, "--max-parallel", "3", *args).out


def upgrade(rig, devices, path, *args):
    inventory = write_inventory(path, devices)
    return az("edge-tpm", "upgrade", "--inventory", inventory, "--known-hosts", rig.known_hosts, *args)


@pytest.fixture(scope="module")
def fleet(rig, repo, dps, tmp_path_factory):
    """Five devices: [0] Debian 12 provisioned without a pin; [1..4] rhel9, Debian 12, rhel9, Debian 12
    pinned to 1.5.10 (the identity service each got is recorded, for the rollback)."""
    if "1.6.0-1" not in repo.get("edge_versions", ()) or "rhel9" not in (repo.get("sources") or {}):
        pytest.skip("the dev kit's package repository of this checkout has no 1.6 line or no dnf repository")
    started = rig.add_devices(["fresh", "rhel9", "fresh", "rhel9", "fresh"])
    try:
        for dev in started:
            trust_dps(dev, dps)
        where = tmp_path_factory.mktemp("lts")
        # one fleet run: the inventory's edge_version column pins [1..4]
        results = provision(rig, dps, repo, started, where / "fleet.csv", edge_versions=[None] + ["1.5.10"] * 4)
        identity = {dev.name: version_of(dev, "aziot-identity-service") for dev in started[1:]}
        yield {"devices": started, "results": results, "identity": identity}
    finally:
        for dev in started:
            rig.remove_device(dev)


def test_provision_installs_the_newest_lts_line_and_a_pin_its_own(fleet):
    devices, results = fleet["devices"], fleet["results"]
    assert [r["status"] for r in results] == ["assigned"] * 5, json.dumps(results)[:3000]
    assert version_of(devices[0], "aziot-edge") == "1.6.0-1"
    assert version_of(devices[0], "aziot-identity-service") == "1.6.0-1"
    assert agent_image(devices[0]) == AGENT + "1.6"
    assert results[0]["warnings"] == []
    assert systems(devices[1:3]) == systems(devices[3:]) == ["debian", "rhel"]
    for dev, result in zip(devices[1:], results[1:]):
        assert version_of(dev, "aziot-edge") == pkg_version(dev, "1.5.10-1")
        assert agent_image(dev) == AGENT + "1.5"
        assert any(WARNING in w for w in result["warnings"]), result["warnings"]


def test_upgrade_dry_run_shows_versions_and_changes_nothing(rig, fleet, tmp_path):
    devices = fleet["devices"][1:]
    for dev in devices:
        mark(dev)
    plan = upgrade(rig, devices, tmp_path / "dry.csv", "--dry-run")
    assert plan.rc == 0, plan.message
    for dev, row in zip(devices, plan.out):
        assert row["status"] == "planned" and row["current"]["aziot-edge"] == pkg_version(dev, "1.5.10-1"), row
        new = pkg_version(dev, "1.6.0-1")
        assert row["target"] == {"aziot-edge": new, "aziot-identity-service": new}
        assert any("agent.config.image" in c for c in row["changes"]), row["changes"]
    for dev in devices:
        assert changed(dev) == []


# rhel9: the repository file of packages-microsoft-prod told to leave out the 1.6 packages
# (dnf.conf(5) excludepkgs): for dnf, a source without 1.6. Debian: Debian 11's pool, which has no 1.6
# (as on packages.microsoft.com).
MS_REPO = "/etc/yum.repos.d/microsoft-prod.repo"
NO_16 = "excludepkgs=aziot-edge-1.6*,aziot-identity-service-1.6*"


def test_a_failing_canary_stops_the_run_before_the_others_start(rig, fleet, repo, tmp_path):
    """Each system's device is the failing canary of one run, the other device the one never started."""
    rhel, debian = fleet["devices"][3], fleet["devices"][4]
    rhel.exec(f"echo {NO_16!r} >> {MS_REPO}", check=True)
    debian.exec(f"echo {repo['sources']['debian11']!r} > /etc/apt/sources.list.d/microsoft-prod.list && "
                "apt-get -q update >/dev/null", check=True, timeout=300)
    try:
        for canary, other in ((rhel, debian), (debian, rhel)):
            mark(canary)
            mark(other)
            state = tmp_path / f"state-{canary.name}.json"
            run = upgrade(rig, [canary, other], tmp_path / "b.csv", "--canary", "1", "--state", str(state))
            assert run.rc != 0
            first, second = run.out
            assert first["status"] == "failed" and "does not offer a version of IoT Edge 1.6 LTS" in first["error"], \
                first
            assert version_of(canary, "aziot-edge") == pkg_version(canary, "1.5.10-1")
            assert second["status"] == "notStarted" and "--canary 1" in second["error"], second
            assert other.host not in state.read_text()    # never started: a re-run with this state starts it
            for dev in (canary, other):
                assert changed(dev) == [], dev.variant
    finally:
        rhel.exec(f"sed -i '/^excludepkgs=/d' {MS_REPO}", check=True)
        debian.exec(f"echo {repo['sources']['debian12']!r} > /etc/apt/sources.list.d/microsoft-prod.list && "
                    "apt-get -q update >/dev/null", check=True, timeout=300)


# A package-manager hook on the device that makes the container engine unreachable (its socket moved
# aside) while aziot-edge 1.6 is installed, and brings it back otherwise: the upgraded runtime fails for
# real (aziot-edged cannot start edgeAgent), the rolled back one runs. On Debian a dpkg hook (apt.conf(5)
# DPkg::Post-Invoke), on rhel9 a dnf plugin's hook run after each transaction (dnf.Plugin.transaction).
SWITCH = ("case $({read}) in "
          "1.6*) [ -S /var/run/docker.sock ] && mv /var/run/docker.sock /var/run/docker.sock.aside || true;; "
          "*) [ -S /var/run/docker.sock.aside ] && mv /var/run/docker.sock.aside /var/run/docker.sock || true;; "
          "esac")
BREAK_16 = "DPkg::Post-Invoke { \"%s\"; };\n" % SWITCH.format(
    read="dpkg-query -W -f='${Version}' aziot-edge 2>/dev/null")
BREAK_16_DNF = ("import subprocess\n\nimport dnf\n\n\nclass Break16(dnf.Plugin):\n    name = 'break16'\n\n"
                "    def transaction(self):\n        subprocess.call(['sh', '-c', %r])\n"
                % SWITCH.format(read="rpm -q --qf '%{VERSION}' aziot-edge 2>/dev/null"))
BREAKS = {"debian": ("/etc/apt/apt.conf.d/99break-16", BREAK_16),
          "rhel": ("/usr/lib/python3/dist-packages/dnf-plugins/break16.py", BREAK_16_DNF)}


def breaker(dev):
    return BREAKS["rhel" if is_rhel(dev) else "debian"]


def test_unhealthy_after_the_upgrade_is_rolled_back_byte_for_byte(rig, fleet, tmp_path):
    devices = fleet["devices"][3:]                    # rhel9, Debian 12
    texts = [config_text(dev) for dev in devices]
    for dev in devices:
        path, text = breaker(dev)
        dev.exec(f"mkdir -p $(dirname {path}) && cat > {path}", input=text, check=True)
    try:
        failed = upgrade(rig, devices, tmp_path / "c.csv", "--settle-timeout", "20")
        assert failed.rc != 0
        for dev, row, text in zip(devices, failed.out, texts):
            old = pkg_version(dev, "1.5.10-1")
            assert row["status"] == "failed" and row["rolledBack"] == "healthy", row
            assert f"put back on aziot-edge {old}" in row["error"]
            assert version_of(dev, "aziot-edge") == old
            assert version_of(dev, "aziot-identity-service") == fleet["identity"][dev.name]
            assert config_text(dev) == text          # byte for byte
            status = ok("edge-tpm", "status", "--host", f"{dev.users['admin']['user']}@{dev.host}:{dev.port}",
                        "--ssh-key", dev.key("admin"), "--known-hosts", rig.known_hosts).out
            assert status["healthy"] and status["provisioning"]["state"] == "assigned", status["summary"]
    finally:
        for dev in devices:
            dev.exec(f"rm -f {breaker(dev)[0]}")


def test_upgrade_of_the_four_keeps_provisioning_then_a_second_run_changes_nothing(rig, fleet, dps, tmp_path):
    """ONE `upgrade --inventory` of the four devices on 1.5.10 (rhel9, Debian 12, rhel9, Debian 12; the
    canary and the rollback above left [3] and [4] there)."""
    devices, results = fleet["devices"][1:], fleet["results"][1:]
    for dev in devices:
        assert version_of(dev, "aziot-edge") == pkg_version(dev, "1.5.10-1"), dev.variant
    before = {r["registrationId"]: dps.emu.store.get_registration(r["registrationId"]) for r in results}
    infos = [device_info(dev) for dev in devices]
    texts = [config_text(dev) for dev in devices]
    fleet["configs"] = dict(zip((dev.name for dev in devices), texts))      # (for the downgrade below)
    state = tmp_path / "state.json"
    done = upgrade(rig, devices, tmp_path / "up.csv", "--state", str(state))
    assert done.rc == 0, f"{done.message} | {done.recommendation}"
    assert len(done.out) == 4
    for dev, row, info, text in zip(devices, done.out, infos, texts):
        new = pkg_version(dev, "1.6.0-1")
        assert row["status"] == "upgraded" and row["installed"]["aziot-edge"] == new, row
        assert version_of(dev, "aziot-edge") == new and version_of(dev, "aziot-identity-service") == new
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
        assert dps.emu.store.get_registration(rid)["etag"] == record["etag"], rid
    # the same --state: finished devices are skipped; a fresh run finds them on the target
    again = upgrade(rig, devices, tmp_path / "up.csv", "--state", str(state))
    assert again.rc == 0 and len(again.out) == 4 and all(r["doneEarlier"] for r in again.out), again.out
    for dev in devices:
        mark(dev)
    fresh = upgrade(rig, devices, tmp_path / "up.csv")
    assert fresh.rc == 0 and [r["status"] for r in fresh.out] == ["upgraded"] * 4
    assert all(r["changes"] == [] for r in fresh.out), fresh.out
    for dev in devices:
        assert changed(dev) == [], dev.variant


def test_allow_downgrade_puts_the_four_back_on_1_5_10(rig, fleet, tmp_path):
    """`upgrade --edge-version 1.5.10 --allow-downgrade` over the four: the packages the 1.5.10 pin had
    (the identity service the provisioning got), agent :1.5 again, config.toml as before the upgrade."""
    devices = fleet["devices"][1:]
    if "configs" not in fleet:
        pytest.skip("the upgrade of the four above did not run")
    down = upgrade(rig, devices, tmp_path / "down.csv", "--edge-version", "1.5.10", "--allow-downgrade")
    assert down.rc == 0, f"{down.message} | {down.recommendation} | {down.out}"
    assert [r["status"] for r in down.out] == ["upgraded"] * 4, down.out
    for dev in devices:
        assert version_of(dev, "aziot-edge") == pkg_version(dev, "1.5.10-1"), dev.variant
        assert version_of(dev, "aziot-identity-service") == fleet["identity"][dev.name], dev.variant
        assert agent_image(dev) == AGENT + "1.5"
        assert config_text(dev) == fleet["configs"][dev.name], dev.variant      # the image line moved back


# How each system's log of package changes records an upgrade of aziot-edge from 1.5.10 to 1.6.0
# (dpkg.log's upgrade line; dnf.rpm.log's line for the package that leaves), and the start of one.
UPGRADED = {"debian": ("/var/log/dpkg.log", "' upgrade aziot-edge:[a-z0-9]* 1.5.10-1 1.6.0-1'"),
            "rhel": ("/var/log/dnf.rpm.log", "'Upgraded: aziot-edge-1.5.10-'")}
STARTED = {"debian": "' (upgrade|status half-installed) aziot-(edge|identity-service)'",
           "rhel": "'(Upgrade|Upgraded): aziot-(edge|identity-service)-'"}


def upgrades(dev):
    log, pattern = UPGRADED["rhel" if is_rhel(dev) else "debian"]
    return int(dev.exec(f"grep -c -E {pattern} {log} || true").stdout.strip() or 0)


def test_upgrade_killed_mid_run_resumes_and_upgrades_once(rig, fleet, tmp_path):
    """SIGKILL while a device's packages are being upgraded, then the same command with the same
    --state: every device ends on 1.6.0, and its package manager upgraded aziot-edge to it once over
    both runs."""
    devices = fleet["devices"][1:]            # the four, back on 1.5.10 after the downgrade above
    for dev in devices:
        assert version_of(dev, "aziot-edge") == pkg_version(dev, "1.5.10-1"), dev.variant
    before = [upgrades(dev) for dev in devices]
    logs = [UPGRADED["rhel" if is_rhel(dev) else "debian"][0] for dev in devices]
    offsets = [int(dev.exec(f"stat -c %s {log} 2>/dev/null || echo 0", check=True).stdout) + 1
               for dev, log in zip(devices, logs)]
    state = tmp_path / "state.json"
    args = ["edge-tpm", "upgrade", "--inventory", write_inventory(tmp_path / "k.csv", devices), "--known-hosts",
            rig.known_hosts, "--state", str(state), "--max-parallel", "2"]

    def halfway():     # a package manager has begun to change IoT Edge's packages in this run
        return any(dev.exec(f"tail -c +{offset} {log} 2>/dev/null | grep -q -E "
                            f"{STARTED['rhel' if is_rhel(dev) else 'debian']}").returncode == 0
                   for dev, log, offset in zip(devices, logs, offsets))

    proc = subprocess.Popen([sys.executable, "-m", "azure.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ), cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        while not halfway():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its packages changed"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert state.read_text().strip()   # the journal of the killed run
    again = ok(*args).out
    assert [r["status"] for r in again] == ["upgraded"] * 4, again
    assert not all(r["doneEarlier"] for r in again), again       # the killed run left work to do
    # (the package manager the kill cut off may have finished by itself: the summary says what this run did)
    assert not any(re.match(r"upgraded aziot-edge (\S+) -> \1\b", r["steps"][0]["detail"] or "") for r in again), again
    for dev, count in zip(devices, before):
        assert version_of(dev, "aziot-edge") == pkg_version(dev, "1.6.0-1") and agent_image(dev) == AGENT + "1.6"
        assert upgrades(dev) == count + 1, dev.variant          # upgraded once over both runs
    assert all(r["doneEarlier"] for r in ok(*args).out)


def test_upgrade_refuses_bad_targets_changing_nothing(rig, fleet, tmp_path):
    devices = fleet["devices"][:2]          # on 1.6.0: Debian 12 (installed so), rhel9 (upgraded above)
    for dev in devices:
        assert version_of(dev, "aziot-edge") == pkg_version(dev, "1.6.0-1"), dev.variant
    for dev in devices:
        mark(dev)
    missing = upgrade(rig, devices, tmp_path / "a.csv", "--edge-version", "1.6.7")
    assert missing.rc != 0 and all("does not offer aziot-edge 1.6.7" in r["error"] for r in missing.out), missing.out
    older = upgrade(rig, devices, tmp_path / "a.csv", "--edge-version", "1.5.10")
    assert older.rc != 0 and all("older than the version installed" in r["error"] for r in older.out), older.out
    assert all("--allow-downgrade" in r["recommendation"] for r in older.out)
    unknown = upgrade(rig, devices, tmp_path / "a.csv", "--edge-version", "1.4.0")
    assert unknown.rc != 0 and all("1.5, 1.6" in r["error"] for r in unknown.out), unknown.out
    for dev in devices:
        assert changed(dev) == []
