"""Where tpm2-pytss cannot be installed (Windows, macOS: no tpm2-tss libraries), the extension
still installs and its SSH paths run. Windows and macOS cannot run here, so the stand-in is a
real Python environment made by scripts/bootstrap.sh (.venv-notss) with azure-cli-core (plus msrest
and azure-common, which az ships), paramiko and tomlkit but no tpm2-pytss: the wheel goes in the way `az extension add` puts it
(pip --target), without the dependency that its platform marker drops elsewhere."""
import json
import os
import subprocess

import pytest

from azext_edgetpm.tests.latest.conftest import REPO
from azext_edgetpm.tests.latest.test_ek_show import by_hand

NOTSS = os.path.join(REPO, ".venv-notss", "bin", "python")
RUN_AZ = "import sys; from azure.cli.core import get_default_cli; sys.exit(get_default_cli().invoke(sys.argv[1:]))"


@pytest.fixture(scope="module")
def notss_az(wheel, tmp_path_factory):
    if not os.path.exists(NOTSS):
        pytest.fail(f"{NOTSS} is missing: run scripts/bootstrap.sh")
    probe = subprocess.run([NOTSS, "-c", "import tpm2_pytss"], capture_output=True)
    assert probe.returncode != 0, "the no-TSS environment must not have tpm2-pytss"
    home = tmp_path_factory.mktemp("notss-az")
    ext = home / "extensions" / "edge-tpm"
    subprocess.run([NOTSS, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(ext),
                    str(wheel)], check=True)
    env = dict(os.environ, AZURE_CONFIG_DIR=str(home / "config"), AZURE_EXTENSION_DIR=str(home / "extensions"),
               AZURE_CORE_COLLECT_TELEMETRY="no", PYTHONPATH="")

    def run(*args):
        return subprocess.run([NOTSS, "-c", RUN_AZ, *args, "-o", "json"], env=env, capture_output=True,
                              text=True, timeout=120)
    return run


def test_ssh_paths_run_without_tpm2_pytss(notss_az, rig):
    dev = rig.by_variant("mfg")
    proc = notss_az("edge-tpm", "ek", "show", "--host", f"root@{dev.host}:{dev.port}", "--ssh-key", dev.key(),
                    "--known-hosts", dev.known_hosts, "--tcti", dev.tcti, "--no-create")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    reg_id, ek = by_hand(dev)
    assert (out["registrationId"], out["endorsementKey"]) == (reg_id, ek)
    assert out["validatedWith"] == "structure"
    assert out["ekCertificate"]["subject"] is not None


def test_local_needs_tpm2_pytss_and_says_so(notss_az):
    proc = notss_az("edge-tpm", "ek", "show", "--local")
    assert proc.returncode != 0
    assert "--local needs tpm2-pytss" in proc.stderr and "use --host" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_install_tools_on_a_device_without_them(new_device, rig):
    from devkit.packages import AptRepo, build_repo
    dev = new_device("notools")
    repo = AptRepo(build_repo(os.path.join(REPO, ".devkit", "packages", "repo")), [rig.host_ip])
    section = repo.start()
    try:
        # The device's package sources point at a mirror (the dev kit's repository) only.
        dev.exec(f"rm -f /etc/apt/sources.list.d/*; echo {section['apt_line']!r} > /etc/apt/sources.list", check=True)
        from azext_edgetpm.tests.latest.azcli import az
        from azext_edgetpm.tests.latest.test_ek_show import ek_args
        refused = az(*ek_args(dev))
        assert refused.rc != 0 and "tpm2-tools is not installed" in refused.message
        installed = az(*ek_args(dev, extra=["--install-tools"]))
        assert installed.rc == 0, installed.stderr
        assert installed.out["createdKeys"] == ["ek", "srk"]
        assert dev.exec("dpkg-query -W -f='${Status}' tpm2-tools").stdout == "install ok installed"
        assert installed.out["registrationId"] == by_hand(dev)[0]
    finally:
        repo.stop()
