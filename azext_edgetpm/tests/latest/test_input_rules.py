"""Local rules for values before they reach DPS or a device (issue 8, defects 1, 6, 8 and 9):
registration and device IDs, the EK's symmetric algorithm, apt lines, echoed values."""
import os
import struct

import pytest
from azure.cli.core.azclierror import InvalidArgumentValueError

from azext_edgetpm.dps.client import _quote
from azext_edgetpm.dps.enrollment import normalize_registration_id, validate_device_id
from azext_edgetpm.echo import shown
from azext_edgetpm.edge.apt import check_apt_line
from azext_edgetpm.tpm import ek as ekmod


@pytest.mark.parametrize("rid", [".", "..", "...", "dev.", "dev_", "dev:", "a" * 129, "dev 1", "dév", "dev/1", ""])
def test_registration_ids_dps_refuses_are_refused_locally(rid):
    from azext_edgetpm.errors import UserInputError
    with pytest.raises(UserInputError):
        normalize_registration_id(rid)


@pytest.mark.parametrize("rid", ["a", "dev-1", "dev.1-", "edge:01_a.b", "A" * 128, "0" * 64])
def test_registration_ids_dps_takes(rid):
    assert normalize_registration_id(rid) == rid.lower()


def test_path_segments_are_encoded():
    assert _quote(".") == "%2E" and _quote("..") == "%2E%2E"  # never resolved away as a dot segment
    assert _quote("a/b?c#d") == "a%2Fb%3Fc%23d" and _quote("a.b") == "a.b"


@pytest.mark.parametrize("device_id", ["a b", "a/b", "a;b", "a#b", "a+b", "a&b", "a|b", "a`b", 'a"b', "a\nb",
                                       "a\x00b", "dé", "x" * 129, "", "<script>"])
def test_device_ids_iot_hub_refuses_are_refused_locally(device_id):
    from azext_edgetpm.errors import UserInputError
    with pytest.raises(UserInputError) as err:
        validate_device_id(device_id)
    assert len(str(err.value)) < 300


@pytest.mark.parametrize("device_id", ["edge-gw-1", "Plant.A_1", "a%b*c?d!e(f)g,h:i=j@k$l'm", "X" * 128])
def test_device_ids_iot_hub_takes(device_id):
    assert validate_device_id(device_id) == device_id


def _rsa_ek(symmetric: bytes) -> bytes:
    """A structurally valid RSA-2048 EK public area with the given symmetric definition."""
    policy = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
    area = struct.pack(">HHI", 0x0001, 0x000B, 0x000300B2) + struct.pack(">H", len(policy)) + policy
    area += symmetric + struct.pack(">HHI", 0x0010, 2048, 0) + struct.pack(">H", 256) + os.urandom(256)
    return struct.pack(">H", len(area)) + area


AES_128_CFB = struct.pack(">HHH", 0x0006, 128, 0x0043)


@pytest.mark.parametrize("symmetric,named", [
    (struct.pack(">HHH", 0x0026, 128, 0x0043), "SM4-128-CFB"),        # SM4
    (struct.pack(">HHH", 0x0025, 128, 0x0043), "Camellia-128-CFB"),   # Camellia
    (struct.pack(">HHH", 0x0006, 256, 0x0043), "AES-256-CFB"),
    (struct.pack(">HHH", 0x0006, 128, 0x0044), "AES-128 in mode 0x0044"),  # CBC
])
def test_ek_symmetric_algorithm_dps_refuses(symmetric, named):
    from azext_edgetpm.errors import UserInputError
    blob = _rsa_ek(symmetric)
    # both ways the EK is checked: with tpm2-pytss (Linux) and structurally (where the TSS
    # libraries do not exist, e.g. Windows; called directly here)
    checks = [ekmod._parse_structure] + ([ekmod._parse_with_tss] if ekmod.tss_available() else [])
    for check in checks:
        with pytest.raises(UserInputError) as err:
            check(blob)
        assert named in str(err.value) and "AES-128-CFB" in str(err.value), (check.__name__, str(err.value))


def test_ek_with_aes_128_cfb_is_accepted_both_ways():
    blob = _rsa_ek(AES_128_CFB)
    assert ekmod._parse_structure(blob).key_type == "RSA-2048"
    assert ekmod.parse_endorsement_key(blob).key_type == "RSA-2048"


@pytest.mark.parametrize("line,why", [
    ("deb [trusted=yes http://10.0.0.1/ ./", "not closed"),
    ("deb [trusted=yes]] http://10.0.0.1/ ./", "not balanced"),
    ("deb [[trusted=yes] http://10.0.0.1/ ./", "more than one ["),
    ("deb http://10.0.0.1/ ./ main", "takes no components"),
    ("deb http://10.0.0.1/debian bookworm", "at least one component"),
    ("deb htp://10.0.0.1/ ./", "not a URI apt can fetch from"),
    ("deb 10.0.0.1/debian ./", "not a URI apt can fetch from"),
    ("deb [trusted] http://10.0.0.1/ ./", "not key=value"),
    ("deb http://10.0.0.1/", "needs a URI and a suite"),
])
def test_malformed_apt_lines_are_refused(line, why):
    from azext_edgetpm.errors import UserInputError
    with pytest.raises(UserInputError) as err:
        check_apt_line(line)
    assert why in str(err.value)


@pytest.mark.parametrize("line", [
    "deb [trusted=yes] http://10.213.0.1:8080/ ./",
    "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/microsoft-prod.gpg] "
    "https://packages.microsoft.com/ubuntu/22.04/prod jammy main",
    "deb-src http://deb.debian.org/debian bookworm main contrib",
    "deb file:/srv/mirror ./",
])
def test_valid_apt_lines_pass(line):
    check_apt_line(line)


def test_echoed_values_are_cut_short_and_made_visible():
    assert shown("short") == "'short'"
    long = shown("x" * 100_000)
    assert len(long) < 100 and "100,000 characters" in long
    assert shown("swtpm\x00:port=1") == "'swtpm\\x00:port=1'"


# -- through az: one clear error before anything connects (port 1 of this machine: nothing answers)
HOST = ["--host", "root@127.0.0.1:1", "--ssh-timeout", "2"]
HUGE = "x" * 100_000


@pytest.mark.parametrize("args,option", [
    (["edge-tpm", "ek", "show", *HOST, "--tcti", "swtpm:" + HUGE], "--tcti"),
    (["edge-tpm", "install", *HOST, "--id-scope", "0ne00000001", "--package-source", "https://m/" + HUGE],
     "--package-source"),
    (["edge-tpm", "install", *HOST, "--id-scope", "0ne00000001", "--package-source",
      "deb [trusted=yes] http://m/ ./ " + HUGE], "--package-source"),
    (["edge-tpm", "install", *HOST, "--id-scope", "0ne00000001", "--registration-id", HUGE], "--registration-id"),
    (["edge-tpm", "install", *HOST, "--id-scope", "0ne00000001", "--edge-version", "1" + HUGE], "--edge-version"),
    (["edge-tpm", "install", *HOST, "--id-scope", "0" + HUGE], "--id-scope"),
    (["edge-tpm", "status", "--host", "root@" + HUGE], "--host"),
    (["edge-tpm", "enrollment", "create", "--login", "HostName=x", "--endorsement-key", "AAAA", "--device-id", HUGE],
     "--device-id"),
])
def test_long_values_are_one_short_error(args, option):
    from azext_edgetpm.tests.latest.azcli import az
    result = az(*args)
    assert result.rc != 0 and type(result.error).__name__ == "InvalidArgumentValueError", result.message[:300]
    assert option in result.message and "characters" in result.message
    assert len(result.message) + len(result.stderr) < 2000, "the value is not echoed whole"


def test_nul_in_tcti_says_what_is_wrong():
    from azext_edgetpm.tests.latest.azcli import az
    for command in (["edge-tpm", "ek", "show"], ["edge-tpm", "install", "--id-scope", "0ne00000001"]):
        result = az(*command, *HOST, "--tcti", "swtpm:host=127.0.0.1\x00,port=2321")
        assert result.rc != 0 and type(result.error).__name__ == "InvalidArgumentValueError", result.message
        assert "--tcti contains a NUL character (at position 21)" in result.message
        assert "network" not in (result.message + result.recommendation).lower()


def test_inventory_rows_echo_values_cut_short(tmp_path):
    from azext_edgetpm.errors import UserInputError
    from azext_edgetpm.fleet.inventory import read_inventory
    inventory = tmp_path / "devices.csv"
    inventory.write_text("host,port\n" + f"root@10.0.0.1,{HUGE}\n")
    with pytest.raises(UserInputError) as err:
        read_inventory(str(inventory))
    assert "(100,000 characters)" in str(err.value) and len(str(err.value)) < 1000, str(err.value)[:300]


def test_inventory_values_are_bounded_like_the_options(tmp_path):
    from azext_edgetpm.errors import UserInputError
    from azext_edgetpm.fleet.inventory import read_inventory
    inventory = tmp_path / "devices.csv"
    inventory.write_text("host,tcti,edge_version\n" + f"root@10.0.0.1,swtpm:{HUGE},1.5.{'1' * 100}\n")
    with pytest.raises(UserInputError) as err:
        read_inventory(str(inventory))
    assert "tcti is 100,006 characters long; at most 256" in str(err.value), str(err.value)[:300]
    assert "edge_version is 104 characters long; at most 64" in str(err.value)
