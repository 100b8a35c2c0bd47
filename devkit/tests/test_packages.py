"""Tests of the stand-in IoT Edge packages, their apt repository and the stand-in runtime.

Three layers:
- pure tests of the super-config validation (what `iotedge config apply` refuses);
- the repository: built, served over HTTP, indexed with both aziot-edge versions;
- a throwaway root (an overlay of / with a private upper layer, entered through
  ``unshare --mount --pid`` + chroot, no simulated-device rig needed) where the packages are
  apt-installed from the served repository and `iotedge` runs for real, against a swtpm.

Registration runs for real: the stand-in calls the devkit's TPM client, which answers the
DPS emulator's TPM challenge with a swtpm; the emulator's CA is in the root's trust store.
"""
import gzip
import os
import re
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.request

import pytest

from devkit.dps.testing import free_port_pair

from devkit.packages import EDGE_VERSIONS, RELEASES, AptRepo, build_repo
from devkit.packages.runtime.aziot_standin import superconfig

GOOD = textwrap.dedent("""\
    auto_reprovisioning_mode = "Dynamic"

    [provisioning]
    source = "dps"
    global_endpoint = "https://127.0.0.1:1"
    id_scope = "0ne00000001"

    [provisioning.attestation]
    method = "tpm"
    registration_id = "dev-1"

    [tpm]
    tcti = "TCTI"
    auth_key_index = 0x00_01_00
    """)


# --------------------------------------------------------------------------------------
# What `iotedge config apply` refuses (pure)


@pytest.mark.parametrize("old, new, message", [
    ('id_scope = "0ne00000001"', 'id_scope = "0ne00000001', "could not parse config file: "),
    ('"Dynamic"', "Dynamic",
     "could not parse config file: invalid TOML value, did you mean to use a quoted string?"
     " at line 1 column"),
    ('source = "dps"', 'source = "dpss"',
     "unknown variant `dpss`, expected one of `manual`, `dps`, `none` at line 4 column 1"),
    ('method = "tpm"', 'method = "TPM"',
     "unknown variant `TPM`, expected one of `symmetric_key`, `x509`, `tpm` at line 9"),
    ('"https://127.0.0.1:1"', '"global.azure-devices-provisioning.net"',
     "relative URL without a base at line 5 column 1"),
    ('"https://127.0.0.1:1"', '"https://"', "empty host"),
    ("0x00_01_00", '"0x00_01_00"',
     'invalid type: string "0x00_01_00", expected u32 at line 14 column 1'),
    ("0x00_01_00", "0x80_00_00",
     "invalid value: integer `8388608`, expected integer in range 0x00_00_00..=0x7F_FF_FF"),
    ('auto_reprovisioning_mode = "Dynamic"', 'auto_reprovisioning_mode = "Sometimes"',
     "unknown variant `Sometimes`, expected one of `Dynamic`, `AlwaysOnStartup`, `OnErrorOnly`"),
    ('registration_id = "dev-1"', "", "missing field `registration_id`"),
    ('auto_reprovisioning_mode = "Dynamic"', 'parent_hostname = "parent"',
     "DPS provisioning is not supported in nested mode"),
])
def test_superconfig_refusals(old, new, message):
    """Each broken config is refused with the runtime's wording."""
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(superconfig.ConfigError) as err:
        superconfig.parse(text)
    assert message in str(err.value)


def test_superconfig_reprovisioning_mode_in_table_is_ignored():
    """The seed's trap: the mode under [provisioning.attestation] is silently not applied."""
    text = GOOD.replace('auto_reprovisioning_mode = "Dynamic"\n', "").replace(
        'registration_id = "dev-1"', 'registration_id = "dev-1"\n'
        'auto_reprovisioning_mode = "AlwaysOnStartup"')
    cfg = superconfig.parse(text)
    assert cfg["auto_reprovisioning_mode"] == "Dynamic"


def test_superconfig_renders_service_files():
    """A good config becomes five service files; tpmd keeps the TCTI."""
    cfg = superconfig.parse(GOOD.replace("TCTI", "swtpm:host=127.0.0.1,port=2321"))
    files = superconfig.render(cfg, {"aziotid": 1, "aziotcs": 2, "iotedge": 3}, "host")
    assert set(files) == {"keyd", "certd", "identityd", "tpmd", "edged"}
    import tomllib
    tpmd = tomllib.loads(files["tpmd"])
    assert tpmd == {"tcti": "swtpm:host=127.0.0.1,port=2321"}
    identityd = tomllib.loads(files["identityd"])
    assert identityd["provisioning"]["attestation"]["registration_id"] == "dev-1"
    assert tomllib.loads(files["edged"])["auto_reprovisioning_mode"] == "Dynamic"


# --------------------------------------------------------------------------------------
# The repository


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory):
    """The stand-in repository (built once per module)."""
    if shutil.which("dpkg-scanpackages") is None:
        pytest.skip("dpkg-dev is not installed")
    return build_repo(str(tmp_path_factory.mktemp("pkgs") / "repo"))


@pytest.fixture(scope="module")
def served(repo_dir):
    """The repository served on 127.0.0.1; yields the devkit.json section."""
    repo = AptRepo(repo_dir, ["127.0.0.1"])
    section = repo.start()
    yield section
    repo.stop()


def test_build_repo_is_cached(repo_dir):
    """A second build with nothing changed reuses the first (fast, same files)."""
    before = os.stat(os.path.join(repo_dir, "Packages")).st_mtime_ns
    start = time.monotonic()
    assert build_repo(repo_dir) == repo_dir
    assert time.monotonic() - start < 1.0
    assert os.stat(os.path.join(repo_dir, "Packages")).st_mtime_ns == before


def test_served_index_lists_both_edge_versions(served):
    """The flat index over HTTP carries both aziot-edge versions and tpm2-tools."""
    with urllib.request.urlopen(served["base_url"] + "Packages.gz", timeout=5) as resp:
        index = gzip.decompress(resp.read()).decode()
    for release in RELEASES:
        assert "Package: aziot-edge\nVersion: %s\n" % release.edge in index
        assert "Package: aziot-identity-service\nVersion: %s\n" % release.identity in index
    for name in ("moby-engine", "packages-microsoft-prod", "tpm2-tools", "devkit-systemctl-shim"):
        assert "Package: %s\n" % name in index
    assert served["apt_line"] == "deb [trusted=yes] %s ./" % served["base_url"]
    with urllib.request.urlopen(served["config_package_url"], timeout=5) as resp:
        assert resp.read(8) == b"!<arch>\n"
    offline = sorted(os.listdir(served["debs_dir"]))
    assert any(n.startswith("aziot-edge_%s" % EDGE_VERSIONS[-1]) for n in offline)
    assert any(n.startswith("tpm2-tools_") for n in offline)


# --------------------------------------------------------------------------------------
# A throwaway root


ENTER = r"""
set -e
mount -t overlay overlay -o "lowerdir=/,upperdir=$DK_UPPER,workdir=$DK_WORK" "$DK_ROOT"
mount -t proc proc "$DK_ROOT/proc"
mount --rbind /dev "$DK_ROOT/dev"
mount --bind "$DK_RUN" "$DK_ROOT/run"
exec chroot "$DK_ROOT" /bin/sh -c "$DK_CMD"
"""


class ThrowawayRoot:
    """An overlay of the host's / whose changes persist in a private upper directory.

    Every ``run`` enters fresh mount + PID namespaces, so processes a command starts
    (dockerd) end with it and nothing is ever mounted on the host. ``/run`` is a directory of
    this root kept across runs: one boot (the stand-in's unit states are valid for a boot).
    """

    def __init__(self, base):
        self.upper, self.work, self.root, self.run_dir = (os.path.join(base, d) for d in ("u", "w", "m", "r"))
        for d in (self.upper, self.work, self.root, self.run_dir):
            os.makedirs(d)

    def run(self, cmd, check=True, env=None):
        """Run ``cmd`` (a shell string) as root inside; return the CompletedProcess."""
        environ = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
                   "DK_UPPER": self.upper, "DK_WORK": self.work, "DK_ROOT": self.root, "DK_RUN": self.run_dir,
                   "DK_CMD": cmd}
        environ.update(env or {})
        proc = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--kill-child",
                               "/bin/sh", "-c", ENTER], env=environ, capture_output=True,
                              text=True, timeout=300, check=False)
        if check and proc.returncode != 0:
            raise AssertionError("%r failed (%d):\n%s\n%s" % (cmd, proc.returncode,
                                                              proc.stdout, proc.stderr))
        return proc

    def put(self, path, data, mode=0o644):
        """Write a file into the root (through the upper layer)."""
        dest = os.path.join(self.upper, path.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(dest, mode)


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory):
    """A software TPM on 127.0.0.1; yields its TCTI string."""
    if shutil.which("swtpm") is None:
        pytest.skip("swtpm is not installed")
    state = tmp_path_factory.mktemp("swtpm")
    port = free_port_pair()  # swtpm's control channel is port + 1
    proc = subprocess.Popen(["swtpm", "socket", "--tpm2", "--server",
                             "type=tcp,port=%d,bindaddr=127.0.0.1" % port,
                             "--ctrl", "type=tcp,port=%d,bindaddr=127.0.0.1" % (port + 1),
                             "--tpmstate", "dir=%s" % state,
                             "--flags", "not-need-init,startup-clear"])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("swtpm did not start")
            time.sleep(0.05)
    yield "swtpm:host=127.0.0.1,port=%d" % port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def device(served, tmp_path_factory):
    """A throwaway root whose only apt source is the served devkit repository."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    root = ThrowawayRoot(str(tmp_path_factory.mktemp("root")))
    with urllib.request.urlopen(served["config_package_url"], timeout=5) as resp:
        root.put("/root/packages-microsoft-prod.deb", resp.read())
    root.run("rm -rf /etc/apt/sources.list /etc/apt/sources.list.d/* /var/lib/apt/lists/*"
             " && dpkg -i /root/packages-microsoft-prod.deb >/dev/null && apt-get update -q")
    return root


@pytest.fixture
def installed(device):
    """The throwaway root with aziot-edge installed (whatever version a test left)."""
    device.run("dpkg -s aziot-edge >/dev/null 2>&1 || { apt-get install -y -q moby-engine"
               " && apt-get install -y -q aziot-edge; }")
    return device


def test_config_package_points_apt_at_the_repo(device, served):
    """packages-microsoft-prod writes the devkit apt line."""
    out = device.run("cat /etc/apt/sources.list.d/microsoft-prod.list").stdout
    assert served["sources"]["debian12"] in out


def test_debian_pools_as_microsoft_serves_them(device, served):
    """debian/12/prod/ has the 1.6 line (aziot-edge 1.6.0-1 needing identity = 1.6.0-1) next to
    1.5; debian/11/prod/, named by config/debian/11's package, has 1.5 only (1.6 dropped Debian
    11), so apt there never sees 1.6."""
    fields = device.run("apt-cache show aziot-edge=1.6.0-1").stdout
    assert "Depends: aziot-identity-service (= 1.6.0-1)" in fields
    # The served indexes are the cached one filtered, plus the config package's stanza: the same
    # as dpkg-scanpackages over the served tree.
    from devkit.packages import builder
    for tree in (served["repo_dir"], os.path.join(served["repo_dir"], "debian", "11", "prod")):
        with open(os.path.join(tree, "Packages"), "r", encoding="utf-8") as f:
            index = builder.index_stanzas(f.read())
        scanned = subprocess.run(["dpkg-scanpackages", "--multiversion", "pool", "/dev/null"],
                                 cwd=tree, capture_output=True, text=True, check=True).stdout
        assert index == builder.index_stanzas(scanned)
    assert served["latest_edge_versions"]["debian12"] == "1.6.0-1"
    assert served["latest_edge_versions"]["debian11"] == "1.5.10-1"
    with urllib.request.urlopen(served["config_package_urls"]["debian11"], timeout=5) as resp:
        device.put("/root/pmp-debian11.deb", resp.read())
    out = device.run(
        "mkdir -p /tmp/d11/lists/partial /tmp/d11/src && cd /tmp/d11 && "
        "dpkg-deb -x /root/pmp-debian11.deb x && cp x/etc/apt/sources.list.d/*.list src/ && "
        "apt-get -q -o Dir::Etc::sourcelist=- -o Dir::Etc::sourceparts=/tmp/d11/src "
        "-o Dir::State::lists=/tmp/d11/lists update >/dev/null && "
        "apt-cache -o Dir::Etc::sourcelist=- -o Dir::Etc::sourceparts=/tmp/d11/src "
        "-o Dir::State::lists=/tmp/d11/lists madison aziot-edge aziot-identity-service").stdout
    assert "debian/11/prod" in out
    versions = sorted(line.split("|")[1].strip() for line in out.splitlines())
    assert versions == ["1.5.10-1", "1.5.2-1", "1.5.3-1", "1.5.9-1"]


def test_install_pinned_version_then_upgrade(device):
    """As the real packages (Azure/iotedge edgelet/contrib/debian/control and preinst, release/1.5):
    aziot-edge depends on one exact aziot-identity-service of another number, which apt does not
    take by itself when it is not the candidate (a pin must name both); aziot-edge refuses to
    install before a container engine made the `docker` group; a plain install upgrades both."""
    old, new = RELEASES[0], RELEASES[-1]
    fields = device.run("apt-cache show aziot-edge=%s" % old.edge).stdout
    assert "Depends: aziot-identity-service (= %s)" % old.identity in fields
    assert old.identity != old.edge and "moby-engine" not in fields
    alone = device.run("apt-get install -y -q aziot-edge=%s" % old.edge, check=False)
    assert alone.returncode != 0
    assert "Depends: aziot-identity-service (= %s) but %s is to be installed" % (
        old.identity, new.identity) in alone.stdout
    both = "apt-get install -y -q aziot-edge=%s aziot-identity-service=%s" % (old.edge, old.identity)
    refused = device.run(both, check=False)
    assert refused.returncode != 0, refused.stdout
    assert "ERROR: No container runtime detected." in refused.stdout + refused.stderr
    device.run("apt-get install -y -q moby-engine && getent group docker")
    device.run(both)
    assert device.run("iotedge version").stdout.strip() == "iotedge " + old.edge.rsplit("-", 1)[0]
    out = device.run("dpkg-query -W aziot-identity-service").stdout
    assert "aziot-identity-service\t%s" % old.identity in out
    device.run("apt-get install -y -q aziot-edge")
    assert device.run("iotedge version").stdout.strip() == "iotedge " + new.edge.rsplit("-", 1)[0]
    assert new.edge == "1.6.0-1"  # the newest line's default agent image is its own
    template = device.run("cat /etc/aziot/config.toml.edge.template").stdout
    assert '# image = "mcr.microsoft.com/azureiotedge-agent:1.6"' in template
    out = device.run("dpkg-query -W aziot-identity-service moby-engine").stdout
    assert "aziot-identity-service\t%s" % new.identity in out


def test_install_creates_users_dirs_and_template(device, installed):
    """Service users exist; the template carries the real template's traps."""
    out = device.run("id -u aziotks aziotcs aziotid aziottpm iotedge && id -nG aziotid"
                     " && stat -c '%U %a' /etc/aziot/tpmd/config.d /var/lib/aziot/keyd").stdout
    assert "aziotcs" in out and "aziottpm" in out
    assert "aziottpm 755" in out and "aziotks 700" in out
    template = device.run("cat /etc/aziot/config.toml.edge.template").stdout
    assert '# auth_key_index = "0x00_01_00"' in template
    assert "# auto_reprovisioning_mode = Dynamic" in template
    tpm_block = template.split("## DPS provisioning with TPM", 1)[1].split("# ---", 1)[0]
    assert tpm_block.index("[provisioning.attestation]") < tpm_block.index(
        "auto_reprovisioning_mode = Dynamic")


def test_systemctl_shim_restarts_docker_and_reads_daemon_json(device, installed):
    """`systemctl restart docker` works without systemd; dockerd applies daemon.json."""
    device.run("test -L /usr/local/sbin/systemctl")
    out = device.run(
        "echo '{\"log-driver\": \"local\"}' > /etc/docker/daemon.json"
        " && systemctl restart docker && systemctl is-active docker"
        " && docker info --format '{{.LoggingDriver}}'").stdout.split()
    assert out == ["active", "local"]
    bad = device.run("echo '{oops' > /etc/docker/daemon.json && systemctl restart docker",
                     check=False)
    assert bad.returncode == 1 and "Job for docker.service failed" in bad.stderr
    device.run("echo '{}' > /etc/docker/daemon.json")
    assert device.run("systemctl is-active nosuch", check=False).returncode == 3


def test_tpm2_tools_installs_from_the_repo(device):
    """A root without tpm2-tools gets Debian's package from the devkit repository."""
    device.run("dpkg -r tpm2-tools >/dev/null && ! command -v tpm2_createek")
    device.run("apt-get install -y -q tpm2-tools && command -v tpm2_createek")


# --------------------------------------------------------------------------------------
# Registration: the real TPM client against the DPS emulator, trusted via the system store


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The devkit DPS emulator on 127.0.0.1 (in this process)."""
    dps = pytest.importorskip("devkit.dps")
    emu = dps.Emulator(str(tmp_path_factory.mktemp("dps")), host_ips=["127.0.0.1"], port=0,
                       assignment_delay_s=0.0, operation_retry_after_s=1, persist=False)
    emu.start()
    yield emu
    emu.stop()


def _provision_ek_srk(tcti, workdir):
    """Persist an EK (0x81010001) and an SRK (0x81000001) in the swtpm; return ek.pub bytes."""
    env = dict(os.environ, TPM2TOOLS_TCTI=tcti)
    ek_pub = os.path.join(workdir, "ek.pub")
    for argv in (["tpm2_createek", "-c", "0x81010001", "-G", "rsa", "-u", ek_pub],
                 ["tpm2_createprimary", "-C", "o", "-G", "rsa", "-c",
                  os.path.join(workdir, "srk.ctx")],
                 ["tpm2_evictcontrol", "-C", "o", "-c", os.path.join(workdir, "srk.ctx"),
                  "0x81000001"]):
        subprocess.run(argv, env=env, cwd=workdir, check=True, capture_output=True)
    with open(ek_pub, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def enrolled(device, swtpm, emulator, tmp_path_factory):
    """The swtpm's EK enrolled in the emulator; the emulator's CA trusted by the throwaway
    root. Returns the registration ID."""
    import base64
    import hashlib
    ek = _provision_ek_srk(swtpm, str(tmp_path_factory.mktemp("ek")))
    rid = hashlib.sha256(ek).hexdigest()
    emulator.store.put_enrollment(rid, {
        "registrationId": rid, "capabilities": {"iotEdge": True},
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": base64.b64encode(ek).decode()}},
    }, None)
    with open(emulator.ca_bundle, "rb") as f:
        device.put("/usr/local/share/ca-certificates/devkit-dps.crt", f.read())
    device.run("update-ca-certificates >/dev/null 2>&1")
    return rid


def _good_config(emulator, swtpm, rid):
    return (GOOD.replace("https://127.0.0.1:1", emulator.device_endpoint)
            .replace("0ne00000001", emulator.id_scope).replace("dev-1", rid).replace("TCTI", swtpm))


def _apply(device, config, env=None):
    device.put("/etc/aziot/config.toml", config, 0o600)
    return device.run("iotedge config apply", check=False, env=env)


def test_config_apply_refusals(device, installed):
    """Not root, broken TOML, string auth_key_index, nested DPS, missing users."""
    device.put("/etc/aziot/config.toml", GOOD, 0o600)
    out = device.run("setpriv --reuid=65534 --regid=65534 --clear-groups iotedge config apply",
                     check=False)
    assert (out.returncode, out.stderr) == (1, "Command failed: this command must be run as root"
                                               "\n\n")
    out = _apply(device, GOOD.replace("0x00_01_00", '"0x00_01_00"'))
    assert out.returncode == 1
    assert out.stderr.startswith('Command failed: could not parse config file: invalid type: '
                                 'string "0x00_01_00", expected u32')
    out = _apply(device, "parent_hostname = \"p\"\n" + GOOD)
    assert out.stderr.strip() == "Command failed: DPS provisioning is not supported in nested mode"
    out = _apply(device, GOOD.replace("[provisioning]", "[provisioning"))
    assert "could not parse config file:" in out.stderr
    device.run("userdel aziottpm")
    try:
        out = _apply(device, GOOD)
        assert out.stderr.strip() == "Command failed: could not query aziottpm user information"
    finally:
        device.run("/var/lib/dpkg/info/aziot-identity-service.postinst configure")


def test_config_apply_device_tcti_fails_like_the_real_runtime(device, installed):
    """tcti "device" without /dev/tpmrm0: tpmd exits and systemd restarts it (Restart=on-failure,
    tpm/aziot-tpmd/aziot-tpmd.service.in), so it shows activating; TSS diagnostics in the logs.
    tpmd-running passes as the real check does (aziotctl .../daemons_running.rs only connects
    to the socket, which systemd holds while the daemon restarts)."""
    out = _apply(device, GOOD.replace("TCTI", "device"))
    assert out.returncode == 0, out.stderr
    status = device.run("iotedge system status").stdout
    assert "    aziot-tpmd              Down - activating" in status
    logs = device.run("iotedge system logs").stdout
    assert "Could not initialize TCTI" in logs and "tcti:IO failure" in logs
    assert "Failed to open default TCTI device file /dev/tpmrm0" in logs
    check = device.run("iotedge check --output json", check=False)
    assert check.returncode == 1
    import json
    checks = json.loads(check.stdout)["checks"]
    assert checks["tpmd-running"]["result"] == {"result": "ok"}
    assert checks["tpmd-config-well-formed"]["result"] == {"result": "ok"}


def test_config_apply_registers_and_reports(device, installed, swtpm, emulator, enrolled):
    """A good config: service files written 0600, registration recorded, status/list/check."""
    import json
    config = _good_config(emulator, swtpm, enrolled)
    cmd = ("systemctl start docker && iotedge config apply && iotedge system status"
           " && iotedge list && iotedge check --output json; echo rc=$?")
    device.put("/etc/aziot/config.toml", config, 0o600)
    out = device.run(cmd).stdout
    assert "Azure IoT Edge has been configured successfully!" in out
    for unit in ("aziot-edged", "aziot-identityd", "aziot-keyd", "aziot-certd", "aziot-tpmd"):
        assert "    %-24sRunning" % unit in out
    assert "NAME           STATUS         DESCRIPTION    Config" in out   # edgelet/iotedge/src/list.rs
    assert re.search(r"^edgeAgent +running +Up ", out, re.M)
    check_line = [line for line in out.splitlines() if line.startswith('{"additional_info"')][0]
    checks = json.loads(check_line)["checks"]
    assert checks["container-engine-uri"]["result"] == {"result": "ok"}
    assert checks["host-connect-dps-endpoint"]["result"] == {"result": "ok"}
    assert out.rstrip().endswith("rc=0"), out
    files = device.run("stat -c '%n %U %a' /etc/aziot/*/config.d/00-super.toml").stdout
    assert "/etc/aziot/tpmd/config.d/00-super.toml aziottpm 600" in files
    assert "/etc/aziot/edged/config.d/00-super.toml iotedge 600" in files
    state = emulator.store.get_registration(enrolled)
    assert state["status"] == "assigned"
    logs = device.run("iotedge system logs").stdout
    assert "Provisioning starting. Reason: Startup" in logs and "Successfully provisioned with DPS." in logs
    assert "Device is %s on %s" % (state["deviceId"], state["assignedHub"]) in logs
    assert "Device ID:" not in logs and "Assigned to IoT hub" not in logs
    # device_info as identity.rs's HubDeviceInfo writes it
    assert device.run("cat /var/lib/aziot/identityd/device_info").stdout == (
        'hub_name = "%s"\nlocal_gateway_hostname = "%s"\ndevice_id = "%s"\n'
        % (state["assignedHub"], state["assignedHub"], state["deviceId"]))
    # Dynamic: a second apply reuses the provisioning backup, AlwaysOnStartup registers again.
    registered_at = state["lastUpdatedDateTimeUtc"]
    device.run("iotedge config apply")
    assert emulator.store.get_registration(enrolled)["lastUpdatedDateTimeUtc"] == registered_at
    device.put("/etc/aziot/config.toml", config.replace('"Dynamic"', '"AlwaysOnStartup"'), 0o600)
    device.run("iotedge config apply")
    again = emulator.store.get_registration(enrolled)
    assert again["status"] == "assigned" and again["lastUpdatedDateTimeUtc"] != registered_at


def test_changed_provisioning_keeps_the_backup_until_reprovision(device, installed, swtpm, emulator, enrolled):
    """identity/aziot-identityd/src/identity.rs dps_provision: at start-up a valid device_info
    backup is used whatever the configuration says now ("Provisioned with backup for X."); only
    the reprovision API (`iotedge system reprovision`, edgelet/iotedge/src/system.rs) registers
    again, with the settings in place."""
    config = _good_config(emulator, swtpm, enrolled)
    device.put("/etc/aziot/config.toml", config, 0o600)
    device.run("systemctl start docker && iotedge config apply")
    registered_at = emulator.store.get_registration(enrolled)["lastUpdatedDateTimeUtc"]
    device.run(": > /var/log/aziot/standin-journal.jsonl")
    out = _apply(device, config.replace(emulator.id_scope, "0ne0000FFFF"))
    assert out.returncode == 0, out.stderr
    logs = device.run("iotedge system logs").stdout
    assert "Provisioning starting. Reason: Startup" in logs and "Provisioned with backup for" in logs
    assert "Registering" not in logs and "Successfully provisioned with DPS." not in logs
    assert emulator.store.get_registration(enrolled)["lastUpdatedDateTimeUtc"] == registered_at
    refused = device.run("iotedge system reprovision", check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("Failed to reprovision: DPS client error")
    assert device.run("test -e /var/lib/aziot/identityd/device_info", check=False).returncode == 1
    device.put("/etc/aziot/config.toml", config, 0o600)
    again = device.run("iotedge config apply && iotedge system reprovision").stdout
    assert "Successfully reprovisioned with IoT Hub." in again
    assert "Provisioning starting. Reason: Api" in device.run("iotedge system logs").stdout
    assert emulator.store.get_registration(enrolled)["lastUpdatedDateTimeUtc"] != registered_at


def test_registration_failure_is_reported(device, installed, swtpm, emulator, enrolled):
    """A refused registration (the enrollment holds another TPM's EK): identityd logs the DPS
    client error and exits; systemd restarts it every 5 s (identity/aziot-identityd/
    aziot-identityd.service.in: Restart=on-failure, RestartSec=5s); edged is not up. The
    earlier tests' backup is removed first: the real identityd would use it whatever the
    configuration says now."""
    device.run("rm -f /var/lib/aziot/identityd/device_info")
    import base64
    from tpm2_pytss.internal.templates import ek_rsa2048
    from tpm2_pytss.types import TPM2B_PUBLIC
    other = TPM2B_PUBLIC(publicArea=ek_rsa2048.template.publicArea)
    other.publicArea.unique.rsa = os.urandom(256)
    emulator.store.put_enrollment("someone-else", {
        "registrationId": "someone-else", "capabilities": {"iotEdge": True},
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": base64.b64encode(other.marshal()).decode()}},
    }, None)
    # One shell: each device.run is its own PID namespace, which takes the restarter with it.
    device.put("/etc/aziot/config.toml", _good_config(emulator, swtpm, "someone-else"), 0o600)
    out = device.run("iotedge config apply && iotedge system status && echo @@ && "
                     "for i in $(seq 60); do [ $(iotedge system logs | grep -c 'Failed to provision with IoT Hub') -ge 2 ] && break; "
                     "sleep 0.5; done; iotedge system logs", check=False)
    assert out.returncode == 0, out.stderr
    status, logs = out.stdout.split("@@\n", 1)
    assert "aziot-edged             Down - activating" in status
    assert "    aziot-identityd         Down - activating" in status
    assert "DPS client error" in logs and "401002" in logs
    assert "Failed to provision with IoT Hub, and no valid device backup was found: DPS client error" in logs
    assert "aziot-identityd.service: Main process exited, code=exited, status=1/FAILURE" in logs
    # the restart 5 s later tries again (and fails again)
    assert "aziot-identityd.service: Scheduled restart job, restart counter is at 1." in logs
    assert logs.count("Failed to provision with IoT Hub") >= 2
    assert device.run("iotedge list", check=False).returncode == 1


def test_killed_config_apply_leaves_the_registration_going(device, installed, swtpm, emulator, enrolled):
    """`iotedge config apply` only asks systemd to restart the units and waits
    (aziotctl-common src/system/restart.rs); the identity service's start-up runs in its own
    unit. Killing the apply's process group while the service registers (Ctrl+C, a stopped SSH
    command) stops the waiting, not the registration: the device is assigned all the same. The
    emulator holds the device requests 3 s so that the kill lands mid-registration."""
    device.run("rm -f /var/lib/aziot/identityd/device_info; : > /var/log/aziot/standin-journal.jsonl")
    try:
        before = emulator.store.get_registration(enrolled)["lastUpdatedDateTimeUtc"]
    except Exception:  # pylint: disable=broad-except  # (run alone: not registered yet)
        before = None
    device.put("/etc/aziot/config.toml", _good_config(emulator, swtpm, enrolled), 0o600)
    emulator.configure(faults={"latency_ms": {"device": 3000}})
    try:
        # One shell (one PID namespace): the apply in a group of its own, killed once the
        # identity service has begun its registration; then up to 30 s for the outcome.
        out = device.run(
            "systemctl start docker; setsid iotedge config apply >/dev/null 2>&1 & pid=$!; "
            "for i in $(seq 200); do iotedge system logs | grep -q 'Reason: Startup' && break; sleep 0.05; done; "
            "kill -TERM -$pid; rc=0; wait $pid || rc=$?; echo killed=$rc; "
            "for i in $(seq 60); do iotedge system logs | grep -q -E 'Successfully provisioned|Failed to provision' "
            "&& break; sleep 0.5; done; iotedge system status", check=False)
    finally:
        emulator.configure(clear_faults=True)
    assert "killed=143" in out.stdout, (out.stdout, out.stderr)   # the apply did not finish by itself
    assert "    aziot-identityd         Running" in out.stdout, out.stdout
    state = emulator.store.get_registration(enrolled)
    assert state["status"] == "assigned" and state["lastUpdatedDateTimeUtc"] != before
    logs = device.run("iotedge system logs").stdout
    assert "Successfully provisioned with DPS." in logs, logs


def test_end_to_end_registration_with_emulator(device, installed, swtpm, emulator, enrolled):
    """Real client + emulator: the enrollment turns assigned; CA trusted via the trust store."""
    import json
    device.put("/etc/aziot/config.toml", _good_config(emulator, swtpm, enrolled), 0o600)
    out = device.run("systemctl start docker && iotedge config apply && iotedge system status"
                     " && iotedge check --output json; echo rc=$?").stdout
    assert "    aziot-edged             Running" in out, out
    checks = json.loads([line for line in out.splitlines()
                         if line.startswith('{"additional_info"')][0])["checks"]
    assert checks["host-connect-dps-endpoint"]["result"] == {"result": "ok"}
    assert out.rstrip().endswith("rc=0"), out
    state = emulator.store.get_registration(enrolled)
    assert state["status"] == "assigned"
    logs = device.run("iotedge system logs").stdout
    assert "Successfully provisioned with DPS." in logs or "Provisioned with backup for" in logs
    assert "Device is %s on %s" % (state["deviceId"], state["assignedHub"]) in logs


# --------------------------------------------------------------------------------------
# On a simulated device of the rig, over SSH (what the product does)


@pytest.mark.devkit
def test_rig_device_installs_from_served_repo_over_ssh(rig, new_device, repo_dir):
    """A notools device reaches the repo at the host IP; docker restarts over SSH; apply runs."""
    from devkit.packages.service import AptService
    service = AptService(repo_dir)
    section = service.up(rig)
    try:
        assert section["base_url"] == "http://%s:%d/" % (rig.host_ip, int(
            section["base_url"].rsplit(":", 1)[1].strip("/")))
        dev = new_device("notools")

        def ssh(cmd, timeout=120):
            return subprocess.run(dev.ssh_argv() + [cmd], capture_output=True, text=True,
                                  timeout=timeout, check=False, stdin=subprocess.DEVNULL)

        url = section["config_package_url"]
        fetch = "python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])'"
        out = ssh("set -e; cd /tmp; " + fetch + " '%s' pmp.deb; apt-get install -y -q ./pmp.deb"
                  " >/dev/null; rm -f /etc/apt/sources.list.d/debian.sources;"
                  " apt-get update -q >/dev/null; apt-get install -y -q moby-engine tpm2-tools"
                  " >/dev/null; apt-get install -y -q aziot-edge"
                  " >/dev/null; command -v tpm2_createek; command -v systemctl" % url)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.split() == ["/usr/bin/tpm2_createek", "/usr/local/sbin/systemctl"]
        start = time.monotonic()
        out = ssh("systemctl restart docker && systemctl is-active docker", timeout=20)
        assert (out.returncode, out.stdout.strip()) == (0, "active"), out.stderr
        assert time.monotonic() - start < 10
        config = GOOD.replace("TCTI", dev.tcti)
        out = ssh("cat > /etc/aziot/config.toml <<'EOF_CONFIG'\n%sEOF_CONFIG\n"
                  "iotedge config apply >/dev/null; iotedge system status; iotedge system logs"
                  % config)
        assert "aziot-tpmd              Running" in out.stdout, out.stdout + out.stderr
        # A fresh TPM has no EK yet: the registration client refuses, identityd says so.
        assert "DPS client error" in out.stdout
    finally:
        service.down(rig, section)
