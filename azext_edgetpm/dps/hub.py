"""A device's identity in the IoT hub DPS assigned it to: read and deleted through the IoT Hub
service API (2021-04-12) with the az login identity (an Entra ID token for
https://iothubs.azure.net), on the same azure-core pipeline as the DPS client.

DPS never deletes what it created in a hub. `delete_device_identity` does, when asked, and
never fails the caller: a hub that cannot be reached, or an identity without the right to
delete there, leaves the identity where it is, and the `Change` says so (status `left`) with
the reason; the command that removes it is `removal_command()`.

A hub's host name is checked (dps/hosts.py: a DNS name in the cloud's IoT Hub domain) before a
client, and so a URL or a token, is made for it; a host that fails raises a UserInputError.
"""
import threading
import urllib.parse
from typing import Callable, Dict, Optional

from azext_edgetpm.dps.lifecycle import CHANGED, OK, WOULD_CHANGE, Change

IOTHUB_RESOURCE = "https://iothubs.azure.net"
IOTHUB_SCOPE = IOTHUB_RESOURCE + "/.default"
API_VERSION = "2021-04-12"
LEFT = "left"


class HubCallError(Exception):
    """The hub did not do it: `reachable` False when it could not be reached at all."""

    def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None,
                 reachable: bool = True):
        super().__init__(message)
        self.status, self.code, self.reachable = status, code, reachable


def removal_command(hub: str, device_id: str) -> str:
    import shlex
    return f"az iot hub device-identity delete -n {shlex.quote(hub.split('.', 1)[0])} -d {shlex.quote(device_id)}"


def _error_code(response) -> Optional[str]:
    """IoT Hub's error code: the `iothub-errorcode` header, else `ErrorCode:<code>;` in Message."""
    code = response.headers.get("iothub-errorcode")
    if code:
        return code
    try:
        message = str((response.json() or {}).get("Message") or "")
    except Exception:  # pylint: disable=broad-except  # not JSON: a proxy or gateway page
        return None
    return message[len("ErrorCode:"):].split(";", 1)[0] if message.startswith("ErrorCode:") else None


class HubClient:
    """Device identities of one IoT hub (`host`: its host name, e.g. my-hub.azure-devices.net)."""

    def __init__(self, host: str, credential, cli_ctx=None, retry_total: int = 3, transport=None, *,
                 source: str = "the hub DPS assigned"):
        from azure.core.pipeline.policies import BearerTokenCredentialPolicy
        from azext_edgetpm.dps.client import pipeline_client
        from azext_edgetpm.dps.hosts import HUB, check
        self.host = check(host, HUB, cli_ctx, source)   # never a URL of an unchecked host
        self._client = pipeline_client(
            f"https://{host}", BearerTokenCredentialPolicy(credential, IOTHUB_SCOPE), cli_ctx=cli_ctx,
            retry_total=retry_total, retry_backoff_factor=0.5, retry_connect=1, connection_timeout=10,
            read_timeout=30, transport=transport)

    def close(self):
        self._client.close()

    def _send(self, method: str, device_id: str, headers=None):
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
        from azure.core.rest import HttpRequest
        from requests.exceptions import RequestException  # the token fetched by MSAL on first use
        url = f"https://{self.host}/devices/{urllib.parse.quote(device_id, safe='')}"
        request = HttpRequest(method, url, params={"api-version": API_VERSION}, headers=dict(headers or {}))
        try:
            return self._client.send_request(request)
        except (ServiceRequestError, ServiceResponseError, RequestException) as exc:
            raise HubCallError(f"{self.host} could not be reached: {exc}", reachable=False) from exc
        except ClientAuthenticationError as exc:
            raise HubCallError(f"no Entra ID token for IoT Hub from the az login: {exc}", status=401) from exc
        except Exception as exc:  # pylint: disable=broad-except  # az's credential (CLIError, MSAL): said, not raised
            raise HubCallError(f"no Entra ID token for IoT Hub from the az login: {exc}", status=401) from exc

    def get_device(self, device_id: str) -> Optional[dict]:
        """The device identity, or None when the hub has none with this ID."""
        response = self._send("GET", device_id)
        if response.status_code == 404 and _error_code(response) == "DeviceNotFound":
            return None
        self._check(response, f"read the device identity {device_id!r}")
        return response.json()

    def delete_device(self, device_id: str, etag: str = "*") -> bool:
        """Delete the identity (If-Match: `etag`); False when it was not there (any more)."""
        response = self._send("DELETE", device_id, {"If-Match": etag})
        if response.status_code == 404 and _error_code(response) == "DeviceNotFound":
            return False
        self._check(response, f"delete the device identity {device_id!r}")
        return True

    def _check(self, response, operation: str):
        if response.status_code in (200, 204):
            return
        code = _error_code(response)
        try:
            message = str((response.json() or {}).get("Message") or response.reason)
        except Exception:  # pylint: disable=broad-except  # not JSON
            message = response.reason
        if response.status_code in (401, 403):
            why = "the az login identity has no right to do this in this hub (it needs the role " \
                  "'IoT Hub Registry Contributor' or 'IoT Hub Data Contributor')"
        elif response.status_code == 404:
            why = "there is no such IoT hub here"
        else:
            why = "the hub refused"
        raise HubCallError(f"{self.host} did not {operation}: {why} (HTTP {response.status_code}"
                           f"{', ' + code if code else ''}: {message[:200]})", status=response.status_code, code=code)


class HubClients:
    """One HubClient per hub host name, made on first use and shared by the threads of a run.
    `credential`: a callable returning the az login credential (it may raise, e.g. no az login)."""

    def __init__(self, credential: Callable[[], object], cli_ctx=None,
                 make: Optional[Callable[..., HubClient]] = None):
        self._credential_source, self._cli_ctx = credential, cli_ctx
        self._make = make or HubClient
        self._credential = None
        self._clients: Dict[str, HubClient] = {}
        self._lock = threading.Lock()

    def client(self, host: str, source: str = "the hub DPS assigned") -> HubClient:
        """The client of `host`, checked first (a UserInputError, before any credential is asked for)."""
        from azext_edgetpm.dps.hosts import HUB, check
        key = check(host, HUB, self._cli_ctx, source)
        with self._lock:
            if key not in self._clients:
                if self._credential is None:
                    try:
                        self._credential = self._credential_source()
                    except Exception as exc:  # pylint: disable=broad-except  # e.g. not logged in: said, not raised
                        raise HubCallError(f"no az login to reach the IoT hub with: {exc}", status=401) from exc
                self._clients[key] = self._make(key, self._credential, cli_ctx=self._cli_ctx)
            return self._clients[key]

    def close(self):
        with self._lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()


def delete_device_identity(clients: HubClients, hub: str, device_id: str, dry_run: bool = False) -> Change:
    """Delete `device_id` in `hub`: ok (not there), changed (deleted), would-change (dry run), or
    left (with the reason) when the hub cannot be reached or refuses. A hub host outside the
    cloud's IoT Hub domain raises (dps/hosts.py), before anything is sent."""
    data = {"hub": hub, "deviceId": device_id}
    try:
        client = clients.client(hub)   # (a UserInputError passes through: a host refused is not "left")
        if dry_run:
            found = client.get_device(device_id)
            if found is None:
                return Change(OK, f"no device identity {device_id} in {hub} (deleted already)", data)
            return Change(WOULD_CHANGE, f"would delete the device identity {device_id} in {hub}", data)
        if client.delete_device(device_id):
            return Change(CHANGED, f"device identity {device_id} deleted in {hub}", data)
        return Change(OK, f"no device identity {device_id} in {hub} (deleted already)", data)
    except HubCallError as exc:
        verb = "would be left" if dry_run else "left"
        return Change(LEFT, f"device identity {device_id} in {hub} {verb}: {exc}",
                      dict(data, reason=str(exc), reachable=exc.reachable))
