"""The IoT Hub device registry of the hubs the emulated DPS assigns to (service API 2021-04-12):
``GET /devices/{id}`` and ``DELETE /devices/{id}``, enough for deprovisioning.

A device identity appears when DPS assigns a device to a hub (as the real DPS creates it), with
an etag; ``DELETE`` honours ``If-Match`` (``*`` or the etag). Auth: an Entra ID bearer token for
``https://iothubs.azure.net`` from the emulator's identity endpoint (its service principals have
IoT Hub Data Contributor rights). The hub is the one the Host header names (a linked hub's
host name); requests reach the emulator under a hub name only where that name is made to
resolve to it (see README.md: hub host names).

Errors in IoT Hub's shape: ``{"Message": "ErrorCode:<Code>;<text>", "ExceptionMessage":
"Tracking ID:<id>-G:0-TimeStamp:<MM/dd/yyyy HH:mm:ss>"}`` with an ``iothub-errorcode`` header.
"""

from __future__ import annotations

import base64
import copy
import datetime
import secrets
import threading
import uuid
from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional

from .tokens import TokenError
from .web import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator

IOTHUB_AUDIENCE = "https://iothubs.azure.net"
API_VERSIONS = ("2018-06-30", "2019-03-30", "2019-10-01", "2020-03-13", "2020-05-31-preview", "2020-09-30",
                "2021-04-12")


class HubError(Exception):
    """An error answered in IoT Hub's shape."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = {"iothub-errorcode": code}

    def body(self) -> Dict[str, object]:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%m/%d/%Y %H:%M:%S")
        return {"Message": f"ErrorCode:{self.code};{self.message}",
                "ExceptionMessage": f"Tracking ID:{uuid.uuid4().hex}-G:0-TimeStamp:{stamp}"}


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


class HubRegistry:
    """Device identities per hub: {hub host (lower case): {device ID (lower case): identity}}."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._hubs: Dict[str, Dict[str, Dict[str, Any]]] = {}
        self._etags = 0

    def _etag(self) -> str:
        self._etags += 1
        return base64.b64encode(str(100000000 + self._etags).encode()).decode("ascii").rstrip("=")

    def ensure_device(self, hub: str, device_id: str, edge: bool = True) -> Dict[str, Any]:
        """The identity DPS creates on an assignment (kept as it is when it exists already)."""
        with self._lock:
            devices = self._hubs.setdefault(hub.lower(), {})
            found = devices.get(device_id.lower())
            if found is None:
                now = _utc()
                found = devices[device_id.lower()] = {
                    "deviceId": device_id, "generationId": str(600000000000000000 + secrets.randbelow(10 ** 17)),
                    "etag": self._etag(), "connectionState": "Disconnected", "status": "enabled",
                    "statusReason": None, "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
                    "statusUpdatedTime": "0001-01-01T00:00:00Z", "lastActivityTime": "0001-01-01T00:00:00Z",
                    "cloudToDeviceMessageCount": 0,
                    "authentication": {"symmetricKey": {"primaryKey": base64.b64encode(secrets.token_bytes(32)).decode(),
                                                        "secondaryKey": base64.b64encode(secrets.token_bytes(32)).decode()},
                                       "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None},
                                       "type": "sas"},
                    "capabilities": {"iotEdge": bool(edge)}, "createdDateTimeUtc": now}
            return copy.deepcopy(found)

    def get(self, hub: str, device_id: str) -> Dict[str, Any]:
        with self._lock:
            found = self._hubs.get(hub.lower(), {}).get(device_id.lower())
            if found is None:
                raise HubError(404, "DeviceNotFound", f"Device {device_id} not registered")
            return copy.deepcopy(found)

    def find(self, hub: str, device_id: str) -> Optional[Dict[str, Any]]:
        try:
            return self.get(hub, device_id)
        except HubError:
            return None

    def delete(self, hub: str, device_id: str, if_match: Optional[str]) -> None:
        with self._lock:
            found = self.get(hub, device_id)
            wanted = (if_match or "").strip()
            if wanted.startswith("W/"):
                wanted = wanted[2:]
            wanted = wanted.strip('"')
            if not wanted:
                raise HubError(412, "PreconditionFailed", "Precondition failed: If-Match header is required")
            if wanted != "*" and wanted != found["etag"]:
                raise HubError(412, "PreconditionFailed", "Precondition failed: Invalid ETag")
            del self._hubs[hub.lower()][device_id.lower()]

    def devices(self, hub: str) -> Iterable[str]:
        with self._lock:
            return [d["deviceId"] for d in self._hubs.get(hub.lower(), {}).values()]

    def dump(self) -> Dict[str, Any]:
        with self._lock:
            return {"etags": self._etags, "hubs": copy.deepcopy(self._hubs)}

    def restore(self, data: Optional[Dict[str, Any]]) -> None:
        with self._lock:
            self._etags = int((data or {}).get("etags", 0))
            self._hubs = copy.deepcopy((data or {}).get("hubs") or {})


# ---------------------------------------------------------------------- HTTP
def _hub_of(emu: "Emulator", req: Request) -> str:
    host = (req.host or "").split(":", 1)[0]
    for name in emu.store.hub_names():
        if name.lower() == host.lower():
            return name
    raise HubError(404, "IotHubNotFound", f"IoT hub '{host}' not found")


def check(emu: "Emulator", req: Request) -> str:
    """api-version and Entra ID auth; the hub the request is for."""
    version = req.query.get("api-version")
    if version not in API_VERSIONS:
        raise HubError(400, "InvalidProtocolVersion", f"Invalid or missing api-version '{version or ''}'")
    hub = _hub_of(emu, req)
    header = req.header("authorization") or ""
    if not header.lower().startswith("bearer "):
        # (the real hub also takes SAS tokens of its shared access policies; this one has none)
        raise HubError(401, "IotHubUnauthorizedAccess", "Unauthorized")
    try:
        emu.issuer.verify(header[7:].strip(), [IOTHUB_AUDIENCE])
    except TokenError as exc:
        raise HubError(401, "IotHubUnauthorizedAccess", f"Unauthorized: {exc}") from exc
    if emu.hub_denied:
        raise HubError(401, "IotHubUnauthorizedAccess",
                       "Principal is not authorized for the registry on this hub due to no assigned permissions")
    return hub


def get_device(emu: "Emulator", req: Request, id: str) -> Response:  # noqa: A002 (route param)
    found = emu.store.hub_registry.get(check(emu, req), id)
    return Response(200, found, {"ETag": f'"{found["etag"]}"'})


def delete_device(emu: "Emulator", req: Request, id: str) -> Response:  # noqa: A002
    emu.store.hub_registry.delete(check(emu, req), id, req.header("if-match"))
    emu.store.save()
    return Response(204)
