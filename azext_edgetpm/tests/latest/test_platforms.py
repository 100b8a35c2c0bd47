"""Devices that lack what the extension needs on them: tpm2-tools installed on request.
(Machines without tpm2-pytss: see test_install.py.)"""
import os

from azext_edgetpm.tests.latest.conftest import REPO
from azext_edgetpm.tests.latest.test_ek_show import by_hand


def test_install_tools_on_a_device_without_them(new_device, rig):
    from devkit.packages import AptRepo, build_repo
    dev = new_device("notools")
    repo = AptRepo(build_repo(os.path.join(REPO, ".devkit", "packages", "repo")), [rig.host_ip])
    section = repo.start()
    try:
        # The device's package sources point at a mirror (the dev kit's repository) only.
        dev.exec(f"rm -f /etc/apt/sources.list.d/*; echo {section['apt_line']!r} > /etc/apt/sources.list", check=True)
        from azext_edgetpm.tests.latest.azcli import az
        from azext_edgetpm.tests.latest.test_ek_show import ek_args
        refused = az(*ek_args(dev))
        assert refused.rc != 0 and "tpm2-tools is not installed" in refused.message
        installed = az(*ek_args(dev, extra=["--install-tools"]))
        assert installed.rc == 0, installed.stderr
        assert installed.out["createdKeys"] == ["ek", "srk"]
        assert dev.exec("dpkg-query -W -f='${Status}' tpm2-tools").stdout == "install ok installed"
        assert installed.out["registrationId"] == by_hand(dev)[0]
    finally:
        repo.stop()
