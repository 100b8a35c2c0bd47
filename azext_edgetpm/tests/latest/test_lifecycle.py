"""A device's later life on the dev kit: `reprovision` to another hub, `rekey` after a TPM clear,
`deprovision` (disable; delete + uninstall) and a deprovision killed half-way then finished.

One module rig: three devices provisioned once (enrollment + install, for real), then used by the
tests in order (each test says what it leaves). DPS state is read from the emulator's store and
counters, the devices' state from inside them (the rig's exec), never through the product.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib

import pytest
import requests

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import REPO, ArmLogin, EmulatorEnv, ok, rsa_ek, start_emulator

pytestmark = pytest.mark.devkit

DEVICE_CA = "/usr/local/share/ca-certificates/devkit-dps-ca.crt"
APPLIED = "/etc/aziot/identityd/config.d/00-super.toml"
BACKUP = "/var/lib/aziot/identityd/device_info"
DEPROVISION_BACKUPS = "/var/backups/edge-tpm/config.toml.edgetpm-*.bak"   # outside /etc/aziot, which a purge removes


@pytest.fixture(scope="module")
def dps(rig, tmp_path_factory):
    # hub_address: the hubs' registry also on 127.x.y.z:443, for az runs that resolve hub names there
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("lifecycle-dps"), host_ips=[rig.host_ip],
                                     assignment_delay_s=0.2, hub_address="auto"))
    yield env
    env.close()


@pytest.fixture(scope="module")
def hub_login(dps):
    """az login (a service principal of the emulator's Entra ID): --delete-hub-device reaches the
    hub with it, while DPS is reached with --login (the connection string)."""
    login = ArmLogin(dps)
    yield login
    login.close()


def az_with_hubs(dps, tmp_path, *args):
    """The real az in a child process whose /etc/hosts (a private mount namespace, nothing changed
    on the machine) resolves the hubs' host names to the emulator's hub listener; the product
    reaches https://<hub>/devices/... as it would in Azure. JSON output parsed."""
    from devkit.dps.testing import resolving_prefix
    prefix = resolving_prefix(dps.section["iot_hubs"], dps.section["hub_ip"], str(tmp_path))
    proc = subprocess.run([*prefix, sys.executable, "-m", "azure.cli", *args, "-o", "json"], capture_output=True,
                          text=True, timeout=180, env=dict(os.environ), cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def hub_identity(dps, hub, device_id):
    """The device identity in `hub`, read from the emulator's hub registry (None: there is none).
    (A device moved to another hub leaves its old identity behind, as with the real DPS.)"""
    return dps.emu.store.hub_registry.find(hub, device_id)


class Device:
    """A provisioned rig device and its registration ID."""

    def __init__(self, dev, rid):
        self.dev, self.rid = dev, rid

    def ssh(self, user="admin"):
        d = self.dev
        return ["--host", f"{d.users[user]['user']}@{d.host}:{d.port}", "--ssh-key", d.key(user),
                "--known-hosts", d.known_hosts, "--tcti", d.tcti]

    def args(self, dps, user="admin"):
        return [*self.ssh(user), *dps.login]

    def sh(self, command, check=True):
        return self.dev.exec(command, check=check).stdout

    def exists(self, path):
        return self.dev.exec(["test", "-e", path]).returncode == 0

    def logged_hub(self):
        """The last hub the device's runtime logged ("Device is X on HUB": aziot-edged's line,
        edgelet/aziot-edged/src/provision.rs; the identity service names no hub)."""
        lines = [json.loads(line) for line in self.sh("cat /var/log/aziot/standin-journal.jsonl").splitlines()]
        hubs = [line["msg"].rsplit(" on ", 1)[1] for line in lines if "] - Device is " in line["msg"]]
        return hubs[-1] if hubs else None


def write_inventory(path, devices, user="admin", edge_versions=None):
    """A CSV inventory of rig devices (the csv module: a TCTI holds commas); edge_versions: the
    edge_version column, one per device (None: no pin)."""
    import csv
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["host", "ssh_key", "tcti"] + (["edge_version"] if edge_versions else []))
        writer.writeheader()
        for i, dev in enumerate(devices):
            row = {"host": f"{dev.users[user]['user']}@{dev.host}:{dev.port}", "ssh_key": dev.key(user),
                   "tcti": dev.tcti}
            if edge_versions:
                row["edge_version"] = edge_versions[i] or ""
            writer.writerow(row)
    return str(path)


@pytest.fixture(scope="module")
def devices(rig, repo, dps, tmp_path_factory):
    """Three devices, provisioned (enrolled, installed, assigned) in one fleet run, for the whole module."""
    started = rig.add_devices(["fresh"] * 3)
    try:
        with open(dps.section["ca_bundle"], encoding="ascii") as handle:
            ca = handle.read()
        for dev in started:
            dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=ca, check=True)
        inventory = write_inventory(tmp_path_factory.mktemp("lifecycle") / "fleet.csv", started)
        results = ok("edge-tpm", "provision", "--inventory", inventory, *dps.login, "--id-scope",
                     dps.section["id_scope"], "--global-endpoint", dps.section["device_endpoint"],
                     "--package-source", repo["base_url"], "--known-hosts", rig.known_hosts, "--max-parallel", "3").out
        assert [r["status"] for r in results] == ["assigned"] * 3, results
        yield [Device(dev, r["registrationId"]) for dev, r in zip(started, results)]
    finally:
        for dev in started:
            rig.remove_device(dev)


def enrollment(dps, rid):
    return dps.emu.store.get_enrollment(rid)


def record(dps, rid):
    try:
        return dps.emu.store.get_registration(rid)
    except Exception:  # pylint: disable=broad-except  # DpsError 404: no record
        return None


def writes(dps):
    """DPS service writes so far (successful enrollment PUTs and bulk calls, deletions), by route."""
    out = {}
    for key, count in dps.emu.counters().items():
        if not key.startswith("endpoint.") or not key.endswith((".200", ".204")):
            continue
        route = key[len("endpoint."):].rsplit(".", 1)[0]
        if route.startswith(("PUT /enrollments", "DELETE")) or route == "POST /enrollments":
            out[route] = out.get(route, 0) + count
    return out


def test_reprovision_moves_three_devices_to_another_hub(devices, dps, rig, tmp_path):
    target = dps.section["iot_hubs"][1]
    before = {d.rid: record(dps, d.rid) for d in devices}
    bulk_before = writes(dps).get("POST /enrollments", 0)
    inventory = write_inventory(tmp_path / "fleet.csv", [d.dev for d in devices])
    args = ["edge-tpm", "reprovision", "--inventory", inventory, *dps.login, "--known-hosts", rig.known_hosts,
            "--iot-hubs", target, "--allocation-policy", "static"]
    plan = ok(*args, "--dry-run").out
    assert [r["status"] for r in plan] == ["planned"] * 3, plan
    assert all(r["enrollment"].startswith(("would change", "enrollment unchanged")) for r in plan)
    assert writes(dps).get("POST /enrollments", 0) == bulk_before and record(dps, devices[0].rid) == before[devices[0].rid]

    results = ok(*args, "--yes").out
    assert [r["status"] for r in results] == ["assigned"] * 3, results
    # the three enrollment changes went to DPS in ONE bulk call, each guarded by its etag
    assert writes(dps).get("POST /enrollments", 0) - bulk_before == 1
    for d, result in zip(devices, results):
        assert result["registrationId"] == d.rid and result["assignedHub"] == target, result
        assert result["deviceReports"] == target and result["previousHub"] == before[d.rid]["assignedHub"]
        moved = before[d.rid]["assignedHub"] != target
        assert result["substatus"] == ("deviceDataMigrated" if moved else "initialAssignment")
        assert enrollment(dps, d.rid)["iotHubs"] == [target]
        assert enrollment(dps, d.rid)["allocationPolicy"] == "static"
        assert record(dps, d.rid)["assignedHub"] == target and record(dps, d.rid)["etag"] != before[d.rid]["etag"]
        assert d.logged_hub() == target      # what the device's own identity service says

    # one device again (--host): nothing to change in its enrollment; it registers again, same hub
    again = ok("edge-tpm", "reprovision", *devices[0].args(dps), "--iot-hubs", target, "--yes").out
    assert again["enrollment"] == "enrollment unchanged" and again["assignedHub"] == target


def test_rekey_after_tpm_clear(devices, dps, tmp_path):
    d = devices[2]
    old_ek = enrollment(dps, d.rid)["attestation"]["tpm"]["endorsementKey"]
    evicted = d.dev.clear_tpm()
    assert "0x81010001" in evicted  # the EK (and the SRK, the DPS key) are gone

    plan = ok("edge-tpm", "rekey", *d.args(dps), "--dry-run").out
    assert plan["status"] == "planned"
    assert enrollment(dps, d.rid)["attestation"]["tpm"]["endorsementKey"] == old_ek

    # A key that another enrollment holds is refused (one TPM, one enrollment).
    new_key = ok("edge-tpm", "ek", "show", *d.ssh()).out["endorsementKey"]   # (creates the new EK and SRK)
    ok("edge-tpm", "enrollment", "create", "--endorsement-key", new_key, "--registration-id", "lifecycle-thief",
       *dps.login)
    refused = az("edge-tpm", "rekey", *d.args(dps), "--yes")
    assert refused.rc != 0 and "lifecycle-thief" in refused.message, refused.message
    assert enrollment(dps, d.rid)["attestation"]["tpm"]["endorsementKey"] == old_ek
    ok("edge-tpm", "enrollment", "delete", "--enrollment-id", "lifecycle-thief", *dps.login, "--yes")

    result = ok("edge-tpm", "rekey", *d.args(dps), "--yes").out
    assert result["status"] == "assigned" and result["registrationId"] == d.rid, result
    assert result["previousEkSha256"] == hashlib.sha256(_b64(old_ek)).hexdigest()[:16]
    new_ek = enrollment(dps, d.rid)["attestation"]["tpm"]["endorsementKey"]
    assert new_ek != old_ek and result["ekSha256"] == hashlib.sha256(_b64(new_ek)).hexdigest()[:16]
    device_ek = d.dev.exec("tpm2_readpublic -c 0x81010001 -o /tmp/ek.pub >/dev/null && base64 -w0 /tmp/ek.pub",
                           env=d.dev.tpm_env, check=True).stdout
    assert new_ek == device_ek                      # the enrollment holds the TPM's new EK
    assert record(dps, d.rid)["status"] == "assigned" and d.logged_hub() == result["assignedHub"]

    # The old EK can no longer register: DPS refuses its TPM challenge.
    url = f"{dps.section['device_endpoint']}/{dps.section['id_scope']}/registrations/{d.rid}/register"
    srk = enrollment(dps, d.rid)["attestation"]["tpm"]["storageRootKey"]
    refused = requests.put(url, params={"api-version": "2021-06-01"},
                           json={"registrationId": d.rid, "tpm": {"endorsementKey": old_ek, "storageRootKey": srk}},
                           verify=dps.section["ca_bundle"], timeout=30)
    assert refused.status_code == 401 and refused.json()["errorCode"] == 401002
    assert "does not match" in record(dps, d.rid)["errorMessage"]

    # A second run (the fleet form): the key is in place; the device registers again and is assigned.
    puts = writes(dps).get("PUT /enrollments/{id}", 0)
    again = ok("edge-tpm", "rekey", "--inventory", write_inventory(tmp_path / "c.csv", [d.dev]), *dps.login,
               "--known-hosts", d.dev.known_hosts, "--yes").out[0]
    assert again["status"] == "assigned" and again["enrollment"] == "the enrollment already holds the device's EK"
    assert writes(dps).get("PUT /enrollments/{id}", 0) == puts
    assert record(dps, d.rid)["status"] == "assigned"


def _b64(text):
    import base64
    return base64.b64decode(text)


def _snapshot(dps, d):
    return (enrollment(dps, d.rid)["etag"], record(dps, d.rid)["etag"],
            d.sh("sha256sum /etc/aziot/config.toml"), d.sh("cat /var/lib/aziot/standin/services.json"))


def test_deprovision_disable_and_delete_uninstall_third_untouched(devices, dps, hub_login, tmp_path):
    a, b, c = devices
    untouched = _snapshot(dps, c)
    hub_a = record(dps, a.rid)["assignedHub"]

    plan = ok("edge-tpm", "deprovision", *a.args(dps), "--dry-run").out
    assert plan["status"] == "planned" and {s["status"] for s in plan["steps"]} >= {"would-change"}
    assert enrollment(dps, a.rid)["provisioningStatus"] == "enabled" and record(dps, a.rid) is not None

    # A: disable (the default mode)
    done = ok("edge-tpm", "deprovision", *a.args(dps), "--yes").out
    assert done["status"] == "done" and done["enrollment"] == "disabled" and done["device"] == "reset", done
    assert enrollment(dps, a.rid)["provisioningStatus"] == "disabled"
    assert record(dps, a.rid) is None
    config = tomllib.loads(a.sh("cat /etc/aziot/config.toml"))
    assert "provisioning" not in config and "auto_reprovisioning_mode" not in config
    assert config["tpm"]["tcti"] == a.dev.tcti     # the other settings kept
    assert len(a.sh(f"ls {DEPROVISION_BACKUPS}").split()) == 1
    assert not a.exists(APPLIED) and not a.exists(BACKUP)
    services = json.loads(a.sh("cat /var/lib/aziot/standin/services.json"))
    assert {s["state"] for s in services.values()} == {"inactive"}
    assert "install ok installed" in a.sh("dpkg-query -W -f='${Status}' aziot-edge")
    remains = " ".join(done["remains"])
    assert f"in {hub_a}" in remains and "disabled" in remains and "packages" in remains
    # without --delete-hub-device the hub identity stays, and the result says so
    assert done["hubIdentity"] == "kept" and hub_identity(dps, hub_a, done["deviceId"]) is not None
    assert f"az iot hub device-identity delete -n {hub_a.split('.')[0]} -d {done['deviceId']}" in remains

    status = ok("edge-tpm", "status", *a.ssh()[:-2]).out   # (the product's own view agrees)
    assert status["provisioning"]["state"] == "not configured" and not status["healthy"]
    assert status["provisioning"]["previous"]["assignedHub"] == hub_a

    # A again: every step finds its work done; DPS sees no write
    before = writes(dps)
    again = ok("edge-tpm", "deprovision", *a.args(dps), "--registration-id", a.rid, "--yes").out
    assert {s["name"]: s["status"] for s in again["steps"]} == {
        "identify": "ok", "enrollment": "ok", "registration": "ok", "device": "ok"}
    assert writes(dps) == before
    # and the device no longer provisions: asked to, it does not even reach DPS
    a.dev.exec("iotedge system reprovision")
    assert record(dps, a.rid) is None and a.logged_hub() == hub_a

    # B: delete + uninstall + its hub identity (az in a namespace where the hub names resolve)
    hub_b = record(dps, b.rid)["assignedHub"]
    assert hub_identity(dps, hub_b, b.rid) is not None       # DPS made it when it assigned the device
    b_args = ["edge-tpm", "deprovision", *b.args(dps), "--mode", "delete", "--uninstall", "--delete-hub-device"]
    plan = az_with_hubs(dps, tmp_path, *b_args, "--dry-run")
    assert {s["name"]: s["status"] for s in plan["steps"]}["hub"] == "would-change", plan
    assert plan["hubIdentity"] == "would delete" and hub_identity(dps, hub_b, b.rid) is not None
    gone = az_with_hubs(dps, tmp_path, *b_args, "--yes")
    assert gone["status"] == "done" and gone["enrollment"] == "absent" and gone["device"] == "uninstalled", gone
    assert gone["hubIdentity"] == "deleted" and gone["assignedHub"] == hub_b, gone
    assert hub_identity(dps, hub_b, b.rid) is None               # gone from the hub's registry
    assert not any(line.startswith("IoT hub:") for line in gone["remains"]), gone["remains"]
    with pytest.raises(Exception):
        enrollment(dps, b.rid)
    assert record(dps, b.rid) is None
    assert b.dev.exec("dpkg-query -W -f='${Status}' aziot-edge aziot-identity-service | grep -q 'ok installed'"
                      ).returncode != 0
    assert not b.exists("/etc/aziot/config.toml") and not b.exists("/etc/aziot/identityd")
    assert b.dev.exec("getent passwd aziotid iotedge").returncode != 0
    # The real purge removes /etc/aziot whole (iot-identity-service contrib/debian/postrm, as the stand-in
    # does): the backup deprovision reported lives outside it, and stays.
    prefix = "device: the previous configuration in "
    (saved,) = [line[len(prefix):] for line in gone["remains"] if line.startswith(prefix)]
    assert not b.exists("/etc/aziot") and b.exists(saved), f"{saved}, reported by deprovision, is gone"
    assert b.sh(f"ls {DEPROVISION_BACKUPS}").split() == [saved]
    assert "[provisioning]" in b.sh(f"cat {saved}") and b.sh(f"stat -c %a {saved}").strip() == "600"

    # C: untouched
    assert _snapshot(dps, c) == untouched


def test_deprovision_killed_half_way_then_finished(devices, dps, rig, hub_login, tmp_path):
    c = devices[2]
    inventory = write_inventory(tmp_path / "one.csv", [c.dev])
    state = tmp_path / "deprovision-state.json"
    # --delete-hub-device, but here (this process) the hub's host name does not resolve: unreachable
    args = ["edge-tpm", "deprovision", "--inventory", inventory, "--state", str(state), *dps.login,
            "--known-hosts", rig.known_hosts, "--delete-hub-device", "--yes"]
    hub_c = record(dps, c.rid)["assignedHub"]
    dps.emu.reset_counters()
    dps.emu.configure(faults={"latency_ms": {"service": 1500}})   # slow DPS: time to kill the run half-way
    proc = subprocess.Popen([sys.executable, "-m", "azure.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ), cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while "enrollment" not in _steps_in(state):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the enrollment step"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)   # half-way: the enrollment disabled and journaled, nothing else yet
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        dps.emu.configure(clear_faults=True)
    assert enrollment(dps, c.rid)["provisioningStatus"] == "disabled"
    assert record(dps, c.rid) is not None and c.exists(APPLIED)   # the rest was not done

    finished = ok(*args).out[0]
    assert finished["status"] == "done", finished
    steps = {s["name"]: s["status"] for s in finished["steps"]}
    assert steps == {"identify": "ok", "enrollment": "changed", "hub": "left", "registration": "kept",
                     "device": "changed"}
    # the hub could not be reached: the deprovision is done on the DPS and device sides, and says what is left;
    # the registration record stays until then (where a resumed run confirms the hub from, not the state file)
    assert finished["hubIdentity"] == "left" and hub_identity(dps, hub_c, c.rid) is not None
    assert any(line.startswith(f"DPS: the registration record of {c.rid}, kept") for line in finished["remains"])
    hub_line = [line for line in finished["remains"] if line.startswith("IoT hub:")]
    assert len(hub_line) == 1 and "could not be reached" in hub_line[0], finished["remains"]
    assert f"{c.rid} in {hub_c}" in hub_line[0]
    assert f"az iot hub device-identity delete -n {hub_c.split('.')[0]} -d {c.rid}" in hub_line[0]
    # over both runs, each DPS change happened once (the re-run did not even read the enrollment again)
    assert writes(dps) == {"PUT /enrollments/{id}": 1}
    assert record(dps, c.rid) is not None and not c.exists(APPLIED)
    assert len(c.sh(f"ls {DEPROVISION_BACKUPS}").split()) == 1

    # a third run with the same state, where the hub can be reached: only the hub step runs again
    third = az_with_hubs(dps, tmp_path, *args)[0]
    assert third["status"] == "done" and third["hubIdentity"] == "deleted" and not third["doneEarlier"], third
    assert {s["name"]: s["status"] for s in third["steps"]}["hub"] == "changed"
    assert {s["name"]: s["status"] for s in third["steps"]}["registration"] == "changed"
    assert hub_identity(dps, hub_c, c.rid) is None and record(dps, c.rid) is None
    assert not any(line.startswith("IoT hub:") for line in third["remains"])
    done_writes = {"PUT /enrollments/{id}": 1, "DELETE /registrations/{id}": 1, "DELETE /devices/{id}": 1}
    assert writes(dps) == done_writes

    # a fourth run with the same state: the device is done, nothing is touched
    fourth = ok(*args).out[0]
    assert fourth["doneEarlier"] and writes(dps) == done_writes


def _steps_in(state):
    from azext_edgetpm.fleet.state import read_records
    return next(iter(read_records(str(state)).values()), {}).get("steps", {})


def test_unreachable_device_gets_its_cloud_side_done_unless_required(dps, rig, tmp_path):
    rid = "lifecycle-unreachable-1"
    ok("edge-tpm", "enrollment", "create", "--endorsement-key", rsa_ek(4711), "--registration-id", rid, *dps.login)
    inventory = tmp_path / "gone.csv"
    inventory.write_text("host,ssh_key,registration_id\n"
                         f"root@{rig.host_ip}:1,{rig.devices[0].key('root')},{rid}\n", encoding="utf-8")
    args = ["edge-tpm", "deprovision", "--inventory", str(inventory), *dps.login, "--known-hosts", rig.known_hosts,
            "--yes"]

    unconfirmed = az(*args[:-1])          # no --yes, and no terminal to ask on
    assert unconfirmed.rc != 0 and "--yes" in unconfirmed.recommendation
    assert enrollment(dps, rid)["provisioningStatus"] == "enabled"

    required = az(*args, "--require-device")
    assert required.rc != 0 and required.out[0]["failedStep"] == "identify"
    assert enrollment(dps, rid)["provisioningStatus"] == "enabled"      # nothing changed in DPS

    cloud_only = az(*args)
    assert cloud_only.rc != 0 and "1 of 1 devices failed" in cloud_only.message
    result = cloud_only.out[0]
    assert result["status"] == "failed" and result["failedStep"] == "device", result
    assert result["enrollment"] == "disabled" and result["device"] == "not reached"
    assert enrollment(dps, rid)["provisioningStatus"] == "disabled"
    assert any(line.startswith("device: IoT Edge installed and configured as before") for line in result["remains"])
