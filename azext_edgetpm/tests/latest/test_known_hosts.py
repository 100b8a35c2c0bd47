"""known_hosts files with OpenSSH markers (issue 8, defect 5), against a simulated device's real
sshd: a valid file never fails, @revoked keys are refused, @cert-authority lines are skipped."""
import subprocess

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_ek_show import ek_args

# a CA key (not the device's), as an @cert-authority line carries it
CA_LINE = "@cert-authority *.example.com ssh-ed25519 " \
          "AAAAC3NzaC1lZDI1NTE5AAAAIBwx0FJrcmmVVcnnzVcHUVFiKbPuM4I8WV2gIeRY0eWn ca@example.com\n"


def _device_lines(dev):
    """The device's own known_hosts lines (as recorded by the rig), one per host key."""
    name = f"[{dev.host}]:{dev.port}" if dev.port != 22 else dev.host
    found = subprocess.run(["ssh-keygen", "-F", name, "-f", dev.known_hosts], capture_output=True, text=True,
                           check=True).stdout
    return [ln for ln in found.splitlines() if ln and not ln.startswith("#")]


def test_marker_lines_are_honoured_not_a_parse_error(rig, tmp_path, caplog):
    dev = rig.by_variant("mfg")
    lines = _device_lines(dev)
    known = tmp_path / "known_hosts"

    # @cert-authority (and a comment, a blank line) beside the device's keys: the file is valid
    known.write_text("# fleet CA\n" + CA_LINE + "\n" + "".join(ln + "\n" for ln in lines))
    result = az(*ek_args(dev, known_hosts=str(known), extra=["--no-create"]))
    assert result.rc == 0, (result.message, result.stderr[-2000:])
    warned = [r.getMessage() for r in caplog.records if "Skipping line" in r.getMessage()]
    assert len(warned) == 1 and "line 2" in warned[0] and "@cert-authority" in warned[0], warned

    # every key of the device @revoked: refused, also when new keys may be trusted on first use
    revoked = "".join("@revoked * " + ln.split(" ", 1)[1] + "\n" for ln in lines)
    known.write_text(revoked + "".join(ln + "\n" for ln in lines))
    for extra in ([], ["--accept-new-host-key"]):
        result = az(*ek_args(dev, known_hosts=str(known), extra=["--no-create"] + extra))
        assert result.rc != 0 and type(result.error).__name__ == "ValidationError", result.message
        assert "@revoked" in result.message and "SHA256:" in result.message
        assert "never accepted" in result.recommendation
    assert known.read_text() == revoked + "".join(ln + "\n" for ln in lines), "nothing recorded"
