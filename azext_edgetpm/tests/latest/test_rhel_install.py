"""Red Hat Enterprise Linux through dnf and rpm, on the dev kit's rhel9 device (the real dnf 4 and
rpm 4, RHEL's os-release, no apt-get or dpkg: a path that still called them would fail for real),
with the stand-in RPMs served from the kit's dnf repository:

- `provision --package-source "<the kit's dnf repository> gpgkey=<the kit's key>"` ends assigned, with
  aziot-edge 1.6.0 (`rpm -q` inside the device) from that repository (our .repo file, gpgcheck=1, the
  kit's key imported by dnf) and the agent image :1.6;
- a second `install` changes nothing; `status` reads the runtime; `rekey` and `reprovision` work;
- `deprovision --uninstall` removes aziot-edge and aziot-identity-service with dnf (rpm -q: not
  installed) and leaves the container engine and the .repo file (as the apt line's file);
- a dnf repository whose RPMs are signed by another key: dnf refuses them, one error names the
  signature, nothing of IoT Edge is installed, the .repo file it replaced is kept as a copy;
- an offline .rpm set (--offline-packages) installs with dnf from those files alone;
- behind the authenticated proxy (a `rhel9+proxied` device), `provision --proxy` with the mirror's base
  URL (packages-microsoft-prod.rpm from its config/rhel/9/ path, whose repository file checks the
  packages' signatures with the key it names) ends assigned with dnf's traffic through the proxy and its credentials only in a root-only dnf.conf;
- `--proxy` with `--no-proxy` naming the package server's host: dnf fetches from it directly (an empty
  proxy= in our .repo file, in packages-microsoft-prod's, and for the download of that package), no
  request of it in the proxy's log;
- `upgrade` of a device installed with 1.5.10 to 1.6.0 keeps its identity; a downgrade is refused.

One rhel9 device for the module (and a rhel9+proxied one for the proxy, a rhel9 one for the upgrade) (device time is the suite's budget); the tests use it in order.
"""
import json
import re
import tomllib

import pytest

from azext_edgetpm.edge.pkg import dnf_direct
from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import ok
from azext_edgetpm.tests.latest.test_edge_install import (  # noqa: F401,F811  (dps: a module fixture)
    dps, host_args, install, stat, statuses, trust_dps)
from azext_edgetpm.tests.latest.test_edge_proxy import (  # noqa: F401,F811  (proxies: a module fixture)
    device_files_holding, log_since, log_size, proxies)
from azext_edgetpm.tests.latest.test_lts import AGENT, provision

pytestmark = [pytest.mark.devkit, pytest.mark.timeout(1500)]

REPO_FILE = "/etc/yum.repos.d/edge-tpm.repo"


def rpm_q(dev, *names):
    return dev.exec(["rpm", "-q", *names]).stdout.split("\n")[:len(names)]


@pytest.fixture(scope="module")
def rhel(rig, repo, dps, tmp_path_factory):
    """One rhel9 device, trusting the DPS emulator the RHEL way, provisioned once."""
    if "rhel9" not in (repo.get("sources") or {}):
        pytest.skip("the dev kit's package repository of this checkout has no dnf repository (devkit/packages)")
    dev = rig.add_device("rhel9")
    try:
        trust_dps(dev, dps)
        # (the later --package-source wins over provision()'s mirror base URL, as argparse stores the last)
        results = provision(rig, dps, repo, [dev], tmp_path_factory.mktemp("rhel") / "rhel.csv",
                            "--package-source", repo["sources"]["rhel9"])
        yield {"device": dev, "result": results[0]}
    finally:
        rig.remove_device(dev)


def test_provision_installs_with_dnf_and_ends_assigned(rhel, repo):
    dev, result = rhel["device"], rhel["result"]
    assert result["status"] == "assigned", json.dumps(result)[:3000]
    assert dev.exec(["sh", "-c", "command -v apt-get dpkg"]).stdout == ""   # (nothing of apt's to fall back on)
    assert rpm_q(dev, "aziot-edge", "aziot-identity-service", "moby-engine", "moby-cli") == [
        "aziot-edge-1.6.0-1.el9.x86_64", "aziot-identity-service-1.6.0-1.el9.x86_64",
        "moby-engine-25.0.5-1.el9.x86_64", "moby-cli-25.0.5-1.el9.x86_64"]
    url, key = repo["sources"]["rhel9"].split(" gpgkey=")
    assert dev.exec(["cat", REPO_FILE], check=True).stdout == (
        "# Package source of IoT Edge (written by az edge-tpm install)\n[edge-tpm]\nname=IoT Edge packages (az edge-tpm)\n"
        f"baseurl={url}\nenabled=1\ngpgcheck=1\ngpgkey={key}\n")
    assert rpm_q(dev, "packages-microsoft-prod") == ["package packages-microsoft-prod is not installed"]
    listed = dev.exec("LC_ALL=C dnf -q list --installed aziot-edge | tail -n 1", check=True).stdout.split()
    assert listed[1:] == ["1.6.0-1.el9", "@edge-tpm"], listed
    keys = dev.exec(["rpm", "-q", "gpg-pubkey", "--qf", "%{summary}\n"]).stdout
    assert "devkit package signing" in keys, keys      # (imported by dnf from gpgkey=, checked on every RPM)
    config = tomllib.loads(dev.exec(["cat", "/etc/aziot/config.toml"], check=True).stdout)
    assert config["agent"]["config"]["image"] == AGENT + "1.6"
    assert result["warnings"] == []


def test_second_install_changes_nothing_and_status_reads_the_runtime(rhel, repo, dps):
    dev = rhel["device"]
    again = install(dev, dps, "--package-source", repo["sources"]["rhel9"])
    assert again.rc == 0, f"{again.message} | {again.recommendation}"
    assert again.out["changed"] is False, statuses(again)
    assert set(statuses(again).values()) <= {"ok", "skipped"}, statuses(again)
    assert again.out["platform"]["id"] == "rhel" and again.out["platform"]["version"] == "9"
    status = ok("edge-tpm", "status", *host_args(dev)).out
    assert status["healthy"] is True and status["provisioning"]["state"] == "assigned", status
    assert status["runtime"]["packages"]["aziot-edge"] == "1.6.0-1.el9"


def test_rekey_and_reprovision_work_there(rhel, dps):
    """Neither touches packages: the TPM, DPS and `iotedge system reprovision` behave as on Debian (the
    enrollment already holds the EK: unchanged; the device is assigned again)."""
    dev = rhel["device"]
    rekeyed = ok("edge-tpm", "rekey", *host_args(dev), *dps.login, "--yes").out
    assert rekeyed["status"] == "assigned", rekeyed
    assert rekeyed["enrollment"] == "the enrollment already holds the device's EK", rekeyed
    again = ok("edge-tpm", "reprovision", *host_args(dev), *dps.login, "--yes").out
    assert again["status"] == "assigned" and again["enrollment"] == "no enrollment change asked", again


def test_deprovision_uninstall_removes_the_packages_with_dnf(rhel, dps):
    dev = rhel["device"]
    done = ok("edge-tpm", "deprovision", *host_args(dev), *dps.login, "--uninstall", "--yes").out
    assert done["device"] == "uninstalled", done
    assert rpm_q(dev, "aziot-edge", "aziot-identity-service") == [
        "package aziot-edge is not installed", "package aziot-identity-service is not installed"]
    assert rpm_q(dev, "moby-engine") == ["moby-engine-25.0.5-1.el9.x86_64"]     # the engine is left
    assert dev.exec(["test", "-f", REPO_FILE]).returncode == 0                   # the package source too


def test_packages_signed_by_another_key_are_refused_with_one_clear_error(rhel, repo, dps):
    """A dnf repository whose RPMs are signed by a key other than the one named (a tampered mirror): dnf
    refuses them (the kit key is imported, their signature is not made by it); one error names the
    signature with what to do; nothing of IoT Edge is installed; our previous .repo file is kept as a copy."""
    dev = rhel["device"]
    before = dev.exec(["cat", REPO_FILE], check=True).stdout
    # (how a bare URL is read: the device's dnf finds repodata/ there -> a repository, with Microsoft's
    # key; none at the mirror's base URL -> its config/rhel/9/packages-microsoft-prod.rpm; plans only)
    url = repo["sources"]["rhel9"].split()[0]
    for source, want in ((url, f"write {REPO_FILE}: baseurl={url}, enabled=1, gpgcheck=1, "
                                "gpgkey=https://packages.microsoft.com/keys/microsoft.asc"),
                         (repo["base_url"], f"install packages-microsoft-prod from {repo['base_url']}config/rhel/9/")):
        plan = install(dev, dps, "--package-source", source, "--dry-run")
        assert plan.rc == 0, plan.message
        assert want in next(s["detail"] for s in plan.out["steps"] if s["name"] == "package-source"), plan.out
    assert dev.exec(["cat", REPO_FILE], check=True).stdout == before
    bad = install(dev, dps, "--package-source", repo["untrusted_sources"]["rhel9"])
    assert bad.rc != 0 and "Traceback" not in bad.stderr
    assert "signature" in bad.message and "nothing of them was installed" in bad.message, bad.message
    assert "gpgkey=" in bad.recommendation, bad.recommendation
    assert rpm_q(dev, "aziot-edge", "aziot-identity-service") == [
        "package aziot-edge is not installed", "package aziot-identity-service is not installed"]
    assert "/rhel/9/untrusted/" in dev.exec(["cat", REPO_FILE], check=True).stdout
    copies = dev.exec(f"cat {REPO_FILE}.edgetpm-*.bak", check=True).stdout
    assert copies == before


def test_provision_behind_the_authenticated_proxy(new_device, repo, dps, proxies, tmp_path):
    """A rhel9 device whose only way out is the authenticated proxy: `provision --proxy @file` ends
    assigned; dnf's downloads (packages-microsoft-prod.rpm, the repository's metadata and packages)
    went through that proxy with the credentials of dnf.conf, made root-only; the password is in no
    file that is not root-only, nor in the output."""
    dev = new_device("rhel9+proxied")
    trust_dps(dev, dps)
    auth = proxies["auth"]
    password = auth["password"]
    url_file = tmp_path / "auth-proxy.txt"
    url_file.write_text(f"http://{auth['user']}:{password}@{auth['url'].split('//', 1)[1]}\n")
    offset = log_size(auth["log"])
    result = az("edge-tpm", "provision", *host_args(dev), "--tcti", dev.tcti, *dps.login,
                "--id-scope", dps.section["id_scope"], "--global-endpoint", dps.section["device_endpoint"],
                "--package-source", repo["base_url"], "--proxy", f"@{url_file}")
    assert result.rc == 0, f"{result.message} | {result.recommendation}"
    row = result.out[0] if isinstance(result.out, list) else result.out
    assert row["status"] == "assigned", row
    assert rpm_q(dev, "aziot-edge") == ["aziot-edge-1.6.0-1.el9.x86_64"]
    conf = dev.exec(["cat", "/etc/dnf/dnf.conf"], check=True).stdout
    assert f"proxy=http://{auth['url'].split('//', 1)[1].rstrip('/')}" in conf and "proxy_username=" in conf, conf
    assert "best=True" in conf                                 # (RHEL's own settings kept)
    assert stat(dev, "/etc/dnf/dnf.conf") == ["600", "root", "root"]
    seen = log_since(auth["log"], offset)
    repo_hostport = repo["base_url"].split("//", 1)[1].rstrip("/")
    assert re.search(rf"Request .*: GET http://{re.escape(repo_hostport)}/config/rhel/9/packages-microsoft-prod", seen)
    assert re.search(rf"Request .*: GET http://{re.escape(repo_hostport)}/.*aziot-edge-1\.6\.0", seen), seen[-3000:]
    assert password not in result.text + result.stderr + result.message
    found = device_files_holding(dev, password)
    assert found and all(line.startswith("600 ") for line in found), found


def test_offline_rpm_set_installs_again_after_the_uninstall(rhel, repo, dps):
    """--offline-packages with a directory of .rpm files: uploaded and installed by dnf from those files
    alone (the engine already there is kept). (The deprovision disabled the enrollment: the runtime runs
    and DPS refuses it, which the install reports as a warning.)"""
    dev = rhel["device"]
    offline = repo["rpms_dirs"]["rhel9"]["1.6.0-1"]
    done = install(dev, dps, "--offline-packages", offline)
    assert done.rc == 0, f"{done.message} | {done.recommendation}"
    assert statuses(done)["package-source"] == "changed", statuses(done)
    assert "from the uploaded .rpm files" in next(s["detail"] for s in done.out["steps"] if s["name"] == "package-source")
    assert rpm_q(dev, "aziot-edge", "aziot-identity-service") == [
        "aziot-edge-1.6.0-1.el9.x86_64", "aziot-identity-service-1.6.0-1.el9.x86_64"]
    assert done.out["runtime"]["version"].startswith("1.6.0"), done.out["runtime"]


# The package server by a host name of its own (in the device's /etc/hosts): --no-proxy naming it does not
# also send DPS, on the same address, around the proxy.
PKG_HOST = "packages.devkit.test"
MS_REPO = "/etc/yum.repos.d/microsoft-prod.repo"      # (packages-microsoft-prod's, as Microsoft's package)


def test_no_proxy_sends_dnf_to_the_package_server_directly(rhel, repo, dps, proxies, tmp_path):
    """--proxy (the kit's authenticated proxy) with --no-proxy naming the package server's host: dnf.conf's
    [main] gets the proxy, our .repo file an empty proxy= (dnf.conf(5): that repository goes direct); the
    packages are downloaded and installed with no request of the package server through the proxy, while
    the device's check of DPS went through it. Then the mirror's base URL with its address listed too:
    packages-microsoft-prod.rpm downloaded directly, its .repo file given the same proxy=; `--proxy none`
    takes that line out again. (The device is not `proxied`: it could go either way.)"""
    dev = rhel["device"]
    hostport = repo["base_url"].split("//", 1)[1].rstrip("/")
    host = hostport.rsplit(":", 1)[0]
    dev.exec(f"echo '{host} {PKG_HOST}' >> /etc/hosts", check=True)
    source = repo["sources"]["rhel9"].replace(f"//{hostport}/", f"//{PKG_HOST}:{hostport.rsplit(':', 1)[1]}/")
    dev.exec("dnf -q -y remove --noautoremove aziot-edge aziot-identity-service", check=True, timeout=600)
    auth = proxies["auth"]
    url_file = tmp_path / "auth-proxy.txt"
    url_file.write_text(f"http://{auth['user']}:{auth['password']}@{auth['url'].split('//', 1)[1]}\n")
    offset = log_size(auth["log"])
    done = install(dev, dps, "--package-source", source, "--proxy", f"@{url_file}", "--no-proxy", PKG_HOST)
    assert done.rc == 0, f"{done.message} | {done.recommendation}"
    assert rpm_q(dev, "aziot-edge", "aziot-identity-service") == [
        "aziot-edge-1.6.0-1.el9.x86_64", "aziot-identity-service-1.6.0-1.el9.x86_64"]
    conf = dev.exec(["cat", "/etc/dnf/dnf.conf"], check=True).stdout
    assert f"proxy=http://{auth['url'].split('//', 1)[1].rstrip('/')}" in conf and "proxy_username=" in conf, conf
    listed = dev.exec(["cat", REPO_FILE], check=True).stdout.splitlines()
    assert listed[2:4] == [dnf_direct.DIRECT, "proxy="] and f"baseurl={source.split()[0]}" in listed, listed
    seen = log_since(auth["log"], offset)
    assert dps.section["device_endpoint"].split("//", 1)[1] in seen, seen[-2000:]     # the proxy was used
    assert PKG_HOST not in seen and hostport not in seen, seen[-2000:]
    # The mirror's base URL with its address listed too: packages-microsoft-prod.rpm downloaded directly
    # (dnf --setopt=proxy=) and its .repo file given the empty proxy= of ours (its mode kept).
    offset = log_size(auth["log"])
    mirror = install(dev, dps, "--package-source", repo["base_url"], "--proxy", f"@{url_file}",
                     "--no-proxy", f"{PKG_HOST},{host}")
    assert mirror.rc == 0, f"{mirror.message} | {mirror.recommendation}"
    detail = next(s["detail"] for s in mirror.out["steps"] if s["name"] == "package-source")
    assert "(dnf install, directly)" in detail and MS_REPO in detail, detail
    ms = dev.exec(["cat", MS_REPO], check=True).stdout.splitlines()
    assert ms[ms.index("[packages-microsoft-com-prod]") + 1:][:2] == [dnf_direct.DIRECT, "proxy="], ms
    assert stat(dev, MS_REPO) == ["644", "root", "root"]
    assert hostport not in log_since(auth["log"], offset)
    undone = install(dev, dps, "--package-source", repo["base_url"], "--proxy", "none")
    assert undone.rc == 0, f"{undone.message} | {undone.recommendation}"
    assert statuses(undone)["package-source"] == "changed", statuses(undone)
    assert dnf_direct.DIRECT not in dev.exec(["cat", MS_REPO], check=True).stdout
    assert "proxy=" not in dev.exec(["cat", "/etc/dnf/dnf.conf"], check=True).stdout


def test_upgrade_from_1_5_10_keeps_the_identity_and_refuses_a_downgrade(new_device, rig, repo, dps, tmp_path):
    """A rhel9 device provisioned with --edge-version 1.5.10 (the out-of-support warning) is upgraded to
    1.6.0 with dnf: agent :1.6, the same device_info (no new registration); a second run changes nothing;
    going back to 1.5.10 is refused without --allow-downgrade, nothing changed, and done with it."""
    dev = new_device("rhel9")
    trust_dps(dev, dps)
    first = provision(rig, dps, repo, [dev], tmp_path / "pinned.csv", "--edge-version", "1.5.10")[0]
    assert first["status"] == "assigned", json.dumps(first)[:3000]
    assert rpm_q(dev, "aziot-edge") == ["aziot-edge-1.5.10-1.el9.x86_64"]
    first_identity = rpm_q(dev, "aziot-identity-service")[0]
    assert any("IoT Edge 1.5 LTS was serviced until" in w for w in first["warnings"]), first["warnings"]
    info = dev.exec(["cat", "/var/lib/aziot/identityd/device_info"], check=True).stdout
    args = ["edge-tpm", "upgrade", *host_args(dev)]
    done = az(*args)
    assert done.rc == 0, f"{done.message} | {done.recommendation}"
    row = done.out[0] if isinstance(done.out, list) else done.out
    assert row["status"] == "upgraded" and row["installed"]["aziot-edge"] == "1.6.0-1.el9", row
    assert rpm_q(dev, "aziot-edge", "aziot-identity-service") == [
        "aziot-edge-1.6.0-1.el9.x86_64", "aziot-identity-service-1.6.0-1.el9.x86_64"]
    config = tomllib.loads(dev.exec(["cat", "/etc/aziot/config.toml"], check=True).stdout)
    assert config["agent"]["config"]["image"] == AGENT + "1.6"
    assert dev.exec(["cat", "/var/lib/aziot/identityd/device_info"], check=True).stdout == info
    again = az(*args)
    again_row = again.out[0] if isinstance(again.out, list) else again.out
    assert again.rc == 0 and again_row["changes"] == [], again_row
    back = az(*args, "--edge-version", "1.5.10")
    assert back.rc != 0 and "older than the version installed" in back.message, back.message
    assert "--allow-downgrade" in back.recommendation
    assert rpm_q(dev, "aziot-edge") == ["aziot-edge-1.6.0-1.el9.x86_64"]
    # on purpose: dnf installs the older NEVRAs (a downgrade, as the rollback does), the identity service's too
    down = az(*args, "--edge-version", "1.5.10", "--allow-downgrade")
    assert down.rc == 0, f"{down.message} | {down.recommendation}"
    assert rpm_q(dev, "aziot-edge", "aziot-identity-service") == [
        "aziot-edge-1.5.10-1.el9.x86_64", first_identity]
