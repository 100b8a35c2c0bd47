"""An arm64 device: a real Debian 12 userland for arm64 (debootstrap --arch=arm64, cached per
machine), every program of which (sshd, sudo, apt, dpkg, tpm2-tools, python3) runs under
qemu-user through the kernel's binfmt_misc (devkit/binfmt.py). The kit's repository serves the
stand-in aziot-edge, aziot-identity-service and moby-engine built for amd64, arm64 and armhf, as
Microsoft's does, so the package selection is proven end to end: the product reads the device's
architecture, apt on the device takes the arm64 builds from the same pool that amd64 devices use,
and the runtime registers with DPS through the arm64 tpm2-tools.

The userland's build starts when the session starts (the ``userlands`` marker; about four
minutes on 2 cores, most of it dpkg configuring the packages under emulation); this module is
named to run late, after the fleet tests, so the build overlaps them instead of being waited for.
Where the kernel cannot run arm64 programs (no binfmt_misc), the module is skipped and says why.
"""
import json

import pytest

from devkit.packages.builder import MOBY_VERSION

from azext_edgetpm.edge import apt
from azext_edgetpm.tests.latest.test_dps_support import ok
from azext_edgetpm.tests.latest.test_edge_install import (  # noqa: F401  (dps: a module fixture)
    DEVICE_CA, dps, host_args)

pytestmark = [pytest.mark.devkit, pytest.mark.userlands("bookworm-arm64"), pytest.mark.timeout(1500)]

AGENT = "mcr.microsoft.com/azureiotedge-agent:"
EM_AARCH64 = "b7 00"  # e_machine of an ELF for arm64, little-endian


@pytest.fixture(scope="module")
def arm64_device(rig):
    from devkit import binfmt
    reason = binfmt.unavailable("arm64")
    if reason:
        pytest.skip("arm64 devices cannot run on this machine: " + reason)
    dev = rig.add_devices(["arm64"], timeout=300)[0]
    yield dev
    rig.remove_device(dev)


def packages(dev, *names):
    out = dev.exec(["dpkg-query", "-W", "-f=${Package} ${Architecture} ${Version}\\n", *names], check=True).stdout
    return {line.split()[0]: tuple(line.split()[1:]) for line in out.splitlines()}


def test_arm64_device_provisioned_with_the_arm64_builds(arm64_device, repo, dps):
    dev = arm64_device
    # The device really runs arm64 code: its dpkg, its kernel view (qemu-user) and its sshd's ELF header.
    assert dev.exec(["dpkg", "--print-architecture"], check=True).stdout.strip() == "arm64"
    assert dev.exec(["uname", "-m"], check=True).stdout.strip() == "aarch64"
    assert dev.exec("od -An -tx1 -j18 -N2 /usr/sbin/sshd", check=True).stdout.split() == EM_AARCH64.split()
    assert dev.exec(["cat", "/etc/debian_version"], check=True).stdout.startswith("12.")
    with open(dps.section["ca_bundle"], encoding="ascii") as handle:
        dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=handle.read(), check=True)

    result = ok("edge-tpm", "provision", *host_args(dev, "root"), "--tcti", dev.tcti, *dps.login,
                "--id-scope", dps.section["id_scope"], "--global-endpoint", dps.section["device_endpoint"],
                "--package-source", repo["base_url"]).out
    row = result[0] if isinstance(result, list) else result
    assert row["status"] == "assigned", json.dumps(row)[:3000]
    assert row["assignedHub"] in dps.section["iot_hubs"]

    # apt took the arm64 builds out of a pool that holds amd64, arm64 and armhf ones of each.
    assert packages(dev, "aziot-edge", "aziot-identity-service", "moby-engine") == {
        "aziot-edge": ("arm64", "1.6.0-1"), "aziot-identity-service": ("arm64", "1.6.0-1"),
        "moby-engine": ("arm64", MOBY_VERSION)}
    config = dev.exec(["cat", "/etc/aziot/config.toml"], check=True).stdout
    assert f'image = "{AGENT}1.6"' in config
    # The runtime registered through the device's own (arm64) tpm2-tools and Python.
    journal = dev.exec(["cat", "/var/log/aziot/standin-journal.jsonl"], check=True).stdout
    assert "Successfully provisioned with DPS." in journal
    state = ok("edge-tpm", "registration", "show", "--registration-id", row["registrationId"], *dps.login).out
    assert state["status"] == "assigned"

    # status reads the same: arm64, 1.6.0, assigned.
    status = ok("edge-tpm", "status", *host_args(dev)).out
    assert status["architecture"] == "arm64" and status["healthy"], json.dumps(status)[:2000]
    assert status["runtime"]["packages"]["aziot-edge"] == "1.6.0-1"


def test_offline_sets_of_the_kit_give_each_architecture_its_own_builds(repo):
    """The kit's offline set (every architecture's builds in one directory, as a user who downloaded
    Microsoft's packages for a mixed fleet would have it): --offline-packages takes the device's."""
    directory = repo["debs_dirs"]["1.6.0-1"]
    for arch in ("arm64", "armhf", "amd64"):
        chosen = {(d.package, d.architecture) for d in apt.read_offline_dir(directory, arch)}
        assert {("aziot-edge", arch), ("aziot-identity-service", arch), ("moby-engine", arch)} <= chosen, chosen
        assert {a for _p, a in chosen} <= {arch, "all"}, chosen
