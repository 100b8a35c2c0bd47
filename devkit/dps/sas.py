"""Shared access signatures as DPS uses them (service policies and TPM device registration).

Token: ``SharedAccessSignature sr=<resource>&sig=<url-encoded base64 HMAC-SHA256>&se=<expiry>
[&skn=<key name>]``; the signed string is ``"<resource>\\n<expiry>"``.

Clients differ in how they encode ``sr`` before signing (``quote_plus`` of the host, the raw
``scope/registrations/id`` with slashes kept, ...). The verifier therefore accepts a signature
over any of the usual encodings of the same resource: the value exactly as sent, its decoded
form, and its re-encoded forms. All are the same resource, so this widens no access.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

PREFIX = "SharedAccessSignature "


class SasError(ValueError):
    """The token is malformed, expired, or its signature does not verify."""


@dataclass(frozen=True)
class SasToken:
    """A parsed token; ``raw`` holds the fields exactly as sent (not URL-decoded)."""

    raw: Dict[str, str]
    resource: str  # sr, URL-decoded
    signature: bytes
    expiry: int
    key_name: Optional[str]


def parse(header: str) -> SasToken:
    """Parse an Authorization header value holding a SAS token."""
    if not header or not header.startswith(PREFIX):
        raise SasError("not a SharedAccessSignature")
    raw: Dict[str, str] = {}
    for part in header[len(PREFIX):].strip().split("&"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise SasError("malformed SharedAccessSignature field")
        raw[key.strip().lower()] = value.strip()
    for field in ("sr", "sig", "se"):
        if field not in raw:
            raise SasError(f"SharedAccessSignature lacks '{field}'")
    try:
        expiry = int(urllib.parse.unquote(raw["se"]))
        signature = base64.b64decode(urllib.parse.unquote(raw["sig"]), validate=True)
    except ValueError as exc:
        raise SasError("malformed SharedAccessSignature se/sig") from exc
    skn = raw.get("skn")
    return SasToken(
        raw=raw,
        resource=urllib.parse.unquote_plus(raw["sr"]),
        signature=signature,
        expiry=expiry,
        key_name=urllib.parse.unquote(skn) if skn is not None else None,
    )


def resource_forms(token: SasToken) -> List[str]:
    """The encodings of ``sr`` a client may have signed."""
    forms: List[str] = []
    for f in (
        token.raw["sr"],
        token.resource,
        urllib.parse.quote_plus(token.resource),
        urllib.parse.quote(token.resource, safe=""),
        urllib.parse.quote(token.resource, safe="/"),
    ):
        for g in (f, f.lower()):
            if g not in forms:
                forms.append(g)
    return forms


def verify_with(token: SasToken, sign, now: Optional[float] = None) -> None:
    """Check expiry and that ``sign(message)`` matches the token's signature for some form.

    ``sign`` maps the bytes to sign to the HMAC digest (so a key never needs to leave its
    holder).
    """
    if token.expiry <= int(now if now is not None else time.time()):
        raise SasError("SharedAccessSignature expired")
    for form in resource_forms(token):
        digest = sign(f"{form}\n{token.expiry}".encode("utf-8"))
        if hmac.compare_digest(digest, token.signature):
            return
    raise SasError("SharedAccessSignature signature does not match")


def hmac_signer(key: bytes):
    """A ``sign`` callable for :func:`verify_with` over a raw HMAC-SHA256 key."""
    return lambda msg: hmac.new(key, msg, hashlib.sha256).digest()


def resource_matches(token: SasToken, allowed: Iterable[str]) -> bool:
    """True when the decoded ``sr`` names one of ``allowed`` (case-insensitive; a URL scheme and
    a trailing slash are ignored; a longer path under an allowed host is fine, as in IoT Hub)."""
    res = token.resource.strip().lower()
    for prefix in ("https://", "http://"):
        if res.startswith(prefix):
            res = res[len(prefix):]
    res = res.rstrip("/")
    for a in allowed:
        a = a.lower().rstrip("/")
        if res == a or res.startswith(a + "/"):
            return True
    return False


def generate(resource: str, key_b64: str, key_name: Optional[str] = None, ttl: int = 3600,
             now: Optional[float] = None) -> str:
    """Build a token the way the public DPS service SDKs do (``sr`` = quote_plus(resource))."""
    expiry = int((now if now is not None else time.time()) + ttl)
    sr = urllib.parse.quote_plus(resource)
    digest = hmac.new(base64.b64decode(key_b64), f"{sr}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    token = f"{PREFIX}sr={sr}&sig={sig}&se={expiry}"
    if key_name:
        token += f"&skn={urllib.parse.quote(key_name, safe='')}"
    return token
