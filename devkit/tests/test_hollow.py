"""Hollow devices (devkit/hollow): they come up, answer SSH with their own host keys, have their
own TPMs (distinct EKs), /etc and hostnames, take a real provision end to end, and go down
leaving nothing behind."""
import csv
import hashlib
import json
import os
import subprocess
import sys

import paramiko
import pytest

from devkit import netns
from devkit.devices import STATE_BASE, Rig, missing_requirements

pytestmark = pytest.mark.devkit

COUNT = 3


def new_rig(path, **kwargs):
    reasons = missing_requirements()
    if reasons:
        pytest.skip("simulated devices unavailable: " + "; ".join(reasons))
    rig = Rig(str(path), owner_pid=os.getpid())
    rig.up([], timeout=300, **kwargs)
    return rig


@pytest.fixture(scope="module")
def hollow(tmp_path_factory):
    rig = new_rig(tmp_path_factory.mktemp("hollow-rig"), services=["dps", "packages"], hollow=COUNT)
    yield rig
    rig.down()


def run(client, command):
    _stdin, stdout, stderr = client.exec_command(command, timeout=120)
    status = stdout.channel.recv_exit_status()
    return status, stdout.read().decode(), stderr.read().decode()


def test_each_answers_ssh_with_its_own_host_keys_hostname_and_files(hollow):
    devices = hollow.devices
    assert len(devices) == COUNT and all(d.variant == "hollow" for d in devices)
    assert len({d.host for d in devices}) == COUNT
    assert len({k for d in devices for k in d.host_keys}) == 2 * COUNT  # ed25519 + ecdsa each
    for dev in devices:
        with dev.connect("admin") as client:  # RejectPolicy + the rig's known_hosts
            status, out, _err = run(client, "hostname; cat /etc/hostname; sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub; "
                                            "sudo -n touch /etc/only-on-" + dev.name)
            assert status == 0
            hostname, etc_hostname, key = out.splitlines()[:3]
            assert hostname == etc_hostname == dev.name
            assert " ".join(key.split()[:2]) in dev.host_keys
        # the host's exec path reaches the same root
        assert dev.exec(["ls", "/etc/only-on-" + dev.name]).returncode == 0
    # /etc is each device's own
    others = [d for d in devices if d is not devices[0]]
    assert all(d.exec(["ls", "/etc/only-on-" + devices[0].name]).returncode != 0 for d in others)


def test_a_device_does_not_answer_with_another_ones_host_key(hollow, tmp_path):
    first, second = hollow.devices[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text("".join("%s %s\n" % (second.host, k) for k in first.host_keys))
    client = paramiko.SSHClient()
    client.load_host_keys(str(wrong))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(second.host, username="root", key_filename=second.key("root"), timeout=30,
                       look_for_keys=False, allow_agent=False)
    client.close()


def test_each_has_its_own_tpm(hollow):
    digests = {}
    for dev in hollow.devices:
        with dev.connect("root") as client:
            status, out, err = run(client, "export TPM2TOOLS_TCTI='%s'; tpm2_createek -c - -G rsa -u /tmp/ek.pub "
                                           ">/dev/null && sha256sum /tmp/ek.pub" % dev.tcti)
            assert status == 0, err
            digests[dev.name] = out.split()[0]
    assert len(set(digests.values())) == COUNT, digests


def test_a_provision_of_hollow_devices_end_to_end(hollow, tmp_path):
    from devkit import azhome
    from devkit.hollow import stats
    with open(hollow.json_path, encoding="utf-8") as handle:
        kit = json.load(handle)
    dps, packages = kit["dps"], kit["packages"]
    inventory = tmp_path / "fleet.csv"
    with open(inventory, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["host", "ssh_key", "tcti"])
        for dev in hollow.devices:
            writer.writerow([f"root@{dev.host}:{dev.port}", dev.key("root"), dev.tcti])
    login = tmp_path / "login"
    fd = os.open(login, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(dps["connection_string"])
    env = dict(os.environ, **azhome.prepare(str(tmp_path / "az")), REQUESTS_CA_BUNDLE=dps["ca_bundle"],
               AZURE_CORE_ONLY_SHOW_ERRORS="true")
    ssh_before = sum(stats(hollow)["ssh"].values())
    proc = subprocess.run([sys.executable, "-m", "azure.cli", "edge-tpm", "provision", "--inventory", str(inventory),
                           "--login", f"@{login}", "--id-scope", dps["id_scope"], "--global-endpoint",
                           dps["device_endpoint"], "--package-source", packages["apt_line"], "--known-hosts",
                           hollow.known_hosts, "-o", "json"], env=env, capture_output=True, text=True, timeout=900,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [r["status"] for r in results] == ["assigned"] * COUNT, [r.get("error") for r in results]
    # Each device registered with its own EK: distinct registration IDs, each in its own config.toml.
    assert len({r["registrationId"] for r in results}) == COUNT
    for dev, r in zip(hollow.devices, results):
        config = dev.exec(["cat", "/etc/aziot/config.toml"], check=True).stdout
        assert r["registrationId"] in config and dev.tcti in config
    # The supervisors saw the connections (what the scale benchmark counts).
    assert sum(stats(hollow)["ssh"].values()) - ssh_before >= COUNT


def test_up_and_down_leave_nothing(tmp_path):
    rig = new_rig(tmp_path / "rig", services=[], hollow=2)
    slots = netns.slots_owned_by(rig.dir)
    assert len(slots) == 2  # the rig's own /24 and the hollow devices' one
    supervisor = rig.devices[0].pid
    state = os.path.join(STATE_BASE, hashlib.sha256(rig.dir.encode()).hexdigest()[:16])
    assert os.path.isdir(state) and os.path.exists("/proc/%d" % supervisor)
    rig.down()
    assert not netns.slots_owned_by(rig.dir)
    assert not any(n for s in slots for n in netns.netns_of_slot(s))
    assert not any(link for s in slots for link in netns.links_of_slot(s))
    assert not os.path.exists("/proc/%d" % supervisor) and not os.path.exists(state)
    assert not os.path.exists(rig.json_path)
