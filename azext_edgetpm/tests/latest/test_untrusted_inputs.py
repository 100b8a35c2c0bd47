"""An inventory, a file named on the command line or a proxy value is untrusted input (issue 21,
part B), through the real az face: no proxy password reaches stdout, stderr or --debug; an
inventory is never executed unless asked for; every file read is bounded; malformed shapes are
one clear error naming the row. Every case fails before anything connects (a device address
nothing listens on, a DPS that is never reached), so the whole file runs in seconds.
"""
import csv
import json
import os
import shutil
import sys
import urllib.parse

import pytest
import yaml
from azure.cli.core.azclierror import AzCLIError

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.faults import record

NOWHERE = "root@127.0.0.1:9"   # (the discard port: nothing listens, the connection is refused at once)
LOGIN = "HostName=dps-nowhere.invalid;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=" + "A" * 44
SCOPE = "0ne00000001"
INVENTORY_COMMANDS = (("provision", ["--id-scope", SCOPE]), ("deprovision", ["--yes"]), ("reprovision", ["--yes"]),
                      ("rekey", ["--yes"]))


def hostile_passwords():
    """Passwords of every shape the issue found leaking, each between two markers of its own
    (a leaked prefix or suffix shows as its marker)."""
    middles = [" space", "quo'te", 'dq"uote', "back\\slash", "ctl\x01char", "tab\there", "nl\nline", "nul\x00",
               "sla/sh", "ha#sh", "que?ry", "a@t", "co:lon", "uni\u00e9\U0001f642", "%2F%40", "", "x" * 40]
    return [f"Mk{i:02d}q{m}Zt{i:02d}w" for i, m in enumerate(middles)]


PASSWORDS = hostile_passwords()


def proxy_values(password):
    """The URLs a user could give with that password: with and without a scheme."""
    return [f"http://edge:{password}@proxy.example:3128", f"edge:{password}@proxy.example:3128"]


def leaks(text, passwords=PASSWORDS):
    """The passwords (or their markers, or their percent-encoded or escaped forms) found in `text`."""
    found = []
    for password in passwords:
        head, tail = password[:4], password[-4:]
        forms = {password, urllib.parse.quote(password, safe=""), json.dumps(password)[1:-1],
                 repr(password)[1:-1], head, tail}
        found += [f"{head}…" for form in forms if form and form in text]
    return sorted(set(found))


def az_debug(*args):
    """`az <args> --debug` in this process, with every log record it makes (what --debug prints:
    az's, knack's, paramiko's and ours, tracebacks included) appended to its stderr. (Under
    pytest, whose handler is already on the root logger, knack leaves logging alone: the levels
    --debug sets are set here, and a handler of our own takes what az's console handler would.)"""
    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            kept.append(self.format(record))
    kept = []
    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
    loggers = [logging.getLogger(), logging.getLogger("cli")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    loggers[0].addHandler(handler)
    try:
        result = az(*args, "--debug")
    finally:
        loggers[0].removeHandler(handler)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    result.stderr += "\n".join(kept)
    return result


def scanned(result):
    return "\n".join([result.text, result.stderr, result.message, result.recommendation])


def check_run(result, debug=False, inline=False):
    """One run: an error, no traceback; with --debug, the debug log was there to scan."""
    record("hostile inputs tried")
    text = scanned(result)
    assert result.rc != 0, text[-2000:]
    # One az error (--debug adds az's traceback of it, by az's design; never an unexpected one)
    assert isinstance(result.error, AzCLIError) and "unexpected error" not in text, text[-3000:]
    assert debug or "Traceback" not in result.stderr, result.stderr[-3000:]
    if debug:
        assert "DEBUG: " in result.stderr  # (--debug was on: its log is part of what is scanned)
    if inline and debug:
        # az itself echoes its raw argv ("Command arguments: [...]") before it loads any
        # extension: a password typed on the command line is there by az's design (and in the
        # process list). That one line is left out; everything the extension prints is scanned.
        text = "\n".join(line for line in text.splitlines() if "cli.knack.cli: Command arguments:" not in line)
    found = leaks(text)
    record("secret hits", len(found))
    return found


def test_hostile_proxy_passwords_never_reach_output_from_the_command_line(tmp_path):
    """--proxy inline and as @file, with and without --debug, for install and provision; and
    values over the length limit or with control characters (refused by the face's bounds)."""
    hits = []
    for index, password in enumerate(PASSWORDS):
        for value in proxy_values(password) + [proxy_values(password)[0] + "/" + "p" * 1100]:
            path = tmp_path / f"proxy-{index}.txt"
            path.write_bytes(value.encode("utf-8", "surrogatepass") + b"\n")
            for given, inline in ((value, True), (f"@{path}", False)):
                debug = inline == (index % 2 == 0)  # half the runs of each kind with --debug
                run = az_debug if debug else az
                install = run("edge-tpm", "install", "--host", NOWHERE, "--id-scope", SCOPE, "--proxy", given)
                hits += check_run(install, debug, inline)
                provision = run("edge-tpm", "provision", "--host", NOWHERE, "--login", LOGIN, "--id-scope", SCOPE,
                                "--proxy", given)
                hits += check_run(provision, debug, inline)
    assert hits == []


def write_inventories(tmp_path, passwords):
    """One inventory per format, a row per hostile proxy value, and one row that is always bad
    (so that nothing starts, whatever the proxy rows give)."""
    rows = [{"host": f"10.9.{i // 200}.{i % 200 + 1}", "proxy": value}
            for i, value in enumerate(v for p in passwords for v in proxy_values(p))]
    rows.append({"host": "10.9.99.1", "port": "99999"})
    files = {}
    with open(tmp_path / "fleet.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["host", "port", "proxy"])
        writer.writeheader()
        writer.writerows(r for r in rows if "\x00" not in r.get("proxy", ""))  # (CSV cannot hold a NUL)
    files["csv"] = tmp_path / "fleet.csv"
    nul = next(p for p in passwords if "\x00" in p)
    (tmp_path / "fleet-nul.csv").write_text(f"host,proxy\n10.9.0.1,http://edge:{nul}@proxy.example:3128\n",
                                            encoding="utf-8")
    files["csv with a NUL"] = tmp_path / "fleet-nul.csv"
    (tmp_path / "fleet.json").write_text(json.dumps({"devices": rows}), encoding="utf-8")
    files["json"] = tmp_path / "fleet.json"
    (tmp_path / "fleet.yml").write_text(yaml.safe_dump({"devices": rows}, allow_unicode=True), encoding="utf-8")
    files["yaml"] = tmp_path / "fleet.yml"
    hosts = {r["host"]: {k: v for k, v in r.items() if k != "host"} for r in rows}
    (tmp_path / "fleet-ansible.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}, allow_unicode=True),
                                                encoding="utf-8")
    files["ansible yaml"] = tmp_path / "fleet-ansible.yml"
    lines = ["[fleet]"] + [f"{r['host']} " + " ".join(f"{k}={json.dumps(v)}" for k, v in r.items() if k != "host")
                           for r in rows if "\x00" not in r.get("proxy", "") and "\n" not in r.get("proxy", "")]
    (tmp_path / "hosts.ini").write_text("\n".join(lines) + "\n", encoding="utf-8")
    files["ansible ini"] = tmp_path / "hosts.ini"
    # Unquoted, so that Ansible's INI parser fails on the very words of the password and says so.
    (tmp_path / "broken.ini").write_text("[fleet]\n" + "".join(f"10.9.0.{i + 1} proxy=http://edge:{p}@h:1\n"
                                                               for i, p in enumerate(passwords)
                                                               if "\x00" not in p and "\n" not in p))
    files["broken ansible ini"] = tmp_path / "broken.ini"
    # A file that is not valid YAML where the password sits: the parser's message must not quote it.
    (tmp_path / "broken.yml").write_text("devices:\n  - host: 10.9.0.1\n    proxy: \"http://edge:"
                                         + passwords[1] + "@proxy.example:3128\n  - [\n", encoding="utf-8")
    files["broken yaml"] = tmp_path / "broken.yml"
    return files


def test_hostile_proxy_passwords_never_reach_output_from_an_inventory(tmp_path):
    """Every inventory format's proxy column, through every command that takes an inventory
    (and --debug on provision): one error naming the bad rows, no password."""
    if not (shutil.which("ansible-inventory") or os.path.exists(os.path.join(os.path.dirname(sys.executable),
                                                                             "ansible-inventory"))):
        pytest.skip("Ansible (ansible-core) is not installed")
    files = write_inventories(tmp_path, PASSWORDS)
    hits = []
    for fmt, path in files.items():
        # (ansible-inventory takes a second a run: the Ansible files go through two of the commands)
        for command, extra in INVENTORY_COMMANDS[::3] if "ansible" in fmt else INVENTORY_COMMANDS:
            debug = command == "provision"
            result = (az_debug if debug else az)("edge-tpm", command, "--inventory", str(path), "--login", LOGIN,
                                                 *extra)
            hits += [f"{fmt} {command}: {h}" for h in check_run(result, debug)]
            assert any(words in result.message for words in ("nothing was started", "not valid", "could not read")), \
                (fmt, result.message)
            if fmt in ("csv", "json", "yaml", "ansible yaml"):
                assert "port '99999' is not a TCP port" in result.message, (fmt, result.message[-500:])
    assert hits == []


def test_an_executable_inventory_is_run_only_when_asked_for(tmp_path):
    """A 0755 fleet.txt that would touch a canary: refused by name without --inventory-format
    ansible-script, read as text (never run) with ansible, and run with ansible-script only."""
    if not (shutil.which("ansible-inventory") or os.path.exists(os.path.join(os.path.dirname(sys.executable),
                                                                             "ansible-inventory"))):
        pytest.skip("Ansible (ansible-core) is not installed")
    canary = tmp_path / "canary"
    script = tmp_path / "fleet.txt"
    script.write_text(f"#!/bin/sh\ntouch {canary}\n"
                      "echo '{\"all\": {\"hosts\": [\"127.0.0.1\"]}, \"_meta\": {\"hostvars\": {\"127.0.0.1\": "
                      "{\"ansible_port\": 9, \"registration_id\": \"script-dev\"}}}}'\n", encoding="utf-8")
    script.chmod(0o755)
    shutil.copy(script, tmp_path / "hosts.ini")
    escapes = 0
    base = ["--login", LOGIN, "--yes", "--dry-run"]
    refused = az("edge-tpm", "deprovision", "--inventory", str(script), *base)
    record("hostile inputs tried")
    escapes += canary.exists()
    assert refused.rc != 0 and not canary.exists()
    assert "Cannot tell the format of the inventory" in refused.message and "executable" in refused.message
    assert "--inventory-format ansible-script" in refused.recommendation, refused.recommendation
    for path, fmt in ((script, "ansible"), (tmp_path / "hosts.ini", None), (script, "csv"), (script, "yaml")):
        result = az("edge-tpm", "deprovision", "--inventory", str(path), *base,
                    *(["--inventory-format", fmt] if fmt else []))
        record("hostile inputs tried")
        escapes += canary.exists()
        assert result.rc != 0 and not canary.exists(), (path, fmt, result.message)
        assert "Traceback" not in result.stderr
    record("escapes", escapes)
    # Asked for: it runs (the canary shows the test could see an execution).
    ran = az("edge-tpm", "deprovision", "--inventory", str(script), "--inventory-format", "ansible-script", *base)
    assert canary.exists(), ran.message
    assert "script-dev" in scanned(ran) or ran.rc == 0 or "127.0.0.1" in scanned(ran), ran.message
    # Without the execute bit, ansible-script says so.
    canary.unlink()
    script.chmod(0o644)
    plain = az("edge-tpm", "deprovision", "--inventory", str(script), "--inventory-format", "ansible-script", *base)
    assert plain.rc != 0 and "not an executable file" in plain.message and not canary.exists()


def az_peak(*args):
    """The real az in a process of its own, with a generous time guard: (rc, stderr, peak RSS MiB)."""
    from azext_edgetpm.tests.latest.test_robust_devices import az_process
    rc, _, err, peak = az_process(*args, timeout=60)
    return rc, err, peak


def test_dev_zero_as_a_file_is_one_clear_error_in_bounded_memory(tmp_path):
    """/dev/zero as the inventory, the EK CA bundle, an inventory's proxy_ca and --payload: one
    error saying what and why, and az's peak RSS under 100 MiB (before the bound, az grew until the
    kernel killed it)."""
    inventory = tmp_path / "fleet.csv"
    inventory.write_text("host,proxy,proxy_ca\n127.0.0.1:9,http://proxy.example:3128,/dev/zero\n", encoding="utf-8")
    cases = {
        "inventory": (["edge-tpm", "provision", "--inventory", "/dev/zero", "--inventory-format", "csv"],
                      "holds more than 16 MiB"),
        "inventory (no format)": (["edge-tpm", "deprovision", "--inventory", "/dev/zero", "--yes"],
                                  "holds more than 16 MiB"),
        "--ek-ca-bundle": (["edge-tpm", "provision", "--host", NOWHERE, "--ek-ca-bundle", "/dev/zero"],
                           "holds more than 4 MiB"),
        "proxy_ca column": (["edge-tpm", "provision", "--inventory", str(inventory)], "holds more than 4 MiB"),
        "--proxy-ca": (["edge-tpm", "provision", "--host", NOWHERE, "--proxy", "http://proxy.example:3128",
                        "--proxy-ca", "/dev/zero"], "--proxy-ca is not a file"),
        "--payload": (["edge-tpm", "provision", "--host", NOWHERE, "--payload", "/dev/zero"], "--payload"),
    }
    tracebacks = 0
    baseline = az_peak("edge-tpm", "deprovision", "--inventory", str(inventory), "--yes", "--login", LOGIN)[2]
    print(f"az on a 1-row inventory: {baseline:.0f} MiB")
    for what, (args, expected) in cases.items():
        rc, err, peak = az_peak(*args, "--login", LOGIN, *(["--id-scope", SCOPE] if "provision" in args else []))
        record("hostile inputs tried")
        tracebacks += "Traceback" in err
        assert rc != 0 and "ERROR:" in err and expected in err, (what, err[-1500:])
        assert "Traceback" not in err and len(err) < 3000, (what, err[-1500:])
        assert peak < 100, f"{what}: az peaked at {peak:.0f} MiB"
        print(f"/dev/zero as {what}: {peak:.0f} MiB")
    record("tracebacks", tracebacks)


def test_malformed_inventories_are_one_error_naming_the_rows(tmp_path):
    """The gaps and shapes the issue found: the user column's length, iot_hubs that are no host
    names, a device_id two rows share, deeply nested tags, a NUL in proxy_ca, odd YAML types."""
    deep_text = '{"a": ' * 5000 + "{}" + "}" * 5000   # (as a CSV cell holds it: JSON text)
    twelve = {}
    for _ in range(12):
        twelve = {"a": twelve}
    rows = [
        {"host": "10.8.0.1", "user": "u" * 65},                                          # device 1
        {"host": "10.8.0.2", "iot_hubs": ["hub.azure-devices.net:8443"]},                # device 2
        {"host": "10.8.0.3", "iot_hubs": "https://evil.example/x"},                      # device 3
        {"host": "10.8.0.4", "device_id": "same"},                                       # device 4
        {"host": "10.8.0.5", "device_id": "same"},                                       # device 5
        {"host": "10.8.0.6", "registration_id": "rid-6"},                                # device 6
        {"host": "10.8.0.7", "device_id": "rid-6"},                                      # device 7
        {"host": "10.8.0.8", "proxy": "http://proxy.example:3128", "proxy_ca": "ca\x00.pem"},  # device 8
        {"host": "10.8.0.9", "tags": deep_text},                                         # device 9
        {"host": "10.8.0.10", "tags": twelve},                                           # device 10
        {"host": "10.8.0.11", "iot_hubs": [{"name": "x"}], "port": [1]},                 # device 11
        {"host": "10.8.0.12", "user": "bad user"},                                       # device 12
        {"host": "10.8.0.13", "iot_hubs": ["hub-a.azure-devices.net", "hub-b.azure-devices.net"]},  # fine
    ]
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps({"devices": rows}), encoding="utf-8")
    result = az("edge-tpm", "provision", "--inventory", str(path), "--login", LOGIN, "--id-scope", SCOPE)
    record("hostile inputs tried", len(rows))
    message = result.message
    assert result.rc != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    expected = {1: "user is 65 characters long", 2: "is not an IoT hub host name", 3: "is not an IoT hub host name",
                5: "duplicate device_id same (also device 4)", 7: "duplicate device_id rid-6 (also device 6)",
                8: "cannot hold a NUL character", 9: "tags nest deeper than 10", 10: "tags nest deeper than 10",
                11: "iot_hubs is not a list of host names", 12: "is not a login name"}
    for number, words in expected.items():
        line = next((text for text in message.splitlines() if text.strip().startswith(f"device {number} ")), "")
        assert words in line, (number, words, message)
    assert "device 13 " not in message and "device 4 " not in message and "device 6 " not in message
    assert "(10 bad rows); nothing was started" in message, message

    # A YAML document nested past Python's recursion limit, and a YAML alias bomb in tags.
    (tmp_path / "deep.yml").write_text("devices:\n  - host: 10.8.1.1\n    tags: " + "[" * 20000 + "]" * 20000 + "\n")
    bomb = "bomb: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"b{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 9))
    (tmp_path / "bomb.yml").write_text("defaults: {}\ndevices:\n  - host: 10.8.1.2\n    tags:\n      "
                                       + bomb.replace("\n", "\n      ").rstrip() + "\n")
    for name, words in (("deep.yml", "nests too deeply"), ("bomb.yml", "tags is larger than")):
        result = az("edge-tpm", "provision", "--inventory", str(tmp_path / name), "--login", LOGIN, "--id-scope",
                    SCOPE)
        record("hostile inputs tried")
        assert result.rc != 0 and words in result.message, (name, result.message[-800:])
        assert "Traceback" not in result.stderr
    # The same through --initial-twin-tags: deeply nested JSON text, and a JSON file over its bound.
    big = tmp_path / "tags.json"
    big.write_text("{" + " " * (2 << 20) + "}", encoding="utf-8")
    for value, words in (('{"a": ' * 5000 + "1" + "}" * 5000, "nests too deeply"), (str(big), "holds more than 1 MiB")):
        result = az("edge-tpm", "provision", "--host", NOWHERE, "--login", LOGIN, "--id-scope", SCOPE,
                    "--initial-twin-tags", value)
        record("hostile inputs tried")
        assert result.rc != 0 and words in result.message and "Traceback" not in result.stderr, result.message
    record("tracebacks", 0)


def test_inventory_format_is_chosen_from_the_name_or_given(tmp_path):
    from azext_edgetpm.errors import UserInputError
    from azext_edgetpm.fleet.inventory import read_inventory
    (tmp_path / "fleet.txt").write_text("host\n10.7.0.1\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"Cannot tell the format .*\(\.txt\)\.$"):
        read_inventory(str(tmp_path / "fleet.txt"))
    assert [d.key for d in read_inventory(str(tmp_path / "fleet.txt"), "csv")] == ["10.7.0.1:22"]
    (tmp_path / "fleet.data").write_text("- host: 10.7.0.2\n", encoding="utf-8")
    assert [d.key for d in read_inventory(str(tmp_path / "fleet.data"), "yaml")] == ["10.7.0.2:22"]
    with pytest.raises(UserInputError, match="Unknown inventory format"):
        read_inventory(str(tmp_path / "fleet.txt"), "xml")


def test_status_never_shows_a_proxy_password_a_device_file_holds():
    """`status` reports the agent's proxy from the device's config.toml, which anyone with root on
    the device may have written: shown with nothing up to its last @, whatever the password."""
    import tomlkit
    from azext_edgetpm.edge.configtoml import summarize
    hits = []
    for password in (p for p in PASSWORDS if "\x00" not in p):
        for value in proxy_values(password):
            text = tomlkit.dumps({"agent": {"env": {"https_proxy": value}}})
            shown = summarize(text)["agentProxy"]
            record("hostile inputs tried")
            assert shown.endswith("@proxy.example:3128"), shown
            hits += leaks(shown)
    assert summarize('agent = "x"\n')["agentProxy"] is None
    record("secret hits", len(hits))
    assert hits == []
