"""`az edge-tpm install --proxy` for real: a `proxied` device (nftables in its namespace let it
reach nothing but the rig's HTTP proxies, devkit/proxy.py: Debian's tinyproxy, open on 3128,
Basic auth on 3129) installs the stand-in packages and registers with the DPS emulator only
through the proxy, whose own log must show that traffic.

What the device has is read from inside it (the rig's device exec), never through the product.
"""
import json
import os
import re
import subprocess
import tomllib

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_edge_install import (  # noqa: F401  (module fixtures used here)
    changed_since_mark, device, dps, enroll, install, mark, overlay, read, stat, statuses)

pytestmark = pytest.mark.devkit

PROXY_FILES = ["/etc/apt/apt.conf.d/80edge-tpm-proxy",
               "/etc/systemd/system/aziot-edged.service.d/edge-tpm-proxy.conf",
               "/etc/systemd/system/aziot-identityd.service.d/edge-tpm-proxy.conf",
               "/etc/systemd/system/docker.service.d/edge-tpm-proxy.conf"]
AUTH_FILE = "/etc/apt/auth.conf.d/edge-tpm-proxy.conf"
UNITS = ("docker", "aziot-edged", "aziot-identityd")


@pytest.fixture(scope="module")
def proxies(rig):
    """The rig's two proxies (open and authenticated), as `devkit up` starts them."""
    from devkit.proxy import ProxyService
    service = ProxyService()
    try:
        section = service.up(rig)
    except Exception as exc:  # pylint: disable=broad-except  # e.g. tinyproxy not installed
        pytest.skip(f"HTTP proxy unavailable: {exc}")
    yield section
    service.down(rig, section)


def device_files_holding(dev, secret):
    """'mode owner path' of every file the device wrote (its overlay's upper layer, /run, /tmp)
    that holds `secret`."""
    root, upper = overlay(dev)
    script = (f"cd {upper} && grep -rlF -- \"$1\" . | sed 's|^\\.||'; "
              f"cd {root} && grep -rlF -- \"$1\" ./run ./tmp | sed 's|^\\.||'")
    paths = subprocess.run(["nsenter", "-t", str(dev.pid), "-m", "sh", "-c", script, "sh", secret],
                           capture_output=True, text=True, check=False).stdout.split()
    return [dev.exec(["stat", "-c", "%a %U %n", p], check=True).stdout.strip() for p in sorted(set(paths))]


def log_size(path):
    return os.path.getsize(path)


def log_since(path, offset):
    with open(path, encoding="utf-8", errors="replace") as handle:
        handle.seek(offset)
        return handle.read()


def agent_container(dev):
    out = dev.exec("docker inspect --format '{{.Id}} {{json .Config.Env}}' edgeAgent", check=True).stdout.strip()
    cid, _, env = out.partition(" ")
    return cid, dict(e.split("=", 1) for e in json.loads(env))


def check_result(dev, check_id):
    out = dev.exec("iotedge check --output json", check=False).stdout
    return json.loads(out)["checks"][check_id]["result"]


def unit_env(dev, unit):
    line = dev.exec(["systemctl", "show", "--property=Environment", unit], check=True).stdout.strip()
    return dict(w.split("=", 1) for w in line[len("Environment="):].split())


def test_proxy_only_device(device, repo, dps, proxies, tmp_path):
    """Refused without --proxy; installed and assigned through it; a second run changes nothing; the
    authenticated proxy instead changes exactly the proxy files and recreates edgeAgent, and its
    password lives only in root-only files; the stand-in identity service without its proxy fails;
    with the firewall lifted, a CA and NO_PROXY, then --proxy none undoes it all."""
    dev = device("proxied")
    enroll(dev, dps)
    source = ["--package-source", repo["base_url"]]

    # Without --proxy: one clear error naming what the device cannot reach, and nothing changed.
    mark(dev)
    direct = install(dev, dps, *source)
    assert direct.rc != 0
    assert "cannot reach the package source" in direct.message and "directly" in direct.message, direct.message
    assert "--proxy" in direct.recommendation
    assert changed_since_mark(dev) == []

    # Through the open proxy: installed and assigned; the proxy saw the packages and DPS.
    offset = log_size(proxies["log"])
    first = install(dev, dps, *source, "--proxy", proxies["url"])
    assert first.rc == 0, f"{first.message} | {first.recommendation}"
    assert statuses(first)["proxy"] == "changed"
    assert first.out["runtime"]["provisioning"]["state"] == "assigned", first.out["runtime"]
    seen = log_since(proxies["log"], offset)
    repo_hostport = repo["base_url"].split("//", 1)[1].rstrip("/")
    dps_hostport = dps.section["device_endpoint"].split("//", 1)[1]
    assert re.search(rf"Request .*: GET http://{re.escape(repo_hostport)}/.*aziot-edge", seen), seen[-3000:]
    assert re.search(rf"Request .*: CONNECT {re.escape(dps_hostport)} ", seen), seen[-3000:]
    for path in PROXY_FILES:
        assert read(dev, path) is not None, path
    assert read(dev, AUTH_FILE) is None
    for unit in ("docker", "aziot-edged", "aziot-identityd"):
        assert unit_env(dev, unit)["https_proxy"] == proxies["url"]
    assert unit_env(dev, "docker")["NO_PROXY"] == "localhost,127.0.0.1"
    config = tomllib.loads(read(dev, "/etc/aziot/config.toml"))
    assert config["agent"] == {"name": "edgeAgent", "type": "docker",
                               # the installed runtime's line (the newest LTS the source offers)
                               "config": {"image": "mcr.microsoft.com/azureiotedge-agent:"
                                          + ".".join(repo["latest_edge_version"].split(".")[:2])},
                               "env": {"https_proxy": proxies["url"], "UpstreamProtocol": "AmqpWs"}}
    assert check_result(dev, "proxy-settings") == {"result": "ok"}
    health = az("edge-tpm", "status", "--host", f"admin@{dev.host}:{dev.port}", "--ssh-key", dev.key("admin"),
                "--known-hosts", dev.known_hosts).out
    assert health["healthy"] and health["checks"]["errors"] == [] and health["config"]["agentProxy"] == proxies["url"]
    first_agent, env = agent_container(dev)
    assert env["https_proxy"] == proxies["url"] and env["UpstreamProtocol"] == "AmqpWs"

    # Again: nothing changes, no file is touched.
    mark(dev)
    second = install(dev, dps, *source, "--proxy", proxies["url"])
    assert second.rc == 0 and not second.out["changed"], second.out["summary"]
    assert changed_since_mark(dev) == []

    # Another proxy URL (the authenticated proxy, its URL in a file, --debug on): exactly the proxy
    # files change, apt's credentials go to auth.conf.d, and edgeAgent is created anew.
    auth = proxies["auth"]
    password = auth["password"]
    url_file = tmp_path / "proxy-url.txt"
    url_file.write_text(f"http://{auth['user']}:{password}@{auth['url'].split('//', 1)[1]}\n")
    auth_offset = log_size(auth["log"])
    mark(dev)
    switched = install(dev, dps, *source, "--proxy", f"@{url_file}", "--debug")
    assert switched.rc == 0, f"{switched.message} | {switched.recommendation}"
    changed = set(changed_since_mark(dev))
    # iotedge config apply rewrites the services' own config.d files and state: the runtime's doing.
    runtime_state = {p for p in changed if p.startswith(("/etc/aziot/", "/var/lib/aziot/", "/var/log/"))
                     and p != "/etc/aziot/config.toml" and not p.startswith("/etc/aziot/config.toml.edgetpm-")}
    backups = {p for p in changed if p.startswith("/etc/aziot/config.toml.edgetpm-")}
    assert len(backups) == 1
    assert changed - runtime_state - backups == set(PROXY_FILES + [AUTH_FILE, "/etc/aziot/config.toml"]), \
        sorted(changed)
    assert statuses(switched)["proxy"] == "changed" and statuses(switched)["package-source"] == "ok"
    new_agent, env = agent_container(dev)
    assert new_agent != first_agent
    assert env["https_proxy"] == f"http://{auth['user']}:{password}@{auth['url'].split('//', 1)[1]}"
    assert check_result(dev, "proxy-settings") == {"result": "ok"}
    assert switched.out["runtime"]["provisioning"]["state"] == "assigned"
    assert "CONNECT" in log_since(auth["log"], auth_offset)
    assert stat(dev, AUTH_FILE) == ["600", "root", "root"]
    assert f"login {auth['user']} password {password}" in read(dev, AUTH_FILE)
    assert password not in read(dev, "/etc/apt/apt.conf.d/80edge-tpm-proxy")

    # The password: not in az's output (with --debug) nor its config directory; on the device only
    # in root-only files.
    assert password not in switched.text + switched.stderr + switched.message
    azure_dir = os.environ["AZURE_CONFIG_DIR"]
    leaks = [os.path.join(d, f) for d, _, files in os.walk(azure_dir) for f in files
             if password.encode() in open(os.path.join(d, f), "rb").read()]
    assert leaks == []
    found = device_files_holding(dev, password)
    assert found, "the password must be on the device somewhere"
    # Where it must live: our root-only files, and the runtime's own copies (edged's applied
    # config, owned by its service user; the engine's container state; the environment systemd
    # loaded at daemon-reload) -- every one readable by its owner only.
    assert all(line.startswith("600 ") for line in found), found
    owners = {line.split()[2]: line.split()[1] for line in found}
    ours = set(PROXY_FILES[1:] + [AUTH_FILE, "/etc/aziot/config.toml"])
    assert ours <= set(owners) and all(owners[p] == "root" for p in ours), found
    runtime_copies = {"/etc/aziot/edged/config.d/00-super.toml", "/var/lib/aziot/standin/modules.json"}
    assert set(owners) - ours - runtime_copies <= {f"/run/devkit-systemd/{u}.env" for u in UNITS}, found
    print("proxy-only device: password in", [line.split()[-1] for line in found])

    # The stand-in identity service without its proxy: registration fails at once, and says why (the
    # reprovision API returns the error chain, which the identity service also logs as "!!! ..." lines:
    # identity/aziot-identityd/src/http/mod.rs).
    failed = dev.exec(f"rm {PROXY_FILES[2]} && systemctl daemon-reload && iotedge system reprovision")
    assert failed.returncode == 1 and failed.stderr.startswith("Failed to reprovision: DPS client error")
    journal = dev.exec("iotedge system logs -- -n 30", check=True).stdout
    assert "DPS client error" in journal and "No route to host" in journal, journal[-1500:]

    # The firewall lifted (a device with direct access): the proxy with a CA and NO_PROXY entries,
    # then --proxy none removes every file an earlier --proxy wrote, and edgeAgent runs without it.
    subprocess.run(["ip", "netns", "exec", dev.netns, "nft", "delete", "table", "inet", "devkit_proxied"], check=True)
    ca = dps.section["ca_bundle"]  # (any PEM CA does: the rig's proxy does not inspect TLS)
    with_ca = install(dev, dps, *source, "--proxy", proxies["url"], "--proxy-ca", ca,
                      "--no-proxy", ".corp.example,192.168.0.0/16")
    assert with_ca.rc == 0, f"{with_ca.message} | {with_ca.recommendation}"
    with open(ca, encoding="ascii") as handle:
        assert read(dev, "/usr/local/share/ca-certificates/edge-tpm-proxy-ca.crt") == handle.read()
    assert stat(dev, "/var/aziot/certs/edge-tpm-proxy-ca.pem")[1:] == ["aziotcs", "aziotcs"]
    config = tomllib.loads(read(dev, "/etc/aziot/config.toml"))
    assert config["trust_bundle_cert"] == "file:///var/aziot/certs/edge-tpm-proxy-ca.pem"
    assert unit_env(dev, "docker")["NO_PROXY"] == "localhost,127.0.0.1,.corp.example,192.168.0.0/16"
    assert unit_env(dev, "aziot-identityd")["https_proxy"] == proxies["url"]
    assert agent_container(dev)[1]["https_proxy"] == proxies["url"]

    undone = install(dev, dps, *source, "--proxy", "none")
    assert undone.rc == 0, undone.message
    assert statuses(undone)["proxy"] == "changed" and statuses(undone)["runtime"] == "changed"
    for path in PROXY_FILES + [AUTH_FILE, "/usr/local/share/ca-certificates/edge-tpm-proxy-ca.crt",
                               "/var/aziot/certs/edge-tpm-proxy-ca.pem"]:
        assert read(dev, path) is None, path
    config = tomllib.loads(read(dev, "/etc/aziot/config.toml"))
    assert "trust_bundle_cert" not in config and "env" not in config["agent"]
    assert "https_proxy" not in agent_container(dev)[1]
    assert all(not unit_env(dev, u) for u in UNITS)
    assert check_result(dev, "proxy-settings") == {"result": "ok"}
    assert undone.out["runtime"]["provisioning"]["state"] == "assigned"
    print(f"timings: first install {first.out['seconds']}s, second {second.out['seconds']}s, "
          f"switched {switched.out['seconds']}s, with a CA {with_ca.out['seconds']}s, undone {undone.out['seconds']}s")


def test_fresh_device_behind_the_authenticated_proxy(device, repo, dps, proxies, tmp_path):
    """A device that never had IoT Edge and whose only way out is the authenticated proxy: `provision --proxy
    @file` ends assigned, apt's and the runtime's traffic went through that proxy, and the password is only in
    root-only files. apt (Debian 12's own 2.6 on the device; apt_auth.conf(5)) uses an auth.conf entry for an
    http:// proxy only when its `machine` carries the scheme: without it apt gets 407 at the package source."""
    dev = device("proxied")
    auth = proxies["auth"]
    password = auth["password"]
    url_file = tmp_path / "auth-proxy.txt"
    url_file.write_text(f"http://{auth['user']}:{password}@{auth['url'].split('//', 1)[1]}\n")
    offset = log_size(auth["log"])
    result = az("edge-tpm", "provision", "--host", f"admin@{dev.host}:{dev.port}", "--ssh-key", dev.key("admin"),
                "--known-hosts", dev.known_hosts, "--tcti", dev.tcti, *dps.login, "--id-scope", dps.section["id_scope"],
                "--global-endpoint", dps.section["device_endpoint"], "--package-source", repo["base_url"],
                "--proxy", f"@{url_file}")
    assert result.rc == 0, f"{result.message} | {result.recommendation}"
    row = result.out[0] if isinstance(result.out, list) else result.out
    assert row["status"] == "assigned", row
    assert dps.emu.store.get_registration(row["registrationId"])["status"] == "assigned"
    assert "machine http://" in read(dev, AUTH_FILE) and stat(dev, AUTH_FILE) == ["600", "root", "root"]
    seen = log_since(auth["log"], offset)
    repo_hostport = repo["base_url"].split("//", 1)[1].rstrip("/")
    assert re.search(rf"Request .*: GET http://{re.escape(repo_hostport)}/.*aziot-edge", seen), seen[-3000:]
    assert re.search(rf"Request .*: CONNECT {re.escape(dps.section['device_endpoint'].split('//', 1)[1])} ", seen)
    assert password not in result.text + result.stderr + result.message
    found = device_files_holding(dev, password)
    assert found and all(line.startswith("600 ") for line in found), found


def test_refused_before_anything_changes(device, dps, proxies, repo):
    """A proxy that cannot be reached, or that wants credentials it did not get: one clear error from
    the proxy step, before anything is written."""
    dev = device("proxied")
    source = ["--package-source", repo["base_url"]]
    mark(dev)
    closed = install(dev, dps, *source, "--proxy", f"http://{proxies['host']}:9")
    assert closed.rc != 0 and "Step proxy failed" in closed.message
    assert f"cannot reach the proxy http://{proxies['host']}:9" in closed.message and "Nothing was changed" in closed.message
    no_credentials = install(dev, dps, *source, "--proxy", proxies["auth"]["url"])
    assert no_credentials.rc != 0 and "407" in no_credentials.message and "user and password" in \
        no_credentials.recommendation
    wrong = proxies["auth"]["url"].replace("http://", "http://edge:wrong-password@")
    refused = install(dev, dps, *source, "--proxy", wrong)
    assert refused.rc != 0 and "refused the credentials" in refused.message
    assert "wrong-password" not in refused.message + refused.stderr + refused.text
    assert changed_since_mark(dev) == []


def test_provision_through_an_inventory_row_proxy(device, repo, dps, proxies, tmp_path):
    """`provision --inventory`: the row's proxy column wins over the run's --proxy (none here)."""
    import csv
    dev = device("proxied")
    inventory = tmp_path / "fleet.csv"
    with open(inventory, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["host", "ssh_key", "tcti", "proxy"])
        writer.writeheader()
        writer.writerow({"host": f"root@{dev.host}:{dev.port}", "ssh_key": dev.key("root"), "tcti": dev.tcti,
                         "proxy": proxies["url"]})
    offset = log_size(proxies["log"])
    result = az("edge-tpm", "provision", "--inventory", str(inventory), *dps.login, "--id-scope",
                dps.section["id_scope"], "--global-endpoint", dps.section["device_endpoint"], "--package-source",
                repo["base_url"], "--known-hosts", dev.known_hosts, "--proxy", "none")
    assert result.rc == 0, f"{result.message} | {result.recommendation}"
    (row,) = result.out
    assert row["status"] == "assigned", row
    print("provision steps:", [(s["name"], s.get("seconds")) for s in row["steps"]])
    assert dps.emu.store.get_registration(row["registrationId"])["status"] == "assigned"
    seen = log_since(proxies["log"], offset)
    assert "CONNECT " + dps.section["device_endpoint"].split("//", 1)[1] in seen
    assert unit_env(dev, "aziot-identityd")["https_proxy"] == proxies["url"]

