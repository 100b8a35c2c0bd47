"""Entra ID-like access tokens: RS256 JWTs issued and verified by the emulator itself.

The emulator's identity endpoint issues them for the client-credentials grant of its service
principals; ARM and the DPS service API verify signature, expiry and audience.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Dict, Iterable, Optional

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class TokenError(ValueError):
    """The bearer token is malformed, expired, badly signed or for another audience."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def normalize_audience(aud: str) -> str:
    """Audiences compare without a trailing slash and case-insensitively."""
    return aud.strip().rstrip("/").lower()


class TokenIssuer:
    """Holds the signing key; issues and verifies tokens."""

    def __init__(self, key_pem: Optional[bytes] = None, lifetime_s: int = 3600):
        if key_pem:
            self._key = serialization.load_pem_private_key(key_pem, password=None)
        else:
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = self._key.public_key().public_numbers()
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest = hashes.Hash(hashes.SHA256())
        digest.update(der)
        self.kid = _b64url(digest.finalize()[:16])
        self._n = pub.n
        self._e = pub.e
        self.lifetime_s = lifetime_s

    def key_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwks(self) -> Dict[str, object]:
        """The public key as a JWK set (what ``jwks_uri`` serves)."""
        def _int(v: int) -> str:
            return _b64url(v.to_bytes((v.bit_length() + 7) // 8, "big"))

        return {"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": _int(self._n), "e": _int(self._e),
        }]}

    def issue(self, *, issuer: str, audience: str, tenant: str, app_id: str,
              object_id: str, now: Optional[float] = None) -> Dict[str, object]:
        """Issue an app-only access token; returns the OAuth2 token response fields."""
        t = int(now if now is not None else time.time())
        claims = {
            "aud": audience,
            "iss": issuer,
            "iat": t,
            "nbf": t,
            "exp": t + self.lifetime_s,
            "appid": app_id,
            "azp": app_id,
            "idtyp": "app",
            "oid": object_id,
            "sub": object_id,
            "tid": tenant,
            "ver": "2.0",
            "uti": uuid.uuid4().hex,
        }
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        sig = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return {
            "token_type": "Bearer",
            "expires_in": self.lifetime_s,
            "ext_expires_in": self.lifetime_s,
            "access_token": signing_input + "." + _b64url(sig),
        }

    def verify(self, token: str, audiences: Iterable[str], now: Optional[float] = None) -> Dict[str, object]:
        """Verify a token and return its claims; raise :class:`TokenError` otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("malformed token")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            sig = _b64url_decode(parts[2])
        except ValueError as exc:
            raise TokenError("malformed token") from exc
        if header.get("alg") != "RS256":
            raise TokenError("unsupported token algorithm")
        try:
            self._key.public_key().verify(
                sig, f"{parts[0]}.{parts[1]}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature as exc:
            raise TokenError("token signature is invalid") from exc
        t = int(now if now is not None else time.time())
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= t:
            raise TokenError("token expired")
        if isinstance(claims.get("nbf"), int) and claims["nbf"] > t + 300:
            raise TokenError("token not yet valid")
        wanted = {normalize_audience(a) for a in audiences}
        if normalize_audience(str(claims.get("aud", ""))) not in wanted:
            raise TokenError("token audience is not accepted here")
        return claims
