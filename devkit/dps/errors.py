"""DPS-shaped errors.

DPS answers errors as ``{"errorCode": 404201, "trackingId": ..., "message": ...,
"timestampUtc": ...}``; the six-digit code starts with the HTTP status. Codes marked
"public" below were seen in public DPS material (REST reference, SDK tests, issue logs); the
others are the emulator's own choice inside the right HTTP class, because the real service does
not document them.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Dict, Optional

# public: the frequent "EK is not a marshalled TPM2B_PUBLIC" error
ENDORSEMENT_KEY_INVALID = 400004
# public (C SDK tests): custom allocation failure
CUSTOM_ALLOCATION_FAILED = 400207
# public (device and service logs): authorization failed
UNAUTHORIZED = 401002
# public (issue reports): enrollment not found; registration not found
ENROLLMENT_NOT_FOUND = 404201
REGISTRATION_NOT_FOUND = 404202

# emulator's choices
BAD_REQUEST = 400001
INVALID_API_VERSION = 400002
INVALID_REGISTRATION_ID = 400005
BULK_TOO_LARGE = 400006
INVALID_ALLOCATION = 400007
IOT_HUB_NOT_LINKED = 400008
ENROLLMENT_DISABLED = 401003
NOT_FOUND = 404001
OPERATION_NOT_FOUND = 404203
METHOD_NOT_ALLOWED = 405001
ENROLLMENT_EXISTS = 409201
PRECONDITION_FAILED = 412001
THROTTLED = 429001
INTERNAL = 500001
SERVICE_UNAVAILABLE = 503001


def utc_now_str() -> str:
    """Current UTC time in the 7-decimal ISO form DPS uses (``2020-04-10T03:11:13.0276997Z``)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}0Z"


class DpsError(Exception):
    """An error to be answered in the DPS shape."""

    def __init__(self, code: int, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.code = code
        self.status = code // 1000
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> Dict[str, object]:
        """The JSON body DPS sends for this error."""
        return {
            "errorCode": self.code,
            "trackingId": str(uuid.uuid4()),
            "message": self.message,
            "timestampUtc": utc_now_str(),
        }


class ArmError(Exception):
    """An error to be answered in the ARM shape ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> Dict[str, object]:
        return {"error": {"code": self.code, "message": self.message}}


class OAuthError(Exception):
    """An error of the identity endpoint, in the OAuth2/AAD shape."""

    def __init__(self, status: int, error: str, description: str, aadsts: int):
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.aadsts = aadsts
        self.headers: Dict[str, str] = {}

    def body(self) -> Dict[str, object]:
        return {
            "error": self.error,
            "error_description": f"AADSTS{self.aadsts}: {self.description}",
            "error_codes": [self.aadsts],
            "timestamp": utc_now_str(),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        }
