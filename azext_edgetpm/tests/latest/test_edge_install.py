"""`az edge-tpm install` and `az edge-tpm status` for real, on simulated devices (netns + overlay
root + sshd as PID 1, no systemd, swtpm over TCP), with the devkit's stand-in IoT Edge packages
served from the host side of the rig's bridge and the devkit's DPS emulator behind its own CA.

What a device looks like before and after is read from inside it (the rig's device exec), never
through the product.
"""
import json
import os
import re
import subprocess
import tomllib

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import ArmLogin, EmulatorEnv, ok, start_emulator

pytestmark = pytest.mark.devkit

DEVICE_CA = "/usr/local/share/ca-certificates/devkit-dps-ca.crt"      # Debian's store (update-ca-certificates)
RHEL_CA = "/etc/pki/ca-trust/source/anchors/devkit-dps-ca.crt"          # RHEL's (update-ca-trust(8))
# What a dry run must leave alone: everything a person would call the device's state, read from
# the upper layer of the device's overlay root -- what the device itself wrote (the lower layer is
# the host's own /, where other work on the host goes on meanwhile). /var/log holds sshd's login
# records and the stand-in journal; /run and /tmp are tmpfs scratch. A file created, written,
# chmod'ed, chown'ed or deleted (an overlay whiteout) after the mark is newer (mtime or ctime).
MARK = "/var/tmp/edgetpm-test-mark"


@pytest.fixture(scope="module")
def dps(rig, tmp_path_factory):
    """The DPS emulator where the devices reach it, trusted by az through REQUESTS_CA_BUNDLE."""
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("edge-dps"), host_ips=[rig.host_ip]))
    yield env
    env.close()


def is_rhel(dev):
    return dev.variant.split("+")[0].startswith("rhel")


def trust_dps(dev, dps):
    """The DPS emulator's CA in the device's store (as an operator installs a private CA), the Debian
    or the RHEL way."""
    store = f"{RHEL_CA} && update-ca-trust extract" if is_rhel(dev) else \
        f"{DEVICE_CA} && update-ca-certificates >/dev/null 2>&1"
    with open(dps.section["ca_bundle"], encoding="ascii") as handle:
        # (timeout: update-ca-certificates is slow on a loaded machine)
        dev.exec(f"cat > {store}", input=handle.read(), check=True, timeout=300)


@pytest.fixture
def device(new_device, dps):
    """A fresh device that trusts the DPS emulator's CA."""
    def make(variant="fresh"):
        dev = new_device(variant)
        trust_dps(dev, dps)
        return dev
    return make


def host_args(dev, user="admin"):
    return ["--host", f"{dev.users[user]['user']}@{dev.host}:{dev.port}", "--ssh-key", dev.key(user),
            "--known-hosts", dev.known_hosts]


def install(dev, dps, *args, user="admin", scope=True):
    env = {"AZ_EDGETPM_SUDO_PASSWORD": dev.users["pwadmin"]["password"]} if user == "pwadmin" else None
    dps_args = ["--id-scope", dps.section["id_scope"], "--global-endpoint", dps.section["device_endpoint"]] \
        if scope else []
    return az("edge-tpm", "install", *host_args(dev, user), "--tcti", dev.tcti, *dps_args, *args, env=env)


def statuses(result):
    return {s["name"]: s["status"] for s in result.out["steps"]}


def mark(dev):
    dev.exec(["touch", MARK], check=True)


def overlay(dev):
    """(mount point, upper layer) of the device's overlay root, as seen in its mount namespace."""
    info = subprocess.run(["nsenter", "-t", str(dev.pid), "-m", "cat", "/proc/self/mountinfo"],
                          capture_output=True, text=True, check=True).stdout
    line = next(line for line in info.splitlines() if " devkit-overlay " in line)
    return line.split()[4], re.search(r"upperdir=([^,\s]+)", line).group(1)


def changed_since_mark(dev):
    """Files the device wrote or deleted since mark(dev) (sorted; directories left out)."""
    upper = overlay(dev)[1]
    prune = ["(", "-path", upper + "/var/log", "-o", "-path", upper + "/var/cache/debconf", ")", "-prune"]
    found = subprocess.run(["nsenter", "-t", str(dev.pid), "-m", "find", upper, "-xdev"] + prune +
                           ["-o", "!", "-type", "d", "(", "-newer", upper + MARK, "-o", "-cnewer", upper + MARK, ")",
                            "-print"], capture_output=True, text=True, check=True, timeout=120).stdout
    # Debian's sudo itself drops ~/.sudo_as_admin_successful on a user's first sudo (its
    # admin_flag): sudo's marker, not the product's doing.
    return sorted(p[len(upper):] for p in found.split()
                  if p[len(upper):] != MARK and not p.endswith("/.sudo_as_admin_successful"))


def read(dev, path):
    proc = dev.exec(["cat", path])
    return proc.stdout if proc.returncode == 0 else None


def stat(dev, path):
    return dev.exec(["stat", "-c", "%a %U %G", path], check=True).stdout.split()


def enroll(dev, dps):
    return ok("edge-tpm", "enrollment", "create", *host_args(dev, "root"), "--tcti", dev.tcti, *dps.login).out


EXISTING_CONFIG = """# Site settings of plant 7 -- keep this comment
hostname = "plant7-gw"

[provisioning]
source = "manual"
connection_string = "HostName=old.azure-devices.net;DeviceId=old;SharedAccessKey=b2xkLWtleQ=="

[tpm]
auth_key_index = "0x00_01_00"

[agent]
name = "edgeAgent"
type = "docker"

[agent.config]
image = "mcr.microsoft.com/azureiotedge-agent:1.5"   # pinned by operations
"""


def test_dry_run_then_install_then_nothing_to_change(device, repo, dps, tmp_path):
    dev = device()
    enroll(dev, dps)
    dev.exec("mkdir -p /etc/aziot /etc/docker && cat > /etc/aziot/config.toml && chmod 644 /etc/aziot/config.toml",
             input=EXISTING_CONFIG, check=True)
    dev.exec("cat > /etc/docker/daemon.json", input='{"dns": ["10.0.0.53"], "log-driver": "json-file"}\n', check=True)
    payload = tmp_path / "payload.json"
    payload.write_text('{"modelId": "dtmi:contoso:gateway;1"}')
    args = ["--package-source", repo["base_url"], "--payload", str(payload), "--auto-reprovisioning-mode", "OnErrorOnly"]

    # --dry-run: the plan, and not one file of the device changes.
    mark(dev)
    plan = install(dev, dps, *args, "--dry-run")
    assert plan.rc == 0, plan.message
    assert changed_since_mark(dev) == []
    assert plan.out["dryRun"] and plan.out["wouldChange"] and not plan.out["changed"]
    assert statuses(plan) == {"os": "ok", "proxy": "ok", "package-source": "would-change",
                              "container-engine": "would-change", "iotedge": "would-change", "config": "would-change", "tpm-access": "skipped",
                              "runtime": "would-change"}
    detail = {s["name"]: s["detail"] for s in plan.out["steps"]}
    assert repo["config_package_url"] in detail["package-source"]
    assert "log-driver" in detail["container-engine"] and "'json-file'" in detail["container-engine"]
    assert "removed provisioning.connection_string" in detail["config"]

    # The install itself.
    first = install(dev, dps, *args)
    assert first.rc == 0, f"{first.message} | {first.recommendation}"
    assert first.out["changed"] and first.out["registrationIdSource"] == "endorsement key"
    assert statuses(first) == {"os": "ok", "proxy": "ok", "package-source": "changed",
                               "container-engine": "changed", "iotedge": "changed", "config": "changed", "tpm-access": "skipped",
                               "runtime": "changed"}
    assert first.out["runtime"]["provisioning"]["state"] == "assigned", first.out["runtime"]
    rid = first.out["registrationId"]
    # (the probe that found nothing after the dry run does see what the install changed)
    assert {"/etc/aziot/config.toml", "/etc/docker/daemon.json", "/usr/bin/iotedge"} <= set(changed_since_mark(dev))

    # config.toml: root-only, parses, what the runtime needs where it needs it, the rest kept.
    assert stat(dev, "/etc/aziot/config.toml") == ["600", "root", "root"]
    text = read(dev, "/etc/aziot/config.toml")
    data = tomllib.loads(text)
    assert data["auto_reprovisioning_mode"] == "OnErrorOnly"
    assert text.index("auto_reprovisioning_mode") < text.index("[provisioning]")
    assert data["tpm"] == {"auth_key_index": 0x100, "tcti": dev.tcti}
    assert data["provisioning"] == {
        "source": "dps", "global_endpoint": dps.section["device_endpoint"], "id_scope": dps.section["id_scope"],
        "payload": {"uri": "file:///var/secrets/aziot/identityd/dps-additional-data.json"},
        "attestation": {"method": "tpm", "registration_id": rid}}
    assert data["hostname"] == "plant7-gw"
    assert data["agent"]["config"]["image"] == "mcr.microsoft.com/azureiotedge-agent:1.5"
    assert "# Site settings of plant 7 -- keep this comment" in text and "# pinned by operations" in text
    backups = dev.exec("ls /etc/aziot/config.toml.edgetpm-*.bak", check=True).stdout.split()
    assert len(backups) == 1 and read(dev, backups[0]) == EXISTING_CONFIG
    assert first.out["config"]["backup"] == backups[0]
    # The payload: root-owned, readable by the identity service's group only.
    assert read(dev, "/var/secrets/aziot/identityd/dps-additional-data.json") == payload.read_text()
    assert stat(dev, "/var/secrets/aziot/identityd/dps-additional-data.json") == ["640", "root", "aziotid"]
    # daemon.json: the log driver merged, the other key kept.
    assert json.loads(read(dev, "/etc/docker/daemon.json")) == {"dns": ["10.0.0.53"], "log-driver": "local"}

    # Status shows the assignment the runtime got from DPS.
    health = ok("edge-tpm", "status", *host_args(dev)).out
    assert health["provisioning"]["state"] == "assigned" and health["healthy"]
    assert health["provisioning"]["assignedHub"] in dps.section["iot_hubs"]
    assert health["runtime"]["version"] == repo["latest_edge_version"].rsplit("-", 1)[0]
    assert [m["name"] for m in health["modules"]] == ["edgeAgent"]
    assert health["config"]["registrationId"] == rid and health["checks"]["errors"] == []
    assert set(health["services"]) == {"aziot-edged", "aziot-identityd", "aziot-keyd", "aziot-certd", "aziot-tpmd"}

    # A second run: every step ok (or skipped), nothing changed, and indeed no file changed.
    mark(dev)
    second = install(dev, dps, *args)
    assert second.rc == 0, second.message
    assert not second.out["changed"] and "nothing changed" in second.out["summary"]
    assert set(statuses(second).values()) <= {"ok", "skipped"}
    assert changed_since_mark(dev) == []
    assert len(dev.exec("ls /etc/aziot/config.toml.edgetpm-*.bak", check=True).stdout.split()) == 1
    # And the plan of an installed device is empty.
    plan = install(dev, dps, *args, "--dry-run")
    assert plan.rc == 0 and not plan.out["wouldChange"] and plan.out["summary"] == "dry run: nothing to change"
    print(f"timings: first install {first.out['seconds']}s, second run {second.out['seconds']}s")


def test_engine_refusing_a_log_driver_gets_its_file_back(device, repo, dps):
    dev = device()
    enroll(dev, dps)
    assert install(dev, dps, "--package-source", repo["apt_line"]).rc == 0
    bad = install(dev, dps, "--package-source", repo["apt_line"], "--log-driver", "nosuchdriver")
    assert bad.rc != 0
    assert "Step container-engine failed" in bad.message and "previous file was restored" in bad.message
    assert "--log-driver" in bad.recommendation
    assert json.loads(read(dev, "/etc/docker/daemon.json")) == {"log-driver": "local"}
    assert dev.exec("/etc/init.d/docker status").returncode == 0
    # --log-driver keep leaves the file alone; the run goes on where it stopped.
    again = install(dev, dps, "--package-source", repo["apt_line"], "--log-driver", "keep")
    assert again.rc == 0 and statuses(again)["container-engine"] == "ok"


def test_refusals(device, repo, dps, rig):
    # An OS IoT Edge does not support: refused before anything changes.
    old = device("oldos")
    mark(old)
    refused = install(old, dps, "--package-source", repo["apt_line"])
    assert refused.rc != 0 and "Stretch" in refused.message and "Nothing was changed" in refused.message
    # (1.6, the line in support, has packages for Raspberry Pi OS 12 only: edge/support.py)
    assert "to Bookworm" in refused.recommendation
    assert changed_since_mark(old) == []

    dev = device()
    # A user without sudo rights.
    nosudo = install(dev, dps, "--package-source", repo["apt_line"], user="nosudo")
    assert nosudo.rc != 0 and "sudo" in nosudo.message and "Traceback" not in nosudo.stderr
    assert "root" in nosudo.recommendation or "NOPASSWD" in nosudo.recommendation

    # A package source apt cannot fetch from (nothing listens there).
    broken = install(dev, dps, "--package-source", f"deb [trusted=yes] http://{rig.host_ip}:9/ ./")
    assert broken.rc != 0 and "Step package-source failed" in broken.message
    assert "could not download" in broken.message and "--offline-packages" in broken.recommendation

    # A config.toml the runtime rejects: an unrelated setting of the existing file is not a URL.
    dev.exec("mkdir -p /etc/aziot && cat > /etc/aziot/config.toml",
             input='trust_bundle_cert = "certs/bundle.pem"\n', check=True)
    rejected = install(dev, dps, "--package-source", repo["apt_line"], user="pwadmin")
    assert rejected.rc != 0 and "Step runtime failed" in rejected.message
    assert "relative URL without a base" in rejected.message
    assert "/etc/aziot/config.toml" in rejected.recommendation
    kept = tomllib.loads(read(dev, "/etc/aziot/config.toml"))
    assert kept["trust_bundle_cert"] == "certs/bundle.pem" and kept["provisioning"]["source"] == "dps"


def installed_versions(dev):
    out = dev.exec("dpkg-query -W -f='${Package} ${Version} ${Status}\\n' aziot-edge aziot-identity-service tpm2-tools",
                   check=True).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.endswith(" installed")}


def test_pinned_version_then_upgrade_and_offline_packages(device, repo, dps):
    """As with the real packages (Azure/iotedge release/1.5, edgelet/contrib/debian/control and preinst,
    imitated by the stand-ins): aziot-edge depends on ONE aziot-identity-service version whose number is not
    its own, and its preinst stops with "No container runtime detected" while the docker group that
    moby-engine's postinst creates is missing."""
    dev = device("notools")
    old, new = repo["edge_versions"][0], repo["latest_edge_version"]
    identity = repo["identity_versions"]
    assert identity[old] != old and identity[old] != identity[new]
    # A fresh device with .deb files carried to it (no package source at all), tpm2-tools among them: the
    # engine and tpm2-tools go in first, then IoT Edge.
    first = install(dev, dps, "--offline-packages", repo["debs_dirs"][old], "--edge-version", old.rsplit("-", 1)[0],
                    "--registration-id", "edge-offline-1")
    assert first.rc == 0, f"{first.message} | {first.recommendation}"
    assert statuses(first)["package-source"] == "changed"
    versions = installed_versions(dev)
    assert versions["aziot-edge"] == old and versions["aziot-identity-service"] == identity[old], versions
    assert "tpm2-tools" in versions
    assert read(dev, "/etc/apt/sources.list.d/edge-tpm.list") is None
    # The newer version, pinned, from the repository.
    upgraded = install(dev, dps, "--package-source", repo["apt_line"], "--edge-version", new,
                       "--registration-id", "edge-offline-1")
    assert upgraded.rc == 0, upgraded.message
    assert statuses(upgraded)["iotedge"] == "changed"
    versions = installed_versions(dev)
    assert versions["aziot-edge"] == new and versions["aziot-identity-service"] == identity[new], versions
    # Back to the older one from the repository: the identity service it names is not apt's candidate, and
    # exactly that one is installed.
    back = install(dev, dps, "--package-source", repo["apt_line"], "--edge-version", old.rsplit("-", 1)[0],
                   "--registration-id", "edge-offline-1")
    assert back.rc == 0, f"{back.message} | {back.recommendation}"
    versions = installed_versions(dev)
    assert versions["aziot-edge"] == old and versions["aziot-identity-service"] == identity[old], versions


def test_install_before_the_enrollment_then_dps_assigns_it(device, repo, dps):
    """The issue's path: install first (DPS refuses the unknown device, said clearly, a warning that
    it is assigned later), then the enrollment made with `enrollment create` (DPS found through ARM
    with az login), then a re-run: the enrollment turns assigned, and status shows it. Meanwhile
    the identity service exits and systemd restarts it every 5 s, as the real unit does
    (identity/aziot-identityd/aziot-identityd.service.in: Restart=on-failure, RestartSec=5s), so
    it may register on its own before the re-run."""
    login = ArmLogin(dps)
    try:
        dev = device()
        arm = ["--dps-name", dps.section["dps_name"], "-g", dps.section["resource_group"]]
        first = az("edge-tpm", "install", *host_args(dev), "--tcti", dev.tcti, *arm,
                   "--package-source", repo["config_package_url"])
        assert first.rc == 0, f"{first.message} | {first.recommendation}"
        prov = first.out["runtime"]["provisioning"]
        assert prov["state"] == "failed" and "enrollment" in prov["recommendation"]
        assert any("DPS has not assigned" in n and "assigned later" in n for n in first.out["notes"])
        assert not first.out.get("problems") or first.out["problems"][0]["kind"] == "dps-auth"
        looped = dev.exec("for i in $(seq 40); do [ $(iotedge system logs | grep -c 'Failed to provision with IoT "
                          "Hub') -ge 2 ] && break; sleep 0.5; done; iotedge system logs", check=True).stdout
        assert "aziot-identityd.service: Scheduled restart job, restart counter is at 1." in looped
        assert looped.count("Failed to provision with IoT Hub, and no valid device backup was found") >= 2
        rid = first.out["registrationId"]
        config = tomllib.loads(read(dev, "/etc/aziot/config.toml"))["provisioning"]
        assert config["id_scope"] == dps.section["id_scope"]
        assert config["global_endpoint"] == dps.section["device_endpoint"]

        enrollment = ok("edge-tpm", "enrollment", "create", *host_args(dev, "root"), "--tcti", dev.tcti, *arm).out
        assert enrollment["registrationId"] == rid

        second = az("edge-tpm", "install", *host_args(dev), "--tcti", dev.tcti, *arm,
                    "--package-source", repo["config_package_url"])
        assert second.rc == 0, second.message
        assert statuses(second)["runtime"] in ("changed", "ok")   # ok: a restart registered it already
        assert second.out["runtime"]["provisioning"]["state"] == "assigned"
        state = ok("edge-tpm", "registration", "show", "--registration-id", rid, *arm).out
        assert state["status"] == "assigned"
        health = ok("edge-tpm", "status", *host_args(dev, "pwadmin"),
                    env={"AZ_EDGETPM_SUDO_PASSWORD": dev.users["pwadmin"]["password"]}).out
        assert health["provisioning"]["assignedHub"] == state["assignedHub"]
        assert health["provisioning"]["deviceId"] == state["deviceId"]

        third = az("edge-tpm", "install", *host_args(dev), "--tcti", dev.tcti, *arm,
                   "--package-source", repo["config_package_url"])
        assert third.rc == 0 and not third.out["changed"], third.out["summary"]
    finally:
        login.close()


def accepted_logins(dev):
    """SSH logins the device's sshd accepted so far (sshd -e logs them to the device's log)."""
    with open(dev.log, encoding="utf-8", errors="replace") as handle:
        return sum(1 for line in handle if "Accepted publickey for" in line)


def test_one_ssh_connection_per_command(rig):
    dev = rig.by_variant("mfg")
    before = accepted_logins(dev)
    ok("edge-tpm", "ek", "show", *host_args(dev, "root"), "--tcti", dev.tcti, "--no-create")
    assert accepted_logins(dev) - before == 1
    before = accepted_logins(dev)
    result = az("edge-tpm", "status", *host_args(dev, "root"))  # (IoT Edge is not installed there: an error)
    assert result.rc != 0 and "not installed" in result.message
    assert accepted_logins(dev) - before == 1


def test_failed_install_returns_its_steps_and_legacy_id_format_is_written(device, repo, dps):
    from azext_edgetpm.edge.plan import InstallSettings
    from azext_edgetpm.operations.device import SshOptions
    from azext_edgetpm.operations.install import install as install_operation
    dev = device()
    # A version of a known line (1.6) that the mirror does not have: the os step accepts the line, and the
    # iotedge step fails after earlier steps changed the device.
    opts = SshOptions(host=f"admin@{dev.host}:{dev.port}", ssh_key=dev.key("admin"), known_hosts=dev.known_hosts)
    settings = InstallSettings(id_scope=dps.section["id_scope"], global_endpoint=dps.section["device_endpoint"],
                               package_source=repo["base_url"], edge_version="1.6.99", tcti=dev.tcti)
    with opts.session() as session:
        result = install_operation(session, settings)
    assert result.failed and "Step iotedge failed" in str(result.failure)
    report = {s["name"]: s["status"] for s in result.steps}
    assert report["package-source"] == "changed" and report["iotedge"] == "failed"
    assert report["config"] == "skipped" and report["runtime"] == "skipped"
    assert result.to_output()["failed"] and result.to_output()["error"]

    # --id-format legacy: enrolled and installed under the legacy (base32) ID, end to end.
    legacy = ok("edge-tpm", "ek", "show", *host_args(dev), "--tcti", dev.tcti, "--id-format", "legacy").out
    assert len(legacy["registrationId"]) == 52
    ok("edge-tpm", "enrollment", "create", *host_args(dev), "--tcti", dev.tcti, "--id-format", "legacy", *dps.login)
    done = install(dev, dps, "--package-source", repo["base_url"], "--id-format", "legacy")
    assert done.rc == 0, done.message
    assert done.out["registrationId"] == legacy["registrationId"]
    data = tomllib.loads(read(dev, "/etc/aziot/config.toml"))
    assert data["provisioning"]["attestation"]["registration_id"] == legacy["registrationId"]
    assert done.out["runtime"]["provisioning"]["state"] == "assigned"
