"""An OpenSSH known_hosts file, read once per run and indexed by host name (issue 17).

paramiko's own loader re-reads the whole file for every connection and adds every key by a linear
scan (quadratic in the file), and knows no markers. Here the file is read once per process into an
index shared read-only by every worker: plain names (and `[host]:port` for other ports) in a dict,
wildcard patterns (`*`, `?`, `!negation`, as OpenSSH's match_hostname) and hashed `|1|salt|hash`
entries in lists checked per lookup (a hashed entry can only be found by hashing the name with its
salt: one HMAC-SHA1 per hashed line and looked-up name, as OpenSSH does). A connection then gives
paramiko only the keys of its own host. Keys are built (paramiko PKey) when looked up.

Markers, as OpenSSH where we can:
- `@revoked <hosts> <key>`: the key is never accepted, also not with --accept-new-host-key. It is
  refused for every host (stricter than OpenSSH, which refuses it for the hosts that match).
- `@cert-authority <hosts> <key>`: trusts host certificates signed by that CA. paramiko checks
  plain host keys only, so such lines are skipped with a warning; the device's own host key must
  be listed (or accepted with --accept-new-host-key) as well.

A key accepted with --accept-new-host-key is appended once (under a thread lock and the file's
flock, after reading what other processes appended meanwhile) and added to the index. A file that
changed under us (another process appended) is read from where we stopped; a replaced one again.
"""
import base64
import binascii
import fnmatch
import hmac
import os
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from knack.log import get_logger

from azext_edgetpm.errors import LocalFileError, option
from azext_edgetpm.files import LIMITS, read_bounded

logger = get_logger(__name__)

MAX_KNOWN_HOSTS_BYTES = LIMITS["known_hosts"]
_WARNED: Set[Tuple[str, int]] = set()
_INDEXES: Dict[str, "KnownHosts"] = {}
_INDEXES_LOCK = threading.Lock()


@dataclass
class _Line:
    number: int
    key_type: str
    blob: str                          # base64, as in the file
    _key: object = None

    def key(self, path: str):
        """The paramiko PKey (None for a key type paramiko cannot use: skipped, as paramiko does)."""
        if self._key is None:
            from paramiko import PKey, SSHException
            from paramiko.pkey import UnknownKeyType
            try:
                self._key = PKey.from_type_string(self.key_type, base64.b64decode(self.blob))
            except UnknownKeyType:
                self._key = False
            except (SSHException, ValueError, TypeError, IndexError, binascii.Error) as exc:
                raise LocalFileError(f"Cannot read known hosts file {path}: line {self.number} holds no valid "
                                     f"{self.key_type[:40]} key ({type(exc).__name__}).",
                                     f"Fix or remove that line, or point {option('known_hosts')} at another "
                                     "file.") from exc
        return self._key or None


@dataclass
class KnownHosts:
    """The index of one known_hosts file."""
    path: str = ""
    exact: Dict[str, List[_Line]] = field(default_factory=dict)
    patterns: List[Tuple[List[str], _Line]] = field(default_factory=list)
    hashed: List[Tuple[bytes, bytes, _Line]] = field(default_factory=list)
    revoked: Set[Tuple[str, str]] = field(default_factory=set)
    skipped: List[str] = field(default_factory=list)
    lines: int = 0
    offset: int = 0                    # bytes read so far
    stamp: tuple = ()                  # (device, inode) of the file read
    mtime: int = 0                     # its st_mtime_ns when read
    tail: bytes = b""                  # the last bytes read: a file rewritten in place is read again
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _hashed_hits: Dict[str, List[_Line]] = field(default_factory=dict, repr=False)

    def is_revoked(self, key) -> bool:
        return (key.get_name(), key.get_base64()) in self.revoked

    def lookup(self, name: str) -> list:
        """The keys (paramiko PKeys, in file order, revoked ones left out) recorded for `name`
        (a host name, an address, or `[host]:port` for a port other than 22)."""
        name = name.lower()
        found = list(self.exact.get(name, ()))
        found += [line for patterns, line in self.patterns if _matches(patterns, name)]
        if self.hashed:
            hits = self._hashed_hits.get(name)
            if hits is None:       # one HMAC per hashed line; remembered (a jump host serves every device)
                raw = name.encode("utf-8")
                hits = self._hashed_hits[name] = [line for salt, digest, line in self.hashed
                                                  if hmac.compare_digest(hmac.digest(salt, raw, "sha1"), digest)]
            found += hits
        found.sort(key=lambda line: line.number)
        keys = []
        for line in found:
            key = line.key(self.path)
            if key is not None and not self.is_revoked(key):
                keys.append(key)
        return keys

    def fill(self, host_keys, name: str) -> None:
        """Add the keys of `name` to a paramiko HostKeys (as paramiko would: a later key of the
        same type replaces an earlier one)."""
        for key in self.lookup(name):
            host_keys.add(name, key.get_name(), key)

    def add_new(self, name: str, key) -> None:
        """Record a key accepted on first use: appended to the file once, under a lock."""
        import fcntl
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        with self.lock:
            directory = os.path.dirname(self.path)
            try:
                if directory and not os.path.isdir(directory):
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise LocalFileError(f"Cannot record the new host key in {self.path}: {exc.strerror or exc}",
                                     f"Point {option('known_hosts')} at a writable file.") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._catch_up(fd)           # what another process appended meanwhile
                if any(k.get_name() == key.get_name() and k.get_base64() == key.get_base64()
                       for k in self.lookup(name)):
                    return                   # recorded already (another worker or process)
                os.write(fd, line.encode("ascii"))
                self._parse(line.encode("ascii"))
                self._read_to(self.offset + len(line), line.encode("ascii"))
                self.mtime = os.fstat(fd).st_mtime_ns
            except OSError as exc:
                raise LocalFileError(f"Cannot record the new host key in {self.path}: {exc.strerror or exc}",
                                     f"Point {option('known_hosts')} at a writable file.") from exc
            finally:
                os.close(fd)

    def current(self, info) -> bool:
        return (info.st_dev, info.st_ino) == self.stamp and info.st_size == self.offset \
            and info.st_mtime_ns == self.mtime

    def _catch_up(self, fd: int) -> None:
        """Read what was appended since (another process, another worker); a file replaced or
        rewritten in place is read again as a whole."""
        info = os.fstat(fd)
        if self.current(info):
            return
        appended = (not self.stamp or self.stamp == (info.st_dev, info.st_ino)) and info.st_size >= self.offset \
            and os.pread(fd, len(self.tail), self.offset - len(self.tail)) == self.tail
        if not appended:
            fresh = _read_index(self.path)
            for name in ("exact", "patterns", "hashed", "revoked", "skipped", "lines", "offset", "stamp", "mtime",
                         "tail", "_hashed_hits"):
                setattr(self, name, getattr(fresh, name))
            return
        self.stamp, self.mtime = (info.st_dev, info.st_ino), info.st_mtime_ns
        if info.st_size > self.offset:
            data = os.pread(fd, min(info.st_size - self.offset, MAX_KNOWN_HOSTS_BYTES), self.offset)
            whole = data[:data.rfind(b"\n") + 1]      # a line still being written is read next time
            self._parse(whole)
            self._read_to(self.offset + len(whole), whole)

    def _read_to(self, offset: int, data: bytes) -> None:
        self.tail = (self.tail + data)[-64:]
        self.offset = offset

    def _parse(self, data: bytes) -> None:
        for raw in data.decode("utf-8", errors="replace").splitlines():
            self.lines += 1
            self._add_line(self.lines, raw.strip())

    def _add_line(self, number: int, line: str) -> None:
        if not line or line.startswith("#"):
            return
        marker = None
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
        words = line.split()
        if marker == "@revoked":
            if len(words) < 3:
                raise self._error(f"the @revoked line {number} names no key")
            _decode(words[2], lambda: self._error(f"the key of the @revoked line {number} is not base64"),
                    strict=True)
            self.revoked.add((words[1], words[2]))
            return
        if marker is not None:
            reason = ("host certificates are not checked by az edge-tpm" if marker == "@cert-authority"
                      else "unknown marker")
            if (self.path, number) not in _WARNED:  # once per run, not once per connection
                _WARNED.add((self.path, number))
                logger.warning("Skipping line %d of %s (%s: %s); list the device's own host key there, or use "
                               "--accept-new-host-key.", number, self.path, marker[:40], reason)
            self.skipped.append(marker)
            return
        if len(words) < 3:
            return                    # not enough fields: skipped, as paramiko does
        names, key_type, blob = words[0], words[1], words[2]
        _decode(blob, lambda: self._error(f"line {number} is not a host key entry (its key is not base64)"))
        entry = _Line(number, key_type, blob)
        plain = [n for n in names.split(",") if not n.startswith("|1|")]
        if any(c in n for n in plain for c in "*?!"):    # a pattern list: matched as a whole, per lookup
            self.patterns.append(([p.lower() for p in plain], entry))
        for name in names.split(","):
            if name.startswith("|1|"):
                parts = name.split("|")
                if len(parts) != 4:
                    raise self._error(f"line {number} is not a host key entry (a hashed name is |1|salt|hash)")
                what = f"line {number} is not a host key entry (its hashed name is not base64)"
                salt = _decode(parts[2], lambda what=what: self._error(what))
                digest = _decode(parts[3], lambda what=what: self._error(what))
                self.hashed.append((salt, digest, entry))
                self._hashed_hits.clear()
            elif not self.patterns or self.patterns[-1][1] is not entry:
                self.exact.setdefault(name.lower(), []).append(entry)

    def _error(self, what: str) -> LocalFileError:
        return LocalFileError(f"Cannot read known hosts file {self.path}: {what}.",
                              f"Fix or remove that line, or point {option('known_hosts')} at another file.")


def _decode(text: str, error, strict: bool = False) -> bytes:
    """base64 `text` decoded, else the LocalFileError `error()` makes."""
    try:
        return base64.b64decode(text, validate=strict)
    except (binascii.Error, ValueError) as exc:
        raise error() from exc


def _matches(patterns: List[str], name: str) -> bool:
    """OpenSSH's match_hostname: some pattern matches and no negated one does."""
    matched = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if fnmatch.fnmatchcase(name, pattern[1:]):
                return False
        elif fnmatch.fnmatchcase(name, pattern):
            matched = True
    return matched


def _read_index(path: str) -> KnownHosts:
    try:
        info = os.stat(path)
    except OSError as exc:
        raise LocalFileError(f"Cannot read known hosts file {path}: {exc.strerror or exc}",
                             f"Fix or replace the file given with {option('known_hosts')}.") from exc
    data = read_bounded(path, MAX_KNOWN_HOSTS_BYTES, "The known hosts file", "known_hosts",
                        f"Point {option('known_hosts')} at a known_hosts file (about 300 bytes per host).")
    index = KnownHosts(path=path, stamp=(info.st_dev, info.st_ino), mtime=info.st_mtime_ns)
    index._parse(data)  # pylint: disable=protected-access
    index._read_to(len(data), data)  # pylint: disable=protected-access
    return index


def load_known_hosts(path: str) -> KnownHosts:
    """The index of `path` (empty while there is no such file), read once per process and shared: later calls get the
    same index, brought up to date when another process appended to the file (or replaced it).
    A line that is not a valid entry is one LocalFileError."""
    path = os.path.abspath(path)
    with _INDEXES_LOCK:
        index = _INDEXES.get(path)
        if index is None:
            index = _INDEXES[path] = _read_index(path) if os.path.exists(path) else KnownHosts(path=path)
            return index
    try:
        info = os.stat(path)
    except OSError:
        return index
    if not index.current(info):
        with index.lock:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return index
            try:
                index._catch_up(fd)  # pylint: disable=protected-access
            finally:
                os.close(fd)
    return index


def forget(path: Optional[str] = None) -> None:
    """Drop the cached index of `path` (all when None): read again on next use."""
    with _INDEXES_LOCK:
        if path is None:
            _INDEXES.clear()
        else:
            _INDEXES.pop(os.path.abspath(path), None)
