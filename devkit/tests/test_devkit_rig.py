"""The simulated devices: SSH for every account, the TPM variants, clean teardown (also after
a crash), several rigs at once."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import paramiko
import pytest

from devkit import netns
from devkit.devices import Rig
from devkit.pytest_plugin import require_devices

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPM_PROBE = "import socket; socket.create_connection(('127.0.0.1', 2321), timeout=1).close()"

pytestmark = pytest.mark.devkit


def ssh_run(dev, user, command, stdin_text=None):
    """Run ``command`` over SSH as ``user``; return (exit status, stdout, stderr)."""
    client = dev.connect(user)
    try:
        stdin, stdout, stderr = client.exec_command(command, timeout=30)
        if stdin_text is not None:
            stdin.write(stdin_text)
            stdin.channel.shutdown_write()
        out, err = stdout.read().decode(), stderr.read().decode()
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()


def devkit_cli(*args, **kwargs):
    """Run ``python -m devkit ARGS`` from the repository."""
    return subprocess.run([sys.executable, "-m", "devkit", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kwargs)


def rig_pids(slot):
    """Host pids of every process in a rig's namespaces."""
    return {pid for ns in netns.netns_of_slot(slot) for pid in netns.netns_pids(ns)}


def process_gone(pid):
    """True when ``pid`` no longer runs (absent, or a zombie waiting for its reaper)."""
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def assert_rig_gone(rig_dir, slot, pids):
    """Nothing of the rig is left: namespaces, interfaces, mounts, processes, devkit.json."""
    assert pids, "expected the rig to have had processes"
    assert netns.netns_of_slot(slot) == []
    assert netns.links_of_slot(slot) == []
    assert slot not in netns.existing_bridges()
    assert not os.path.exists(os.path.join(rig_dir, "devkit.json"))
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = f.read()
    assert rig_dir not in mounts
    assert not re.search(r"/run/netns/%s%dd" % (netns.PREFIX, slot), mounts)
    assert [p for p in pids if not process_gone(p)] == []


# ---------------------------------------------------------------- the session rig


def test_devkit_json_lists_every_device(rig):
    with open(rig.json_path, encoding="utf-8") as f:
        doc = json.load(f)
    assert doc["version"] == 1 and doc["dir"] == rig.dir
    assert re.fullmatch(r"10\.213\.\d+\.1", doc["host_ip"])
    assert [d["variant"] for d in doc["devices"]] == ["fresh", "mfg", "notools", "notpm"]
    with open(doc["known_hosts"], encoding="utf-8") as f:
        known = f.read().split("\n")
    for d in doc["devices"]:
        assert d["host"].startswith(doc["host_ip"][:-1]) and d["port"] == 22
        assert d["hostname"] == d["name"] and d["root_dir"] == "/proc/%d/root" % d["pid"]
        assert (d["tcti"] is None) == (d["variant"] == "notpm")
        assert set(d["users"]) == {"root", "admin", "pwadmin", "nosudo"}
        assert {u: d["users"][u].get("sudo") for u in d["users"]} == {
            "root": None, "admin": "nopasswd", "pwadmin": "password", "nosudo": "none"}
        assert d["users"]["pwadmin"]["password"]
        assert all(os.path.exists(u["key"]) for u in d["users"].values())
        assert any(line.startswith(d["host"] + " ssh-ed25519 ") for line in known)


def test_every_account_logs_in_with_checked_host_key(rig):
    for dev in rig.devices:
        for user in ("root", "admin", "pwadmin", "nosudo"):
            status, out, _ = ssh_run(dev, user, "id -un; hostname")
            assert (status, out.split()) == (0, [user, dev.name]), (dev.name, user)


def test_unknown_host_key_is_refused(rig, tmp_path):
    dev = rig.devices[0]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    client = paramiko.SSHClient()
    client.load_host_keys(str(empty))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(dev.host, username="root", key_filename=dev.key("root"),
                       look_for_keys=False, allow_agent=False, timeout=10)
    client.close()


def test_sudo_rights_per_account(rig):
    dev = rig.by_variant("fresh")
    assert ssh_run(dev, "admin", "sudo -n id -u")[:2] == (0, "0\n")
    status, _, err = ssh_run(dev, "pwadmin", "sudo -n id -u")
    assert status != 0 and "password is required" in err
    password = dev.users["pwadmin"]["password"]
    assert ssh_run(dev, "pwadmin", "sudo -S -p '' id -u", password + "\n")[:2] == (0, "0\n")
    listing = dev.exec(["sudo", "-l", "-U", "nosudo"]).stdout
    assert "not allowed to run sudo" in listing
    # sudo resolves the host name: no "unable to resolve host" warning
    assert "unable to resolve" not in ssh_run(dev, "admin", "sudo -n true")[2]


def test_tpm_answers_inside_devices_with_a_tpm(rig):
    for variant in ("fresh", "mfg"):
        dev = rig.by_variant(variant)
        proc = dev.exec(["tpm2_getcap", "properties-fixed"], env=dev.tpm_env)
        assert proc.returncode == 0, proc.stderr
        assert "TPM2_PT_MANUFACTURER" in proc.stdout
    dev = rig.by_variant("fresh")
    status, out, err = ssh_run(dev, "admin", "TPM2TOOLS_TCTI=%s tpm2_getcap properties-fixed"
                               % shlex.quote(dev.tcti))
    assert status == 0 and "TPM2_PT_FIRMWARE_VERSION_1" in out, err


def test_fresh_tpm_has_no_ek_and_mfg_tpm_has_ek_and_certificate(rig):
    fresh, mfg = rig.by_variant("fresh"), rig.by_variant("mfg")
    assert "0x81010001" not in fresh.exec(["tpm2_getcap", "handles-persistent"],
                                          env=fresh.tpm_env).stdout
    handles = mfg.exec(["tpm2_getcap", "handles-persistent"], env=mfg.tpm_env)
    assert "0x81010001" in handles.stdout, handles.stderr
    nv = mfg.exec(["tpm2_nvreadpublic", "0x01c00002"], env=mfg.tpm_env)
    assert nv.returncode == 0 and "0x1c00002" in nv.stdout.lower(), nv.stderr
    cert = mfg.exec("tpm2_nvread 0x01c00002 2>/dev/null | openssl x509 -inform der -noout "
                    "-issuer -pubkey", env=mfg.tpm_env)
    assert cert.returncode == 0 and "swtpm-localca" in cert.stdout, cert.stderr
    assert rig.ca_cert and os.path.exists(rig.ca_cert)


def test_exec_and_ssh_see_the_same_ek(rig):
    dev = rig.by_variant("mfg")
    script = "tpm2_readpublic -c 0x81010001 -o /tmp/ek.pub >/dev/null && sha256sum </tmp/ek.pub"
    by_exec = dev.exec(script, env=dev.tpm_env)
    status, by_ssh, _ = ssh_run(dev, "root", "TPM2TOOLS_TCTI=%s sh -c %s"
                                % (shlex.quote(dev.tcti), shlex.quote(script)))
    assert by_exec.returncode == 0 and status == 0
    assert by_exec.stdout == by_ssh and len(by_ssh.split()[0]) == 64


def test_notools_device_has_a_tpm_but_no_tpm2_tools(rig):
    dev = rig.by_variant("notools")
    assert dev.exec("command -v tpm2_readpublic").returncode != 0
    assert dev.exec(["dpkg-query", "-W", "-f=${Status}", "tpm2-tools"]).stdout in (
        "", "deinstall ok config-files", "unknown ok not-installed")
    assert dev.exec(["python3", "-c", TPM_PROBE]).returncode == 0


def test_notpm_device_has_no_tpm(rig):
    dev = rig.by_variant("notpm")
    assert dev.tcti is None and dev.tpm_env == {}
    assert dev.exec(["python3", "-c", TPM_PROBE]).returncode != 0
    assert dev.exec("ls /dev/tpm* /dev/tpmrm*").returncode != 0
    assert dev.exec("pgrep -x swtpm").returncode != 0


def test_devices_are_isolated_from_each_other(rig):
    ids = {d.exec(["cat", "/etc/machine-id"]).stdout for d in rig.devices}
    assert len(ids) == len(rig.devices)
    keys = {tuple(d.host_keys) for d in rig.devices}
    assert len(keys) == len(rig.devices)
    a, b = rig.devices[:2]
    a.exec(["touch", "/etc/only-on-a"])
    assert b.exec(["test", "-e", "/etc/only-on-a"]).returncode != 0
    assert not os.path.exists("/etc/only-on-a")
    assert a.exec(["ls", "/var/lib/apt/lists"]).stdout.split() in ([], ["auxfiles", "partial"],
                                                                  ["partial"])


def test_private_device_with_composed_variant(rig, new_device):
    dev = new_device("oldos+notpm")
    release = dev.exec(["cat", "/etc/os-release"]).stdout
    assert 'PRETTY_NAME="Raspbian GNU/Linux 9 (stretch)"' in release
    assert ssh_run(dev, "admin", ". /etc/os-release; echo $ID $VERSION_CODENAME")[1] == \
        "raspbian stretch\n"
    with open(rig.known_hosts, encoding="utf-8") as f:
        assert dev.host + " " in f.read()
    rig.remove_device(dev)
    assert not dev.alive() and dev.netns not in netns.netns_of_slot(rig.slot)


# ---------------------------------------------------------------- rigs of their own


def test_cli_up_status_down(tmp_path):
    require_devices()
    rig_dir = str(tmp_path / "rig")
    up = devkit_cli("up", "--devices", "2", "--dir", rig_dir, "--variants", "notpm")
    assert up.returncode == 0, up.stderr
    assert "2 device(s) up" in up.stdout
    rig = Rig.load(rig_dir)
    pids = rig_pids(rig.slot)
    assert len(pids) >= 2 * 3  # per notpm device: unshare, the device's PID 1, sshd
    assert devkit_cli("status", "--dir", rig_dir).returncode == 0
    down = devkit_cli("down", "--dir", rig_dir)
    assert down.returncode == 0, down.stderr
    assert_rig_gone(rig_dir, rig.slot, pids)
    assert devkit_cli("down", "--dir", rig_dir).returncode == 0  # idempotent


HANGING_UP = """
import sys, time
import devkit.variants
devkit.variants.variant("hang", "test only: never finishes preparing")(lambda spec: time.sleep(600))
from devkit.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_down_after_up_was_killed(tmp_path, rig):
    """`up` dies (SIGKILL) with two devices running and a third being prepared."""
    require_devices()
    rig_dir = str(tmp_path / "crashed")
    proc = subprocess.Popen([sys.executable, "-c", HANGING_UP, "up", "--dir", rig_dir,
                             "--variants", "notpm,fresh,hang"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    doc = {}
    while time.monotonic() < deadline and len(doc.get("devices", [])) < 2:
        try:
            with open(os.path.join(rig_dir, "devkit.json"), encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(doc.get("devices", [])) == 2, "up never registered its first devices"
    slot = doc["slot"]
    assert slot != rig.slot  # the session rig runs at the same time, on another subnet
    pids = rig_pids(slot)
    assert len(netns.netns_of_slot(slot)) == 2 and pids  # left behind by the crash
    down = devkit_cli("down", "--dir", rig_dir)
    assert down.returncode == 0, down.stderr
    assert_rig_gone(rig_dir, slot, pids)
    assert devkit_cli("down", "--dir", rig_dir).returncode == 0


def test_parallel_rigs_get_distinct_subnets(tmp_path):
    require_devices()
    rigs = [Rig(tmp_path / ("r%d" % i)) for i in range(3)]
    errors = []

    def start(r):
        try:
            r.up(["notpm"])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in rigs]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len({r.slot for r in rigs}) == 3
        assert len({r.devices[0].host for r in rigs}) == 3
        for r in rigs:
            assert ssh_run(r.devices[0], "root", "hostname")[0] == 0
    finally:
        for r in rigs:
            r.down()
