"""The package-manager interface (edge/pkg): which implementation a device gets, and the pure parts
of the dnf/rpm one (its output parsed, dnf.conf's proxy lines). What dnf does on a device is
tested on the dev kit's rhel9 device (test_rhel_install.py)."""
import pytest

from azext_edgetpm.edge import facts, platform, proxy
from azext_edgetpm.edge.pkg import by_name, for_device
from azext_edgetpm.edge.pkg import dnf, dnf_direct
from azext_edgetpm.errors import DeviceError, EdgeTpmError, UserInputError

RHEL_9 = 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nVERSION_ID="9.4"\nPRETTY_NAME="Red Hat Enterprise Linux 9.4"\n'
DEBIAN_12 = 'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\nPRETTY_NAME="Debian GNU/Linux 12"\n'


def test_the_platform_chooses_the_manager_and_its_spellings():
    rhel, debian = platform.detect(RHEL_9, "amd64"), platform.detect(DEBIAN_12, "amd64")
    assert (for_device(rhel).name, for_device(debian).name) == ("dnf", "apt")
    # before detection (deprovision), from the os-release the facts read
    assert for_device(None, facts.Facts(os_release=RHEL_9)).name == "dnf"
    assert for_device(None, facts.Facts(os_release=DEBIAN_12)).name == "apt"
    assert by_name("dnf").spec("aziot-edge", "1.6.0-1.el9") == "aziot-edge-1.6.0-1.el9"
    assert by_name("apt").spec("aziot-edge", "1.6.0-1") == "aziot-edge=1.6.0-1"
    assert for_device(rhel).config_package_url("http://mirror/ms/", rhel) == \
        "http://mirror/ms/config/rhel/9/packages-microsoft-prod.rpm"
    assert for_device(debian).config_package_url(None, debian).endswith("/config/debian/12/packages-microsoft-prod.deb")
    assert by_name("dnf").match_version("1.5.10", ["1.6.0-1.el9", "1.5.10-1.el9"]) == "1.5.10-1.el9"


def test_rpm_facts_dnf_output_and_rpm_file_names():
    parsed = facts.parse("@@PKG aziot-edge\t1.6.0-1.el9\trpm installed\n")
    assert parsed.installed("aziot-edge") == "1.6.0-1.el9"
    found = dnf.parse_repoquery("aziot-edge 1.5.9-1.el9\naziot-edge 1.6.0-1.el9\naziot-edge 1.5.10-1.el9\n",
                                ["aziot-edge", "moby-engine"])
    assert found["aziot-edge"]["versions"] == ["1.6.0-1.el9", "1.5.10-1.el9", "1.5.9-1.el9"]
    assert found["aziot-edge"]["candidate"] == "1.6.0-1.el9" and found["moby-engine"]["candidate"] is None
    requires = "(moby-engine or docker-ce)\naziot-identity-service = 1.5.3-1.el9\nsystemd\n"
    assert dnf.exact_requirement(requires, "aziot-identity-service") == "1.5.3-1.el9"
    assert dnf.exact_requirement("systemd\n", "aziot-identity-service") is None


def test_rpm_files_are_read_by_lead_and_name(tmp_path):
    good = tmp_path / "aziot-edge-1.6.0-1.el9.x86_64.rpm"
    good.write_bytes(b"\xed\xab\xee\xdb" + b"\0" * 92)
    rpm = dnf.read_rpm(str(good))
    assert (rpm.package, rpm.version, rpm.architecture) == ("aziot-edge", "1.6.0-1.el9", "x86_64")
    (tmp_path / "notes.rpm").write_bytes(b"text")
    with pytest.raises(UserInputError) as info:
        dnf.read_offline_dir(str(tmp_path), "amd64")
    assert "is not an RPM package" in str(info.value)


def test_dnf_conf_gets_the_proxy_lines_of_ours_and_loses_only_them():
    conf = "# site comment\n[main]\ngpgcheck=1\nbest=True\n"
    with_auth = proxy.parse("http://edge:s3cret@proxy.example:3129")
    text = dnf.dnf_conf_with_proxy(conf, with_auth)
    assert text.splitlines()[:3] == ["# site comment", "[main]", dnf._OURS]
    assert "proxy=http://proxy.example:3129\nproxy_username=edge\nproxy_password=s3cret\n" in text
    assert "best=True" in text
    again = dnf.dnf_conf_with_proxy(text, proxy.parse("http://proxy.example:3128"))
    assert "proxy_username" not in again and "proxy=http://proxy.example:3128" in again
    assert dnf.dnf_conf_with_proxy(again, None) == conf                     # --proxy none: back as it was
    with pytest.raises(DeviceError) as info:                                # a proxy of the device's own stays
        dnf.dnf_conf_with_proxy(conf + "proxy=http://theirs:8080\n", with_auth)
    assert "already sets a proxy" in str(info.value)


def test_rhel_proxy_files_are_root_only_with_credentials():
    conf = facts.RemoteFile("/etc/dnf/dnf.conf", b"[main]\ngpgcheck=1\n", 0o644, "root", "root", 0)
    device = facts.Facts(files={proxy.DNF_CONF: conf})
    wanted = proxy.wanted_files(proxy.parse("http://edge:pw@proxy.example:3129"), by_name("dnf"), device)
    assert wanted[proxy.DNF_CONF][1] == 0o600 and proxy.APT_CONF in wanted and wanted[proxy.APT_CONF] is None
    plain = proxy.wanted_files(proxy.parse("http://proxy.example:3128"), by_name("dnf"), device)
    assert plain[proxy.DNF_CONF][1] == 0o644
    assert proxy.DNF_CONF not in proxy.wanted_files(None, by_name("dnf"), device)   # nothing of ours: untouched


def test_a_dnf_repository_source_names_its_key_and_always_checks_signatures():
    """`URL [gpgkey=KEY]`: Microsoft's key unless another is named; gpgcheck=1 in every case; an .rpm
    URL or an apt line is not one; a wrong form is one error with the expected form."""
    plain = dnf.parse_source("https://mirror.example.com/rhel/9/prod/")
    assert (plain.gpgkey, plain.explicit) == ("https://packages.microsoft.com/keys/microsoft.asc", False)
    own = dnf.parse_source("https://m.example.com/rhel/9/prod/  gpgkey=file:///etc/pki/rpm-gpg/mirror.asc")
    assert (own.url, own.gpgkey, own.explicit) == ("https://m.example.com/rhel/9/prod/",
                                                   "file:///etc/pki/rpm-gpg/mirror.asc", True)
    assert own.repo_file().splitlines()[1:] == [
        "[edge-tpm]", "name=IoT Edge packages (az edge-tpm)", "baseurl=https://m.example.com/rhel/9/prod/",
        "enabled=1", "gpgcheck=1", "gpgkey=file:///etc/pki/rpm-gpg/mirror.asc"]
    for value in (None, "", "https://m.example.com/config/rhel/9/packages-microsoft-prod.rpm",
                  "deb [signed-by=/k.gpg] https://m.example.com/ ./"):
        assert dnf.parse_source(value) is None
    for value in ("https://m.example.com/ gpgcheck=0", "https://m.example.com/ gpgkey=/etc/k.asc",
                  "https://m.example.com/ gpgkey=https://a/k gpgkey=https://b/k",
                  "https://m.example.com/p.rpm gpgkey=https://a/k"):
        with pytest.raises(UserInputError) as err:
            dnf.parse_source(value)
        assert "gpgkey=" in err.value.hint


def test_dnf_refusing_a_signature_is_the_signature_error():
    """dnf's words for a package signed by a key the repository does not name (dnf 4.14)."""
    class Failed:
        rc, stdout = 1, ""
        stderr = ('The GPG keys listed for the "edge-tpm" repository are already installed but they are not '
                  "correct for this package.\nCheck that the correct key URLs are configured for this repository.."
                  "\nError: GPG check FAILED\n")
    with pytest.raises(EdgeTpmError) as err:
        dnf.raise_for(Failed(), "Installing aziot-edge", "dev-1")
    assert "signature" in err.value.message and "packages.microsoft.com/keys/microsoft.asc" in err.value.hint


def test_no_proxy_hosts_get_an_empty_proxy_in_their_dnf_repositories():
    """dnf.conf's [main] proxy= applies to every repository: a repository whose hosts are all in the
    no-proxy list gets `proxy=` (empty: direct, dnf.conf(5)) of ours; the others, and a repository
    with a proxy= of its own, are left alone; without the proxy (or the entry) our lines go again."""
    behind = proxy.parse("http://edge:pw@proxy.example:3129", "mirror.corp.example,10.1.0.0/16")
    ms = ("# Microsoft's\n[packages-microsoft-com-prod]\nname=p\nbaseurl=https://mirror.corp.example/rhel/9/prod/\n"
          "gpgcheck=1\n\n[far]\nbaseurl=https://packages.microsoft.com/rhel/9/prod/ http://10.1.2.3/r/\n"
          "[theirs]\nbaseurl=http://10.1.2.3/t/\nproxy=http://their-proxy:8080\n")
    edit = dnf_direct.repo_with_direct_proxy
    direct = edit(ms, behind)
    assert direct.splitlines()[:4] == ["# Microsoft's", "[packages-microsoft-com-prod]", dnf_direct.DIRECT, "proxy="]
    assert direct.count("proxy=\n") == 1 and "proxy=http://their-proxy:8080" in direct
    assert edit(direct, behind) == direct                                    # a second run: nothing
    assert edit(direct, None) == ms                                          # --proxy none: as it was
    assert edit(direct, proxy.parse("http://proxy.example:3129")) == ms      # no longer listed
    assert edit(ms, None) is ms
    rpm = "/config/rhel/9/packages-microsoft-prod.rpm"
    assert dnf_direct.url_is_direct(behind, "http://mirror.corp.example" + rpm)
    assert not dnf_direct.url_is_direct(behind, "https://packages.microsoft.com" + rpm)
    ours = dnf.parse_source("http://10.1.0.9:8080/rhel/9/prod/ gpgkey=http://10.1.0.9:8080/k.asc")
    assert ours.repo_file(behind) == ours.repo_file().replace("[edge-tpm]\n",
                                                              f"[edge-tpm]\n{dnf_direct.DIRECT}\nproxy=\n")
