"""Domain errors: what went wrong, in the words of the layer that found it.

Adapters and operations raise these (plain exceptions, no azure-cli import, no flag names);
the az face (``_error_map.py``) turns them into ``azure.cli.core.azclierror`` errors with a
recommendation, adding flag names where an error names the input (``field``) it is about.
The fleet records them per device without any mapping.

Older adapters still raise azclierror errors directly; both kinds carry a message and a
recommendation, and ``describe()`` reads either.
"""
from typing import Optional


class EdgeTpmError(Exception):
    """Base class. ``hint`` says what to do; ``field`` names the input at fault (an option's
    dest name such as ``registration_id``), for the face to turn into a flag name."""
    kind = "error"

    def __init__(self, message: str, hint: Optional[str] = None, field: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.field = field


class UserInputError(EdgeTpmError):
    """A value the user gave is wrong (shape, range, combination)."""
    kind = "input"


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
