"""A bad --package-source apt line never leaves the device's package manager broken (issue 8,
defect 1), on a simulated device: what apt on the device says afterwards is read from inside it."""
import pytest

from azext_edgetpm.tests.latest.azcli import az

pytestmark = pytest.mark.devkit

APT_LIST = "/etc/apt/sources.list.d/edge-tpm.list"
PREVIOUS = "# Package source of IoT Edge (written by az edge-tpm install)\ndeb [trusted=yes] file:/srv/old-mirror ./\n"


def _install(dev, source, rig):
    # (the DPS endpoint: the rig's host, where nothing listens on port 1: the network check notes it, and
    # the run goes on to the package source)
    return az("edge-tpm", "install", "--host", f"root@{dev.host}:{dev.port}", "--ssh-key", dev.key("root"),
              "--known-hosts", dev.known_hosts, "--tcti", dev.tcti, "--id-scope", "0ne00000001",
              "--global-endpoint", f"https://{rig.host_ip}:1", "--registration-id", "apt-source-1",
              "--package-source", source)


def _apt_works(dev):
    """Every apt command reads all sources: `apt-cache policy` fails on a malformed one."""
    return dev.exec("LC_ALL=C apt-cache policy >/dev/null").returncode == 0


@pytest.fixture
def dev(rig):
    """The session's mfg device: these tests leave its apt sources as they found them (or fail)."""
    dev = rig.by_variant("mfg")
    yield dev
    dev.exec(["rm", "-f", APT_LIST])


def test_malformed_line_is_refused_before_the_device_is_touched(dev, rig):
    result = _install(dev, f"deb [trusted=yes http://{rig.host_ip}:1/ ./", rig)  # the [ is never closed
    assert result.rc != 0 and type(result.error).__name__ == "InvalidArgumentValueError", result.message
    assert "not closed" in result.message
    assert dev.exec(["test", "-e", APT_LIST]).returncode != 0
    assert _apt_works(dev)


def test_line_apt_cannot_use_is_taken_back(dev, rig):
    """A line that passes the local check but that apt cannot use (here: nothing answers at its
    path): the previous list is put back as it was, and without one ours is removed."""
    unreachable = "deb [trusted=yes] file:/srv/edgetpm-no-such-mirror ./"  # apt cannot fetch from it
    dev.exec(f"cat > {APT_LIST} && chmod 640 {APT_LIST}", input=PREVIOUS, check=True)
    result = _install(dev, unreachable, rig)
    assert result.rc != 0 and "apt-get update failed" in result.message, result.message
    assert dev.exec(["cat", APT_LIST]).stdout == PREVIOUS
    assert dev.exec(["stat", "-c", "%a", APT_LIST]).stdout.strip() == "640"
    assert _apt_works(dev)

    dev.exec(["rm", "-f", APT_LIST], check=True)
    result = _install(dev, unreachable, rig)
    assert result.rc != 0 and "apt-get update failed" in result.message, result.message
    assert dev.exec(["test", "-e", APT_LIST]).returncode != 0, "our list is removed again"
    assert _apt_works(dev)
