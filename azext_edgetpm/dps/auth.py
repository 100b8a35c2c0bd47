"""Credentials for the DPS service API, and the azure-core policy that signs requests with a
shared access key.

The key lives only in a `SharedAccessKey` object whose repr hides it; the token it makes goes
only into the Authorization header, which the client's logging policy redacts.
"""
import base64
import binascii
import hashlib
import hmac
import time
import urllib.parse

from azure.core.pipeline.policies import SansIOHTTPPolicy

from azext_edgetpm.errors import UserInputError

# Entra ID resource of the DPS service API (the token audience).
DPS_RESOURCE = "https://azure-devices-provisioning.net"
DPS_SCOPE = DPS_RESOURCE + "/.default"


class SharedAccessKey:
    """A shared access policy name and its key. Never printed: repr and str hide the key."""

    __slots__ = ("key_name", "_key")

    def __init__(self, key_name: str, key: str):
        if not key_name:
            raise UserInputError("The shared access policy has no name (SharedAccessKeyName).",
                                 "Give the DPS connection string as the portal or `az iot dps policy show` shows it.")
        try:
            self._key = base64.b64decode(key or "", validate=True)
        except (binascii.Error, ValueError):
            self._key = b""
        if not self._key:
            # The key itself is never part of the message.
            raise UserInputError(f"The key of shared access policy {key_name!r} is not valid base64.",
                                 "Copy the connection string again (SharedAccessKey=...).")
        self.key_name = key_name

    def __repr__(self):
        return f"SharedAccessKey(key_name={self.key_name!r}, key=<hidden>)"

    __str__ = __repr__

    def token(self, resource: str, ttl: int = 3600, now=None) -> str:
        """`SharedAccessSignature sr=..&sig=..&se=..&skn=..` for `resource` (the DPS host name)."""
        expiry = int((time.time() if now is None else now) + ttl)
        sr = urllib.parse.quote(resource, safe="")
        digest = hmac.new(self._key, f"{sr}\n{expiry}".encode("utf-8"), hashlib.sha256).digest()
        sig = urllib.parse.quote(base64.b64encode(digest).decode("ascii"), safe="")
        skn = urllib.parse.quote(self.key_name, safe="")
        return f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={skn}"


class SasAuthenticationPolicy(SansIOHTTPPolicy):
    """Puts a SAS token for the DPS host into each request, renewing it before it expires."""

    def __init__(self, credential: SharedAccessKey, resource: str, ttl: int = 3600):
        super().__init__()
        self._credential = credential
        self._resource = resource
        self._ttl = ttl
        self._token = None
        self._renew_at = 0.0

    def on_request(self, request):
        now = time.time()
        if self._token is None or now >= self._renew_at:
            self._token = self._credential.token(self._resource, self._ttl, now=now)
            self._renew_at = now + self._ttl - 300
        request.http_request.headers["Authorization"] = self._token
