"""Pure pieces of `az edge-tpm install` / `status`: the support matrix, the parsers of what the
runtime and apt print, the daemon.json merge, local .deb reading and the facts script's output."""
import json
import os
import shutil
import subprocess

import pytest
from azext_edgetpm.errors import DeviceError, EdgeTpmError, LocalFileError, UserInputError

from azext_edgetpm.edge import apt, facts, health, platform
from azext_edgetpm.edge.steps import config_package_url, merge_daemon_json

UBUNTU_2204 = ('PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\nVERSION_CODENAME=jammy\n'
               'ID=ubuntu\nID_LIKE=debian\nUBUNTU_CODENAME=jammy\n')
RPI_BOOKWORM_64 = ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
                   'VERSION_CODENAME=bookworm\nID=debian\n')
RASPBIAN_BULLSEYE = ('PRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"\nVERSION_ID="11"\nVERSION_CODENAME=bullseye\n'
                     'ID=raspbian\nID_LIKE=debian\n')
RASPBIAN_STRETCH = 'PRETTY_NAME="Raspbian GNU/Linux 9 (stretch)"\nVERSION_ID="9"\nID=raspbian\n'


@pytest.mark.parametrize("text, arch, distro_url, pin", [
    (UBUNTU_2204, "amd64", "ubuntu/22.04", None),
    (UBUNTU_2204, "arm64", "ubuntu/22.04", None),
    (RPI_BOOKWORM_64, "arm64", "debian/12", None),
    (RASPBIAN_BULLSEYE, "armhf", "debian/11", "1.5.10"),   # 1.5 only: refused without a pin (test_support)
])
def test_supported_platforms(text, arch, distro_url, pin):
    plat = platform.detect(text, arch, edge_version=pin)
    assert plat.microsoft_config_url == f"https://packages.microsoft.com/config/{distro_url}/packages-microsoft-prod.deb"


@pytest.mark.parametrize("text, arch, words", [
    (RASPBIAN_STRETCH, "armhf", "retired"),
    (UBUNTU_2204, "i386", "only on amd64, arm64, armhf"),
    ('PRETTY_NAME="Fedora Linux 40"\nID=fedora\nVERSION_ID=40\n', "amd64", "not a tier 1 system"),
    ("", "amd64", "no readable /etc/os-release"),
])
def test_refused_platforms(text, arch, words):
    with pytest.raises(DeviceError) as info:
        platform.detect(text, arch, "dev")
    assert words in str(info.value)
    assert info.value.hint


def test_debian_arch_falls_back_to_uname():
    assert platform.debian_arch("", "aarch64") == "arm64"
    assert platform.debian_arch("armhf\n", "armv7l") == "armhf"


def test_config_package_url():
    plat = platform.detect(UBUNTU_2204, "amd64")
    assert config_package_url(None, plat) == plat.microsoft_config_url
    assert config_package_url("http://m/ms/", plat) == "http://m/ms/config/ubuntu/22.04/packages-microsoft-prod.deb"
    assert config_package_url("http://m/x.deb", plat) == "http://m/x.deb"


STATUS = """System services:
    aziot-edged             Running
    aziot-identityd         Running
    aziot-keyd              Running
    aziot-certd             Ready
    aziot-tpmd              Down - failed

aziot-tpmd is in a bad state because:
aziot-tpmd.service: Down - failed: Printing the last 10 log lines.
Nov 28 16:30:00 d1 aziot-tpmd[99]: 2026-11-28T16:30:00Z [ERR!] - Could not initialize TCTI with config 'device'
"""


def test_parse_system_status():
    states = health.parse_system_status(STATUS)
    assert list(states) == ["aziot-edged", "aziot-identityd", "aziot-keyd", "aziot-certd", "aziot-tpmd"]
    assert states["aziot-certd"] == {"state": "Ready", "detail": ""}
    assert states["aziot-tpmd"] == {"state": "Down", "detail": "failed"}
    assert not health.services_healthy(states)
    del states["aziot-tpmd"]
    assert health.services_healthy(states)


def test_parse_check():
    text = json.dumps({"additional_info": {}, "checks": {
        "config-toml-well-formed": {"result": {"result": "ok"}},
        "container-engine-logrotate": {"result": {"result": "warning", "details": ["not rotated"]}},
        "tpmd-running": {"result": {"result": "error", "details": ["aziot-tpmd is failed"]}},
        "host-connect-iothub-amqp": {"result": {"result": "skipped"}}}})
    summary = health.parse_check("some banner\n" + text)
    assert summary["counts"] == {"ok": 1, "warning": 1, "error": 1, "skipped": 1}
    assert summary["errors"] == ["tpmd-running"] and summary["warnings"] == ["container-engine-logrotate"]
    assert summary["problems"][1] == {"id": "tpmd-running", "result": "error", "details": ["aziot-tpmd is failed"]}
    assert health.parse_check("not json") is None


def test_parse_list():
    # The real header says "Config" (edgelet/iotedge/src/list.rs), through a TabWriter (minwidth 15)
    text = ("NAME                        STATUS         DESCRIPTION    Config\n"
            "edgeAgent                   running        Up 2 minutes   mcr.microsoft.com/azureiotedge-agent:1.5\n"
            "SimulatedTemperatureSensor  running        Up 1 minute    "
            "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5\n")
    rows = health.parse_list(text)
    assert rows[0] == {"name": "edgeAgent", "status": "running", "description": "Up 2 minutes",
                       "config": "mcr.microsoft.com/azureiotedge-agent:1.5"}
    assert len(rows) == 2
    assert health.parse_list("A module runtime error occurred") == []


def _journal(unit, message, pid=100):
    return f"Nov 28 16:30:00 d1 {unit}[{pid}]: 2026-11-28T16:30:00Z [INFO] - {message}"


def _systemd(message):
    return f"Nov 28 16:30:00 d1 systemd[1]: {message}"


# The lines of the real runtime: identity/aziot-identityd/src/lib.rs, identity.rs and aziotd/src/main.rs
# (Azure/iot-identity-service), edgelet/aziot-edged/src/provision.rs (Azure/iotedge).
FAILED_START = [_journal("aziot-identityd", "Provisioning starting. Reason: Startup"),
                _journal("aziot-identityd", "Failed to provision with IoT Hub, and no valid device backup was found: "
                                            "DPS client error"),
                _journal("aziot-identityd", "service encountered an error"),
                _journal("aziot-identityd", "caused by: DPS client error"),
                _journal("aziot-identityd", "caused by: DpsRequestError: HTTP 401 errorCode=401002: Unauthorized"),
                _systemd("aziot-identityd.service: Main process exited, code=exited, status=1/FAILURE"),
                _systemd("aziot-identityd.service: State 'stop-sigterm' timed out. Killing."),
                _systemd("aziot-identityd.service: Scheduled restart job, restart counter is at 1.")]


def test_provisioning_assigned_after_an_earlier_failure():
    lines = FAILED_START + [
        _journal("aziot-identityd", "Provisioning starting. Reason: Startup"),
        _journal("aziot-identityd", "Successfully provisioned with DPS."),
        _journal("aziot-identityd", "Provisioning complete."),
        _journal("aziot-edged", "Device is dev-1 on hub-1.azure-devices.net")]
    prov = health.provisioning(lines)
    assert prov["state"] == "assigned" and prov["assignedHub"] == "hub-1.azure-devices.net"
    assert prov["deviceId"] == "dev-1" and prov["source"] == "logs"
    assert prov["lastMessage"] == "Device is dev-1 on hub-1.azure-devices.net"
    failed = health.provisioning(FAILED_START)
    assert failed["state"] == "failed" and "401" in failed["error"]
    assert "enrollment" in failed["recommendation"]
    # systemd's own lines are not the runtime's: "timed out" there is no network failure
    assert [p["kind"] for p in health.diagnose(FAILED_START)] == ["dps-auth"]


def test_provisioning_from_device_info_and_the_backup_line():
    """After a restart the log says only "Provisioned with backup for D." (then two watchdog lines a
    minute): device_info (identity.rs HubDeviceInfo) names the hub."""
    backup = [_journal("aziot-identityd", "Provisioning starting. Reason: Startup"),
              _journal("aziot-identityd", "Provisioned with backup for dev-1."),
              _journal("aziot-edged", "Watchdog checking Edge runtime status")]
    prov = health.provisioning(backup)
    assert prov["state"] == "assigned" and prov["deviceId"] == "dev-1" and prov["assignedHub"] is None
    info = 'hub_name = "hub-1.azure-devices.net"\nlocal_gateway_hostname = "hub-1.azure-devices.net"\ndevice_id = "dev-1"\n'
    for lines in (backup, [], FAILED_START[:1]):
        prov = health.provisioning(lines, info)
        assert (prov["state"], prov["assignedHub"], prov["deviceId"], prov["source"]) == (
            "assigned", "hub-1.azure-devices.net", "dev-1", "device_info")
    assert health.parse_device_info("unprovisioned") is None
    assert health.parse_device_info("garbage") is None
    assert health.provisioning(FAILED_START, "unprovisioned")["state"] == "failed"


@pytest.mark.parametrize("line, kind", [
    ("WARNING:tcti:src/tss2-tcti/tcti-device.c:452:Tss2_Tcti_Device_Init() Failed to open specified TCTI device "
     "file /dev/tpmrm0: Permission denied", "tpm-permission"),
    (_journal("aziot-tpmd", "Could not initialize TCTI with config 'device': tcti:IO failure"), "tcti"),
    (_journal("aziot-tpmd", "Esys_EvictControl(0x14C) - tpm:handle(1):value is out of range"), "evict-control"),
    (_journal("aziot-identityd", "caused by: TpmClientError: gaierror: Temporary failure in name resolution"),
     "dps-unreachable"),
    (_journal("aziot-identityd", "caused by: certificate verify failed: unable to get local issuer"), "dps-unreachable"),
    (_journal("aziot-identityd", "Failed to provision with IoT Hub: DPS client error"), "dps-auth"),
    ("Command failed: could not parse config file: relative URL without a base at line 2 column 1", "config"),
    ("Command failed: could not query aziottpm user information", "service-users"),
])
def test_known_failures(line, kind):
    found = health.diagnose([line])
    assert found and found[0]["kind"] == kind and found[0]["recommendation"]


def test_merge_daemon_json():
    new, old = merge_daemon_json('{"log-opts": {"max-size": "10m"}, "dns": ["1.1.1.1"]}', "local")
    assert new == {"log-opts": {"max-size": "10m"}, "dns": ["1.1.1.1"], "log-driver": "local"}
    assert merge_daemon_json('{"log-driver": "local"}', "local")[0] is None
    assert merge_daemon_json(None, "keep") == (None, {})
    assert merge_daemon_json(None, "journald")[0] == {"log-driver": "journald"}
    with pytest.raises(LocalFileError, match="not valid JSON"):
        merge_daemon_json("{broken", "local")


def test_parse_policy_and_versions():
    text = """aziot-edge:
  Installed: 1.5.9-1
  Candidate: 1.5.10-1
  Version table:
     1.5.10-1 500
        500 http://10.0.0.1:8080 ./ Packages
 *** 1.5.9-1 500
        500 http://10.0.0.1:8080 ./ Packages
        100 /var/lib/dpkg/status
moby-engine:
  Installed: (none)
  Candidate: (none)
  Version table:
"""
    pol = apt.parse_policy(text)
    assert pol["aziot-edge"] == {"installed": "1.5.9-1", "candidate": "1.5.10-1", "versions": ["1.5.10-1", "1.5.9-1"]}
    assert pol["moby-engine"]["candidate"] is None
    assert apt.match_version("1.5.9", pol["aziot-edge"]["versions"]) == "1.5.9-1"
    assert apt.match_version("1.5.10-1", pol["aziot-edge"]["versions"]) == "1.5.10-1"
    assert apt.match_version("1.4", pol["aziot-edge"]["versions"]) is None


def test_source_uris_and_commands_are_quoted():
    text = ("# comment\ndeb [trusted=yes arch=amd64] http://10.0.0.1:8080/ ./\n"
            "deb https://packages.microsoft.com/debian/12/prod bookworm main\n"
            "Types: deb\nURIs: https://mirror.example/ms\n")
    assert apt.source_uris(text) == ["http://10.0.0.1:8080/", "https://packages.microsoft.com/debian/12/prod",
                                     "https://mirror.example/ms"]
    assert apt.install_command(["aziot-edge=1.5.9-1", "./a b.deb"]).endswith("install aziot-edge=1.5.9-1 './a b.deb'")
    assert "ln -s '/etc/apt/sources.list.d/x y.list'" in apt.update_command(["/etc/apt/sources.list.d/x y.list"])


def test_apt_failures_become_errors_with_recommendations():
    from azext_edgetpm.remote.session import Result
    ok = Result(0, "Hit:1 http://x ./ Packages\nReading package lists...", "")
    assert apt.update_failed(ok) is ok
    warned = apt.update_failed(Result(0, "", "W: Failed to fetch http://x/./InRelease  Could not connect to x:1\n"))
    assert warned.rc == 100
    with pytest.raises(EdgeTpmError) as info:
        apt.raise_for(warned, "apt-get update", "dev")
    assert "could not download" in str(info.value) and info.value.hint
    with pytest.raises(EdgeTpmError) as info:
        apt.raise_for(Result(100, "", "E: Unable to locate package aziot-edge\n"), "Installing aziot-edge", "dev")
    assert "aziot-edge is not available" in str(info.value)


def test_exact_dependency_from_control_fields():
    """aziot-edge names one exact aziot-identity-service (Azure/iotedge edgelet/contrib/debian/control)."""
    shown_fields = ("Package: aziot-edge\nVersion: 1.5.10-1\nDepends: adduser, ca-certificates, hostname,\n"
                    " psmisc, sed, aziot-identity-service (= 1.5.3-1)\nDescription: x\n\n"
                    "Package: aziot-edge\nVersion: 1.5.9-1\nDepends: aziot-identity-service (= 1.5.2-1)\n")
    depends = apt.control_field(shown_fields, "Depends")
    assert depends.endswith("sed, aziot-identity-service (= 1.5.3-1)")
    assert apt.exact_dependency(depends, "aziot-identity-service") == "1.5.3-1"
    assert apt.exact_dependency("aziot-identity-service (>= 1.5.0)", "aziot-identity-service") is None
    assert apt.exact_dependency("foo (= 1) | aziot-identity-service (= 2)", "aziot-identity-service") is None
    assert apt.show_command("aziot-edge", "1.5.9-1") == "LC_ALL=C apt-cache show aziot-edge=1.5.9-1"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
def test_read_offline_dir(tmp_path):
    def build(name, version, depends=None, where="debs"):
        root = tmp_path / f"{name}-{version}"
        (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
        (root / "DEBIAN" / "control").write_text(
            f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@t>\n"
            + (f"Depends: {depends}\n" if depends else "") + "Description: t\n")
        out = tmp_path / where / f"{name}_{version}_all.deb"
        out.parent.mkdir(exist_ok=True)
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)], check=True,
                       capture_output=True)
        return out
    build("moby-engine", "25.0.5-1")
    build("aziot-edge", "1.5.9-1", "aziot-identity-service (= 1.5.2-1)")
    build("aziot-edge", "1.5.10-1", "aziot-identity-service (= 1.5.3-1)")
    build("aziot-identity-service", "1.5.2-1")
    build("aziot-identity-service", "1.5.3-1")
    with pytest.raises(UserInputError, match="2 versions of aziot-edge"):
        apt.read_offline_dir(str(tmp_path / "debs"), "amd64")
    debs = apt.read_offline_dir(str(tmp_path / "debs"), "amd64", edge_version="1.5.9")
    # the identity service that 1.5.9-1 names, not the one of the same number (there is none)
    assert [(d.package, d.version) for d in debs] == [
        ("aziot-edge", "1.5.9-1"), ("aziot-identity-service", "1.5.2-1"), ("moby-engine", "25.0.5-1")]
    assert [[d.package for d in group] for group in apt.engine_first(debs)] == [
        ["moby-engine"], ["aziot-edge", "aziot-identity-service"]]
    os.rename(tmp_path / "debs" / "moby-engine_25.0.5-1_all.deb", tmp_path / "debs" / "renamed.deb")
    assert apt.read_deb(str(tmp_path / "debs" / "renamed.deb")).package == "moby-engine"
    # an identity service other than the one aziot-edge names: refused before anything is uploaded
    build("aziot-edge", "1.5.10-1", "aziot-identity-service (= 1.5.3-1)", where="wrong")
    build("aziot-identity-service", "1.5.2-1", where="wrong")
    with pytest.raises(UserInputError, match=r"depends on aziot-identity-service \(= 1\.5\.3-1\)"):
        apt.read_offline_dir(str(tmp_path / "wrong"), "amd64")


def test_facts_parse():
    out = "\n".join([
        "@@FILE /etc/os-release 644 root root 1700000000 " + __import__("base64").b64encode(UBUNTU_2204.encode()).decode(),
        "@@ARCH arm64 aarch64", "@@CMD iotedge /usr/bin/iotedge", "@@INITD docker",
        "@@PKG aziot-edge\t1.5.10-1\tinstall ok installed", "@@PKG moby-engine\t25.0.5-1\tdeinstall ok config-files",
        "@@USER aziottpm aziottpm,tss", "@@GROUP tss", "@@DEV /dev/tpmrm0 tss tss 660",
        "@@NOFILE /etc/aziot/config.toml", "@@FILE /etc/docker/daemon.json 644 root root 1700000001 ",
        "@@MTIME /etc/aziot/edged/config.d/00-super.toml 1700000002"])
    f = facts.parse(out)
    assert platform.detect(f.os_release, f.dpkg_arch).codename == "jammy"
    assert f.installed("aziot-edge") == "1.5.10-1" and f.installed("moby-engine") is None
    assert f.users == {"aziottpm": ["aziottpm", "tss"]} and f.groups == ["tss"]
    assert f.tpm_devices == {"/dev/tpmrm0": {"owner": "tss", "group": "tss", "mode": 0o660}}
    assert f.file("/etc/aziot/config.toml") is None and f.file("/etc/docker/daemon.json").data == b""
    assert f.init_scripts == ["docker"] and f.has("iotedge") and not f.systemd


class _FakeCtx:
    """Just what TpmAccessStep.check and RuntimeStep._judge read.

    Synthetic device state, because it cannot run here: our machines (and so the dev kit's
    devices) have no /dev/tpm* character devices, no udev and no systemd, so the udev,
    tss-group and root plans are checked on the facts such a device would report."""

    def __init__(self, facts_obj, tcti=None, mode="udev", dry_run=False):
        from azext_edgetpm.edge.plan import InstallSettings
        self.facts = facts_obj
        self.settings = InstallSettings(id_scope="s", global_endpoint="https://g", tcti=tcti, tpm_access=mode,
                                        dry_run=dry_run)
        self.display = "dev"
        self.dry_run = dry_run
        self.notes = []


def _tpm_facts(owner="root", group="tss", mode=0o660, groups=("aziottpm",), systemd=False, rule=None):
    f = facts.Facts(systemd=systemd)
    f.tpm_devices = {"/dev/tpm0": {"owner": owner, "group": group, "mode": mode},
                     "/dev/tpmrm0": {"owner": owner, "group": group, "mode": mode}}
    f.users = {"aziottpm": list(groups)}
    f.groups = ["tss"]
    if rule is not None:
        f.files["/etc/udev/rules.d/tpmaccess.rules"] = facts.RemoteFile("/etc/udev/rules.d/tpmaccess.rules",
                                                                        rule.encode(), 0o644, "root", "root", 0)
    return f


def test_tpm_access_plans():
    from azext_edgetpm.edge.steps import UDEV_RULE, TpmAccessStep
    step = TpmAccessStep()
    assert "swtpm TCTI" in step.check(_FakeCtx(_tpm_facts(), tcti="swtpm:host=127.0.0.1,port=2321")).skip
    assert "no /dev/tpm0" in step.check(_FakeCtx(facts.Facts())).skip
    udev = step.check(_FakeCtx(_tpm_facts()))
    assert udev.data == {"mode": "udev", "rule": True, "trigger": True}
    done = step.check(_FakeCtx(_tpm_facts(owner="aziottpm", rule=UDEV_RULE)))
    assert done.changes == [] and "aziottpm:tss 660" in done.detail
    assert step.check(_FakeCtx(_tpm_facts(), mode="tss-group")).data == {"mode": "tss-group", "group": True}
    assert step.check(_FakeCtx(_tpm_facts(groups=("aziottpm", "tss")), mode="tss-group")).changes == []
    with pytest.raises(DeviceError, match="needs systemd"):
        step.check(_FakeCtx(_tpm_facts(), mode="root"))
    assert step.check(_FakeCtx(_tpm_facts(systemd=True), mode="root")).data == {"mode": "root", "override": True}


def test_a_failed_step_keeps_its_class_names_the_step_and_carries_the_report():
    from types import SimpleNamespace
    from azext_edgetpm._error_map import register_option_names, to_azclierror
    from azext_edgetpm.edge.plan import Context, run_steps
    from azext_edgetpm.edge.steps import OsStep, TpmAccessStep
    register_option_names()
    # A stand-in for the session (only its display name is read): the step fails in its check, on
    # facts given as in test_tpm_access_plans (no device here has a /dev/tpm0), before any command.
    ctx = Context(SimpleNamespace(target=SimpleNamespace(display="dev")), _FakeCtx(None, mode="root").settings)
    ctx.facts = _tpm_facts()
    with pytest.raises(DeviceError) as info:
        run_steps(ctx, [TpmAccessStep(), OsStep()])
    assert info.value.message.startswith("Step tpm-access failed: --tpm-access root needs systemd")
    assert "--tpm-access udev" in info.value.hint and str(info.value) == info.value.message
    assert [(e["name"], e["status"]) for e in info.value.report] == [("tpm-access", "failed"), ("os", "skipped")]
    az_error = to_azclierror(info.value)
    assert type(az_error).__name__ == "ValidationError" and az_error.error_msg == info.value.message


def test_runtime_judgement():
    from azext_edgetpm.edge.steps import RuntimeStep
    down = {"healthy": False, "checks": {"errors": [], "problems": []},
            "provisioning": {"state": "failed", "error": "401", "recommendation": "create the enrollment"}}
    ctx = _FakeCtx(facts.Facts())
    # DPS refusing an unknown device: a note, not a failure (the enrollment may come later).
    RuntimeStep._judge(ctx, dict(down, problems=[{"kind": "dps-auth", "meaning": "m", "line": "l",
                                                   "recommendation": "r"}]))
    assert ctx.notes and "DPS has not assigned" in ctx.notes[0]
    # A TPM the runtime cannot open: the step fails with what to do.
    with pytest.raises(EdgeTpmError) as info:
        RuntimeStep._judge(ctx, dict(down, problems=[{"kind": "tpm-permission", "meaning": "no access",
                                                       "line": "Permission denied", "recommendation": "udev"}]))
    assert info.value.hint == "udev"
    # A configuration check in error fails it too, even with the services up.
    bad = {"healthy": True, "provisioning": {"state": "assigned"},
           "checks": {"errors": ["tpmd-config-well-formed"], "problems": [
               {"id": "tpmd-config-well-formed", "result": "error", "details": ["could not parse"]}]}}
    with pytest.raises(EdgeTpmError, match="tpmd-config-well-formed"):
        RuntimeStep._judge(ctx, bad)


def test_service_manager():
    from azext_edgetpm.edge.services import ServiceManager
    assert ServiceManager.detect(facts.Facts(systemd=True)).restart_command("docker") == "systemctl restart docker"
    initd = facts.Facts(init_scripts=["docker"])
    assert ServiceManager.detect(initd, "docker").restart_command("docker") == "/etc/init.d/docker restart"
    assert ServiceManager.detect(facts.Facts(), "docker").restart_command("docker") is None


def test_a_tpm_service_that_did_not_start_is_not_blamed_on_the_enrollment():
    """The stand-in runtime's lines (devkit/packages/runtime/aziot_standin/services.py) when
    aziot-tpmd cannot open its TCTI: identityd then fails with "DPS client error" too, but the
    way out is the device's TPM access, not DPS."""
    lines = [_journal("aziot-tpmd", "Starting Azure IoT TPM Service"),
             _journal("aziot-tpmd", "Could not initialize TCTI with config 'device': tcti:IO failure"),
             _journal("aziot-identityd", "Starting Azure IoT Identity Service"),
             _journal("aziot-identityd", "Provisioning starting. Provisioning source: dps"),
             _journal("aziot-identityd", "Failed to provision with IoT Hub, and no valid device backup was found: "
                                         "DPS client error"),
             _journal("aziot-identityd", "caused by: could not get TPM keys: aziot-tpmd is not running")]
    failed = health.provisioning(lines)
    assert failed["state"] == "failed"
    assert "aziot-tpmd" in failed["recommendation"] and "enrollment" not in failed["recommendation"]
