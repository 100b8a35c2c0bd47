"""The built wheel installs with the real `az extension add` into a clean azure-cli of the
extension's minimum version on a machine where tpm2-pytss cannot be built, carries nothing az
already has, and works there over SSH."""
import json
import os
import re
import zipfile

from azext_edgetpm.tests.latest.conftest import REPO
from azext_edgetpm.tests.latest.test_ek_show import by_hand

METADATA = os.path.join(REPO, "azext_edgetpm", "azext_metadata.json")
# Libraries azure-cli itself ships (and loads before an extension's copies).
AZ_SHIPS = ("paramiko", "cryptography", "bcrypt", "pynacl", "cffi", "invoke", "azure-core", "knack", "requests")


def _requires(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    return names, metadata, re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)


def test_wheel_declares_only_what_az_lacks(wheel):
    names, metadata, requires = _requires(wheel)
    assert "Name: edge-tpm" in metadata
    assert "azext_edgetpm/azext_metadata.json" in names
    assert not [n for n in names if "/tests/" in n or n.startswith("devkit/")]
    plain = [r for r in requires if "extra ==" not in r]
    assert [re.split(r"[<>=~; ]", r)[0].lower() for r in plain] == ["tomlkit"], requires
    # tpm2-pytss only as the optional extra for --local.
    assert [r for r in requires if "tpm2-pytss" in r] == ['tpm2-pytss>=2.1; extra == "local"']


def test_min_cli_core_version_is_the_tested_one():
    from importlib.metadata import version
    minimum = json.load(open(METADATA, encoding="utf-8"))["azext.minCliCoreVersion"]
    assert version("azure-cli-core") == minimum
    with open(os.path.join(REPO, "requirements-dev.txt"), encoding="utf-8") as handle:
        assert f"azure-cli=={minimum}" in handle.read().split()
    with open(os.path.join(REPO, ".venv-notss", ".bootstrapped"), encoding="utf-8") as handle:
        assert handle.read().strip() == f"azure-cli=={minimum}"


def test_az_extension_add_without_tss_libraries(az_without_tss):
    shown = az_without_tss("extension", "show", "-n", "edge-tpm")
    assert shown.returncode == 0, shown.stderr
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as handle:
        version = re.search(r'^VERSION = "([^"]+)"', handle.read(), re.M).group(1)
    assert az_without_tss.json(shown)["version"] == version
    installed = os.listdir(os.path.join(az_without_tss.extension_dir, "edge-tpm"))
    assert "tomlkit" in installed and "azext_edgetpm" in installed
    assert not [n for n in installed if n.split("-")[0].lower().replace("_", "-") in AZ_SHIPS + ("tpm2-pytss",)]
    assert "tpm2_pytss" not in installed
    helped = az_without_tss("edge-tpm", "ek", "show", "-h", output=None)
    assert helped.returncode == 0 and "--accept-new-host-key" in helped.stdout


def test_ek_show_over_ssh_in_the_installed_extension(az_without_tss, rig):
    dev = rig.by_variant("mfg")
    proc = az_without_tss("edge-tpm", "ek", "show", "--host", f"root@{dev.host}:{dev.port}", "--ssh-key",
                          dev.key(), "--known-hosts", dev.known_hosts, "--tcti", dev.tcti, "--no-create")
    assert proc.returncode == 0, proc.stderr
    out = az_without_tss.json(proc)
    assert (out["registrationId"], out["endorsementKey"]) == by_hand(dev)
    assert out["validatedWith"] == "structure"
    assert out["ekCertificate"]["matchesEndorsementKey"] is True
    # A closed port: the clean error, no traceback.
    closed = az_without_tss("edge-tpm", "ek", "show", "--host", "root@127.0.0.1:1")
    assert closed.returncode == 1
    assert "refused the connection" in closed.stderr and "Traceback" not in closed.stderr


def test_local_without_tpm2_pytss_says_how_to_add_it(az_without_tss):
    proc = az_without_tss("edge-tpm", "ek", "show", "--local")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "--local needs tpm2-pytss" in proc.stderr
    assert "libtss2-dev" in proc.stderr
    # The exact command that adds it next to the extension, with az's own Python (this also shows
    # that the copy az ran is the one `az extension add` installed).
    target = os.path.join(az_without_tss.extension_dir, "edge-tpm")
    assert f"-m pip install --target {target} tpm2-pytss" in proc.stderr
    assert "use --host" in proc.stderr
