"""--proxy, --no-proxy and --proxy-ca as az parses them: refused before anything connects, with a
recommendation, never echoing a password; and the parsed proxy's files (pure functions)."""
import pytest

from azext_edgetpm.tests.latest.azcli import az

HOST = ["--host", "root@127.0.0.1:1", "--id-scope", "0ne00ABCDEF"]


@pytest.mark.parametrize("value, words", [
    ("https://proxy.example:3128", "is not supported"),
    ("socks5://proxy.example:1080", "is not supported"),
    ("proxy.example:3128", "is not supported"),
    ("http://proxy.example:3128/path", "host and port only"),
    ("http://proxy.example:99999", "is not a URL"),
    ("http://us er:p4ss@proxy.example:3128", "spaces"),
    ("http://:s3cr3t-pass@proxy.example:3128", "user name or password is empty"),
])
def test_bad_proxy_urls_are_refused_without_echoing_a_password(value, words):
    result = az("edge-tpm", "install", *HOST, "--proxy", value)
    assert result.rc != 0 and words in result.message + " " + result.recommendation, result.message
    assert result.recommendation and "Traceback" not in result.stderr
    assert "s3cr3t-pass" not in result.message + result.recommendation + result.stderr


def test_proxy_options_need_a_proxy_and_a_pem(tmp_path):
    result = az("edge-tpm", "install", *HOST, "--no-proxy", "10.0.0.0/8")
    assert result.rc != 0 and "only go with --proxy URL" in result.message
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    result = az("edge-tpm", "install", *HOST, "--proxy", "http://p:3128", "--proxy-ca", str(bad))
    assert result.rc != 0 and "not a PEM certificate" in result.message
    result = az("edge-tpm", "install", *HOST, "--proxy", "http://p:3128", "--no-proxy", "a b")
    assert result.rc != 0 and "--no-proxy entry" in result.message


def test_files_of_a_proxy_with_credentials():
    from azext_edgetpm.edge import proxy
    p = proxy.parse("http://edge:pa%25ss@Proxy.Example:3128", "10.0.0.0/8")
    assert p.url == "http://edge:pa%25ss@proxy.example:3128" and p.display == "http://edge:***@proxy.example:3128"
    assert "pa%ss" not in repr(p) and "pa%25ss" not in repr(p)
    files = proxy.wanted_files(p)
    apt_conf = files[proxy.APT_CONF][0].decode()
    assert 'Acquire::http::Proxy "http://proxy.example:3128/";' in apt_conf and "pa" not in apt_conf.split("\n", 1)[1]
    assert files[proxy.APT_AUTH] == (files[proxy.APT_AUTH][0], 0o600)
    # with the scheme: apt 2.6 uses a `machine` without one for https only (apt_auth.conf(5))
    assert "\nmachine http://proxy.example:3128 login edge password pa%ss\n" in files[proxy.APT_AUTH][0].decode()
    docker = files[proxy.dropin("docker")]
    assert docker[1] == 0o600  # holds the password
    text = docker[0].decode()
    # systemd: a literal % is %%; lowercase https_proxy/http_proxy, NO_PROXY with the defaults
    assert 'Environment="https_proxy=http://edge:pa%%25ss@proxy.example:3128"' in text
    assert 'Environment="http_proxy=http://edge:pa%%25ss@proxy.example:3128"' in text
    assert 'Environment="NO_PROXY=localhost,127.0.0.1,10.0.0.0/8"' in text
    assert proxy.wanted_files(None) == {path: None for path in files}
    assert proxy.redact("GET http://edge:pa%25ss@proxy.example:3128 x") == "GET http://edge:***@proxy.example:3128 x"


def test_no_proxy_matching():
    from azext_edgetpm.edge import proxy
    p = proxy.parse("http://p:3128", "10.0.0.0/8,.corp.example,mirror.local")
    assert proxy.bypasses(p, "10.1.2.3") and proxy.bypasses(p, "a.corp.example") and proxy.bypasses(p, "mirror.local")
    assert proxy.bypasses(p, "localhost") and proxy.bypasses(p, "127.0.0.1")
    assert not proxy.bypasses(p, "global.azure-devices-provisioning.net") and not proxy.bypasses(p, "192.168.1.1")
