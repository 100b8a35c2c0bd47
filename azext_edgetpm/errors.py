"""Domain errors: what went wrong, in the words of the layer that found it.

Adapters and operations raise these (plain exceptions, no azure-cli import, no flag names);
the az face (``_error_map.py``) turns them into ``azure.cli.core.azclierror`` errors with a
recommendation, adding flag names where an error names the input (``field``) it is about.
The fleet records them per device without any mapping.

An input is named in a message or hint with ``option("ssh_key")`` (its dest name), never with
a flag: the face registers how options are spelt (``--ssh-key``) with ``name_options`` and the
texts are rendered when read, so the same adapter error reads right in a single-device command
and in a fleet's per-device record. Without registered names an option reads as its dest name.
``describe()`` also reads errors of other libraries (azclierror, knack).
"""
import re
import threading
from typing import Dict, Optional

_MARK = re.compile(r"<option:([a-z][a-z0-9_]*)>")
_NAMES: Dict[str, str] = {}
_NAMES_LOCK = threading.Lock()


def option(dest: str) -> str:
    """How an adapter names an input in an error text (rendered later; see name_options)."""
    return f"<option:{dest}>"


def name_options(names: Dict[str, str]) -> None:
    """The face says how options are spelt (dest name -> flag)."""
    with _NAMES_LOCK:
        _NAMES.update(names)


def render(text: Optional[str]) -> Optional[str]:
    """`text` with every option(...) mark replaced by the option's registered name."""
    if not text or "<option:" not in text:
        return text
    return _MARK.sub(lambda m: _NAMES.get(m.group(1), m.group(1)), text)


class EdgeTpmError(Exception):
    """Base class. ``hint`` says what to do; ``field`` names the input at fault (an option's
    dest name such as ``registration_id``), for the face to turn into a flag name."""
    kind = "error"

    def __init__(self, message: str, hint: Optional[str] = None, field: Optional[str] = None):
        super().__init__(message)
        self._message = message
        self._hint = hint
        self.field = field

    @property
    def message(self) -> str:
        return render(self._message)

    @property
    def hint(self) -> Optional[str]:
        return render(self._hint)

    def __str__(self) -> str:
        return self.message

    def prefix(self, text: str) -> None:
        """Put `text` before the message (a caller saying where the error happened)."""
        self._message = text + self._message
        self.args = (self._message,)


class UserInputError(EdgeTpmError):
    """A value the user gave is wrong (shape, range, combination)."""
    kind = "input"


class UsageError(UserInputError):
    """Options used in a way that cannot work together or in this context."""


class ExclusiveInputsError(UsageError):
    """Two inputs that exclude each other were both given."""


class MissingInputError(UserInputError):
    """Something the user must give is missing."""
    kind = "missing"


class LocalFileError(UserInputError):
    """A local file the user named cannot be read or written."""
    kind = "file"


class DeviceError(EdgeTpmError):
    """The device is in a state we cannot work with (or returned something invalid)."""
    kind = "device"


class UnreachableError(EdgeTpmError):
    """The device or a service could not be reached."""
    kind = "unreachable"


class AuthError(EdgeTpmError):
    """Authentication failed (SSH, sudo, DPS)."""
    kind = "auth"


class CredentialError(AuthError):
    """No usable credential on this machine (not logged in, an expired login)."""


class PermissionDeniedError(EdgeTpmError):
    """Authenticated, but not allowed."""
    kind = "forbidden"


class NotFoundError(EdgeTpmError):
    """What was asked for does not exist."""
    kind = "not-found"


class ConflictError(EdgeTpmError):
    """Someone else's state is in the way (an enrollment with another key, an etag mismatch)."""
    kind = "conflict"


class ServiceError(EdgeTpmError):
    """A service (DPS) refused or failed."""
    kind = "service"


class BadRequestError(ServiceError):
    """A service refused the request as malformed."""
    kind = "input"


class ServerError(ServiceError):
    """A service kept failing on its side (5xx) beyond the retries."""


class ThrottledError(ServiceError):
    """A service kept throttling beyond the retries."""
    kind = "throttled"


class TransientError(EdgeTpmError):
    """Worth retrying later: a dropped connection, a timeout in the middle of work."""
    kind = "transient"


class InterruptedWork(EdgeTpmError):
    """The run was stopped (Ctrl-C, a signal) before this device's work finished."""
    kind = "interrupted"


def describe(exc: BaseException) -> dict:
    """{"error", "recommendation", "kind"} for a domain error or an azclierror (for records and
    summaries; never carries secrets because the messages never do)."""
    if isinstance(exc, EdgeTpmError):
        return {"error": exc.message, "recommendation": exc.hint, "kind": exc.kind}
    recommendations = getattr(exc, "recommendations", None) or []
    message = getattr(exc, "error_msg", None) or str(exc) or type(exc).__name__
    return {"error": str(message), "recommendation": " ".join(str(r) for r in recommendations) or None,
            "kind": _az_kind(exc)}


def _az_kind(exc: BaseException) -> str:
    name = type(exc).__name__
    for marker, kind in (("Unauthorized", "auth"), ("Authentication", "auth"), ("Forbidden", "forbidden"),
                         ("NotFound", "not-found"), ("Conflict", "conflict"), ("Throttled", "throttled"),
                         ("Connection", "unreachable"), ("ClientRequest", "unreachable"),
                         ("Argument", "input"), ("Validation", "device"), ("FileOperation", "file")):
        if marker in name:
            return kind
    return "error"
