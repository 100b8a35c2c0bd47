"""The --state journal (fleet/state.py, fleet/statefile.py) on real files: append-only events folded
into the per-device view, the old whole-document format, the lock, provenance, identity, and every
malformed shape ending in one LocalFileError (issues 17 and 21). No devices needed: the journal is
a local file; the az-level tests run the real command in a process of its own."""
import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from azext_edgetpm.errors import LocalFileError, UsageError
from azext_edgetpm.fleet import state as journal_mod
from azext_edgetpm.fleet.state import Journal, provenance, read_records
from azext_edgetpm.fleet.statefile import MAX_STATE_BYTES
from azext_edgetpm.tests.latest.azcli import az

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PROV = provenance("provision", None, "root@10.0.0.1", "0ne00AAAAAA")


def _run(path, key="10.0.0.1:22", rid="rid-1", prov=PROV):
    """One device's provision as the runner journals it."""
    with Journal(str(path), meta={"shard": None}, origin=prov) as journal:
        journal.update(key, status="running", error=None, recommendation=None, failedStep=None)
        journal.step(key, "identify", {"status": "ok", "registrationId": rid, "seconds": 0.5})
        journal.step(key, "enroll", {"status": "changed", "registrationId": rid, "detail": "created"})
        journal.update(key, status="done")
        return journal.records(), journal


def test_events_are_appended_and_folded_into_the_per_device_view(tmp_path):
    path = tmp_path / "state.json"
    view, journal = _run(path)
    assert read_records(str(path)) == view
    rec = view["10.0.0.1:22"]
    assert rec["status"] == "done" and rec["error"] is None and rec["updated"]
    assert rec["steps"]["enroll"]["detail"] == "created" and rec["steps"]["enroll"]["at"]
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == journal_mod.FORMAT and header["version"] == journal_mod.VERSION
    assert header["run"]["pid"] == os.getpid() and header["run"]["command"] == "provision"
    assert [json.loads(ln)["e"] for ln in lines[1:]] == ["update", "step", "step", "update"]
    assert journal.writes == 4 and journal.bytes_written == sum(len(ln) + 1 for ln in lines[1:])

    # O(1) per event: the same file (no rename), grown by exactly the new line
    with Journal(str(path), origin=PROV) as again:
        inode, size = os.stat(path).st_ino, os.stat(path).st_size
        again.step("10.0.0.1:22", "status", {"status": "ok"})
        assert os.stat(path).st_ino == inode and os.stat(path).st_size == size + again.bytes_written
    # the second run compacted the first one's events into one device line, and appended its own
    lines = path.read_text().splitlines()
    assert [json.loads(ln).get("e") for ln in lines] == [None, "device", "step"]
    assert json.loads(lines[0])["runs"][0]["pid"] == os.getpid()


def test_a_step_s_end_is_durable_before_the_step_returns(tmp_path, monkeypatch):
    """Power loss cannot be staged here: os.fdatasync is wrapped (the real call still runs) to see
    which bytes of the file each call covered."""
    path = tmp_path / "state.json"
    synced = []
    real = os.fdatasync

    def spy(fd):
        real(fd)
        synced.append(os.fstat(fd).st_size)
    monkeypatch.setattr(journal_mod.os, "fdatasync", spy)
    with Journal(str(path), origin=PROV) as journal:
        journal.update("h:22", status="running")            # not a step's end: written, not waited for
        assert synced == []
        journal.step("h:22", "identify", {"status": "ok"})
        assert synced and synced[-1] == os.path.getsize(path)
        journal.update("h:22", status="done")
        assert synced[-1] == os.path.getsize(path)


def test_a_new_state_file_is_created_when_the_run_begins_not_before(tmp_path):
    """(A lifecycle command opens its journal before its confirmation prompt: a "no" leaves no file.)"""
    path = tmp_path / "state.json"
    journal = Journal(str(path))
    assert journal.records() == {} and not path.exists()
    journal.begin(PROV)
    assert json.loads(path.read_text())["run"]["command"] == "provision"
    journal.close()


def test_a_state_file_of_the_old_whole_document_format_is_read_and_converted(tmp_path):
    path = tmp_path / "state.json"
    devices = {"10.0.0.1:22": {"status": "done", "updated": "2026-01-01T00:00:00Z",
                               "steps": {"identify": {"status": "ok", "registrationId": "rid-1", "at": "x"}}},
               "10.0.0.2:22": {"status": "failed", "error": "boom", "failedStep": "install", "steps": {}}}
    lines = [json.dumps(k) + ": " + json.dumps(v, sort_keys=True) for k, v in devices.items()]
    path.write_text('{"devices": {\n' + ",\n".join(lines) + '\n},\n"runs": [{"command": "deprovision"}],\n'
                    '"version": 1}\n')
    assert read_records(str(path)) == devices
    with pytest.raises(UsageError, match="command: the file was written by deprovision"):
        Journal(str(path), origin=PROV)
    with Journal(str(path), origin=provenance("deprovision", None, "x", "0ne1")) as journal:
        assert journal.record("10.0.0.2:22") == devices["10.0.0.2:22"]
    assert json.loads(path.read_text().splitlines()[0])["version"] == journal_mod.VERSION
    assert read_records(str(path)) == devices


def test_a_symlinked_state_file_is_replaced_and_its_target_left_untouched(tmp_path):
    target = tmp_path / "elsewhere.json"
    _run(target)
    before = target.read_bytes()
    link = tmp_path / "state.json"
    link.symlink_to(target)
    _run(link, key="10.0.0.9:22", rid="rid-9")
    assert target.read_bytes() == before
    assert not link.is_symlink() and set(read_records(str(link))) == {"10.0.0.1:22", "10.0.0.9:22"}


def test_a_second_journal_on_the_same_file_is_refused_and_names_the_holder(tmp_path):
    path = tmp_path / "state.json"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from azext_edgetpm.fleet.state import Journal
        journal = Journal({str(path)!r}, origin={{"command": "provision"}})
        print("locked", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LocalFileError) as refused:
            Journal(str(path), origin={"command": "provision"})
        assert f"in use by process {holder.pid}" in str(refused.value)
        assert f"kill {holder.pid}" in refused.value.hint
    finally:
        holder.communicate("", timeout=30)
    with Journal(str(path), origin={"command": "provision"}):   # released when that process ended
        pass


@pytest.mark.parametrize("other, what", [
    (provenance("deprovision", None, "root@10.0.0.1", "0ne00AAAAAA"), "command"),
    (provenance("provision", None, "root@10.0.0.2", "0ne00AAAAAA"), "inventory"),
    (provenance("provision", None, "root@10.0.0.1", "0ne00BBBBBB"), "DPS"),
])
def test_a_state_file_of_another_run_is_refused_unless_meant(tmp_path, other, what):
    path = tmp_path / "state.json"
    view, _ = _run(path)
    content = path.read_bytes()
    with pytest.raises(UsageError) as refused:
        Journal(str(path), origin=other)
    assert f"belongs to another run ({what}" in str(refused.value)
    assert re.search(r"state.from.other.run", refused.value.hint)   # (the flag, once the face named options)
    assert path.read_bytes() == content          # refused before anything was written
    assert str(path) not in journal_mod._HELD    # and let go (its lock released)
    with Journal(str(path), origin=other, from_other_run=True) as journal:
        assert journal.records() == view
    assert json.loads(path.read_text().splitlines()[0])["run"]["inventory"] == other["inventory"]


def test_the_inventory_is_recorded_by_the_hash_of_its_bytes(tmp_path):
    inventory = tmp_path / "fleet.csv"
    inventory.write_text("host\n10.0.0.1\n")
    first = provenance("provision", str(inventory), None, "0ne1")
    assert first == provenance("provision", str(inventory), None, "0NE1")
    inventory.write_text("host\n10.0.0.2\n")
    assert provenance("provision", str(inventory), None, "0ne1")["inventory"] != first["inventory"]


def test_records_follow_the_registration_id_not_the_address(tmp_path):
    """Two devices swapped addresses since the state file was written: each finds its own record,
    and a record is never continued by a device of another registration ID."""
    path = tmp_path / "state.json"
    _run(path, key="10.0.0.1:22", rid="rid-a")
    with Journal(str(path), origin=PROV) as journal:
        journal.step("10.0.0.2:22", "identify", {"status": "ok", "registrationId": "rid-b"})
        # the inventory says 10.0.0.1 now holds rid-b, 10.0.0.2 rid-a
        assert journal.record("10.0.0.1:22", "RID-B")["steps"]["identify"]["registrationId"] == "rid-b"
        assert journal.record("10.0.0.2:22", "rid-a")["status"] == "done"
        assert journal.record("10.0.0.1:22", "rid-c") == {}
        assert journal.record("10.0.0.1:22")["status"] == "done"      # without an ID: by address
        # the device at 10.0.0.1 identifies as rid-b: rid-a's record there is not continued
        journal.step("10.0.0.1:22", "identify", {"status": "ok", "registrationId": "rid-b", "stateMismatch": "x"})
        assert journal.record("10.0.0.1:22") == journal.records()["10.0.0.1:22"]
        assert set(journal.record("10.0.0.1:22")["steps"]) == {"identify"}
        assert "status" not in journal.record("10.0.0.1:22")
        # a step naming no registration ID continues the record
        journal.step("10.0.0.1:22", "install", {"status": "ok"})
        assert set(journal.record("10.0.0.1:22")["steps"]) == {"identify", "install"}
    assert set(read_records(str(path))["10.0.0.1:22"]["steps"]) == {"identify", "install"}
    assert read_records(str(path))["10.0.0.1:22"]["steps"]["identify"]["stateMismatch"] == "x"


def test_a_truncated_last_line_is_dropped_not_an_error(tmp_path):
    path = tmp_path / "state.json"
    view, _ = _run(path)
    whole = path.read_bytes()
    for tail in (b'{"d":"10.0.0.1:22","e":"upd', b'{"d":"10.0.0.1:22","e":"update","f":{"status":"fa',
                 b"\x00" * 300, b"\x00" * 100 + b"\n" + b"\x00" * 50):
        path.write_bytes(whole + tail)
        assert read_records(str(path)) == view, tail
    with Journal(str(path), origin=PROV) as journal:         # resumed: the cut line is gone
        assert journal.records() == view
    assert read_records(str(path)) == view and b"\x00" not in path.read_bytes()


HEADER = json.dumps({"format": journal_mod.FORMAT, "version": journal_mod.VERSION, "run": {}})
GOOD = json.dumps({"e": "step", "d": "h:22", "s": "identify", "v": {"status": "ok"}, "f": {}, "t": "x"})

MALFORMED = [
    ("garbage", b"this is not json\n"),
    ("a JSON list", b"[1, 2, 3]\n"),
    ("a number", b"42\n"),
    ("not UTF-8", b"\xff\xfe{}\n"),
    ("an empty first line", b"\n" + HEADER.encode() + b"\n"),
    ("deeply nested", b"[" * 100000 + b"]" * 100000 + b"\n"),
    ("a newer version", json.dumps({"format": journal_mod.FORMAT, "version": 99}).encode() + b"\n"),
    ("no version", json.dumps({"format": journal_mod.FORMAT}).encode() + b"\n"),
    ("a version of the wrong type", json.dumps({"format": journal_mod.FORMAT, "version": "2"}).encode() + b"\n"),
    ("an unknown event", (HEADER + "\n" + json.dumps({"e": "explode", "d": "h"}) + "\n" + GOOD + "\n").encode()),
    ("an event that is a list", (HEADER + "\n[]\n" + GOOD + "\n").encode()),
    ("a garbage line in the middle", (HEADER + "\n" + GOOD + "\nxyz\n" + GOOD + "\n").encode()),
    ("a key of the wrong type", (HEADER + "\n" + GOOD.replace('"h:22"', "7") + "\n").encode()),
    ("a step without its record", (HEADER + "\n" + GOOD.replace('{"status": "ok"}', '"ok"') + "\n").encode()),
    ("steps of the wrong type", (HEADER + "\n" + json.dumps({"e": "device", "d": "h", "r": {"steps": [1]}}) +
                                 "\n").encode()),
    ("a step record of the wrong type", (HEADER + "\n" + json.dumps(
        {"e": "device", "d": "h", "r": {"steps": {"identify": "ok"}}}) + "\n").encode()),
    ("a status of the wrong type", (HEADER + "\n" + json.dumps(
        {"e": "update", "d": "h", "f": {"status": ["done"]}, "t": "x"}) + "\n").encode()),
    ("an update without a time", (HEADER + "\n" + json.dumps({"e": "update", "d": "h", "f": {}}) + "\n").encode()),
    ("a record that is a string", (HEADER + "\n" + json.dumps({"e": "device", "d": "h", "r": "x"}) + "\n").encode()),
    ("an overlong line", (HEADER + "\n" + '{"e":"device","d":"h","r":{"x":"' + "a" * (3 * 2**20) + '"}}\n').encode()),
    ("an old document without devices", b'{"version": 1, "runs": []}\n'),
    ("an old document of another version", b'{"version": 7, "devices": {}}\n'),
    ("an old document whose devices are a list", b'{"version": 1, "devices": []}\n'),
    ("an old document with a record of the wrong type", b'{"version": 1, "devices": {"h": 3}}\n'),
    ("an old document cut short", b'{"devices": {\n"h": {"steps": {}}\n'),
]


@pytest.mark.parametrize("name, content", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_every_malformed_shape_is_one_clear_error(tmp_path, name, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    for read in (lambda: read_records(str(path)), lambda: Journal(str(path), origin=PROV)):
        with pytest.raises(LocalFileError) as refused:
            read()
        assert str(path) in str(refused.value) and refused.value.hint, name
    assert path.read_bytes() == content          # a file that cannot be read is left as it was


def test_what_is_not_a_regular_file_or_too_big_is_refused_before_reading(tmp_path):
    for special in ("/dev/zero", str(tmp_path)):
        with pytest.raises(LocalFileError, match="not a regular file"):
            Journal(special, origin=PROV)
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as handle:          # sparse: costs no disk
        handle.truncate(MAX_STATE_BYTES + 1)
    with pytest.raises(LocalFileError, match="at most"):
        Journal(str(huge), origin=PROV)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(LocalFileError, match="symbolic link to nothing"):
        Journal(str(dangling), origin=PROV)
    assert not (tmp_path / "nowhere").exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damage_to_a_journal_reads_or_is_one_clear_error(tmp_path, data):
    """Bytes of a real journal changed, cut or inserted anywhere: it is read, or refused with one
    LocalFileError; never another exception."""
    path = tmp_path / "fuzz.json"
    if not os.path.exists(tmp_path / "base.json"):
        _run(tmp_path / "base.json")
    base = (tmp_path / "base.json").read_bytes()
    at = data.draw(st.integers(0, len(base)))
    how = data.draw(st.sampled_from(["cut", "replace", "insert"]))
    junk = data.draw(st.binary(min_size=1, max_size=8))
    damaged = base[:at] if how == "cut" else base[:at] + junk + base[at + (len(junk) if how == "replace" else 0):]
    path.write_bytes(damaged)
    try:
        records = read_records(str(path))
    except LocalFileError as exc:
        assert str(path) in str(exc)
    else:
        assert isinstance(records, dict) and all(isinstance(r.get("steps"), dict) for r in records.values())


def _hanging_ssh_port():
    """A TCP port that accepts and never speaks SSH: the run waits there for --ssh-timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def test_two_runs_on_the_same_state_the_second_is_refused_and_names_the_first(tmp_path):
    server = _hanging_ssh_port()
    inventory = tmp_path / "fleet.csv"
    inventory.write_text(f"host,port,registration_id\n127.0.0.1,{server.getsockname()[1]},dev-1\n")
    state = tmp_path / "state.json"
    login = "HostName=nowhere.azure-devices-provisioning.net;SharedAccessKeyName=p;SharedAccessKey=" + "A" * 44
    args = ["edge-tpm", "provision", "--inventory", str(inventory), "--login", login, "--id-scope", "0ne00AAAAAA",
            "--state", str(state), "--ssh-timeout", "60", "--known-hosts", str(tmp_path / "known_hosts")]
    first = subprocess.Popen([sys.executable, "-m", "azure.cli", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        from devkit.wait import wait_until

        def locked():
            assert first.poll() is None, first.communicate()[1][-2000:]
            if not state.exists():
                return False
            with open(state, encoding="utf-8") as handle:
                line = handle.readline()
            return line.endswith("\n") and json.loads(line)["run"]["pid"] == first.pid
        wait_until(locked, timeout=120, interval=0.1, what="the first run taking the state file")
        second = az(*args)
        assert second.rc != 0 and type(second.error).__name__ == "FileOperationError", second.message
        assert f"in use by process {first.pid}" in second.message and "Traceback" not in second.stderr
        assert "--state" in second.recommendation
    finally:
        first.kill()
        first.communicate(timeout=60)
        server.close()


LOGIN = "HostName=nowhere.azure-devices-provisioning.net;SharedAccessKeyName=p;SharedAccessKey=" + "A" * 44


def _inventory(tmp_path):
    inventory = tmp_path / "fleet.csv"
    inventory.write_text("host,registration_id\n127.0.0.1:1,dev-1\n")
    return str(inventory)


@pytest.mark.parametrize("shape", ["/dev/zero", "garbage", "sparse", "directory", "newer"])
def test_a_bad_state_file_is_one_clear_az_error_before_anything_starts(tmp_path, shape):
    path = {"/dev/zero": "/dev/zero", "directory": str(tmp_path)}.get(shape, str(tmp_path / "state.json"))
    if shape == "garbage":
        (tmp_path / "state.json").write_bytes(b"\x00garbage{[\n" * 1000)
    elif shape == "sparse":
        with open(path, "wb") as handle:
            handle.truncate(4 * MAX_STATE_BYTES)
    elif shape == "newer":
        (tmp_path / "state.json").write_text(json.dumps({"format": journal_mod.FORMAT, "version": 3}) + "\n")
    result = az("edge-tpm", "provision", "--inventory", _inventory(tmp_path), "--login", LOGIN,
                "--id-scope", "0ne00AAAAAA", "--state", path, "--ssh-timeout", "5")
    assert result.rc != 0 and type(result.error).__name__ == "FileOperationError", (result.message, result.stderr)
    assert path in result.message and result.recommendation and "Traceback" not in result.stderr


def test_another_command_s_state_file_is_refused_by_az_and_the_flag_is_explained(tmp_path):
    inventory = _inventory(tmp_path)
    state = tmp_path / "state.json"
    _run(state, key="127.0.0.1:1", rid="dev-1", prov=provenance("provision", inventory, None, "nowhere"))
    before = state.read_bytes()
    result = az("edge-tpm", "deprovision", "--inventory", inventory, "--login", LOGIN, "--state", str(state),
                "--yes")
    assert result.rc != 0 and type(result.error).__name__ == "ArgumentUsageError", result.message
    assert "written by provision, this run is deprovision" in result.message
    assert "--state-from-other-run" in result.recommendation and state.read_bytes() == before
    alone = az("edge-tpm", "deprovision", "--inventory", inventory, "--login", LOGIN, "--state-from-other-run",
               "--yes")
    assert alone.rc != 0 and "--state-from-other-run goes with the --state file" in alone.message


def test_workers_first_events_together_begin_the_journal_once(tmp_path):
    """A command that does not begin the journal before its workers start (upgrade): the first events
    of many devices arrive together, and the file is created and locked once (each worker opening it
    on its own was refused as 'in use by another process'). Twenty new files, ten workers each."""
    import threading
    from azext_edgetpm.fleet.state import Journal
    for attempt in range(20):
        path = str(tmp_path / f"state-{attempt}.json")
        journal = Journal(path)
        gate, errors = threading.Barrier(10), []

        def first_event(i, journal=journal, gate=gate, errors=errors):
            gate.wait()
            try:
                journal.update(f"10.0.0.{i}:22", status="running")
            except Exception as exc:  # pylint: disable=broad-except  # collected for the assertion
                errors.append(exc)

        workers = [threading.Thread(target=first_event, args=(i,)) for i in range(10)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        journal.close()
        assert errors == []
        assert len(Journal(path).records()) == 10
