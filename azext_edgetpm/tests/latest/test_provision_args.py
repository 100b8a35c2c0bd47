"""`az edge-tpm provision` as az parses it, and inventories refused as a whole before anything
starts (no SSH, no DPS request), each bad row named. Runs against the DPS emulator (no devices)."""
import json
import os

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.test_dps_support import dps  # noqa: F401  pylint: disable=unused-import


def test_help_has_examples_and_every_parameter_explained(capsys):
    result = az("edge-tpm", "provision", "-h", output=None)
    text = capsys.readouterr().out
    assert result.rc == 0 and "Examples" in text
    lines = [line for line in text.splitlines() if line.startswith("    --")]
    assert lines and all(":" in line and line.split(":", 1)[1].strip() for line in lines), lines
    for flag in ("--inventory", "--max-parallel", "--state", "--retry-failed", "--only", "--shard",
                 "--dps-ops-per-minute", "--limit"):
        assert flag in text


@pytest.mark.parametrize("args, words", [
    ([], "No device given"),
    (["--host", "h", "--inventory", "x.csv"], "cannot be used together"),
    (["--host", "h", "--shard", "1/2"], "only go(es) with --inventory"),
    (["--inventory", "x.csv", "--registration-id", "abc"], "only go(es) with --host"),
    (["--host", "h", "--id-scope", "0ne00AAAAAA"], "No DPS given"),
    (["--inventory", "x.csv", "--login", "@x", "--retry-failed"], "needs the --state file"),
    (["--inventory", "x.csv", "--login", "@x", "--shard", "3/2"], "--shard"),
    (["--inventory", "x.csv", "--login", "@x", "--max-parallel", "0"], "must be positive"),
])
def test_refused_by_the_validator(args, words):
    result = az("edge-tpm", "provision", *args)
    assert result.rc != 0 and words in result.message, result.message
    assert result.recommendation and "Traceback" not in result.stderr


def test_bad_inventory_is_refused_before_anything_starts_naming_each_row(dps, tmp_path):  # noqa: F811
    key = tmp_path / "key"
    key.write_text("not used")
    rows = [
        "host,user,ssh_key,registration_id,hots",                      # a misspelt column
        f"10.0.0.1,root,{key},,x",
        f"10.0.0.2,root,{key},Not Valid!,",                            # invalid registration ID
        f"10.0.0.1:22,admin,{key},,",                                  # duplicate host
        f"10.0.0.3,root,{tmp_path / 'missing-key'},,",                 # key file missing
        f"10.0.0.4,root,{key},dev-a,",
        f"10.0.0.5,root,{key},DEV-A,",                                 # duplicate registration ID (case-insensitive)
        f"10.0.0.6,root,{key},dev-b,",                                 # a good row
    ]
    inventory = tmp_path / "fleet.csv"
    inventory.write_text("\n".join(rows) + "\n")
    dps.emu.reset_counters()
    result = az("edge-tpm", "provision", "--inventory", str(inventory), *dps.login, "--id-scope", "0ne00AAAAAA",
                "--state", str(tmp_path / "state.json"))
    assert result.rc != 0
    text = result.message
    assert "nothing was started" in text
    for line, words in ((1, "unknown column 'hots'"), (3, "not a valid DPS registration ID"),
                        (4, "duplicate host 10.0.0.1:22"), (5, "does not exist"),
                        (7, "duplicate registration_id dev-a")):
        assert f"line {line}" in text and words in text, (line, text)
    assert "line 8" not in text and "line 6" not in text.replace("also line 6", "")
    assert "line 2" not in text.replace("also line 2", "")
    assert result.recommendation and "Traceback" not in result.stderr
    # Nothing started: no DPS request at all, and no state file.
    assert dps.count("service.requests") == 0
    assert not os.path.exists(tmp_path / "state.json")


def test_yaml_and_json_inventories_with_defaults(dps, tmp_path):  # noqa: F811
    from azext_edgetpm.fleet.inventory import read_inventory
    key = tmp_path / "key"
    key.write_text("k")
    doc = {"defaults": {"user": "admin", "ssh_key": str(key), "tcti": "swtpm:port=2321"},
           "devices": [{"host": "gw-1", "tags": {"site": "a"}}, {"host": "root@gw-2:2222", "iot_hubs": "h1 h2"}]}
    (tmp_path / "fleet.json").write_text(json.dumps(doc))
    (tmp_path / "fleet.yml").write_text("defaults:\n  user: admin\n  ssh_key: key\n  tcti: swtpm:port=2321\n"
                                        "devices:\n  - host: gw-1\n    tags: {site: a}\n"
                                        "  - host: root@gw-2:2222\n    iot_hubs: [h1, h2]\n")
    for name in ("fleet.json", "fleet.yml"):
        devices = read_inventory(str(tmp_path / name))
        assert [(d.key, d.user, d.ssh_key, d.tcti) for d in devices] == [
            ("gw-1:22", "admin", str(key), "swtpm:port=2321"), ("gw-2:2222", "root", str(key), "swtpm:port=2321")]
        assert devices[0].tags == {"site": "a"} and devices[1].iot_hubs == ["h1", "h2"]


def test_shards_are_a_stable_partition():
    from azext_edgetpm.fleet.inventory import InventoryDevice, select_shard
    devices = [InventoryDevice(source=f"row {i}", host=f"10.0.{i // 250}.{i % 250}") for i in range(200)]
    parts = [select_shard(devices, i, 3) for i in (1, 2, 3)]
    keys = [{d.key for d in p} for p in parts]
    assert sum(len(k) for k in keys) == 200 and len(set().union(*keys)) == 200
    assert all(len(k) > 40 for k in keys)
    # Reordering the rows changes nothing.
    assert {d.key for d in select_shard(list(reversed(devices)), 2, 3)} == keys[1]


ANSIBLE_INI = """[plant7]
gw-1 ansible_host=10.0.0.1 ansible_user=admin
gw-2 ansible_host=10.0.0.2 ansible_port=2222 registration_id=dev-b tcti=swtpm:port=2321
[plant8]
gw-3 ansible_host=10.0.0.3
[all:vars]
ansible_ssh_private_key_file={key}
"""


def test_ansible_inventory_through_ansible_inventory(tmp_path):
    from azext_edgetpm.errors import UserInputError
    from azext_edgetpm.fleet.inventory import read_inventory
    import shutil
    import sys
    if not (shutil.which("ansible-inventory") or os.path.exists(os.path.join(os.path.dirname(sys.executable),
                                                                             "ansible-inventory"))):
        pytest.skip("Ansible (ansible-core) is not installed")
    key = tmp_path / "key"
    key.write_text("k")
    (tmp_path / "hosts.ini").write_text(ANSIBLE_INI.format(key=key))
    devices = read_inventory(str(tmp_path / "hosts.ini"))
    assert [(d.key, d.user, d.ssh_key) for d in devices] == [
        ("10.0.0.1:22", "admin", str(key)), ("10.0.0.2:2222", None, str(key)), ("10.0.0.3:22", None, str(key))]
    assert devices[1].registration_id == "dev-b" and devices[1].tcti == "swtpm:port=2321"
    assert [d.host for d in read_inventory(str(tmp_path / "hosts.ini"), limit="plant7")] == ["10.0.0.1", "10.0.0.2"]
    with pytest.raises(UserInputError, match="No group or host named plant9"):
        read_inventory(str(tmp_path / "hosts.ini"), limit="plant9")


def test_ansible_absent_is_said_clearly(tmp_path):
    """In the interpreter without Ansible (.venv-notss, as on a machine where it is not installed)."""
    import subprocess
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    python = os.path.join(repo, ".venv-notss", "bin", "python")
    if not os.path.exists(python):
        pytest.skip(".venv-notss (scripts/bootstrap.sh) is not there")
    (tmp_path / "hosts.ini").write_text("[plant7]\ngw-1\n")
    code = ("from azext_edgetpm.fleet.inventory import read_inventory\n"
            "from azext_edgetpm.errors import MissingInputError\n"
            f"try:\n    read_inventory({str(tmp_path / 'hosts.ini')!r})\n"
            "except MissingInputError as exc:\n    print(exc.message, '|', exc.hint)\n")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, cwd=repo,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": repo})
    assert "ansible-inventory (Ansible) is not installed" in proc.stdout, proc.stderr
    assert "pip install ansible-core" in proc.stdout


def test_the_dps_budget_paces_calls_and_holds_back_on_retry_after():
    """The token bucket with its clock and sleep given (as registration wait takes them)."""
    from azext_edgetpm.dps.ratelimit import MARGIN, DpsBudget, TokenBucket
    now = [100.0]

    def sleep(seconds):
        now[0] += seconds
    bucket = TokenBucket(60, clock=lambda: now[0], sleep=sleep)   # one a second, one saved up
    for _ in range(6):
        bucket.take()
    assert now[0] == pytest.approx(105.0)
    bucket.hold(30)                      # DPS said Retry-After: 30
    bucket.take()
    assert now[0] >= 135.0
    budget = DpsBudget(service_per_minute=600, clock=lambda: now[0], sleep=sleep)
    start = now[0]
    for _ in range(101):
        budget.service.take()
    # A second's worth of calls goes at once, the rest at 600/min less the margin (never faster).
    rate = 10 * MARGIN
    assert now[0] - start == pytest.approx((101 - rate) / rate, rel=0.01)
    assert (101 - 1) / (now[0] - start + 1) < 10   # over the whole run: under 600 a minute


def test_a_tpm_registration_takes_its_two_register_tokens_as_one_pair():
    """Devices reaching the registration together get their two tokens back to back: with tokens
    taken one at a time, every waiting device's first token came before anyone's second, so the
    first registration of a fleet waited for the whole wave (measured: 64 s at 10/min)."""
    from azext_edgetpm.dps.ratelimit import MARGIN, DpsBudget
    waits = []
    budget = DpsBudget(registrations_per_minute=60 / MARGIN, clock=lambda: 0.0, sleep=waits.append)
    for _ in range(3):        # three devices arrive at the same instant; nobody's clock moves
        budget.tpm_registration()
    # One token a second, one saved up: the pairs end 1, 3 and 5 seconds from now.
    assert waits == [pytest.approx(1.0), pytest.approx(3.0), pytest.approx(5.0)]
    assert budget.registrations.taken == 6


def test_paramiko_debug_records_are_built_only_when_a_log_handler_takes_them():
    """az sets the root logger to DEBUG and filters in its handlers: paramiko's per-packet DEBUG
    records were built for nothing (~300 a device). Its level follows the handlers; --debug (a
    handler at DEBUG) gets them all again, also after an earlier command in the same process."""
    import logging
    from azext_edgetpm._client_factory import _quiet_library_debug_logs
    root, paramiko_logger = logging.getLogger(), logging.getLogger("paramiko")
    saved = (list(root.handlers), paramiko_logger.level)
    handler = logging.NullHandler()
    try:
        root.handlers = [handler]
        handler.setLevel(logging.WARNING)
        _quiet_library_debug_logs()
        assert not paramiko_logger.isEnabledFor(logging.DEBUG)
        handler.setLevel(logging.DEBUG)
        _quiet_library_debug_logs()
        assert paramiko_logger.level == logging.NOTSET
    finally:
        root.handlers = saved[0]
        paramiko_logger.setLevel(saved[1])


def test_a_shard_takes_its_share_of_the_dps_limits_unless_a_limit_is_given():
    """--shard i/n: both budgets default to DPS's limits divided by n; an explicit value wins."""
    from azext_edgetpm.dps.ratelimit import DpsBudget
    assert DpsBudget.for_shard().per_minute == {"serviceOps": 1000, "registrations": 1000}
    assert DpsBudget.for_shard(shards=4).per_minute == {"serviceOps": 250, "registrations": 250}
    assert DpsBudget.for_shard(600, None, shards=4).per_minute == {"serviceOps": 600, "registrations": 250}
    assert DpsBudget.for_shard(None, 40, shards=3).per_minute == {"serviceOps": pytest.approx(333.33),
                                                                  "registrations": 40}


def test_a_429_pauses_every_thread_of_the_process_for_its_retry_after():
    """The azure-core policy sees one request's 429 (Retry-After: 7); the next request of ANOTHER
    thread waits those 7 s too (the clock and sleep are given; the response is a real requests
    Response in azure-core's transport wrapper, as the pipeline hands it over)."""
    import threading
    import requests
    from azure.core.pipeline import PipelineContext, PipelineRequest, PipelineResponse
    from azure.core.pipeline.transport import HttpRequest, RequestsTransportResponse
    from azext_edgetpm.dps.ratelimit import DpsBudget, RateLimitPolicy
    now, slept = [50.0], {}

    def sleep(seconds):
        slept.setdefault(threading.current_thread().name, []).append(seconds)
    budget = DpsBudget(service_per_minute=6000, clock=lambda: now[0], sleep=sleep)
    policy = RateLimitPolicy(budget)
    request = HttpRequest("GET", "https://dps.example/registrations/x")
    policy.on_request(PipelineRequest(request, PipelineContext(None)))     # a token in hand: no wait
    raw = requests.Response()
    raw.status_code, raw.headers["Retry-After"] = 429, "7"
    policy.on_response(PipelineRequest(request, PipelineContext(None)),
                       PipelineResponse(request, RequestsTransportResponse(request, raw), PipelineContext(None)))
    other = threading.Thread(target=policy.on_request, args=(PipelineRequest(request, PipelineContext(None)),),
                             name="another-device")
    other.start()
    other.join()
    assert slept == {"another-device": [pytest.approx(7.0)]}
    assert budget.throttled == 1 and budget.stats()["throttled"] == 1
