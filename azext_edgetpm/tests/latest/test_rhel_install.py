"""Red Hat Enterprise Linux through dnf and rpm, on the dev kit's rhel9 device (the real dnf 4 and
rpm 4, RHEL's os-release, no apt-get or dpkg: a path that still called them would fail for real),
with the stand-in RPMs served from the kit's dnf repository:

- `provision` ends assigned, with aziot-edge 1.6.0 (`rpm -q` inside the device) and the agent
  image :1.6, packages-microsoft-prod.rpm taken from the mirror's config/rhel/9/ path;
- a second `install` changes nothing; `status` reads the runtime;
- `deprovision --uninstall` removes aziot-edge and aziot-identity-service with dnf (rpm -q: not
  installed) and leaves the container engine.

One rhel9 device for the module (device time is the suite's budget); the tests use it in order.
"""
import json
import tomllib

import pytest

from azext_edgetpm.tests.latest.test_dps_support import ok
from azext_edgetpm.tests.latest.test_edge_install import (  # noqa: F401,F811  (dps: a module fixture)
    dps, host_args, install, statuses)
from azext_edgetpm.tests.latest.test_lts import AGENT, provision

pytestmark = [pytest.mark.devkit, pytest.mark.timeout(1500)]

RHEL_CA = "/etc/pki/ca-trust/source/anchors/devkit-dps-ca.crt"


def rpm_q(dev, *names):
    return dev.exec(["rpm", "-q", *names]).stdout.split("\n")[:len(names)]


@pytest.fixture(scope="module")
def rhel(rig, repo, dps, tmp_path_factory):
    """One rhel9 device, trusting the DPS emulator the RHEL way, provisioned once."""
    if "rhel9" not in (repo.get("sources") or {}):
        pytest.skip("the dev kit's package repository of this checkout has no dnf repository (devkit/packages)")
    dev = rig.add_device("rhel9")
    try:
        with open(dps.section["ca_bundle"], encoding="ascii") as handle:
            dev.exec(f"cat > {RHEL_CA} && update-ca-trust extract", input=handle.read(), check=True, timeout=300)
        results = provision(rig, dps, repo, [dev], tmp_path_factory.mktemp("rhel") / "rhel.csv")
        yield {"device": dev, "result": results[0]}
    finally:
        rig.remove_device(dev)


def test_provision_installs_with_dnf_and_ends_assigned(rhel):
    dev, result = rhel["device"], rhel["result"]
    assert result["status"] == "assigned", json.dumps(result)[:3000]
    assert dev.exec(["sh", "-c", "command -v apt-get dpkg"]).stdout == ""   # (nothing of apt's to fall back on)
    assert rpm_q(dev, "aziot-edge", "aziot-identity-service", "moby-engine", "moby-cli") == [
        "aziot-edge-1.6.0-1.el9.x86_64", "aziot-identity-service-1.6.0-1.el9.x86_64",
        "moby-engine-25.0.5-1.el9.x86_64", "moby-cli-25.0.5-1.el9.x86_64"]
    assert rpm_q(dev, "packages-microsoft-prod")[0].startswith("packages-microsoft-prod-")
    config = tomllib.loads(dev.exec(["cat", "/etc/aziot/config.toml"], check=True).stdout)
    assert config["agent"]["config"]["image"] == AGENT + "1.6"
    assert result["warnings"] == []


def test_second_install_changes_nothing_and_status_reads_the_runtime(rhel, repo, dps):
    dev = rhel["device"]
    again = install(dev, dps, "--package-source", repo["base_url"])
    assert again.rc == 0, f"{again.message} | {again.recommendation}"
    assert again.out["changed"] is False, statuses(again)
    assert set(statuses(again).values()) <= {"ok", "skipped"}, statuses(again)
    assert again.out["platform"]["id"] == "rhel" and again.out["platform"]["version"] == "9"
    status = ok("edge-tpm", "status", *host_args(dev)).out
    assert status["healthy"] is True and status["provisioning"]["state"] == "assigned", status
    assert status["runtime"]["packages"]["aziot-edge"] == "1.6.0-1.el9"


def test_deprovision_uninstall_removes_the_packages_with_dnf(rhel, dps):
    dev = rhel["device"]
    done = ok("edge-tpm", "deprovision", *host_args(dev), *dps.login, "--uninstall", "--yes").out
    assert done["device"] == "uninstalled", done
    assert rpm_q(dev, "aziot-edge", "aziot-identity-service") == [
        "package aziot-edge is not installed", "package aziot-identity-service is not installed"]
    assert rpm_q(dev, "moby-engine") == ["moby-engine-25.0.5-1.el9.x86_64"]     # the engine is left
