"""`az edge-tpm install` and `status` as az parses them: help for every parameter, and values
refused before anything connects (each with a recommendation, never a traceback)."""
import pytest

from azext_edgetpm.tests.latest.azcli import az

HOST = ["--host", "root@127.0.0.1:1"]


@pytest.mark.parametrize("command", [["install"], ["status"]])
def test_help(command, capsys):
    result = az("edge-tpm", *command, "-h", output=None)
    text = capsys.readouterr().out  # (az prints help on stdout itself)
    assert result.rc == 0
    assert "Examples" in text
    # Every parameter has a help text (az prints an empty description otherwise).
    lines = [line for line in text.splitlines() if line.startswith("    --")]
    assert lines and all(":" in line and line.split(":", 1)[1].strip() for line in lines), lines


@pytest.mark.parametrize("args, words", [
    ([], "No DPS given"),
    (["--id-scope", "0ne00ABCDEF", "--login",
      "HostName=x.azure-devices-provisioning.net;SharedAccessKeyName=a;SharedAccessKey=a2V5"],
     "install does not take --login"),
    (["--id-scope", "0ne00ABCDEF", "--dps-name", "dps"], "cannot be used together"),
    (["--id-scope", "0ne 00"], "is not a DPS ID scope"),
    (["--id-scope", "0ne00ABCDEF", "--global-endpoint", "global.azure-devices-provisioning.net"],
     "is not an https:// URL"),
    (["--id-scope", "0ne00ABCDEF", "--package-source", "mirror.example.com"], "neither an apt line nor a URL"),
    (["--id-scope", "0ne00ABCDEF", "--package-source", "deb http://m/ ./\ndeb http://evil/ ./"], "one line"),
    (["--id-scope", "0ne00ABCDEF", "--package-source", "http://m/", "--offline-packages", "."],
     "cannot be used together"),
    (["--id-scope", "0ne00ABCDEF", "--offline-packages", "/nonexistent"], "is not a directory"),
    (["--id-scope", "0ne00ABCDEF", "--edge-version", "latest; reboot"], "is not a package version"),
    (["--id-scope", "0ne00ABCDEF", "--log-driver", "local; rm -rf /"], "is not a log driver name"),
    (["--id-scope", "0ne00ABCDEF", "--registration-id", "Not Valid!"], "not a valid DPS registration ID"),
    (["--id-scope", "0ne00ABCDEF", "--payload", "/nonexistent.json"], "is not a file"),
    (["--id-scope", "0ne00ABCDEF", "-g", "rg"], "only goes with --dps-name"),
])
def test_refused_before_connecting(args, words):
    result = az("edge-tpm", "install", *HOST, *args)
    assert result.rc != 0 and words in result.message + " " + result.recommendation, result.stderr[-500:]
    assert result.recommendation
    assert "Traceback" not in result.stderr


def test_payload_must_be_json(tmp_path):
    bad = tmp_path / "payload.json"
    bad.write_text("{not json")
    result = az("edge-tpm", "install", *HOST, "--id-scope", "0ne00ABCDEF", "--payload", str(bad))
    assert result.rc != 0 and "is not a JSON document" in result.message and result.recommendation


def test_unreachable_device_is_one_clean_error():
    result = az("edge-tpm", "install", *HOST, "--id-scope", "0ne00ABCDEF")
    assert result.rc != 0 and "refused the connection" in result.message and "Traceback" not in result.stderr
    result = az("edge-tpm", "status", *HOST)
    assert result.rc != 0 and "refused the connection" in result.message


def test_credentials_in_a_package_source_url_are_refused_without_echoing_them():
    result = az("edge-tpm", "install", "--host", "root@127.0.0.1:1", "--id-scope", "0ne00ABCDEF",
                "--package-source", "https://fleet:s3cr3t-pass@mirror.example.com/microsoft")
    assert result.rc != 0 and "carries credentials" in result.message
    assert "auth.conf.d" in result.recommendation
    assert "s3cr3t-pass" not in result.message + result.recommendation + result.stderr
