"""deprovision, reprovision and rekey: help with examples, and the arguments refused before anything
remote starts (no device, no DPS needed)."""
import pytest

from azext_edgetpm.tests.latest.azcli import az

COMMANDS = ("deprovision", "reprovision", "rekey")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(command):
    result = az("edge-tpm", command, "-h", output=None)
    assert result.rc == 0, result.stderr[-2000:]


@pytest.mark.parametrize("args, flag", [
    (["deprovision", "--host", "edge-01", "--keep-device", "--uninstall"], "--uninstall"),
    (["deprovision", "--host", "edge-01", "--keep-device", "--require-device"], "--require-device"),
    (["deprovision", "--host", "edge-01", "--inventory", "fleet.csv"], "--inventory"),
    (["rekey", "--host", "edge-01", "--shard", "1/2"], "--shard"),
    (["reprovision", "--inventory", "fleet.csv", "--registration-id", "edge-01"], "--registration-id"),
    (["reprovision", "--host", "edge-01", "--iot-hubs", "a.azure-devices.net", "b.azure-devices.net",
      "--allocation-policy", "static"], "static"),
    (["reprovision", "--host", "edge-01", "--timeout", "0"], "--timeout"),
    (["rekey", "--inventory", "fleet.csv", "--retry-failed"], "--state"),
    (["deprovision", "--host", "edge-01", "--registration-id", "not valid!"], "registration ID"),
    (["deprovision"], "--host"),
])
def test_refused_before_anything_starts(args, flag):
    result = az("edge-tpm", *args, "--dps-name", "my-dps")
    assert result.rc != 0
    assert flag in result.message + " " + result.recommendation, result.message


def test_a_dps_is_needed():
    result = az("edge-tpm", "deprovision", "--host", "edge-01", "--yes")
    assert result.rc != 0 and "No DPS given" in result.message
