"""The --state journal: an append-only file of JSON lines, read back into one record per device.

Format (README, "State file"): the first line is a header naming the format, its version and
the run that wrote the file (command, inventory hash, DPS, process ID); every further line is one
event: a device's compacted record (`device`), a change of its fields (`update`) or a step that
ended (`step`). A run appends one line per event (O(1) per event, never a rewrite) and makes it
durable (fdatasync, shared by the events written meanwhile: group commit) before the device's next
step starts. On load the events are folded into the per-device view readers have always seen
({"steps": {name: entry}, "status": ..., ...}); a run that writes starts by compacting: header and
one `device` line per device go to a new file that replaces the old one by rename (a symlink at
the path is replaced, its target is only read). The whole-document format of 0.2 (version 1) is
still read.

The file is locked (flock) for the whole run: a second run on the same file is refused with the
first one's PID. A file from another command, inventory or DPS is refused unless the caller says
it is meant (--state-from-other-run). Every malformed shape is one LocalFileError; a truncated last
line (a crash or power loss while appending) is dropped, not an error.
"""
import datetime
import errno
import json
import os
import threading
from typing import Dict, Optional

from azext_edgetpm.errors import LocalFileError, UsageError, option

# read_records and read_state are this module's too, for callers that read a state file
from .statefile import (  # noqa: F401  # pylint: disable=unused-import
    FORMAT, MAX_LINE_BYTES, MAX_STATE_BYTES, VERSION, Loaded, apply_event, compact, open_regular,
    read_records, read_state)

MAX_RUNS_KEPT = 20             # earlier runs listed in the header
# The journals this process holds open, by path: az runs one command per process, so an older one
# still open on the same path (its command ended in an exception that keeps it referenced, as in
# tests running az in-process) is closed when a new one opens.
_HELD: Dict[str, "Journal"] = {}
_HELD_LOCK = threading.Lock()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- provenance ---------------------------------------------------------------------------------

def inventory_digest(inventory: Optional[str] = None, host: Optional[str] = None) -> str:
    """sha256 of the inventory file's bytes (or of the --host value): which devices a run meant."""
    import hashlib
    digest = hashlib.sha256()
    if not inventory:
        digest.update(("host:" + (host or "").strip().lower()).encode("utf-8"))
        return "sha256:" + digest.hexdigest()
    try:
        with open(inventory, "rb") as handle:
            left = MAX_STATE_BYTES
            while left > 0:
                chunk = handle.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
    except OSError:
        digest.update(("path:" + os.path.abspath(inventory)).encode("utf-8"))  # read already: name it instead
    return "sha256:" + digest.hexdigest()


def provenance(command: str, inventory: Optional[str], host: Optional[str], dps: Optional[str]) -> dict:
    """What a state file records about the run that wrote it, and a later run must match."""
    return {"command": command, "inventory": inventory_digest(inventory, host), "dps": (dps or "").lower() or None}


_PROVENANCE_NAMES = {"command": "command", "inventory": "inventory (sha256 of the file)", "dps": "DPS"}


def _mismatch(recorded: dict, wanted: dict) -> Optional[str]:
    for name, label in _PROVENANCE_NAMES.items():
        before, now = recorded.get(name), wanted.get(name)
        if name == "command":
            before = before or "provision"
        if before is None and name != "command":
            continue               # not recorded (a file of 0.2): nothing to compare
        if before != now:
            return f"{label}: the file was written by {_shown(before)}, this run is {_shown(now)}"
    return None


def _shown(value) -> str:
    """A header value in a message (the file may be anyone's: control characters escaped, length bounded)."""
    from azext_edgetpm.echo import shown
    text = str(value)
    if text.startswith("sha256:") and text.isprintable():
        return text[:20] + "..."
    return text if text.isprintable() and len(text) <= 100 else shown(text, 100)


# -- the journal ----------------------------------------------------------------------------------

class Journal:
    """Per-device, per-step records; `path=None` keeps them in memory only.

    Opening an existing file takes its lock at once (a second run is refused); a new one is created
    and locked when the run begins. With `origin` (provenance()) the run begins at once; otherwise at
    `begin()` or at the first write."""

    def __init__(self, path: Optional[str] = None, meta: Optional[dict] = None, origin: Optional[dict] = None,
                 from_other_run: bool = False):
        self.path = os.path.abspath(os.path.expanduser(path)) if path else None
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._begin_lock = threading.Lock()   # one begin: workers' first events may arrive together
        self._fd: Optional[int] = None        # the locked file; appended to once the run began
        self._appending = False
        self._written = self._synced = 0
        self.devices: Dict[str, str] = {}     # device key -> its record as compact JSON
        self._ids: Optional[Dict[Optional[str], str]] = None
        self.loaded = Loaded()
        self.meta = dict(meta or {})
        self.writes = 0                       # event lines written by this run
        self.bytes_written = 0
        if self.path:
            self._lock_and_load(create=False)
        if origin is not None:
            self.begin(origin, from_other_run)

    # -- lock and load -------------------------------------------------------------------------
    def _lock_and_load(self, create: bool) -> None:
        with _HELD_LOCK:
            earlier = _HELD.get(self.path)
        if earlier is not None and earlier is not self:
            earlier.close()
        for _ in range(20):
            if not create and not os.path.lexists(self.path):
                return                                           # nothing to read; created at begin()
            fd = self._open_or_create()
            if fd is None:
                continue                                         # created by another run meanwhile: again
            try:
                _lock(fd, self.path)
                if not _same_file(fd, self.path):                # replaced since we opened it: again
                    os.close(fd)
                    continue
                self.loaded = read_state(self.path, fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self.devices, self._ids = self.loaded.devices, None
            with _HELD_LOCK:
                _HELD[self.path] = self
            return
        raise LocalFileError(f"The state file {self.path} keeps being replaced by another process.",
                             f"Run one az edge-tpm at a time on one {option('state')} file.", "state")

    def _open_or_create(self) -> Optional[int]:
        if os.path.lexists(self.path) and not (os.path.islink(self.path) and not os.path.exists(self.path)):
            return open_regular(self.path)
        if os.path.islink(self.path):
            raise LocalFileError(f"The state file {self.path} is a symbolic link to nothing.",
                                 f"Remove the link, or point {option('state')} at another path.", "state")
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                           0o600)
        except FileExistsError:
            return None
        except OSError as exc:
            raise LocalFileError(f"Cannot create the state file {self.path}: {exc.strerror or exc}.",
                                 f"Point {option('state')} at a writable location.", "state") from exc

    # -- the run -------------------------------------------------------------------------------
    def begin(self, origin: Optional[dict] = None, from_other_run: bool = False) -> None:
        """Check that the file belongs to this kind of run, then compact it and start appending (a
        refused file is let go: its lock released, nothing written)."""
        with self._begin_lock:
            if not self.path or self._appending:
                return
            try:
                self._begin(origin, from_other_run)
            except BaseException:
                self.close()
                raise

    def _begin(self, origin: Optional[dict], from_other_run: bool) -> None:
        if self._fd is None:
            self._lock_and_load(create=True)
        recorded = (self.loaded.header or {}).get("run") or {}
        if origin and recorded and self.devices and not from_other_run:   # (a 0.2 file may record nothing)
            why = _mismatch(recorded, origin)
            if why:
                raise UsageError(
                    f"The state file {self.path} belongs to another run ({why}); refusing to resume from it.",
                    f"Give a new {option('state')} path, or {option('state_from_other_run')} if this file is "
                    "meant for this run (each device's record is then checked against the device and DPS).",
                    "state")
        runs = list((self.loaded.header or {}).get("runs") or [])
        if recorded:
            runs.append({k: recorded.get(k) for k in ("command", "pid", "started", "shard", "devices")})
        run = dict(self.meta, **(origin or {}), pid=os.getpid(), started=_now())
        header = {"format": FORMAT, "version": VERSION, "run": run, "runs": runs[-MAX_RUNS_KEPT:]}
        with self._lock:
            self._compact_to(header)
            self.loaded.header = header
            self._appending = True

    def _compact_to(self, header: dict) -> None:
        """Header and one `device` line per device to a new locked file, renamed over the path."""
        directory = os.path.dirname(self.path) or "."
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise self._write_error(exc) from exc
        try:
            _lock(fd, tmp)
            chunk = [compact(header)]
            for key in sorted(self.devices):
                chunk.append('{"d":' + compact(key) + ',"e":"device","r":' + self.devices[key] + "}")
                if len(chunk) >= 512:
                    _write_all(fd, ("\n".join(chunk) + "\n").encode("utf-8"))
                    chunk = []
            if chunk:
                _write_all(fd, ("\n".join(chunk) + "\n").encode("utf-8"))
            os.fsync(fd)
            os.replace(tmp, self.path)       # a symlink at the path is replaced; its target is not written
            _fsync_dir(directory)
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise self._write_error(exc) from exc
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)                     # (the old file's lock goes with it; the new one is held)

    def close(self) -> None:
        """Make everything durable and release the lock (the file stays)."""
        with self._lock:
            fd, self._fd = self._fd, None
        with _HELD_LOCK:
            if _HELD.get(self.path) is self:
                del _HELD[self.path]
        if fd is not None:
            try:
                if self._appending:
                    os.fdatasync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except  # interpreter shutdown
            pass

    # -- the per-device view ---------------------------------------------------------------------
    def record(self, key: str, registration_id: Optional[str] = None) -> dict:
        """A copy of the device's record ({} when there is none). With the device's registration ID
        (known from the inventory), a record under `key` naming another ID is not this device's:
        the record naming this ID (under another address, after addresses changed) is returned."""
        with self._lock:
            return self._find(key, registration_id) or {}

    def _find(self, key: str, registration_id: Optional[str]) -> Optional[dict]:
        stored = self.devices.get(key)
        rec = json.loads(stored) if stored is not None else None
        rid = (registration_id or "").lower()
        if not rid or (rec is not None and record_identity(rec) in (None, rid)):
            return rec
        if self._ids is None:         # registration ID -> key, built on first need, kept by _event
            self._ids = {}
            for other_key, other in self.devices.items():
                self._ids.setdefault(record_identity(json.loads(other)), other_key)
        other = self.devices.get(self._ids.get(rid))
        rec = json.loads(other) if other is not None else None
        return rec if rec is not None and record_identity(rec) == rid else None

    def records(self) -> dict:
        with self._lock:
            return {key: json.loads(rec) for key, rec in self.devices.items()}

    def update(self, key: str, **fields) -> None:
        self._event({"e": "update", "d": key, "f": fields, "t": _now()},
                    durable=fields.get("status") in ("done", "failed", "interrupted"))

    def step(self, key: str, name: str, entry: dict, **fields) -> None:
        self._event({"e": "step", "d": key, "s": name, "v": entry, "f": fields, "t": _now()}, durable=True)

    def interrupted(self, key: str, step: str, **fields) -> None:
        """The run was stopped (a signal) while `step` ran: the step and the device are marked
        `interrupted` (not a done state: a re-run runs that step again)."""
        self.step(key, step, {"status": "interrupted", "detail": fields.get("error")}, status="interrupted",
                  failedStep=step, **fields)

    def flush(self) -> None:
        self._durable(self._written)

    def _event(self, event: dict, durable: bool) -> None:
        line = (compact(event) + "\n").encode("utf-8")
        if not self._appending and self.path:
            self.begin()
        with self._lock:
            key = event["d"]
            stored = self.devices.get(key)
            if event["e"] == "step":
                rid = (event["v"].get("registrationId") or "")
                if stored is not None and rid and record_identity(json.loads(stored)) not in (None, str(rid).lower()):
                    # the record under this address was another device's: it is not continued (this
                    # device's record starts again here with this step)
                    self.devices[key] = '{"steps":{}}'
                    line = (compact({"e": "device", "d": key, "r": {"steps": {}}}) + "\n").encode("utf-8") + line
            rec = apply_event(self.path or "(memory)", self.devices, json.loads(line.splitlines()[-1]), 0)
            if self._ids is not None and event["e"] == "step":
                self._ids[record_identity(rec)] = key
            if self._fd is None or not self.path:
                return
            try:
                _write_all(self._fd, line)
            except OSError as exc:
                raise self._write_error(exc) from exc
            self._written += 1
            self.writes += 1
            self.bytes_written += len(line)
            seq = self._written
        if durable:
            self._durable(seq)

    def _durable(self, seq: int) -> None:
        """fdatasync once for every event written up to now (group commit: the threads waiting
        meanwhile are covered by one call)."""
        if not self.path:
            return
        with self._sync_lock:
            if self._synced >= seq or self._fd is None:
                return
            upto = self._written
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                raise self._write_error(exc) from exc
            self._synced = upto

    def _write_error(self, exc: OSError) -> LocalFileError:
        return LocalFileError(f"Cannot write the state file {self.path}: {exc.strerror or exc}",
                              f"Point {option('state')} at a writable location with free space.", "state")


def record_identity(record: dict) -> Optional[str]:
    """The registration ID a device's record belongs to (its identify step's), lower case."""
    steps = record.get("steps") or {}
    rid = record.get("registrationId") or (steps.get("identify") or {}).get("registrationId")
    return str(rid).lower() if rid else None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _same_file(fd: int, path: str) -> bool:
    try:
        now = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _lock(fd: int, path: str) -> None:
    """An exclusive lock on the file (flock: also on a descriptor opened read-only); when another
    process holds it, one error naming that process."""
    import fcntl
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LocalFileError(f"Cannot lock the state file {path}: {exc.strerror or exc}.",
                                 f"Point {option('state')} at a file on a local file system.", "state") from exc
        holder = lock_holder(fd)
        who = f"process {holder}" if holder else "another process"
        raise LocalFileError(
            f"The state file {path} is in use by {who} (another az edge-tpm run); refusing to run on it as well.",
            f"Wait until that run ends (or stop it: kill {holder or 'PID'}), or give this run its own "
            f"{option('state')} file.", "state") from exc


def lock_holder(fd: int) -> Optional[int]:
    """The PID holding the lock on the file of `fd`: from the kernel's lock table (Linux), else from
    the header of the file, where every run writes its PID."""
    info = os.fstat(fd)
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            for line in handle:
                words = line.split()
                if len(words) > 5 and words[1] == "FLOCK" and words[3] == "WRITE":
                    dev_ino = words[5].split(":")
                    if len(dev_ino) == 3 and int(dev_ino[2]) == info.st_ino and words[4].isdigit():
                        return int(words[4])
    except (OSError, ValueError):
        pass
    try:
        with os.fdopen(os.dup(fd), "rb") as handle:
            handle.seek(0)
            header = json.loads(handle.readline(MAX_LINE_BYTES).decode("utf-8"))
        pid = header.get("run", {}).get("pid")
        return pid if isinstance(pid, int) and not isinstance(pid, bool) else None
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
