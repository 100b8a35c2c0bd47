"""The --state journal: one JSON document, a record per device with a record per step, rewritten
atomically (temporary file, fsync, rename, fsync of the directory) whenever a step ends. It
survives Ctrl-C, a killed process and a reboot: a re-run reads it and skips what is done.

The file holds one device per line. Each device's line is serialized when its record changes and
kept, so that a write costs the changed record plus joining the lines (json's C encoder; an
indented dump goes through the pure-Python encoder and re-encoded every device on every step).
"""
import copy
import datetime
import json
import os
import threading
from typing import Optional

from azext_edgetpm.errors import LocalFileError, option

VERSION = 1


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Journal:
    """Per-device, per-step records; `path=None` keeps them in memory only."""

    def __init__(self, path: Optional[str] = None, meta: Optional[dict] = None):
        self.path = os.path.abspath(os.path.expanduser(path)) if path else None
        self._lock = threading.Lock()
        self.doc = {"version": VERSION, "devices": {}}
        if self.path and os.path.exists(self.path):
            self.doc = self._load(self.path)
        self.doc.setdefault("devices", {})
        self._lines = {}   # device key -> its serialized record, while the record is unchanged
        if meta:
            self.doc.setdefault("runs", []).append(dict(meta, started=_now()))
        self.writes = 0

    @staticmethod
    def _load(path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as handle:
                doc = json.load(handle)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise LocalFileError(f"The state file {path} cannot be read: {exc}",
                                 "Give the state file of an earlier run, or a new path to start afresh.",
                                 "state") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("devices"), dict) or doc.get("version") != VERSION:
            raise LocalFileError(f"{path} is not a state file of az edge-tpm (version {VERSION}).",
                                 "Give the state file of an earlier run, or a new path to start afresh.", "state")
        return doc

    def record(self, key: str) -> dict:
        """A copy of the device's record ({} when there is none)."""
        with self._lock:
            return copy.deepcopy(self.doc["devices"].get(key) or {})

    def records(self) -> dict:
        with self._lock:
            return copy.deepcopy(self.doc["devices"])

    def update(self, key: str, **fields) -> None:
        with self._lock:
            rec = self.doc["devices"].setdefault(key, {"steps": {}})
            rec.update(fields)
            rec["updated"] = _now()
            self._lines.pop(key, None)
            self._write()

    def step(self, key: str, name: str, entry: dict, **fields) -> None:
        with self._lock:
            rec = self.doc["devices"].setdefault(key, {"steps": {}})
            rec.setdefault("steps", {})[name] = dict(entry, at=_now())
            rec.update(fields)
            rec["updated"] = _now()
            self._lines.pop(key, None)
            self._write()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _serialize(self) -> str:
        """The document as JSON: the top level sorted, one device per line."""
        lines = []
        for key in sorted(self.doc["devices"]):
            line = self._lines.get(key)
            if line is None:
                line = self._lines[key] = _compact(key) + ": " + _compact(self.doc["devices"][key])
            lines.append(line)
        parts = []
        for name in sorted(self.doc):
            value = "{\n" + ",\n".join(lines) + "\n}" if name == "devices" else _compact(self.doc[name])
            parts.append(_compact(name) + ": " + value)
        return "{" + ",\n".join(parts) + "}\n"

    def _write(self) -> None:
        if not self.path:
            return
        directory = os.path.dirname(self.path) or "."
        tmp = f"{self.path}.tmp-{os.getpid()}-{threading.get_ident()}"
        data = self._serialize().encode("utf-8")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise LocalFileError(f"Cannot write the state file {self.path}: {exc}",
                                 f"Point {option('state')} at a writable location with free space.",
                                 "state") from exc
        self.writes += 1
