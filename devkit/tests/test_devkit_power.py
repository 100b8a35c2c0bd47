"""Devices added to a running rig trust its DPS emulator as the first ones do, and a device
power cycle keeps disk and TPM state (what "the device rebooted in the middle of install" needs)."""
import os
import subprocess
import sys

import pytest

from devkit.devices import STATE_BASE, Rig, state_supported
from devkit.dps.service import DEVICE_CA_PATH
from devkit.pytest_plugin import require_devices

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.devkit


def devkit_cli(*args):
    return subprocess.run([sys.executable, "-m", "devkit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=180)


TLS_PROBE = ("import socket, ssl, sys; h, p = sys.argv[1], int(sys.argv[2]); "
             "ssl.create_default_context().wrap_socket(socket.create_connection((h, p), timeout=5), "
             "server_hostname=h).close(); print('verified')")


def trusts_emulator(dev, section):
    """A TLS handshake from inside the device to the emulator's device endpoint, verified with
    the device's default trust store (what the runtime uses)."""
    host, port = section["device_endpoint"].split("//", 1)[1].rsplit(":", 1)
    proc = dev.exec(["python3", "-c", TLS_PROBE, host, port])
    return proc.returncode == 0 and "verified" in proc.stdout, proc.stderr[-300:]


@pytest.fixture(scope="module")
def dps_rig(tmp_path_factory):
    require_devices()
    rig = Rig(tmp_path_factory.mktemp("dps-rig"), owner_pid=os.getpid())
    rig.up(["fresh"], services=["dps"])
    yield rig
    rig.down()


def test_devices_added_later_trust_the_emulator_ca(dps_rig):
    section = dps_rig.sections["dps"]
    first = dps_rig.devices[0]
    assert trusts_emulator(first, section)[0]
    in_process = dps_rig.add_device("fresh")
    proc = devkit_cli("add", "--dir", dps_rig.dir, "fresh")  # another process: Rig.load(dir).add_devices
    assert proc.returncode == 0, proc.stderr
    other = Rig.load(dps_rig.dir)
    from_cli = [d for d in other.devices if d.name not in (first.name, in_process.name)]
    assert len(from_cli) == 1
    for dev in (in_process, from_cli[0]):
        ok, why = trusts_emulator(dev, section)
        assert ok, f"{dev.name}: {why}"
        assert dev.exec(["cat", DEVICE_CA_PATH]).stdout.strip() == open(section["ca_bundle"]).read().strip()
    other.remove_device(from_cli[0])


TPM = "TPM2TOOLS_TCTI"


def test_power_cycle_keeps_disk_and_tpm_state(rig, new_device):
    if not state_supported():
        pytest.skip(f"{os.path.dirname(STATE_BASE)} is not a tmpfs apart from /: power cycles unsupported")
    dev = new_device("fresh")
    env = dev.tpm_env
    assert dev.exec("tpm2_createek -c 0x81010001 -G rsa -u /root/ek.pub >/dev/null && "
                    "echo kept > /etc/on-disk && echo gone > /tmp/scratch && echo gone > /run/volatile",
                    env=env).returncode == 0
    ek_before = dev.exec(["sha256sum", "/root/ek.pub"]).stdout.split()[0]
    old_pid = dev.pid
    # a command in flight when the power goes
    dev.exec("nohup sh -c 'sleep 300' >/dev/null 2>&1 &")

    again = rig.power_cycle(dev)
    assert again.pid != old_pid and again.alive()
    assert dev.exec(["cat", "/etc/on-disk"]).stdout == "kept\n"
    assert dev.exec(["test", "-e", "/tmp/scratch"]).returncode == 1
    assert dev.exec(["test", "-e", "/run/volatile"]).returncode == 1
    assert "sleep 300" not in dev.exec(["ps", "-eo", "args"]).stdout
    # the same TPM: the persisted EK is still there and the same key
    read = dev.exec("tpm2_readpublic -c 0x81010001 -o /root/ek2.pub >/dev/null && sha256sum /root/ek2.pub", env=env)
    assert read.returncode == 0, read.stderr
    assert read.stdout.split()[0] == ek_before
    # the same host keys: SSH with the rig's known_hosts still works
    client = dev.connect("admin")
    try:
        _, out, _ = client.exec_command("cat /etc/on-disk", timeout=10)
        assert out.read() == b"kept\n"
    finally:
        client.close()

    proc = devkit_cli("power-cycle", "--dir", rig.dir, dev.name)
    assert proc.returncode == 0, proc.stderr
    assert "disk and TPM state kept" in proc.stdout
    reloaded = Rig.load(rig.dir).device(dev.name)
    assert reloaded.pid != again.pid and reloaded.alive()
    assert reloaded.exec(["cat", "/etc/on-disk"]).stdout == "kept\n"
    rig.device(dev.name).pid = reloaded.pid  # this process's Rig object follows the CLI's restart
    rig.device(dev.name).root_dir = reloaded.root_dir
