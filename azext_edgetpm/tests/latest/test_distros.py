"""Devices on real Debian userlands other than the host's (devkit/userland.py builds them with
debootstrap, once per machine, cached): a Debian 11 device, whose tpm2-tools 5.0, Python 3.9,
OpenSSH 8.4 and apt are the real ones of that release, is refused without a pin (IoT Edge 1.6
removed Debian 11), then read, enrolled, installed with 1.5.10 and assigned;
a Debian 13 device, outside IoT Edge's published platform list, is refused before anything on it
changes.

The first run on a machine builds both userlands in parallel, starting when the session starts
(the ``userlands`` marker; about 2 minutes on 2 busy cores, see devkit/README.md); later runs
reuse them.
"""
import base64
import json
import os
import subprocess

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import ok
from azext_edgetpm.tests.latest.test_edge_install import (  # noqa: F401  (dps: a module fixture)
    DEVICE_CA, changed_since_mark, dps, host_args, install, mark, statuses)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
# The first test's set-up may wait for a cold build of both userlands (minutes on a loaded machine).
pytestmark = [pytest.mark.devkit, pytest.mark.userlands("bullseye", "trixie"), pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def distro_devices(rig):
    """Two Debian 11 devices (one with a manufactured TPM) and one Debian 13 device in the session
    rig (both userlands built in parallel on first use), removed after the module."""
    devices = dict(zip(("bullseye", "bullseye+mfg", "trixie"),
                       rig.add_devices(["bullseye", "bullseye+mfg", "trixie"], timeout=120)))
    yield devices
    for dev in devices.values():
        rig.remove_device(dev)


def trust_dps(dev, dps):
    with open(dps.section["ca_bundle"], encoding="ascii") as handle:
        dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=handle.read(), check=True)


def version_of(dev, package):
    return dev.exec(["dpkg-query", "-W", "-f=${Version}", package], check=True).stdout


def host_tools_read_public(dev, handle, tmp_path):
    """The public area at ``handle`` as the host's own tpm2-tools (5.4) read it from the device's
    TPM (in the device's network namespace, where its swtpm listens)."""
    out = tmp_path / f"{dev.name}-{handle}.pub"
    subprocess.run(["ip", "netns", "exec", dev.netns, "tpm2_readpublic", "-Q", "-c", handle, "-o", str(out)],
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TPM2TOOLS_TCTI": dev.tcti}, check=True)
    return out.read_bytes()


def persistent_handles(dev):
    return dev.exec(["tpm2_getcap", "handles-persistent"], env=dev.tpm_env, check=True).stdout.split()


def test_debian_11_device_ek_enrollment_install_assigned(distro_devices, repo, dps, tmp_path):
    dev = distro_devices["bullseye"]
    # The device really is Debian 11, with that release's own tools.
    assert dev.exec(["cat", "/etc/debian_version"], check=True).stdout.startswith("11.")
    assert version_of(dev, "tpm2-tools").startswith("5.0")
    assert dev.exec(["python3", "--version"], check=True).stdout.startswith("Python 3.9")
    assert version_of(dev, "openssh-server").startswith("1:8.4")
    trust_dps(dev, dps)

    # ek show through sudo: tpm2-tools 5.0 creates and reads the EK and SRK.
    ek = ok("edge-tpm", "ek", "show", *host_args(dev), "--tcti", dev.tcti).out
    assert ek["createdKeys"] == ["ek", "srk"] and ek["keyType"] == "RSA-2048"
    assert ek["tpm"]["manufacturer"] == "IBM" and ek["tpm"]["specVersion"] == "2.0"
    again = ok("edge-tpm", "ek", "show", *host_args(dev), "--tcti", dev.tcti, "--no-create").out
    assert again["registrationId"] == ek["registrationId"] and not again["created"]
    # What tpm2-tools 5.0 created and printed is what 5.4 reads from the same TPM: the EK (TCG template
    # L-1) and the SRK (noDA storage template) are the same keys, the properties the same text.
    assert host_tools_read_public(dev, "0x81010001", tmp_path) == base64.b64decode(ek["endorsementKey"])
    assert len(host_tools_read_public(dev, "0x81000001", tmp_path)) == 284

    enrollment = ok("edge-tpm", "enrollment", "create", *host_args(dev, "root"), "--tcti", dev.tcti, *dps.login).out
    assert enrollment["registrationId"] == ek["registrationId"]

    # Without a pin: IoT Edge 1.6 (the newest LTS line) has no Debian 11 packages, and 1.5 is out of
    # support: refused before anything changes, with both ways out.
    mark(dev)
    refused = install(dev, dps, "--package-source", repo["base_url"])
    assert refused.rc != 0 and "1.6" in refused.message and "Debian 11" in refused.message, refused.message
    assert "Upgrade the device's OS" in refused.recommendation and "--edge-version" in refused.recommendation
    assert changed_since_mark(dev) == []
    # install pinned to 1.5.10: Microsoft's layout for Debian 11 (config/debian/11/packages-microsoft-prod.deb,
    # whose apt line names the debian/11/prod pool), the runtime on Debian 11's Python 3.9 registering
    # through tpm2-tools 5.0; the result warns that 1.5 is out of support.
    first = install(dev, dps, "--package-source", repo["base_url"], "--edge-version", "1.5.10")
    assert first.rc == 0, f"{first.message} | {first.recommendation}"
    assert any("serviced until 2026-11-10" in w for w in first.out["warnings"]), first.out["warnings"]
    assert version_of(dev, "aziot-edge") == "1.5.10-1"
    assert statuses(first)["os"] == "ok" and statuses(first)["runtime"] == "changed"
    assert first.out["runtime"]["provisioning"]["state"] == "assigned", first.out["runtime"]
    listed = dev.exec(["cat", "/etc/apt/sources.list.d/microsoft-prod.list"], check=True).stdout
    assert "/debian/11/prod/" in listed
    assert version_of(dev, "packages-microsoft-prod") == "1.1-debian11"
    state = ok("edge-tpm", "registration", "show", "--registration-id", ek["registrationId"], *dps.login).out
    assert state["status"] == "assigned" and state["assignedHub"] in dps.section["iot_hubs"]
    # The identity service ran on the device's own Python 3.9 and its tpm2-tools.
    journal = dev.exec(["cat", "/var/log/aziot/standin-journal.jsonl"], check=True).stdout
    assert "Successfully provisioned with DPS." in journal  # (the identity service's real line)

    second = install(dev, dps, "--package-source", repo["base_url"], "--edge-version", "1.5.10")
    assert second.rc == 0 and not second.out["changed"], second.out["summary"]


def test_debian_11_manufactured_tpm_provision_assigned(distro_devices, repo, dps):
    """`provision` (identify, enroll, install, wait, status) on a Debian 11 device whose TPM has a
    manufacturer EK certificate, read by tpm2-tools 5.0's tpm2_nvread."""
    dev = distro_devices["bullseye+mfg"]
    trust_dps(dev, dps)
    result = ok("edge-tpm", "provision", *host_args(dev, "root"), "--tcti", dev.tcti, *dps.login,
                "--id-scope", dps.section["id_scope"], "--global-endpoint", dps.section["device_endpoint"],
                "--package-source", repo["base_url"], "--edge-version", "1.5.10").out
    row = result[0] if isinstance(result, list) else result
    assert row["status"] == "assigned", json.dumps(row)[:2000]
    assert row["edgeVersion"] == "1.5.10" and any("serviced until 2026-11-10" in w for w in row["warnings"])
    assert row["assignedHub"] in dps.section["iot_hubs"]
    ek = ok("edge-tpm", "ek", "show", *host_args(dev), "--tcti", dev.tcti, "--no-create").out
    assert ek["ekCertificate"]["matchesEndorsementKey"] and ek["ekCertificate"]["nvIndex"] == "0x01C00002"
    assert ek["registrationId"] == row["registrationId"]


def test_debian_13_device_refused_before_anything_changes(distro_devices, repo, dps):
    dev = distro_devices["trixie"]
    assert dev.exec(["cat", "/etc/debian_version"], check=True).stdout.startswith("13.")
    assert persistent_handles(dev) == []
    mark(dev)
    refused = install(dev, dps, "--package-source", repo["base_url"])
    assert refused.rc != 0
    assert "Debian GNU/Linux 13" in refused.message and "Nothing was changed" in refused.message
    assert "Debian 12" in refused.recommendation and "Ubuntu 24.04" in refused.recommendation
    assert "Traceback" not in refused.stderr
    assert changed_since_mark(dev) == []
    assert persistent_handles(dev) == []  # not even an EK was created in its TPM
    dry = az("edge-tpm", "install", *host_args(dev), "--tcti", dev.tcti, "--id-scope", dps.section["id_scope"],
             "--dry-run")
    assert dry.rc != 0 and "Debian GNU/Linux 13" in dry.message
    # provision refuses it too, before its TPM gets keys or DPS an enrollment.
    before = ok("edge-tpm", "enrollment", "list", *dps.login).out
    refused = az("edge-tpm", "provision", *host_args(dev, "root"), "--tcti", dev.tcti, *dps.login,
                 "--id-scope", dps.section["id_scope"], "--global-endpoint", dps.section["device_endpoint"],
                 "--package-source", repo["base_url"])
    assert refused.rc != 0 and "Debian GNU/Linux 13" in refused.message, refused.message
    assert "Traceback" not in refused.stderr
    assert persistent_handles(dev) == [] and changed_since_mark(dev) == []
    assert ok("edge-tpm", "enrollment", "list", *dps.login).out == before


def test_standin_registration_through_tpm2_tools_5_4_and_5_7(distro_devices, new_device, dps):
    """The stand-in identity service's TPM path without tpm2-pytss (devkit/tpmtools.py), proven on
    Debian 11 by the install above, also works with tpm2-tools 5.4 (the host's userland, its
    /usr/bin/python3 has no tpm2-pytss) and 5.7 (Debian 13, Python 3.13): same files, same options."""
    for dev in (new_device("fresh"), distro_devices["trixie"]):
        ek = ok("edge-tpm", "enrollment", "create", *host_args(dev, "root"), "--tcti", dev.tcti, *dps.login).out
        with open(dps.section["ca_bundle"], encoding="ascii") as f:
            dev.exec("cat > /root/dps-ca.pem", input=f.read(), check=True)
        code = ("import json, sys\nsys.path.insert(0, sys.argv[1])\nfrom devkit import tpmclient\n"
                "assert tpmclient.ESAPI is None, 'tpm2-pytss present: not the tpm2-tools path'\n"
                "print(json.dumps(tpmclient.register(*sys.argv[2:6], ca_bundle='/root/dps-ca.pem', timeout=90)))\n")
        proc = dev.exec(["/usr/bin/python3", "-I", "-c", code, REPO, dev.tcti, dps.section["device_endpoint"],
                         dps.section["id_scope"], ek["registrationId"]], timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        state = json.loads(proc.stdout.strip().splitlines()[-1])
        assert state["status"] == "assigned" and state["assignedHub"] in dps.section["iot_hubs"], state
