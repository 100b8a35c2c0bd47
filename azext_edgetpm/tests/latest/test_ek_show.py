"""`az edge-tpm ek show` against simulated devices of the dev kit: real sshd, real swtpm, real
tpm2-tools. Every failure named in the issue is triggered for real and its message checked."""
import base64
import hashlib
import os
import socket
import subprocess
import sys
import threading

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_ek import _base32_by_hand

SUDO_ENV = "AZ_EDGETPM_SUDO_PASSWORD"


def ek_args(dev, user="root", known_hosts=None, tcti=True, extra=()):
    args = ["edge-tpm", "ek", "show", "--host", f"{dev.users[user]['user']}@{dev.host}:{dev.port}",
            "--ssh-key", dev.key(user), "--known-hosts", known_hosts or dev.known_hosts, "--ssh-timeout", "10"]
    if tcti and dev.tcti:
        args += ["--tcti", dev.tcti]
    return args + list(extra)


def by_hand(dev):
    """What the seed document's commands print when run inside the device by hand."""
    script = ("tpm2_readpublic -Q -c 0x81010001 -o /root/byhand.pub >/dev/null && "
              "sha256sum -b /root/byhand.pub | cut -d' ' -f1 && base64 -w0 /root/byhand.pub; "
              "rm -f /root/byhand.pub")
    proc = dev.exec(script, env=dev.tpm_env, check=True)
    reg_id, ek = proc.stdout.split()
    return reg_id, ek


def leftovers(dev):
    """Files in the places a script could leave them (temp dirs and the users' homes)."""
    proc = dev.exec("find /tmp /var/tmp /home -xdev 2>/dev/null; find /root -maxdepth 1")
    return set(proc.stdout.split())


def test_fresh_tpm_keys_created_exactly_once(new_device):
    dev = new_device("fresh")
    before = leftovers(dev)
    first = az(*ek_args(dev))
    assert first.rc == 0, first.stderr
    assert first.out["created"] is True and first.out["createdKeys"] == ["ek", "srk"]
    reg_id, ek = by_hand(dev)
    assert first.out["registrationId"] == reg_id
    assert first.out["endorsementKey"] == ek
    assert first.out["idFormat"] == "sha256" and first.out["keyType"] == "RSA-2048"
    assert first.out["tpm"]["manufacturer"] == "IBM"
    srk = dev.exec("tpm2_readpublic -c 0x81000001", env=dev.tpm_env)
    assert srk.returncode == 0 and "restricted" in srk.stdout
    # noDA, as Microsoft's device SDKs make it: registration must survive dictionary-attack lockout
    assert "noda" in srk.stdout.split("attributes:", 1)[1].split("\n")[1]
    assert dev.exec("tpm2_getcap handles-transient", env=dev.tpm_env).stdout.strip() == ""
    second = az(*ek_args(dev))
    assert second.rc == 0
    assert second.out["created"] is False and second.out["createdKeys"] == []
    assert (second.out["registrationId"], second.out["endorsementKey"]) == (reg_id, ek)
    assert leftovers(dev) == before


def test_legacy_id_and_table(rig):
    dev = rig.by_variant("mfg")
    _, ek = by_hand(dev)
    legacy = az(*ek_args(dev, extra=["--id-format", "legacy", "--no-create"]))
    assert legacy.rc == 0, legacy.stderr
    assert legacy.out["registrationId"] == _base32_by_hand(hashlib.sha256(base64.b64decode(ek)).digest())
    assert legacy.out["idFormat"] == "legacy"
    table = az(*ek_args(dev, extra=["--no-create"]), output="table")
    assert table.rc == 0 and "RegistrationId" in table.text
    tsv = az(*ek_args(dev, extra=["--no-create", "--query", "registrationId"]), output="tsv")
    assert tsv.text.strip() == hashlib.sha256(base64.b64decode(ek)).hexdigest()


def test_manufacturer_ek_certificate(new_device):
    dev = new_device("mfg")
    result = az(*ek_args(dev))
    assert result.rc == 0, result.stderr
    assert result.out["createdKeys"] in ([], ["srk"])  # the maker persisted the EK, not an SRK
    assert "ek" not in result.out["createdKeys"]
    cert = result.out["ekCertificate"]
    assert cert and cert["nvIndex"].lower() == "0x01c00002"
    assert cert["matchesEndorsementKey"] is True
    assert cert["notBefore"] < cert["notAfter"]
    _, ek = by_hand(dev)
    assert result.out["endorsementKey"] == ek


def test_non_root_users_and_sudo(rig):
    dev = rig.by_variant("mfg")
    root = az(*ek_args(dev, extra=["--no-create"]))
    admin = az(*ek_args(dev, user="admin", extra=["--no-create"]))
    assert admin.rc == 0, admin.stderr
    assert admin.out["registrationId"] == root.out["registrationId"]

    password = dev.users["pwadmin"]["password"]
    pw = az(*ek_args(dev, user="pwadmin", extra=["--no-create", "--debug"]), env={SUDO_ENV: password})
    assert pw.rc == 0, pw.stderr
    assert pw.out["registrationId"] == root.out["registrationId"]
    assert password not in pw.stderr and password not in pw.text

    wrong = az(*ek_args(dev, user="pwadmin", extra=["--no-create"]), env={SUDO_ENV: "not-the-password"})
    assert wrong.rc != 0 and "refused the password" in wrong.message
    assert SUDO_ENV in wrong.recommendation

    env_without = {k: v for k, v in os.environ.items() if k != SUDO_ENV}
    missing = az(*ek_args(dev, user="pwadmin", extra=["--no-create"]), env=env_without)
    assert missing.rc != 0 and "needs a password" in missing.message
    assert SUDO_ENV in missing.recommendation

    # sudo asks a user without rights for a password first, so this is what such a user sees
    # without one; with the right password sudo tells, and the error says so.
    nosudo = az(*ek_args(dev, user="nosudo", extra=["--no-create"]), env=env_without)
    assert nosudo.rc != 0 and "needs a password" in nosudo.message
    assert "sudo rights" in nosudo.recommendation


def test_unknown_host_key_refused_then_trusted_on_first_use(rig, tmp_path):
    dev = rig.by_variant("mfg")
    known = tmp_path / "known_hosts"
    refused = az(*ek_args(dev, known_hosts=str(known), extra=["--no-create"]))
    assert refused.rc != 0 and "is not known" in refused.message and "SHA256:" in refused.message
    assert "--accept-new-host-key" in refused.recommendation
    assert not known.exists()
    trusted = az(*ek_args(dev, known_hosts=str(known), extra=["--no-create", "--accept-new-host-key"]))
    assert trusted.rc == 0, trusted.stderr
    recorded = known.read_text()
    assert f"[{dev.host}]:{dev.port}" in recorded or dev.host in recorded
    again = az(*ek_args(dev, known_hosts=str(known), extra=["--no-create"]))
    assert again.rc == 0


def test_changed_host_key_always_refused(rig, tmp_path):
    dev = rig.by_variant("mfg")
    other = rig.by_variant("fresh")
    # Record the key of *another* device under this device's name: what a reinstalled device
    # (or a man in the middle) looks like to the client.
    keyscan = subprocess.run(["ssh-keygen", "-F", f"[{other.host}]:{other.port}" if other.port != 22 else other.host,
                              "-f", other.known_hosts], capture_output=True, text=True, check=True)
    line = next(ln for ln in keyscan.stdout.splitlines() if ln and not ln.startswith("#"))
    name = f"[{dev.host}]:{dev.port}" if dev.port != 22 else dev.host
    known = tmp_path / "known_hosts"
    known.write_text(name + " " + line.split(" ", 1)[1] + "\n")
    for extra in ([], ["--accept-new-host-key"]):
        result = az(*ek_args(dev, known_hosts=str(known), extra=["--no-create"] + extra))
        assert result.rc != 0 and "CHANGED" in result.message
        assert "ssh-keygen -R" in result.recommendation


def test_authentication_failure(rig, tmp_path):
    dev = rig.by_variant("mfg")
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    args = ek_args(dev, extra=["--no-create"])
    args[args.index("--ssh-key") + 1] = str(stranger)
    result = az(*args)
    assert result.rc != 0 and "authentication failed" in result.message
    assert "authorized_keys" in result.recommendation


def test_unusable_key_known_hosts_and_ssh_config_files(rig, tmp_path):
    """Local files the user points at, broken: one az error naming the file (not a retried
    "handshake failed", a raw InvalidHostKey or a ValueError)."""
    dev = rig.by_variant("mfg")
    args = ek_args(dev, extra=["--no-create"])
    public = list(args)
    public[public.index("--ssh-key") + 1] = dev.key("root") + ".pub"
    result = az(*public)
    assert type(result.error).__name__ == "InvalidArgumentValueError", (type(result.error), result.message)
    assert "Not a private key file" in result.message and ".pub" in result.message
    assert "not the .pub" in result.recommendation

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("|1|xx yy zz\n")  # a hashed entry whose base64 is broken
    broken = list(args)
    broken[broken.index("--known-hosts") + 1] = str(known_hosts)
    result = az(*broken)
    assert type(result.error).__name__ == "FileOperationError" and str(known_hosts) in result.message
    assert "--known-hosts" in result.recommendation
    unwritable = list(args) + ["--accept-new-host-key"]
    unwritable[unwritable.index("--known-hosts") + 1] = str(tmp_path)  # a directory
    result = az(*unwritable)
    assert type(result.error).__name__ == "FileOperationError" and "Cannot record the new host key" in result.message

    config = tmp_path / "ssh_config"
    config.write_text("Host device\n  HostName %s\n  Port twenty-two\n" % dev.host)
    result = az("edge-tpm", "ek", "show", "--host", "device", "--ssh-config", str(config),
                "--known-hosts", dev.known_hosts)
    assert type(result.error).__name__ == "InvalidArgumentValueError" and "twenty-two" in result.message
    assert "--ssh-port" in result.recommendation


def test_unreachable_refused_and_timeout(rig):
    dev = rig.by_variant("mfg")
    refused = az("edge-tpm", "ek", "show", "--host", f"root@{dev.host}:2", "--known-hosts", dev.known_hosts)
    assert refused.rc != 0 and "refused the connection" in refused.message

    # An address on the dev kit's own subnet that no device has: nobody answers ARP.
    prefix = dev.host.rsplit(".", 1)[0]
    nobody = az("edge-tpm", "ek", "show", "--host", f"root@{prefix}.250", "--ssh-timeout", "3",
                "--known-hosts", dev.known_hosts)
    assert nobody.rc != 0
    assert "unreachable" in nobody.message or "Timed out" in nobody.message

    # A server that accepts TCP but never speaks SSH: the handshake times out.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    held = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = silent.getsockname()[1]
        timeout = az("edge-tpm", "ek", "show", "--host", f"root@127.0.0.1:{port}", "--ssh-timeout", "1",
                     "--known-hosts", dev.known_hosts)
        assert timeout.rc != 0 and "Timed out" in timeout.message
    finally:
        stop.set()
        thread.join()
        silent.close()
        for conn in held:
            conn.close()


def test_no_tpm_and_no_tools(rig):
    notpm = rig.by_variant("notpm")
    result = az(*ek_args(notpm))
    assert result.rc != 0 and "No TPM answered" in result.message
    assert "--tcti" in result.recommendation
    dead = az(*ek_args(notpm, extra=["--tcti", "swtpm:host=127.0.0.1,port=2999"]))
    assert dead.rc != 0 and "No TPM answered" in dead.message and "2999" in dead.message

    notools = rig.by_variant("notools")
    result = az(*ek_args(notools))
    assert result.rc != 0 and "tpm2-tools is not installed" in result.message
    assert "apt-get install tpm2-tools" in result.recommendation and "--install-tools" in result.recommendation


def test_no_create_on_a_fresh_tpm(new_device):
    dev = new_device("fresh")
    result = az(*ek_args(dev, extra=["--no-create"]))
    assert result.rc != 0 and "has no endorsement key" in result.message
    assert dev.exec("tpm2_readpublic -c 0x81010001", env=dev.tpm_env).returncode != 0  # still none


def test_tpm_error_text_reaches_the_user(new_device):
    dev = new_device("fresh")
    # An owner password on the TPM ("taking ownership") makes persisting keys fail.
    dev.exec("tpm2_changeauth -c o ownerpass", env=dev.tpm_env, check=True)
    result = az(*ek_args(dev))
    assert result.rc != 0
    assert "failed on" in result.message and ("authorization" in result.message.lower()
                                               or "0x9a2" in result.message.lower())
    assert "hierarchy" in result.recommendation


def test_a_non_ek_key_at_the_ek_handle_is_refused(new_device):
    dev = new_device("fresh")
    dev.exec("tpm2_createprimary -Q -C o -c /root/k.ctx && tpm2_evictcontrol -Q -C o -c /root/k.ctx 0x81010001 "
             "&& rm /root/k.ctx", env=dev.tpm_env, check=True)
    result = az(*ek_args(dev))
    assert result.rc != 0 and "invalid endorsement key" in result.message
    assert "not those of an endorsement key" in result.message


def test_ssh_config_alias_and_proxy_jump(rig, tmp_path):
    jump = rig.by_variant("mfg")
    root = az(*ek_args(jump, extra=["--no-create"]))
    config = tmp_path / "ssh_config"
    # From the jump host, 127.0.0.1:22 is its own sshd; from here nothing listens there, so
    # this only works if the connection really goes through the jump host.
    config.write_text(
        f"Host jumpbox\n  HostName {jump.host}\n  Port {jump.port}\n  User root\n  IdentityFile {jump.key()}\n"
        f"Host behind\n  HostName 127.0.0.1\n  Port 22\n  User root\n  IdentityFile {jump.key()}\n"
        f"  ProxyJump jumpbox\n")
    key_line = subprocess.run(["ssh-keygen", "-F", f"[{jump.host}]:{jump.port}" if jump.port != 22 else jump.host,
                               "-f", jump.known_hosts], capture_output=True, text=True, check=True).stdout
    key = next(ln for ln in key_line.splitlines() if ln and not ln.startswith("#")).split(" ", 1)[1]
    known = tmp_path / "known_hosts"
    name = f"[{jump.host}]:{jump.port}" if jump.port != 22 else jump.host
    known.write_text(f"{name} {key}\n127.0.0.1 {key}\n")
    tcti = ["--tcti", jump.tcti] if jump.tcti else []
    alias = az("edge-tpm", "ek", "show", "--host", "jumpbox", "--ssh-config", str(config),
               "--known-hosts", str(known), "--no-create", *tcti)
    assert alias.rc == 0, alias.stderr
    behind = az("edge-tpm", "ek", "show", "--host", "behind", "--ssh-config", str(config),
                "--known-hosts", str(known), "--no-create", *tcti)
    assert behind.rc == 0, behind.stderr
    assert alias.out["registrationId"] == behind.out["registrationId"] == root.out["registrationId"]
    assert behind.out["device"].startswith("root@127.0.0.1")


def test_bad_host_argument():
    result = az("edge-tpm", "ek", "show", "--host", "root@bad host:22")
    assert result.rc != 0 and "is not of the form" in result.message
    neither = az("edge-tpm", "ek", "show")
    assert neither.rc != 0 and "No device given" in neither.message


@pytest.fixture
def host_swtpm(tmp_path):
    """A software TPM on this machine, for --local (az running on the device itself)."""
    from devkit.dps.testing import free_port_pair
    port = free_port_pair()  # the swtpm TCTI finds the control channel at port + 1
    ctrl = port + 1
    proc = subprocess.Popen(["swtpm", "socket", "--tpm2", "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                             "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1", "--tpmstate",
                             f"dir={tmp_path}", "--flags", "not-need-init,startup-clear"])
    tcti = f"swtpm:host=127.0.0.1,port={port}"
    for _ in range(100):
        if subprocess.run(["tpm2_getcap", "properties-fixed"], env=dict(os.environ, TPM2TOOLS_TCTI=tcti),
                          capture_output=True).returncode == 0:
            break
        threading.Event().wait(0.05)
    yield tcti
    proc.terminate()
    proc.wait()


def test_local_tpm(host_swtpm, tmp_path):
    first = az("edge-tpm", "ek", "show", "--local", "--tcti", host_swtpm)
    assert first.rc == 0, first.stderr
    assert first.out["createdKeys"] == ["ek", "srk"] and first.out["device"] == "local"
    env = dict(os.environ, TPM2TOOLS_TCTI=host_swtpm)
    subprocess.run(["tpm2_readpublic", "-Q", "-c", "0x81010001", "-o", str(tmp_path / "ek.pub")], env=env, check=True)
    blob = (tmp_path / "ek.pub").read_bytes()
    assert first.out["endorsementKey"] == base64.b64encode(blob).decode()
    assert first.out["registrationId"] == hashlib.sha256(blob).hexdigest()
    second = az("edge-tpm", "ek", "show", "--local", "--tcti", host_swtpm)
    assert second.out["created"] is False and second.out["registrationId"] == first.out["registrationId"]
    both = az("edge-tpm", "ek", "show", "--local", "--host", "x")
    assert both.rc != 0 and "cannot be used together" in both.message


def test_key_from_ssh_agent(rig, tmp_path):
    """No --ssh-key and no key files: the key comes from a real ssh-agent."""
    dev = rig.by_variant("mfg")
    sock = str(tmp_path / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            threading.Event().wait(0.02)
        env = {"SSH_AUTH_SOCK": sock, "HOME": str(tmp_path)}  # an empty home: no ~/.ssh/id_* to fall back on
        subprocess.run(["ssh-add", dev.key()], env=dict(os.environ, **env), check=True, capture_output=True)
        result = az("edge-tpm", "ek", "show", "--host", f"root@{dev.host}:{dev.port}", "--known-hosts",
                    dev.known_hosts, "--tcti", dev.tcti, "--no-create", env=env)
        assert result.rc == 0, result.stderr
        assert result.out["registrationId"] == by_hand(dev)[0]
        without = az("edge-tpm", "ek", "show", "--host", f"root@{dev.host}:{dev.port}", "--known-hosts",
                     dev.known_hosts, "--tcti", dev.tcti, "--no-create",
                     env={"SSH_AUTH_SOCK": str(tmp_path / "none.sock"), "HOME": str(tmp_path)})
        assert without.rc != 0 and "No SSH key to offer" in without.message
        assert "ssh-add" in without.recommendation
    finally:
        agent.terminate()
        agent.wait()


PROMPT_RUN = """
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    from azure.cli.core import get_default_cli
    os._exit(get_default_cli().invoke(sys.argv[2:]))
seen = b""
while b"sudo password for" not in seen:
    seen += os.read(fd, 1024)
os.write(fd, sys.argv[1].encode() + b"\\n")
out = b""
while True:
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_sudo_password_asked_on_a_terminal(rig):
    """On a terminal (a real pseudo-terminal here), the sudo password is prompted for, and the
    typed password is neither echoed nor printed."""
    dev = rig.by_variant("mfg")
    password = dev.users["pwadmin"]["password"]
    env = {k: v for k, v in os.environ.items() if k != SUDO_ENV}
    proc = subprocess.run([sys.executable, "-c", PROMPT_RUN, password, *ek_args(dev, user="pwadmin"),
                           "--no-create", "-o", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert by_hand(dev)[0] in proc.stdout
    assert password not in proc.stdout
