"""The support table (edge/support.py) and the platform matrix per runtime line (edge/platform.py):
pure functions, judged at an injected date (support.clock)."""
import datetime

import pytest

from azext_edgetpm.edge import configtoml, platform, support
from azext_edgetpm.errors import DeviceError, UserInputError

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'
DEBIAN_11 = 'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nID=debian\nVERSION_ID="11"\nVERSION_CODENAME=bullseye\n'
UBUNTU_2004 = 'PRETTY_NAME="Ubuntu 20.04.6 LTS"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="20.04"\n'
RHEL_9 = ('NAME="Red Hat Enterprise Linux"\nVERSION_ID="9.4"\nID="rhel"\nID_LIKE="fedora"\n'
          'PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\nPLATFORM_ID="platform:el9"\n')
ROCKY_9 = ('NAME="Rocky Linux"\nVERSION_ID="9.4"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
           'PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n')


@pytest.fixture
def on(monkeypatch):
    def at(year, month, day):
        monkeypatch.setattr(support, "clock", lambda: datetime.date(year, month, day))
    at(2026, 12, 7)
    return at


def test_one_table_names_lines_end_dates_and_systems():
    assert [line.name for line in support.LINES] == ["1.5", "1.6"]
    assert support.by_name("1.6").serviced_until == datetime.date(2028, 11, 14)
    assert support.by_name("1.5").serviced_until == datetime.date(2026, 11, 10)
    assert ("debian", "11") in support.by_name("1.5").systems and ("debian", "11") not in support.by_name("1.6").systems
    assert support.by_name("1.6").agent_image == "mcr.microsoft.com/azureiotedge-agent:1.6"
    assert "1.6 LTS (serviced until 2028-11-14)" in support.table_text()


@pytest.mark.parametrize("version, line", [("1.6.0-1", "1.6"), ("1.5.10-1", "1.5"), ("1:1.5.10-1", "1.5"),
                                           ("1.6.0-1.el9", "1.6"), ("1.5.10", "1.5"), ("", None), ("x", None)])
def test_line_of_package_versions(version, line):
    assert support.line_of(version) == line


def test_newest_version_of_the_allowed_lines_only():
    offered = ["1.5.9-1", "1.5.10-1", "1.6.0-1", "1.7.0-1", "1.5.21-1"]
    assert support.newest(offered, ["1.5", "1.6"]) == "1.6.0-1"     # 1.7 is no line the table knows
    assert support.newest(offered, ["1.5"]) == "1.5.21-1"           # numbers, not text (1.5.21 > 1.5.10 > 1.5.9)
    assert support.newest(["1.5.10-1"], ["1.6"]) is None


def test_default_line_follows_the_date(on):
    assert support.default_line("debian", "12").name == "1.6"
    assert support.default_line("debian", "11") is None            # 1.5 only, out of support since 2026-11-10
    on(2026, 6, 1)                                                  # before 1.6 shipped (2026-07-14)
    assert support.default_line("debian", "12").name == "1.5"
    assert support.default_line("debian", "11").name == "1.5"
    assert support.warning(support.by_name("1.5")) is None


def test_warning_says_until_when_a_line_was_serviced(on):
    text = support.warning(support.by_name("1.5"))
    assert "serviced until 2026-11-10" in text and "out of support" in text and "1.6" in text
    assert support.warning(support.by_name("1.6")) is None


def test_debian_12_gets_16_by_default_and_15_when_pinned(on):
    assert platform.detect(DEBIAN_12, "amd64").line.name == "1.6"
    pinned = platform.detect(DEBIAN_12, "amd64", edge_version="1.5.10")
    assert pinned.line.name == "1.5" and pinned.pinned


@pytest.mark.parametrize("text, name", [(DEBIAN_11, "Debian 11"), (UBUNTU_2004, "Ubuntu 20.04")])
def test_systems_16_removed_are_refused_without_a_pin_with_both_ways_out(on, text, name):
    with pytest.raises(DeviceError) as info:
        platform.detect(text, "amd64", "dev")
    message = str(info.value)
    assert "1.6" in message and name in message and "Nothing was changed" in message
    assert "Upgrade the device's OS" in info.value.hint and "out of support" in info.value.hint
    with pytest.raises(DeviceError) as pinned:
        platform.detect(text, "amd64", "dev", edge_version="1.6.0")
    assert "IoT Edge 1.6 has no packages" in str(pinned.value)
    assert platform.detect(text, "amd64", "dev", edge_version="1.5.10").line.name == "1.5"


def test_a_pin_of_an_unknown_line_is_bad_input(on):
    with pytest.raises(UserInputError) as info:
        platform.detect(DEBIAN_12, "amd64", "dev", edge_version="1.4.0")
    assert "1.5, 1.6" in str(info.value)


def test_rhel_is_a_dnf_system_and_its_rebuilds_are_refused(on):
    plat = platform.detect(RHEL_9, "amd64")
    assert (plat.os_id, plat.version, plat.package_manager, plat.line.name) == ("rhel", "9", "dnf", "1.6")
    assert plat.microsoft_config_url == "https://packages.microsoft.com/config/rhel/9/packages-microsoft-prod.rpm"
    with pytest.raises(DeviceError) as info:
        platform.detect(RHEL_9, "arm64")
    assert "only on amd64" in str(info.value)
    with pytest.raises(DeviceError) as info:
        platform.detect(ROCKY_9, "amd64", "dev")
    assert "rebuild of Red Hat Enterprise Linux" in str(info.value)


CONFIG = '''# my comment
hostname = "dev1"

[provisioning]
source = "dps"

[agent]
name = "edgeAgent"
type = "docker"
# pinned by the team
[agent.config]
image = "mcr.microsoft.com/azureiotedge-agent:1.5"
'''


def test_agent_image_follows_the_line_keeping_comments_and_the_users_own_image():
    image16 = "mcr.microsoft.com/azureiotedge-agent:1.6"
    # install: an image the user wrote is kept; upgrade: Microsoft's image of a line moves to the new line
    assert configtoml.with_agent_image(CONFIG, image16, upgrade=False).changes == []
    edit = configtoml.with_agent_image(CONFIG, image16)
    assert edit.text == CONFIG.replace("agent:1.5", "agent:1.6")
    assert edit.changes == [f"agent.config.image = {image16!r} (was 'mcr.microsoft.com/azureiotedge-agent:1.5')"]
    again = configtoml.with_agent_image(edit.text, image16)
    assert again.changes == [] and again.text == edit.text
    own = CONFIG.replace("mcr.microsoft.com/azureiotedge-agent:1.5", "myregistry.example.com/edge-agent:1.5-custom")
    assert configtoml.with_agent_image(own, image16).changes == []
    # none yet: written with the mark, which lets a later install follow the installed line
    bare = configtoml.with_agent_image('hostname = "x"\n', "mcr.microsoft.com/azureiotedge-agent:1.5", upgrade=False)
    assert configtoml.summarize(bare.text)["agentImage"] == "mcr.microsoft.com/azureiotedge-agent:1.5"
    assert configtoml.IMAGE_MARK in bare.text
    follows = configtoml.with_agent_image(bare.text, image16, upgrade=False)
    assert configtoml.summarize(follows.text)["agentImage"] == image16 and configtoml.IMAGE_MARK in follows.text
