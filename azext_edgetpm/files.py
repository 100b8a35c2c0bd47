"""Reading a local file the user named, bounded: at most `limit` bytes are ever read (a file
that holds more, or a device such as /dev/zero, is refused with one clear error after limit + 1
bytes), and every way the path can be wrong (missing, a directory, unreadable, a NUL in it, not
UTF-8) is one LocalFileError naming the input. Standard library only: the face, the fleet and the
adapters use it.

    from azext_edgetpm.files import read_bounded, read_text_bounded, LIMITS
    data = read_bounded(path, LIMITS["ca_bundle"], "The EK CA bundle", field="ek_ca_bundle")
"""
import os
from typing import Optional

from azext_edgetpm.echo import shown
from azext_edgetpm.errors import LocalFileError
from azext_edgetpm.limits import MAX_PAYLOAD_BYTES

KIB = 1024
MIB = 1024 * KIB
# Bytes per kind of file; far above what a real file of the kind holds, far below what would
# hurt the az machine.
LIMITS = {
    "ca_bundle": 4 * MIB,      # PEM/DER certificates (--ek-ca-bundle, --proxy-ca, proxy_ca)
    "inventory": 16 * MIB,     # a fleet's inventory (some 100,000 rows)
    "state": 256 * MIB,        # a fleet's --state journal (streamed a line at a time: fleet/statefile.py)
    "payload": MAX_PAYLOAD_BYTES,  # --payload (sent to DPS at every registration)
    "twin_json": 1 * MIB,      # --initial-twin-tags / --initial-twin-properties as a file
    "ssh_key": 64 * KIB,       # a private key
    "known_hosts": 256 * MIB,  # ~300,000 hosts of three keys, RSA-3072 among them, as ssh-keyscan writes them
                               # (~850 bytes a host; read once per run: remote/known_hosts.py)
    "package": 1024 * MIB,     # an --offline-packages .deb
    "report": 256 * MIB,       # a fleet's --report HTML page with its run data (~1 KiB a device)
}


def size_text(count: int) -> str:
    """1,048,576 -> '1 MiB'; 65,536 -> '64 KiB'; other counts in bytes."""
    for unit, label in ((MIB, "MiB"), (KIB, "KiB")):
        if count >= unit and count % unit == 0:
            return f"{count // unit:,} {label}"
    return f"{count:,} bytes"


def name(path: str) -> str:
    """A path as a message shows it: as it is when it is plain printable text, else quoted with
    its control characters escaped (and bounded)."""
    if len(path) <= 200 and path.isprintable() and not path.startswith(" ") and not path.endswith(" "):
        return path
    return shown(path, 200)


def read_bounded(path: str, limit: int, what: str, field: Optional[str] = None,
                 hint: Optional[str] = None) -> bytes:
    """The bytes of `path` (~ expanded), at most `limit` of them; `what` names the file in
    messages ("The inventory", "The CA bundle of <option:proxy_ca>"), `field` is the input at
    fault (a dest name), `hint` what to give instead."""
    hint = hint or "Check the path and give a readable file."
    if not isinstance(path, str) or not path:
        raise LocalFileError(f"{what}: no file name given.", hint, field)
    if "\x00" in path:
        raise LocalFileError(f"{what} {shown(path, 200)}: a file name cannot hold a NUL character.", hint, field)
    full = os.path.expanduser(path)
    try:
        with open(full, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError as exc:
        raise LocalFileError(f"{what} {name(full)} does not exist.", hint, field) from exc
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise LocalFileError(f"Cannot read {what[:1].lower() + what[1:]} {name(full)}: {why}.", hint,
                             field) from exc
    except ValueError as exc:  # (e.g. a path the file system cannot encode)
        raise LocalFileError(f"Cannot read {what[:1].lower() + what[1:]} {name(full)}: not a usable "
                             "file name.", hint, field) from exc
    if len(data) > limit:
        raise LocalFileError(
            f"{what} {name(full)} holds more than {size_text(limit)} (it is "
            + ("a device or a pipe, not a regular file" if not _regular(full) else "too large")
            + "); nothing was read beyond that.",
            f"Give a regular file of at most {size_text(limit)}. {hint}", field)
    return data


def read_text_bounded(path: str, limit: int, what: str, field: Optional[str] = None,
                      hint: Optional[str] = None, encoding: str = "utf-8-sig") -> str:
    """As read_bounded, decoded (UTF-8 with or without a byte order mark by default)."""
    data = read_bounded(path, limit, what, field, hint)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise LocalFileError(f"{what} {name(os.path.expanduser(path))} is not UTF-8 text (byte "
                             f"{exc.start:,} is 0x{data[exc.start]:02x}).",
                             hint or "Save the file as UTF-8.", field) from exc


def _regular(path: str) -> bool:
    try:
        import stat
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
