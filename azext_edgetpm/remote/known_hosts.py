"""Reading an OpenSSH known_hosts file, markers included.

paramiko's own loader knows no markers: a valid file with `@cert-authority` or `@revoked` lines
fails to load. Here every line goes through paramiko's HostKeyEntry parser, with the markers
handled as OpenSSH does where we can:
- `@revoked <hosts> <key>`: the key is never accepted, also not with --accept-new-host-key. It is
  refused for every host (stricter than OpenSSH, which refuses it for the hosts that match).
- `@cert-authority <hosts> <key>`: trusts host certificates signed by that CA. paramiko checks
  plain host keys only, so such lines are skipped with a warning; the device's own host key must
  be listed (or accepted with --accept-new-host-key) as well.
"""
import base64
import binascii
from dataclasses import dataclass, field
from typing import List, Set, Tuple

from knack.log import get_logger

from azext_edgetpm.errors import LocalFileError, option

logger = get_logger(__name__)

_WARNED: Set[Tuple[str, int]] = set()


@dataclass
class KnownHosts:
    """The entries paramiko can check, and the revoked keys (type, base64 blob)."""
    entries: list = field(default_factory=list)
    revoked: Set[Tuple[str, str]] = field(default_factory=set)
    skipped: List[str] = field(default_factory=list)

    def is_revoked(self, key) -> bool:
        return (key.get_name(), key.get_base64()) in self.revoked

    def fill(self, host_keys) -> None:
        """Add the entries to a paramiko HostKeys object, leaving the revoked keys out."""
        for entry in self.entries:
            if self.is_revoked(entry.key):
                continue
            for name in entry.hostnames:
                host_keys.add(name, entry.key.get_name(), entry.key)


def _parse_line(path: str, number: int, line: str):
    from paramiko.hostkeys import HostKeyEntry, InvalidHostKey
    try:
        return HostKeyEntry.from_line(line, lineno=number)
    except (InvalidHostKey, ValueError, binascii.Error) as exc:
        raise LocalFileError(f"Cannot read known hosts file {path}: line {number} is not a host key entry "
                             f"({type(exc).__name__}).",
                             f"Fix or remove that line, or point {option('known_hosts')} at another file.") from exc


def load_known_hosts(path: str) -> KnownHosts:
    """Parse `path` (which exists); a line that is not a valid entry is one LocalFileError."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise LocalFileError(f"Cannot read known hosts file {path}: {exc.strerror or exc}",
                             f"Fix or replace the file given with {option('known_hosts')}.") from exc
    known = KnownHosts()
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        marker = None
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
        if marker == "@revoked":
            words = line.split()
            if len(words) < 3:
                raise LocalFileError(f"Cannot read known hosts file {path}: the @revoked line {number} "
                                     "names no key.", "Fix or remove that line.")
            try:
                base64.b64decode(words[2], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise LocalFileError(f"Cannot read known hosts file {path}: the key of the @revoked line "
                                     f"{number} is not base64.", "Fix or remove that line.") from exc
            known.revoked.add((words[1], words[2]))
            continue
        if marker is not None:
            reason = ("host certificates are not checked by az edge-tpm" if marker == "@cert-authority"
                      else "unknown marker")
            if (path, number) not in _WARNED:  # once per run, not once per connection
                _WARNED.add((path, number))
                logger.warning("Skipping line %d of %s (%s: %s); list the device's own host key there, or use "
                               "--accept-new-host-key.", number, path, marker[:40], reason)
            known.skipped.append(marker)
            continue
        entry = _parse_line(path, number, line)
        if entry is not None:  # None: a key type paramiko cannot use (OpenSSH may): skipped
            known.entries.append(entry)
    return known
