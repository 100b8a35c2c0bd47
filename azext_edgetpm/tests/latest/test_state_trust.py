"""A state file is untrusted input (issue 21, part A), on the dev kit.

- The token attack: a state file naming "any host" (a TLS listener on 127.0.0.1 with a certificate
  from the rig's CA) as the hub of `deprovision --delete-hub-device`: no connection reaches it.
- A journal holding another device's registration ID: only the row's own enrollment changes
  (every other enrollment's etag in the emulator unchanged), the result names both IDs.
- A stale state file after two devices swap addresses (two TCP relays on 127.0.0.1, swapped between
  the runs): each device acts on its own enrollment.

One module rig: four devices provisioned once in one fleet run (enrolled, installed, assigned).
The state files are made by the product and then changed as an attacker (or time) would: by
text, so the tests hold whatever the journal's layout. DPS state is read from the emulator's store.
"""
import re
import socket
import ssl
import threading
import tomllib

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import ArmLogin, EmulatorEnv, ok, start_emulator
from azext_edgetpm.tests.latest.test_lifecycle import (
    DEVICE_CA, Device, az_with_hubs, enrollment, hub_identity, record, write_inventory)

pytestmark = pytest.mark.devkit


@pytest.fixture(scope="module")
def dps(rig, tmp_path_factory):
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("trust-dps"), host_ips=[rig.host_ip],
                                     assignment_delay_s=0.2, hub_address="auto"))
    yield env
    env.close()


@pytest.fixture(scope="module")
def hub_login(dps):
    login = ArmLogin(dps)   # (the dev kit's cloud, with its IoT domains, is az's cloud while it lasts)
    yield login
    login.close()


@pytest.fixture(scope="module")
def devices(rig, repo, dps, tmp_path_factory):
    started = rig.add_devices(["fresh"] * 4)
    try:
        with open(dps.section["ca_bundle"], encoding="ascii") as handle:
            ca = handle.read()
        for dev in started:
            dev.exec(f"cat > {DEVICE_CA} && update-ca-certificates >/dev/null 2>&1", input=ca, check=True)
        inventory = write_inventory(tmp_path_factory.mktemp("trust") / "fleet.csv", started)
        results = ok("edge-tpm", "provision", "--inventory", inventory, *dps.login, "--id-scope",
                     dps.section["id_scope"], "--global-endpoint", dps.section["device_endpoint"],
                     "--package-source", repo["base_url"], "--known-hosts", rig.known_hosts, "--max-parallel", "4").out
        assert [r["status"] for r in results] == ["assigned"] * 4, results
        yield [Device(dev, r["registrationId"]) for dev, r in zip(started, results)]
    finally:
        for dev in started:
            rig.remove_device(dev)


class Listener:
    """"Any host": TLS on 127.0.0.1 with the emulator's server certificate (from the rig's CA);
    counts the connections it accepts."""

    def __init__(self, emu):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(emu.tls.server_cert, emu.tls.server_key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
            except OSError:
                pass

    def close(self):
        self.sock.close()


class Relay:
    """A TCP relay on 127.0.0.1: an "address" whose device can change (`target`)."""

    def __init__(self, target):
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=30)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def etags(dps):
    """Every enrollment's etag in the emulator, by registration ID."""
    items, _ = dps.emu.store.query_enrollments({"query": "*"}, 10000, None)
    return {e["registrationId"]: e["etag"] for e in items}


def tamper(path, old, new, pattern=False):
    """Change the state file's text (whatever its layout): `old` (a regular expression when `pattern`) -> `new`."""
    text = path.read_text(encoding="utf-8")
    changed = re.sub(old, new, text) if pattern else text.replace(old, new)
    assert changed != text
    path.write_text(changed, encoding="utf-8")


def test_hub_host_outside_the_clouds_domain_gets_no_request(dps, hub_login):
    """The adapter: a host that is not a DNS name in the cloud's IoT Hub domain is refused before a
    client, a token or a connection is made; one of the dev kit's cloud passes."""
    from azure.cli.core import get_default_cli
    from azext_edgetpm.dps.hub import HubClients, delete_device_identity
    from azext_edgetpm.errors import UserInputError
    listener = Listener(dps.emu)
    asked = []
    clients = HubClients(lambda: asked.append(1), cli_ctx=get_default_cli())
    try:
        for host in (f"127.0.0.1:{listener.port}", "127.0.0.1", "localhost", "evil.example.com",
                     f"hub.azure-devices.devkit.local:{listener.port}", "me@hub.azure-devices.devkit.local",
                     "hub.azure-devices.devkit.local/devices", "hub.azure-devices.net", "azure-devices.devkit.local"):
            with pytest.raises(UserInputError) as refused:
                delete_device_identity(clients, host, "victim-dev")
            assert "no request is sent" in str(refused.value) and refused.value.hint, host
        assert listener.connections == 0 and not asked
        assert clients.client(dps.section["iot_hubs"][0]).host == dps.section["iot_hubs"][0]
    finally:
        listener.close()


def test_state_naming_any_host_as_hub_sends_it_nothing(devices, dps, hub_login, rig, tmp_path):
    d = devices[0]
    hub = record(dps, d.rid)["assignedHub"]
    inventory = write_inventory(tmp_path / "one.csv", [d.dev])
    state = tmp_path / "state.json"
    args = ["edge-tpm", "deprovision", "--inventory", inventory, "--state", str(state), *dps.login,
            "--known-hosts", rig.known_hosts, "--delete-hub-device", "--yes"]
    first = ok(*args).out[0]     # here the hub names do not resolve: the identity is left, the record kept
    assert first["hubIdentity"] == "left" and record(dps, d.rid) is not None, first
    listener = Listener(dps.emu)
    try:
        tamper(state, hub, f"127.0.0.1:{listener.port}")
        tamper(state, rf'("deviceId"\s*:\s*)"{d.rid}"', r'\1"victim-dev"', pattern=True)
        done = az_with_hubs(dps, tmp_path, *args)[0]
        assert listener.connections == 0
    finally:
        listener.close()
    # the hub and device ID DPS confirmed were acted on; the state file's were named, not used
    assert done["hubIdentity"] == "deleted" and done["assignedHub"] == hub, done
    assert hub_identity(dps, hub, d.rid) is None and record(dps, d.rid) is None
    note = " ".join(done["stateMismatch"])
    assert f"127.0.0.1:{listener.port}" in note and "victim-dev" in note and hub in note and d.rid in note


def test_journal_holding_another_devices_id_changes_only_the_rows_own_enrollment(devices, dps, rig, tmp_path):
    p, q = devices[1], devices[2]
    inventory = write_inventory(tmp_path / "p.csv", [p.dev])
    state = tmp_path / "state.json"
    args = ["edge-tpm", "deprovision", "--inventory", inventory, "--state", str(state), *dps.login,
            "--known-hosts", rig.known_hosts, "--yes"]
    dps.emu.configure(local_auth_disabled=True)      # the first run stops at the enrollment step
    try:
        stopped = az(*args)
    finally:
        dps.emu.configure(local_auth_disabled=False)
    assert stopped.rc != 0 and stopped.out[0]["failedStep"] == "enrollment", stopped.out
    tamper(state, p.rid, q.rid)                      # the journal now says the row is Q's device
    before = etags(dps)

    result = az(*args).out[0]
    assert result["status"] == "done" and result["registrationId"] == p.rid, result
    assert enrollment(dps, p.rid)["provisioningStatus"] == "disabled"
    after = etags(dps)
    assert {r: e for r, e in after.items() if r != p.rid} == {r: e for r, e in before.items() if r != p.rid}
    assert enrollment(dps, q.rid)["provisioningStatus"] == "enabled" and record(dps, q.rid) is not None
    assert any(q.rid in n and p.rid in n and "config.toml" in n for n in result["stateMismatch"]), result


def test_the_journal_alone_never_names_an_enrollment(devices, dps, rig, tmp_path):
    """The device out of reach, no ID in the row, the journal naming one: the device stops with an
    error naming it; DPS sees no write."""
    q = devices[2]
    inventory = write_inventory(tmp_path / "q.csv", [q.dev])
    state = tmp_path / "state.json"
    args = ["edge-tpm", "deprovision", "--inventory", inventory, "--state", str(state), *dps.login, "--yes"]
    dps.emu.configure(local_auth_disabled=True)
    try:
        az(*args, "--known-hosts", rig.known_hosts)
    finally:
        dps.emu.configure(local_auth_disabled=False)
    before = etags(dps)
    empty = tmp_path / "known_hosts"
    empty.write_text("", encoding="utf-8")            # the device's host key unknown now: not reached
    refused = az(*args, "--known-hosts", str(empty))
    out = refused.out[0]
    assert refused.rc != 0 and out["failedStep"] == "identify", out
    assert q.rid in out["error"] and "only the device can confirm" in out["error"], out["error"]
    assert etags(dps) == before


def test_stale_state_after_two_devices_swap_addresses(devices, dps, rig, tmp_path):
    q, s = devices[2], devices[3]
    relays = [Relay((q.dev.host, q.dev.port)), Relay((s.dev.host, s.dev.port))]
    try:
        def known_hosts(behind):
            path = tmp_path / f"known_hosts-{len(behind)}-{behind[0].rid[:8]}"
            path.write_text("".join(f"[127.0.0.1]:{relay.port} {key}\n" for relay, dev in zip(relays, behind)
                                    for key in dev.dev.host_keys), encoding="utf-8")
            return str(path)

        inventory = tmp_path / "fleet.csv"
        inventory.write_text("host,ssh_key,tcti\n" + "".join(
            f'admin@127.0.0.1:{relay.port},{dev.dev.key("admin")},"{dev.dev.tcti}"\n'
            for relay, dev in zip(relays, (q, s))), encoding="utf-8")
        state = tmp_path / "state.json"
        args = ["edge-tpm", "deprovision", "--inventory", str(inventory), "--state", str(state), *dps.login, "--yes"]
        dps.emu.configure(local_auth_disabled=True)   # the first run: both identified, then stopped
        try:
            first = az(*args, "--known-hosts", known_hosts([q, s])).out
        finally:
            dps.emu.configure(local_auth_disabled=False)
        assert [r["registrationId"] for r in first] == [q.rid, s.rid], first
        assert all(r["failedStep"] == "enrollment" for r in first), first

        relays[0].target, relays[1].target = (s.dev.host, s.dev.port), (q.dev.host, q.dev.port)   # the swap
        results = az(*args, "--known-hosts", known_hosts([s, q])).out
        assert [r["status"] for r in results] == ["done", "done"], results
        assert [r["registrationId"] for r in results] == [s.rid, q.rid], results   # each its own
        for result, other in zip(results, (q, s)):
            assert any(other.rid in n for n in result["stateMismatch"]), result
        for dev in (q, s):
            assert enrollment(dps, dev.rid)["provisioningStatus"] == "disabled" and record(dps, dev.rid) is None
            assert "provisioning" not in tomllib.loads(dev.sh("cat /etc/aziot/config.toml"))   # reset
    finally:
        for relay in relays:
            relay.close()


def test_host_domains_come_from_azs_cloud_configuration():
    """No rig: az's clouds and a registered suffix decide the domains (a sovereign cloud's too)."""
    from types import SimpleNamespace
    from azure.cli.core.cloud import AZURE_CHINA_CLOUD, AZURE_PUBLIC_CLOUD, Cloud, CloudSuffixes
    from azext_edgetpm.dps import hosts
    from azext_edgetpm.errors import UserInputError

    def ctx(cloud):
        return SimpleNamespace(cloud=cloud)
    assert hosts.check("My-Hub.azure-devices.net", hosts.HUB, ctx(AZURE_PUBLIC_CLOUD), "t") == "my-hub.azure-devices.net"
    assert hosts.check("x.azure-devices-provisioning.cn", hosts.DPS, ctx(AZURE_CHINA_CLOUD), "t")
    with pytest.raises(UserInputError):
        hosts.check("my-hub.azure-devices.net", hosts.HUB, ctx(AZURE_CHINA_CLOUD), "t")
    custom = Cloud("Sovereign", suffixes=CloudSuffixes())
    setattr(custom.suffixes, "iot_hub_dns", "iot.example")   # as az loads a registered cloud's suffix_iot_hub_dns
    assert hosts.check("h.iot.example", hosts.HUB, ctx(custom), "t") == "h.iot.example"
    with pytest.raises(UserInputError) as unknown:
        hosts.check("d.iot.example", hosts.DPS, ctx(custom), "t")
    assert "az cloud update -n Sovereign --cloud-config" in unknown.value.hint
    for bad in ("h.iot.example:443", "h.iot.example.", "-h.iot.example", "h..iot.example", "[::1]", "10.0.0.1",
                "h.iot.example#", "h .iot.example", "", None):
        with pytest.raises(UserInputError):
            hosts.check(bad, hosts.HUB, ctx(custom), "t")
