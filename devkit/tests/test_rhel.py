"""The RHEL half of the dev kit: stand-in RPMs in dnf repositories, and the rhel9 device.

- the built RPMs carry the real spec's dependencies (one exact aziot-identity-service with the
  dist tag, a container engine) and its %post check (no container runtime: exit 1);
- a ``rhel9`` device of the rig is RHEL as the product sees it (os-release, rpm database with
  tpm2-tools, no apt-get or dpkg), and installs aziot-edge with the real dnf over SSH from the
  rig's repository, set up by the served packages-microsoft-prod.rpm as on a real device.
"""
import os
import shutil
import subprocess
import tempfile

import pytest

from devkit.packages import RELEASES, build_repo
from devkit.packages.__main__ import DEFAULT_DIR


@pytest.fixture(scope="module")
def repo_dir():
    """The stand-in repository the rig serves (cached per checkout)."""
    if shutil.which("rpmbuild") is None or shutil.which("createrepo_c") is None:
        pytest.skip("rpm and createrepo-c are not installed (scripts/bootstrap.sh)")
    return build_repo(DEFAULT_DIR)


def _rpm_query(path, *what):
    return subprocess.run(["rpm", "-qp", *what, path], capture_output=True, text=True,
                          check=True).stdout


def test_rpms_name_the_exact_identity_service_and_need_an_engine(repo_dir):
    """As Azure/iotedge edgelet/contrib/enterprise-linux/aziot-edge.spec: `Requires:
    aziot-identity-service = <its version>-1%{?dist}` and `(moby-engine or docker-ce)`; %post
    refuses without the docker group. Every line is in both el8 and el9 repodata."""
    for el in ("8", "9"):
        prod = os.path.join(repo_dir, "rhel", el, "prod")
        assert os.path.isfile(os.path.join(prod, "repodata", "repomd.xml"))
        for release in RELEASES:
            path = os.path.join(prod, "aziot-edge-%s.el%s.x86_64.rpm" % (release.edge, el))
            requires = _rpm_query(path, "--requires").splitlines()
            assert "aziot-identity-service = %s.el%s" % (release.identity, el) in requires
            assert "(moby-engine or docker-ce)" in requires
    scripts = _rpm_query(path, "--scripts")
    post = scripts.split("postinstall scriptlet", 1)[1]
    assert "ERROR: No container runtime detected." in post and "exit 1" in post
    assert "No container runtime" not in scripts.split("postinstall scriptlet", 1)[0]
    # Signed, as packages.microsoft.com's: prod/ (and the offline sets) by the kit key of
    # keys/microsoft.asc, untrusted/ by another key, which that key does not verify.
    with tempfile.TemporaryDirectory() as db:
        subprocess.run(["rpm", "--dbpath", db, "--import",
                        os.path.join(repo_dir, "keys", "microsoft.asc")], check=True)
        checked = subprocess.run(
            ["rpm", "--dbpath", db, "-K", path,
             os.path.join(repo_dir, "rpms", "el9", "1.6.0-1", "aziot-edge-1.6.0-1.el9.x86_64.rpm"),
             path.replace("/prod/", "/untrusted/")], capture_output=True, text=True, check=False)
    assert checked.stdout.splitlines()[:2] == [
        path + ": digests signatures OK",
        os.path.join(repo_dir, "rpms", "el9", "1.6.0-1", "aziot-edge-1.6.0-1.el9.x86_64.rpm")
        + ": digests signatures OK"], checked.stdout
    assert checked.stdout.splitlines()[2].endswith("SIGNATURES NOT OK"), checked.stdout
    assert os.path.isfile(os.path.join(repo_dir, "rhel", "9", "untrusted", "repodata", "repomd.xml"))
    offline = os.listdir(os.path.join(repo_dir, "rpms", "el9", "1.6.0-1"))
    assert sorted(n.rsplit("-", 2)[0] for n in offline) == [
        "aziot-edge", "aziot-identity-service", "devkit-systemctl-shim", "moby-cli", "moby-engine"]


@pytest.fixture(scope="module")
def served(rig, repo_dir):
    """The package service on the session rig (its devkit.json section)."""
    from devkit.packages.service import AptService
    service = AptService(repo_dir)
    section = service.up(rig)
    yield section
    service.down(rig, section)


@pytest.mark.devkit
def test_rhel9_device_installs_with_dnf_over_ssh(rig, new_device, served):
    """No apt-get or dpkg; tpm2-tools known to rpm; packages-microsoft-prod.rpm from the served
    config/rhel/9/ path, then `dnf install aziot-edge` pulls the engine and the exact identity
    service; rpm answers, and the stand-in reports 1.6.0 as the real `iotedge version` does."""
    assert served["sources"]["rhel9"] == "%srhel/9/prod/ gpgkey=%skeys/microsoft.asc" % (
        served["base_url"], served["base_url"])
    dev = new_device("rhel9")

    def ssh(cmd):
        return subprocess.run(dev.ssh_argv() + [cmd], capture_output=True, text=True,
                              timeout=300, check=False, stdin=subprocess.DEVNULL)

    out = ssh(". /etc/os-release; echo $ID $VERSION_ID; rpm -q tpm2-tools redhat-release")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["rhel", "9.4", "tpm2-tools-5.2-3.el9.x86_64",
                                  "redhat-release-9.4-0.el9.x86_64"]
    for tool in ("apt-get update", "dpkg -l"):
        gone = ssh(tool)
        assert gone.returncode == 127 and "not found" in gone.stderr, (tool, gone)
    # rpm alone, without the engine: the real %post's check fails the scriptlet (rpm warns and
    # keeps the package); Debian's rpm does not complain about itself as it does on Debian.
    offline = served["rpms_dirs"]["rhel9"]["1.6.0-1"]
    out = ssh("rpm -i --nodeps %s/aziot-edge-1.6.0-1.el9.x86_64.rpm; rpm -e --nodeps aziot-edge"
              % offline)
    assert "ERROR: No container runtime detected." in out.stdout, out
    assert "%post(aziot-edge-1.6.0-1.el9.x86_64) scriptlet failed, exit status 1" in out.stderr
    assert "Alien" not in out.stderr
    # The served repository file checks signatures with the key it names, as Microsoft's
    # (gpgcheck=1, gpgkey=<server>/keys/microsoft.asc); dnf -y imports that key itself.
    out = ssh("set -e; dnf install -y -q %s >/dev/null; dnf install -y -q aziot-edge >/dev/null;"
              " rpm -q aziot-edge aziot-identity-service moby-engine; iotedge version;"
              " getent group docker >/dev/null && echo docker-group;"
              " grep -E '^gpg' /etc/yum.repos.d/microsoft-prod.repo"
              % served["config_package_urls"]["rhel9"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split("\n")[:7] == [
        "aziot-edge-1.6.0-1.el9.x86_64", "aziot-identity-service-1.6.0-1.el9.x86_64",
        "moby-engine-25.0.5-1.el9.x86_64", "iotedge 1.6.0", "docker-group", "gpgcheck=1",
        "gpgkey=%skeys/microsoft.asc" % served["base_url"]]


@pytest.mark.devkit
@pytest.mark.userlands("bullseye")
def test_bullseye_device_sees_only_the_1_5_line(rig, new_device, served):
    """A Debian 11 device set up by config/debian/11's packages-microsoft-prod (what the product
    fetches there from the base URL) gets apt's view of debian/11/prod/: 1.5 only, as Microsoft's
    repository (1.6 has no Debian 11 packages)."""
    assert served["sources"]["debian11"].startswith("deb [trusted=yes] " + served["base_url"])
    dev = new_device("bullseye")
    fetch = "python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])'"
    out = subprocess.run(dev.ssh_argv() + [
        "set -e; cd /tmp; %s '%s' pmp.deb; dpkg -i pmp.deb >/dev/null; rm -f /etc/apt/sources.list"
        " /etc/apt/sources.list.d/debian.sources; apt-get update -q >/dev/null; "
        "cat /etc/apt/sources.list.d/microsoft-prod.list; apt-cache madison aziot-edge"
        % (fetch, served["config_package_urls"]["debian11"])],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    assert served["sources"]["debian11"] in out.stdout
    versions = [line.split("|")[1].strip() for line in out.stdout.splitlines() if "|" in line]
    assert sorted(versions) == ["1.5.10-1", "1.5.9-1"]
