"""IoT Edge behaving as the real runtime does, on one simulated device provisioned for the whole
module: what the product reads after a reboot, a changed registration ID, a changed hostname with
modules, a deprovision without uninstall followed by a reboot.

The stand-in follows (Azure/iot-identity-service, Azure/iotedge, release/1.5):
- identity/aziot-identityd/src/identity.rs: at start-up a valid /var/lib/aziot/identityd/device_info
  is used whatever config.toml says ("Provisioned with backup for X."); only the reprovision API
  (`iotedge system reprovision`) registers again;
- edgelet/aziot-edged/src/provision.rs, watchdog.rs: "Device is X on HUB", a watchdog every 60 s;
- edgelet/iotedge/src/list.rs: the header "NAME STATUS DESCRIPTION Config";
- edgelet/iotedge/src/config/apply.rs: another hostname refused while module containers exist;
- the units' Restart=on-failure, RestartSec=5s, and `iotedge system stop` (aziotctl-common
  src/system/stop.rs) stopping the services but leaving them enabled.
"""
import pytest

from azext_edgetpm.tests.latest.test_dps_support import ok
from azext_edgetpm.tests.latest.test_edge_install import DEVICE_CA, host_args, install, statuses
from azext_edgetpm.tests.latest.test_edge_install import dps  # noqa: F401  (the module's emulator fixture)

pytestmark = pytest.mark.devkit

DEVICE_INFO = "/var/lib/aziot/identityd/device_info"


def power_cycle(rig, dev):
    from devkit.devices import state_supported
    if not state_supported():
        pytest.skip("power cycles need a tmpfs at /dev/shm apart from /")
    rig.power_cycle(dev)


@pytest.fixture(scope="module")
def assigned(rig, repo, dps):
    """A device enrolled, installed and assigned (the runtime's journal emptied after it)."""
    dev = rig.add_device("fresh")
    try:
        with open(dps.section["ca_bundle"], encoding="ascii") as handle:
            dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=handle.read(), check=True,
                     timeout=300)
        ok("edge-tpm", "enrollment", "create", *host_args(dev, "root"), "--tcti", dev.tcti, *dps.login)
        first = install(dev, dps, "--package-source", repo["base_url"])
        assert first.rc == 0, f"{first.message} | {first.recommendation}"
        assert first.out["runtime"]["provisioning"]["state"] == "assigned", first.out["runtime"]
        yield dev
    finally:
        rig.remove_device(dev)


def journal(dev):
    return dev.exec("iotedge system logs", check=True).stdout


def test_after_a_reboot_status_reads_device_info_and_an_apply_does_not_wait(rig, assigned, repo, dps):
    """After a power cycle the log has no line naming the hub: status takes it from device_info; the
    modules are listed under the real `Config` header; an apply ends its wait on "Provisioned with
    backup" at once (settle.waitedSeconds, not a clock in the test)."""
    dev = assigned
    rid = dev.exec(f"cat {DEVICE_INFO}", check=True).stdout
    power_cycle(rig, dev)
    logs = journal(dev)
    assert "Provisioning starting. Reason: Startup" in logs and "Provisioned with backup for" in logs
    assert "Assigned to IoT hub" not in logs and "Device ID:" not in logs
    assert "NAME           STATUS         DESCRIPTION    Config" in dev.exec("iotedge list", check=True).stdout

    status = ok("edge-tpm", "status", *host_args(dev)).out
    prov = status["provisioning"]
    assert status["healthy"] and prov["state"] == "assigned" and prov["source"] == "device_info", status
    assert f'hub_name = "{prov["assignedHub"]}"' in rid and f'device_id = "{prov["deviceId"]}"' in rid
    assert [m["name"] for m in status["modules"] if m["status"] == "running"] == ["edgeAgent"]
    assert status["checks"]["exitCode"] == 0

    applied = install(dev, dps, "--package-source", repo["base_url"], "--auto-reprovisioning-mode", "OnErrorOnly")
    assert applied.rc == 0, f"{applied.message} | {applied.recommendation}"
    assert statuses(applied)["runtime"] == "changed"
    runtime = applied.out["runtime"]
    assert runtime["provisioning"]["state"] == "assigned" and runtime["settle"]["waitedSeconds"] == 0, runtime
    assert "iotedge system reprovision" not in next(s for s in applied.out["steps"] if s["name"] == "runtime")[
        "detail"]


def test_provision_with_another_registration_id_moves_the_device(assigned, repo, dps):
    """A provisioned device, provisioned again under another registration ID: the product runs
    `iotedge system reprovision` after the apply; DPS assigns the new ID and the device uses it."""
    dev = assigned
    new_rid = "plant7-line2-gw"
    result = ok("edge-tpm", "provision", *host_args(dev), "--tcti", dev.tcti, *dps.login,
                "--registration-id", new_rid, "--id-scope", dps.section["id_scope"],
                "--global-endpoint", dps.section["device_endpoint"], "--package-source", repo["base_url"]).out
    assert result["status"] == "assigned" and result["deviceId"] == new_rid, result
    steps = {s["name"]: s for s in result["steps"]}
    assert "config" in steps["install"]["detail"] and "runtime" in steps["install"]["detail"], result
    assert steps["wait"]["status"] == "ok" and new_rid in str(result), result
    record = ok("edge-tpm", "registration", "show", "--registration-id", new_rid, *dps.login).out
    assert record["status"] == "assigned" and record["deviceId"] == new_rid
    assert result["assignedHub"] == record["assignedHub"]
    assert f'device_id = "{new_rid}"' in dev.exec(f"cat {DEVICE_INFO}", check=True).stdout
    assert "Provisioning starting. Reason: Api" in journal(dev)


def test_another_hostname_with_modules_is_refused_with_the_way_out(assigned, repo, dps):
    """`iotedge config apply` refuses a new hostname while module containers exist: one clear error
    with the command that removes them, and the configuration the run wrote is kept for the re-run."""
    dev = assigned
    old = dev.exec("hostname", check=True).stdout.strip()
    dev.exec("hostname plant7-renamed", check=True)
    try:
        refused = install(dev, dps, "--package-source", repo["base_url"], "--auto-reprovisioning-mode", "Dynamic")
        assert refused.rc != 0 and "Traceback" not in refused.stderr
        assert "refuses the hostname plant7-renamed" in refused.message, refused.message
        assert "docker rm -f" in refused.recommendation and f'hostname = "{old}"' in refused.recommendation
    finally:
        dev.exec(f"hostname {old}", check=True)
    again = install(dev, dps, "--package-source", repo["base_url"], "--auto-reprovisioning-mode", "Dynamic")
    assert again.rc == 0, f"{again.message} | {again.recommendation}"


def test_deprovision_without_uninstall_leaves_the_services_down_after_a_reboot(rig, assigned, dps):
    """`iotedge system stop` leaves the units enabled: at boot they would start without configuration
    and crash-loop. Deprovision disables what it stopped, says so, and the reboot stays quiet."""
    dev = assigned
    done = ok("edge-tpm", "deprovision", *host_args(dev), "--tcti", dev.tcti, *dps.login, "--yes").out
    assert done["device"] == "reset", done
    assert "disabled" in dev.exec("systemctl is-enabled aziot-identityd.service").stdout
    details = " ".join(str(v) for v in done.values())
    assert "systemctl disable" in details, done
    power_cycle(rig, dev)
    logs = journal(dev)
    assert "Scheduled restart job" not in logs.split("Stopped Azure IoT Identity Service.")[-1]
    status = dev.exec("iotedge system status", check=True).stdout
    assert "Down" not in status, status
    health = ok("edge-tpm", "status", *host_args(dev)).out
    assert health["checks"]["exitCode"] == 1   # (its config checks fail: nothing is applied)
