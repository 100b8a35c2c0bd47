"""Reading a --state journal (fleet/state.py writes it): the format's constants, its limits and
its checks. Every malformed shape is one LocalFileError naming the file and what is wrong; a
truncated last line (a crash or power loss while appending) is dropped, not an error; what is not
a regular file (/dev/zero, a FIFO) and a file above MAX_STATE_BYTES are refused before a byte is
read. README's "State file" section describes the format.
"""
import json
import os
import stat
from typing import Dict, Optional

from azext_edgetpm.errors import LocalFileError, option
from azext_edgetpm.files import LIMITS

FORMAT = "az-edge-tpm-state"
VERSION = 2
OLD_VERSION = 1               # the whole-document format of 0.2
MAX_STATE_BYTES = LIMITS["state"]  # 25 KB per device at 10,000 devices; a provision needs ~2 KB
MAX_OLD_BYTES = MAX_STATE_BYTES  # a whole-document file of 0.2 (parsed at once; converted by the next run)
MAX_LINE_BYTES = 2 * 2**20     # one event or one compacted device record
_FIELD_TYPES = {"status": str, "error": str, "recommendation": str, "failedStep": str, "errorKind": str,
                "updated": str, "registrationId": str}
_HINT = "Give the state file of an earlier run of this command, or a new path to start afresh."


def _bad(path: str, what: str) -> LocalFileError:
    return LocalFileError(f"The state file {path} is not a state file of az edge-tpm: {what}.", _HINT, "state")


def compact(value) -> str:
    """JSON as the journal writes it: one line, keys sorted, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Loaded:
    """What a state file holds: the header (None for an old or empty file) and the per-device view,
    each record kept as its compact JSON (a fifth of the memory of the parsed record)."""

    def __init__(self, header: Optional[dict] = None, devices: Optional[dict] = None, version: int = VERSION,
                 dropped_tail: bool = False):
        self.header = header
        self.devices: Dict[str, str] = devices if devices is not None else {}
        self.version = version
        self.dropped_tail = dropped_tail


def _check_record(path: str, where: str, key, record) -> dict:
    """A device record as readers expect it: a dict, `steps` a dict of dicts, the known fields strings."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise _bad(path, f"{where} names no device (a key of type {type(key).__name__})")
    if not isinstance(record, dict):
        raise _bad(path, f"{where}: the record of {key[:80]} is a {type(record).__name__}, not an object")
    steps = record.get("steps", {})
    if not isinstance(steps, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in steps.items()):
        raise _bad(path, f"{where}: the steps of {key[:80]} are not an object of step records")
    for name, kind in _FIELD_TYPES.items():
        value = record.get(name)
        if value is not None and not isinstance(value, kind):
            raise _bad(path, f"{where}: {name} of {key[:80]} is a {type(value).__name__}, not a text")
    record.setdefault("steps", steps)
    return record


def apply_event(path: str, devices: Dict[str, str], event, number: int) -> dict:
    """Fold one event line into the view (raises on a shape no version of ours writes); returns
    the device's record as it is now."""
    where = f"line {number}"
    if not isinstance(event, dict) or event.get("e") not in ("device", "update", "step"):
        raise _bad(path, f"{where} is not an event (device, update or step)")
    key, kind = event.get("d"), event["e"]
    if kind == "device":
        rec = _check_record(path, where, key, event.get("r"))
        devices[key] = compact(rec)
        return rec
    fields, when = event.get("f") or {}, event.get("t")
    if not isinstance(fields, dict) or not isinstance(when, str):
        raise _bad(path, f"{where}: an {kind} event needs fields (f) and a time (t)")
    stored = devices.get(key) if isinstance(key, str) else None
    rec = json.loads(stored) if stored is not None else {"steps": {}}
    if kind == "step":
        name, entry = event.get("s"), event.get("v")
        if not isinstance(name, str) or not isinstance(entry, dict):
            raise _bad(path, f"{where}: a step event needs a step name (s) and its record (v)")
        rec["steps"][name] = dict(entry, at=when)
    rec.update(fields)
    rec["updated"] = when
    devices[key] = compact(_check_record(path, where, key, rec))
    return rec


def open_regular(path: str) -> int:
    """A read-only descriptor of `path` (a symlink is followed), refusing what is not a regular file
    (/dev/zero, a FIFO, a directory) and a file above MAX_STATE_BYTES, before reading anything."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise LocalFileError(f"The state file {path} cannot be read: {exc.strerror or exc}.", _HINT,
                             "state") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LocalFileError(f"The state file {path} is not a regular file.",
                                 f"Point {option('state')} at a file (a new path starts afresh).", "state")
        if info.st_size > MAX_STATE_BYTES:
            raise LocalFileError(
                f"The state file {path} is {info.st_size:,} bytes; at most {MAX_STATE_BYTES:,} are read.",
                "A journal needs a few KB per device: this is not the state file of a run of az edge-tpm. "
                + _HINT, "state")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_state(path: str, fd: Optional[int] = None) -> Loaded:
    """The journal at `path` folded into the per-device view (from `fd` when given: a descriptor
    of that file, left open). Every malformed shape is one LocalFileError."""
    own = fd is None
    if own:
        fd = open_regular(path)
    try:
        with os.fdopen(os.dup(fd), "rb") as handle:
            handle.seek(0)
            return _read(path, handle)
    finally:
        if own:
            os.close(fd)


def _read(path: str, handle) -> Loaded:
    first = handle.readline(MAX_LINE_BYTES + 1)
    if not first.strip(b" \t\r\n\x00"):
        if handle.read(1):
            raise _bad(path, "it starts with an empty line")
        return Loaded()                       # empty (a run that died before its first write)
    if first.lstrip().startswith(b"{") and not first.rstrip().endswith(b"}"):
        return _read_old(path, first, handle)
    header = _json_line(path, first, 1)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        if isinstance(header, dict) and "devices" in header:
            return _read_old(path, first, handle)
        raise _bad(path, "line 1 is not its header")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _bad(path, "the header has no version number")
    if version > VERSION:
        raise LocalFileError(f"The state file {path} was written by a newer az edge-tpm (format version {version}; "
                             f"this one reads up to {VERSION}).", "Update the extension (az extension update "
                             "--name edge-tpm), or give a new path to start afresh.", "state")
    if version != VERSION:
        raise _bad(path, f"format version {version} is unknown")
    devices: Dict[str, str] = {}
    number, dropped = 1, False
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            break
        number += 1
        if not line.endswith(b"\n"):
            if len(line) > MAX_LINE_BYTES:
                raise _bad(path, f"line {number} is longer than {MAX_LINE_BYTES:,} bytes")
            if _tail_of_crash(line):
                dropped = True     # the last line, cut short by a crash or power loss: never written whole
                break
        if not line.strip(b" \t\r\n\x00"):
            dropped = dropped or b"\x00" in line   # zeros: blocks allocated, never written (power loss)
            continue
        apply_event(path, devices, _json_line(path, line, number), number)
    return Loaded(header, devices, VERSION, dropped)


def _tail_of_crash(line: bytes) -> bool:
    """A last line without its newline: dropped when it does not parse (a cut write), else kept."""
    try:
        json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return True
    return False


def _json_line(path: str, line: bytes, number: int):
    if len(line) > MAX_LINE_BYTES:
        raise _bad(path, f"line {number} is longer than {MAX_LINE_BYTES:,} bytes")
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _bad(path, f"line {number} is not UTF-8 text") from exc
    except RecursionError as exc:
        raise _bad(path, f"line {number} is nested too deeply") from exc
    except ValueError as exc:
        raise _bad(path, f"line {number} is not JSON ({str(exc)[:80]})") from exc


def _read_old(path: str, first: bytes, handle) -> Loaded:
    """The whole-document format of 0.2: {"version": 1, "devices": {key: record}, "runs": [...]}."""
    data = first + handle.read(MAX_OLD_BYTES + 1 - len(first))
    if len(data) > MAX_OLD_BYTES:
        raise _bad(path, f"a whole-document state file (format version {OLD_VERSION}) is at most "
                         f"{MAX_OLD_BYTES:,} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _bad(path, "it is not UTF-8 text") from exc
    except RecursionError as exc:
        raise _bad(path, "it is nested too deeply") from exc
    except ValueError as exc:
        raise _bad(path, f"it is neither JSON lines nor a JSON document ({str(exc)[:80]})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), dict) or doc.get("version") != OLD_VERSION:
        raise _bad(path, f"a whole-document state file has version {OLD_VERSION} and an object of devices")
    devices = {key: compact(_check_record(path, "the document", key, rec)) for key, rec in doc["devices"].items()}
    runs = doc.get("runs") if isinstance(doc.get("runs"), list) else []
    last = runs[-1] if runs and isinstance(runs[-1], dict) else {}
    header = {"format": FORMAT, "version": OLD_VERSION,
              "run": {"command": last.get("command") or "provision"} if last else {}}
    return Loaded(header, devices, OLD_VERSION)


def read_records(path: str) -> dict:
    """The per-device view of the journal at `path` ({} when there is no file): for tests and tools
    that look at a state file from outside, without taking its lock."""
    if not os.path.lexists(path):
        return {}
    return {key: json.loads(rec) for key, rec in read_state(path).devices.items()}
