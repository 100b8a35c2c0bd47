"""A fleet run as Azure Pipelines and its users see it, for real on the dev kit: 6 devices of
which 2 fail (a device without a TPM, a host that refuses SSH) with TF_BUILD set; the failure
budget (--max-fail-percentage) over 10 devices whose first 3 fail; provision --dry-run's plan
(the emulator's write counters and the devices' files unchanged); the HTML report in headless
Chromium (Debian's package), screenshot and DOM.
"""
import json
import os
import re
import shutil

import pytest

from azext_edgetpm.tests.latest.azcli import az
from azext_edgetpm.tests.latest.browser import chart_colours, open_page
from azext_edgetpm.tests.latest.test_dps_support import EmulatorEnv, start_emulator
from azext_edgetpm.tests.latest.test_fleet import add_devices  # (also test_pipeline_run's)
from azext_edgetpm.tests.latest.test_fleet_stop import journal

pytestmark = pytest.mark.devkit

HERE = os.path.dirname(os.path.abspath(__file__))
JUNIT_XSD = os.path.join(HERE, "data", "junit.xsd")


def junit_cases(path):
    """The JUnit file, validated against the JUnit schema, as [{name, classname, failed, type, message}]."""
    import xml.etree.ElementTree as ET
    import xmlschema
    xmlschema.XMLSchema(JUNIT_XSD).validate(path)
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        failure = case.find("failure")
        cases.append({"name": case.get("name"), "classname": case.get("classname"), "time": float(case.get("time")),
                      "failed": failure is not None, "skipped": case.find("skipped") is not None,
                      "type": failure.get("type") if failure is not None else None,
                      "message": failure.get("message") if failure is not None else None})
    return cases


def vso(stderr, command):
    """The `##vso[command ...]message` lines of stderr, as (properties, message)."""
    out = []
    for line in stderr.splitlines():
        found = re.match(r"^##vso\[" + re.escape(command) + r"(?: ([^\]]*))?\](.*)$", line)
        if found:
            props = dict(p.split("=", 1) for p in (found.group(1) or "").split(";") if p)
            out.append((props, found.group(2)))
    return out


@pytest.fixture(scope="module")
def dps(rig, tmp_path_factory):
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("ci-dps"), host_ips=[rig.host_ip]))
    yield env
    env.close()


@pytest.fixture(scope="module")
def good(rig, dps):
    devices = add_devices(rig, dps, 4)
    yield devices
    for dev in devices:
        rig.remove_device(dev)


def row(dev, user="root"):
    return {"host": f"{user}@{dev.host}:{dev.port}", "ssh_key": dev.key(user), "tcti": dev.tcti or ""}


def unreachable(rig, port, key):
    return {"host": f"root@{rig.host_ip}:{port}", "ssh_key": key, "tcti": ""}


def write_inventory(path, rows):
    import csv
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["host", "ssh_key", "tcti"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def provision(dps, repo, rig, inventory, *extra, env=None):
    return az("edge-tpm", "provision", "--inventory", inventory, *dps.login, "--id-scope", dps.section["id_scope"],
              "--global-endpoint", dps.section["device_endpoint"], "--package-source", repo["base_url"],
              "--known-hosts", rig.known_hosts, *extra, env=env)


def file_hashes(dev):
    """The device's IoT Edge and apt configuration, hashed (a plan must change none of it)."""
    proc = dev.exec("find /etc/aziot /etc/apt -type f -exec sha256sum {} + 2>/dev/null | sort; "
                    "dpkg-query -W -f='${Package} ${Version}\\n' 2>/dev/null | sort | sha256sum", timeout=120)
    return proc.stdout


def test_dry_run_plans_each_device_and_writes_nothing(rig, dps, repo, good, tmp_path):
    notpm = rig.by_variant("notpm")
    inventory = write_inventory(tmp_path / "plan.csv", [row(d) for d in good] + [row(notpm)])
    before = {d.name: file_hashes(d) for d in good}
    dps.emu.reset_counters()
    result = provision(dps, repo, rig, inventory, "--dry-run", "--state", str(tmp_path / "state.json"))
    from azext_edgetpm.fleet.summary import EXIT_SOME_FAILED
    assert result.rc == EXIT_SOME_FAILED, (result.message, result.stderr[-2000:])   # the device without a TPM
    out = json.loads(result.text)
    planned, failed = out[:4], out[4]
    assert [r["status"] for r in planned] == ["planned"] * 4, [r["error"] for r in planned]
    for r in planned:
        assert r["plan"]["enrollment"] == "create" and r["plan"]["install"], r["plan"]
    assert failed["status"] == "failed" and failed["failedStep"] == "identify"
    # No DPS write of any kind (reads only), no device change, no state file.
    counters = dps.emu.counters()
    writes = {k: v for k, v in counters.items() if k.startswith("endpoint.") and v and
              re.match(r"endpoint\.(PUT|POST|DELETE|PATCH) ", k) and "/query" not in k}
    assert not writes, writes
    assert {d.name: file_hashes(d) for d in good} == before
    assert not os.path.exists(tmp_path / "state.json")


def test_six_devices_two_fail_in_azure_pipelines(rig, dps, repo, good, tmp_path):
    notpm = rig.by_variant("notpm")
    refused = unreachable(rig, 1, good[0].key("root"))
    rows = [row(good[0]), row(notpm), row(good[1]), row(good[2]), refused, row(good[3])]
    inventory = write_inventory(tmp_path / "six.csv", rows)
    junit, report = tmp_path / "out" / "junit.xml", tmp_path / "out" / "report.html"
    result = provision(dps, repo, rig, inventory, "--max-parallel", "6", "--junit-xml", str(junit),
                       "--report", str(report), env={"TF_BUILD": "True", "AGENT_TEMPDIRECTORY": str(tmp_path)})
    from azext_edgetpm.fleet.summary import EXIT_SOME_FAILED
    assert result.rc == EXIT_SOME_FAILED, (result.message, result.stderr[-3000:])
    out = json.loads(result.text)   # stdout stays the results
    assert [r["status"] for r in out] == ["assigned", "failed", "assigned", "assigned", "failed", "assigned"], \
        [r["error"] for r in out]
    # Exactly one issue per failed device, naming it and why.
    issues = vso(result.stderr, "task.logissue")
    assert len(issues) == 2 and all(p == {"type": "error"} for p, _ in issues)
    named = sorted(message for _, message in issues)
    assert named[0].startswith(f"root@{notpm.host}:{notpm.port}") and "identify" in named[0]
    assert named[1].startswith(refused["host"]) and "refused" in named[1]
    assert not any("\n" in m for m in named)
    # The progress rises to 100.
    values = [int(p["value"]) for p, _ in vso(result.stderr, "task.setprogress")]
    assert values == sorted(values) and values[-1] == 100 and len(values) >= 2
    # The summary page: counts and the two failed devices.
    (summary_path,) = [m for _, m in vso(result.stderr, "task.uploadsummary")]
    with open(summary_path, encoding="utf-8") as handle:
        markdown = handle.read()
    assert "**6 devices**: 4 assigned" in markdown and "2 failed" in markdown
    failed_rows = [line for line in markdown.splitlines() if line.startswith("| root@")]
    assert len(failed_rows) == 2 and notpm.host in failed_rows[0] + failed_rows[1]
    # The JUnit file: 6 cases, 2 failures with the step, valid against the JUnit schema.
    cases = junit_cases(str(junit))
    assert len(cases) == 6 and sum(c["failed"] for c in cases) == 2
    assert {c["classname"] for c in cases} == {"edge-tpm.provision"}
    assert sorted(c["type"] for c in cases if c["failed"]) == ["identify", "identify"]
    assert all(c["time"] > 0 for c in cases if not c["failed"])
    with open(report, encoding="utf-8") as handle:
        page = handle.read()
    assert page.count('<tr class="failed">') == 2 and page.count('<tr class="ok">') == 4 and "<svg" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_escaping_of_logging_command_values():
    from azext_edgetpm.fleet import ci
    line = ci.command("task.logissue", "50% done\r\nnext]; x", type="err;or]")
    assert line == "##vso[task.logissue type=err%3Bor%5D]50%AZP25 done%0D%0Anext]; x"
    assert "\n" not in line


def test_junit_schema_takes_what_junit_writes_and_refuses_a_wrong_file(tmp_path):
    """The schema can fail: a case without a name, a time that is not a number, two outcomes in one case."""
    import xmlschema
    from azext_edgetpm.fleet import junit
    from azext_edgetpm.fleet.observe import Row
    rows = [Row("edge-01", "dev-1", "r1", "assigned", False, None, None, 2.5, 0.0, 2.5, False),
            Row("edge-02", None, None, "failed", True, "identify", "SSH refused", 0.25, 0.0, 0.25, False),
            Row("edge-03", None, None, "notStarted", True, None, "budget spent", 0.0, 0.0, 0.0, False),
            Row("edge-04", "dev-4", "r4", "assigned", False, None, None, 0.0, 0.0, 0.0, True)]
    path = str(tmp_path / "junit.xml")
    junit.write(path, "provision", rows, 0.0)
    schema = xmlschema.XMLSchema(JUNIT_XSD)
    schema.validate(path)
    assert [(c["failed"], c["skipped"]) for c in junit_cases(path)] == [
        (False, False), (True, False), (False, True), (False, False)]
    with open(path, encoding="utf-8") as handle:
        good_text = handle.read()
    wrong = {"no name": good_text.replace('name="edge-02"', ""),
             "time not a number": good_text.replace('time="0.250"', 'time="fast"'),
             "two outcomes": good_text.replace("<skipped ", '<failure message="x" /><skipped ')}
    for why, text in wrong.items():
        assert text != good_text, why
        assert not schema.is_valid(text), why


def test_failure_budget_stops_starting_devices(rig, dps, repo, good, tmp_path):
    """--max-fail-percentage 20 over 10 devices whose first 3 fail (hosts that refuse SSH)."""
    key = good[0].key("root")
    rows = [unreachable(rig, port, key) for port in (1, 2, 3)] + [row(d) for d in good] + \
        [unreachable(rig, port, key) for port in (4, 5, 6)]
    inventory = write_inventory(tmp_path / "ten.csv", rows)
    state = str(tmp_path / "state.json")
    result = provision(dps, repo, rig, inventory, "--max-parallel", "3", "--max-fail-percentage", "20",
                       "--state", state)
    from azext_edgetpm.fleet.summary import EXIT_SOME_FAILED
    assert result.rc == EXIT_SOME_FAILED, (result.message, result.stderr[-2000:])
    out = json.loads(result.text)
    statuses = [r["status"] for r in out]
    # The first three started together; the first failure spent the budget (1 of 3 > 20%): the
    # running ones finished, no other device started.
    assert statuses[:3] == ["failed"] * 3 and statuses[3:] == ["notStarted"] * 7, statuses
    assert all("--max-fail-percentage 20" in r["error"] for r in out[3:])
    assert "7 devices not started" in result.message
    journaled = set(journal(state))   # (the append-only journal, read as a later run reads it)
    assert journaled == {f"{rig.host_ip}:{port}" for port in (1, 2, 3)}, journaled
    # Resumable: the same command without the budget starts the 7 (the 4 good ones end assigned).
    again = provision(dps, repo, rig, inventory, "--max-parallel", "4", "--state", state)
    out = json.loads(again.text)
    assert [r["status"] for r in out][3:7] == ["assigned"] * 4, [r["error"] for r in out]
    assert [r["status"] for r in out][7:] == ["failed"] * 3


def test_failures_within_the_budget_succeed_with_issues(rig, dps, repo, good, tmp_path):
    """--max-fail-percentage 50 over 4 devices, one of which fails (last, one device at a time): the
    user allowed it: exit 0, the failed device's issue, and the task SucceededWithIssues."""
    refused = unreachable(rig, 7, good[0].key("root"))
    inventory = write_inventory(tmp_path / "four.csv", [row(d) for d in good[:3]] + [refused])
    result = provision(dps, repo, rig, inventory, "--max-parallel", "1", "--max-fail-percentage", "50",
                       env={"TF_BUILD": "True", "AGENT_TEMPDIRECTORY": str(tmp_path)})
    assert result.rc == 0, (result.message, result.stderr[-3000:])
    assert [r["status"] for r in json.loads(result.text)] == ["assigned"] * 3 + ["failed"]
    assert [m.split(":")[0] + ":" + m.split(":")[1] for _, m in vso(result.stderr, "task.logissue")] == \
        [refused["host"]]
    completed = vso(result.stderr, "task.complete")
    assert completed == [({"result": "SucceededWithIssues"},
                          "1 of 4 devices failed, within the failure budget (--max-fail-percentage 50)")]


def test_html_report_in_headless_chromium(tmp_path):
    """The report of a run (rows as the runner makes them: 6 devices, 2 failed) rendered by Debian's
    Chromium: the DOM has the sortable table and the chart; the screenshot's chart region is drawn."""
    from azext_edgetpm.fleet.observe import Row
    from azext_edgetpm.fleet import report
    rows = [Row(f"root@10.0.0.{i}:22", f"dev-{i}", "ab" * 32, "failed" if i in (2, 5) else "assigned", i in (2, 5),
                "identify" if i in (2, 5) else None, "No TPM answered" if i in (2, 5) else None,
                10.0 + i, 2.0 * i, 12.0 + 3 * i, False) for i in range(1, 7)]
    path = tmp_path / "report.html"
    report.write(str(path), "provision", rows, {"devices": 6, "assigned": 4, "failed": 2}, 0.0)
    shot, dom = open_page(path, tmp_path)
    assert dom.count("<tr class=\"failed\">") == 2 and dom.count("<tr class=") == 6
    assert 'id="timeline"' in dom and dom.count("<polygon") == 4 and "No TPM answered" in dom
    # The chart region (below the counts, left of the page) holds the states' colours.
    drawn = chart_colours(shot)
    for name in ("running", "done", "failed"):
        assert drawn[name] > 200, f"no {name} area in the chart"


class _Counts:
    """fleet/runner.Progress's figures, as the runner keeps them."""
    def __init__(self, total):
        self.total, self.done, self.failed, self.skipped, self.running = total, 0, 0, 0, {}


def test_progress_display_terminal_log_and_only_errors():
    import io
    import threading
    from azext_edgetpm.fleet.progress import Display
    counts = _Counts(400)
    counts.done, counts.failed, counts.running = 10, 2, {"a": "install"}
    # A terminal: device ends above a one-line status that fits the width, with counts, rate and ETA.
    tty = io.StringIO()
    display = Display("Provisioning 400 devices", stream=tty, tty=True)
    display(counts, "h1:22: install")
    display(counts, "h2:22: identify failed: refused")
    display.end()
    text = tty.getvalue()
    assert "h2:22: identify failed: refused\n" in text and "h1:22: install\n" not in text
    status = text.split("\r\x1b[K")[-2]
    assert "12/400 done 10 failed 2 running 1" in status and "elapsed" in status and "ETA" in status
    assert len(status) <= shutil.get_terminal_size((80, 20)).columns
    # A log: a heartbeat line while devices run (waited for, not timed), device ends on their own lines.
    log = io.StringIO()
    beat = threading.Event()

    class Stream(io.StringIO):
        def write(self, s):
            if "still running" in s:
                beat.set()
            return log.write(s)
    display = Display("Provisioning 400 devices", stream=Stream(), tty=False, heartbeat=0.05)
    display(counts, "h3:22: done")
    assert beat.wait(30)
    display.end()
    assert "] h3:22: done\n" in log.getvalue() and "still running" in log.getvalue()
    # --only-show-errors: failures alone.
    quiet = io.StringIO()
    display = Display("Provisioning 400 devices", stream=quiet, tty=False, only_errors=True)
    display(counts, "h4:22: done")
    display(counts, "h5:22: enroll failed: conflict")
    display.end()
    assert quiet.getvalue().count("\n") == 1 and "h5:22: enroll failed" in quiet.getvalue()


def test_table_short_id_and_show_failed():
    from azext_edgetpm._format import provision_table, short_id
    rid = "ab" * 32
    assert short_id(rid) == "abababababab…" and short_id("my-device-01") == "my-device-01"
    rows = provision_table([{"host": "h", "status": "assigned", "registrationId": rid, "seconds": 1.0}])
    assert rows[0]["Id"] == "abababababab…" and "RegistrationId" not in rows[0]
    from azext_edgetpm.fleet.command import shown
    outputs = [{"status": "assigned"}, {"status": "failed"}, {"status": "notStarted"}]
    assert shown(outputs, "failed", "assigned") == outputs[1:] and shown(outputs, None, "assigned") == outputs


def test_canary_devices_go_first_and_a_failed_canary_stops_the_rest():
    """fleet/budget.py as the runner's workers use it (threads; the waiting is on events, not time)."""
    import threading
    from azext_edgetpm.fleet.budget import FailureBudget
    budget = FailureBudget(canary=2)
    assert budget.admit("c1") and budget.admit("c2")
    answers = {}
    later = threading.Thread(target=lambda: answers.setdefault("d3", budget.admit("d3")))
    later.start()
    later.join(0.5)
    assert later.is_alive(), "a device after the canaries must wait for them"
    budget.ended("c1", failed=False)
    budget.ended("c2", failed=True)
    later.join(30)
    assert answers == {"d3": False} and "canary" in budget.halted
    # All canaries well: the others start.
    budget = FailureBudget(canary=1, max_fail_percentage=50)
    assert budget.admit("c1")
    budget.ended("c1", failed=False)
    assert budget.admit("d2") and budget.admit("d3")
    budget.ended("d2", failed=True)      # 1 of 3 started: 33% <= 50%
    assert budget.halted is None and budget.admit("d4")
    budget.ended("d3", failed=True)      # 2 of 4: 50%, not more than 50%
    assert budget.halted is None
    budget.ended("d4", failed=True)      # 3 of 4: 75% > 50%
    assert budget.halted and not budget.admit("d5")


def test_failure_budget_values_are_checked():
    from azext_edgetpm.errors import UserInputError
    from azext_edgetpm.fleet.budget import FailureBudget
    for bad in ({"max_fail_percentage": 100}, {"max_fail_percentage": -1}, {"canary": -2}):
        with pytest.raises(UserInputError):
            FailureBudget(**bad)


def test_single_device_steps_are_printed_in_a_log():
    """`install` and `registration wait` report their steps through factory.progress: off a terminal
    (a pipeline log) each step is a line of stderr; --only-show-errors leaves none."""
    import contextlib
    import io
    from types import SimpleNamespace
    from azext_edgetpm import _client_factory as factory
    for quiet, expected in ((False, ["Installing IoT Edge on d1: started", "Installing IoT Edge on d1: packages"]),
                            (True, [])):
        cmd = SimpleNamespace(cli_ctx=SimpleNamespace(only_show_errors=quiet))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), factory.progress(cmd, "Installing IoT Edge on d1") as step:
            step("packages")
        assert err.getvalue().splitlines() == expected
