"""Request routing for the emulator's HTTPS port.

One port serves four areas, told apart by the path only (never by the Host header, since the
real host names do not resolve here):

* ``service``  DPS service API    ``/enrollments...``, ``/registrations/{id}``
* ``device``   DPS device API     ``/{idScope}/registrations/{id}/register|operations/{op}``
* ``arm``      Azure Resource Manager ``/subscriptions...``, ``/tenants``, ``/metadata/endpoints``
* ``identity`` Entra ID-like token service ``/{tenant}/oauth2/v2.0/token``, OpenID discovery

For every request: latency/fault injection, then throttling (service operations, device
registrations, device polls), then authentication, then the handler. Errors come out in the
shape of the area (DPS, ARM or OAuth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from . import arm, device_api, errors, hub, identity, sas, service_api
from .errors import ArmError, DpsError, OAuthError
from .hub import HubError
from .tokens import TokenError
from .web import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator

SERVICE_API_VERSIONS = ("2017-11-15", "2018-09-01-preview", "2019-03-31", "2021-06-01", "2021-10-01")
DEVICE_API_VERSIONS = ("2017-11-15", "2018-09-01-preview", "2018-11-01", "2019-03-31", "2021-06-01",
                       "2021-11-01-preview")
DPS_AUDIENCE = "https://azure-devices-provisioning.net"

# a right grants these rights
RIGHT_IMPLIES = {
    "enrollmentwrite": {"enrollmentwrite", "enrollmentread", "registrationstatuswrite", "registrationstatusread"},
    "enrollmentread": {"enrollmentread", "registrationstatusread"},
    "registrationstatuswrite": {"registrationstatuswrite", "registrationstatusread"},
    "registrationstatusread": {"registrationstatusread"},
    "serviceconfig": {"serviceconfig"},
    "deviceconnect": {"deviceconnect"},
}


@dataclass(frozen=True)
class Route:
    area: str
    method: str
    pattern: Tuple[str, ...]
    handler: Callable[..., Response]
    right: Optional[str] = None  # service API right needed
    auth: bool = True  # ARM: bearer token needed

    @property
    def template(self) -> str:
        return "/" + "/".join(self.pattern)


def _r(area, method, path, handler, right=None, auth=True) -> Route:
    return Route(area, method, tuple(p for p in path.split("/") if p), handler, right, auth)


_SUB = "subscriptions/{sub}"
_RG = _SUB + "/resourceGroups/{rg}"
_DPS = "providers/Microsoft.Devices/provisioningServices"

ROUTES: List[Route] = [
    # DPS service API
    _r("service", "POST", "enrollments/query", service_api.query_enrollments, "EnrollmentRead"),
    _r("service", "POST", "enrollments", service_api.bulk, "EnrollmentWrite"),
    _r("service", "GET", "enrollments/{id}", service_api.get_enrollment, "EnrollmentRead"),
    _r("service", "PUT", "enrollments/{id}", service_api.put_enrollment, "EnrollmentWrite"),
    _r("service", "DELETE", "enrollments/{id}", service_api.delete_enrollment, "EnrollmentWrite"),
    _r("service", "GET", "enrollments/{id}/attestationmechanism", service_api.get_attestation, "EnrollmentRead"),
    _r("service", "POST", "enrollments/{id}/attestationmechanism", service_api.get_attestation, "EnrollmentRead"),
    _r("service", "GET", "registrations/{id}", service_api.get_registration, "RegistrationStatusRead"),
    _r("service", "DELETE", "registrations/{id}", service_api.delete_registration, "RegistrationStatusWrite"),
    # DPS device API
    _r("device", "PUT", "{scope}/registrations/{id}/register", device_api.register),
    _r("device", "GET", "{scope}/registrations/{id}/operations/{op}", device_api.operation_status),
    _r("device", "POST", "{scope}/registrations/{id}", device_api.status_lookup),
    # IoT Hub registry of the linked hubs (the hub: the Host header; auth in the handlers)
    _r("hub", "GET", "devices/{id}", hub.get_device),
    _r("hub", "DELETE", "devices/{id}", hub.delete_device),
    # ARM
    _r("arm", "GET", "metadata/endpoints", arm.metadata_endpoints, auth=False),
    _r("arm", "GET", "tenants", arm.list_tenants),
    _r("arm", "GET", "subscriptions", arm.list_subscriptions),
    _r("arm", "GET", _SUB, arm.get_subscription),
    _r("arm", "GET", _SUB + "/resourceGroups", arm.list_resource_groups),
    _r("arm", "GET", _RG, arm.get_resource_group),
    _r("arm", "GET", _SUB + "/" + _DPS, arm.list_by_subscription),
    _r("arm", "GET", _RG + "/" + _DPS, arm.list_by_resource_group),
    _r("arm", "GET", _RG + "/" + _DPS + "/{name}", arm.get_dps),
    _r("arm", "POST", _RG + "/" + _DPS + "/{name}/listkeys", arm.list_keys),
    _r("arm", "POST", _RG + "/" + _DPS + "/{name}/keys/{key}/listkeys", arm.list_key),
    # identity (Entra ID-like)
    _r("identity", "GET", "{tenant}/v2.0/.well-known/openid-configuration", identity.openid_configuration, auth=False),
    _r("identity", "GET", "{tenant}/.well-known/openid-configuration", identity.openid_configuration_v1, auth=False),
    _r("identity", "POST", "{tenant}/oauth2/v2.0/token", identity.token, auth=False),
    _r("identity", "POST", "{tenant}/oauth2/token", identity.token_v1, auth=False),
    _r("identity", "GET", "{tenant}/discovery/v2.0/keys", identity.jwks, auth=False),
    _r("identity", "GET", "{tenant}/discovery/keys", identity.jwks, auth=False),
    _r("identity", "GET", "common/discovery/instance", identity.instance_discovery, auth=False),
]


def _match(pattern: Tuple[str, ...], segments: List[str]) -> Optional[Dict[str, str]]:
    if len(pattern) != len(segments):
        return None
    params: Dict[str, str] = {}
    for p, s in zip(pattern, segments):
        if p.startswith("{") and p.endswith("}"):
            params[p[1:-1]] = s
        elif p.lower() != s.lower():
            return None
    return params


def find_route(req: Request) -> Tuple[Optional[Route], Dict[str, str], Optional[str]]:
    """(route, params, area-of-a-405) for the request."""
    wrong_method_area = None
    for route in ROUTES:
        params = _match(route.pattern, req.segments)
        if params is None:
            continue
        if route.method == req.method or (req.method == "HEAD" and route.method == "GET"):
            return route, params, None
        wrong_method_area = wrong_method_area or route.area
    return None, {}, wrong_method_area


def _error_response(area: str, exc: Exception) -> Response:
    if isinstance(exc, DpsError):
        if area in ("arm",):
            exc = ArmError(exc.status, "ServiceError", exc.message, exc.headers)
        elif area == "identity":
            exc = OAuthError(exc.status, "temporarily_unavailable", exc.message, 50001)
        elif area == "hub":
            exc = HubError(exc.status, "ServerError" if exc.status >= 500 else "ThrottlingException"
                           if exc.status == 429 else "InvalidOperation", exc.message)
    return Response(exc.status, exc.body(), dict(exc.headers))


class App:
    """The callable the HTTPS server hands every request to."""

    def __init__(self, emu: "Emulator"):
        self.emu = emu

    # ------------------------------------------------------------------ auth
    def _service_auth(self, req: Request, right: str) -> None:
        emu = self.emu
        header = req.header("authorization")
        if not header:
            raise DpsError(errors.UNAUTHORIZED, "Unauthorized: the Authorization header is missing.")
        if header.lower().startswith("bearer "):
            try:
                emu.issuer.verify(header[7:].strip(), [DPS_AUDIENCE])
            except TokenError as exc:
                raise DpsError(errors.UNAUTHORIZED, f"Unauthorized: {exc}.") from exc
            return
        if not header.startswith(sas.PREFIX):
            raise DpsError(errors.UNAUTHORIZED, "Unauthorized: unsupported authorization scheme.")
        if emu.local_auth_disabled:
            raise DpsError(errors.UNAUTHORIZED,
                           "Unauthorized: local (key) authentication is disabled for this provisioning service; "
                           "use an Entra ID token.")
        try:
            token = sas.parse(header)
        except sas.SasError as exc:
            raise DpsError(errors.UNAUTHORIZED, f"Unauthorized: {exc}.") from exc
        policy = emu.policies.get((token.key_name or "").lower())
        if policy is None:
            raise DpsError(errors.UNAUTHORIZED, "Unauthorized: unknown shared access policy.")
        if not sas.resource_matches(token, emu.service_host_aliases(req.host)):
            raise DpsError(errors.UNAUTHORIZED, "Unauthorized: the token's sr does not name this service.")
        last: Optional[sas.SasError] = None
        for key in (policy.primary_key, policy.secondary_key):
            try:
                sas.verify_with(token, sas.hmac_signer(key))
                break
            except sas.SasError as exc:
                last = exc
        else:
            raise DpsError(errors.UNAUTHORIZED, f"Unauthorized: {last}.")
        granted = set()
        for r in policy.rights:
            granted |= RIGHT_IMPLIES.get(r.lower(), {r.lower()})
        if right.lower() not in granted:
            raise DpsError(errors.UNAUTHORIZED,
                           f"Unauthorized: policy '{policy.name}' lacks the {right} right.")

    def _arm_auth(self, req: Request) -> None:
        header = req.header("authorization") or ""
        if not header.lower().startswith("bearer "):
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.",
                           {"WWW-Authenticate": self.emu.www_authenticate()})
        try:
            claims = self.emu.issuer.verify(header[7:].strip(), self.emu.arm_audiences)
        except TokenError as exc:
            raise ArmError(401, "InvalidAuthenticationToken", f"The access token is invalid: {exc}.",
                           {"WWW-Authenticate": self.emu.www_authenticate()}) from exc
        if str(claims.get("tid", "")).lower() != self.emu.tenant.lower():
            raise ArmError(401, "InvalidAuthenticationTokenTenant", "The access token is from the wrong issuer.")

    # ------------------------------------------------------------------ dispatch
    def _throttle(self, route: Route, params: Dict[str, str]) -> None:
        emu = self.emu
        wait = None
        kind = None
        if route.area == "service":
            wait, kind = emu.limits.take_service(), "service"
        elif route.area == "device":
            if route.handler is device_api.register:
                wait, kind = emu.limits.take_device_registration(), "device.register"
            else:
                wait, kind = emu.limits.take_poll(params.get("id", "").lower()), "device.poll"
        if wait is not None:
            emu.metrics.inc(f"{route.area}.throttled")
            if kind != route.area:
                emu.metrics.inc(f"{kind}.throttled")
            raise DpsError(errors.THROTTLED, "Too many requests; retry after the Retry-After interval.",
                           {"Retry-After": str(wait)})

    def _check_api_version(self, req: Request, area: str) -> None:
        version = req.query.get("api-version")
        allowed = SERVICE_API_VERSIONS if area == "service" else DEVICE_API_VERSIONS
        if not version:
            raise DpsError(errors.INVALID_API_VERSION, "The api-version query parameter is required.")
        if version not in allowed:
            raise DpsError(errors.INVALID_API_VERSION, f"The api-version '{version}' is not supported.")

    def __call__(self, req: Request) -> Response:
        emu = self.emu
        route, params, wrong_area = find_route(req)
        if route is None:
            area = wrong_area or "service"
            emu.metrics.inc(f"{area}.requests")
            if wrong_area:
                exc = DpsError(errors.METHOD_NOT_ALLOWED, f"Method {req.method} is not allowed on {req.path}.")
            else:
                exc = DpsError(errors.NOT_FOUND, f"No such resource: {req.path}.")
            resp = _error_response(area, exc)
            emu.metrics.inc(f"{area}.status.{resp.status}")
            return resp
        area = route.area
        emu.metrics.inc(f"{area}.requests")
        try:
            delay = emu.faults.latency_for(area)
            if delay:
                time.sleep(delay)
            if emu.faults.should_fail(area):
                emu.metrics.inc(f"{area}.faults_injected")
                headers = {}
                if emu.faults.retry_after is not None:
                    headers["Retry-After"] = str(emu.faults.retry_after)
                status = emu.faults.status
                raise DpsError(status * 1000 + 1, "Service unavailable (injected fault).", headers)
            if area in ("service", "device"):
                self._throttle(route, params)
                self._check_api_version(req, area)
            if area == "service":
                self._service_auth(req, route.right or "EnrollmentWrite")
            elif area == "arm" and route.auth:
                self._arm_auth(req)
            resp = route.handler(emu, req, **params)
        except (DpsError, ArmError, OAuthError, HubError) as exc:
            if exc.status == 401:
                emu.metrics.inc(f"{area}.auth_failures")
            resp = _error_response(area, exc)
        except ValueError as exc:  # malformed JSON bodies and numbers
            resp = _error_response(area, DpsError(errors.BAD_REQUEST, f"The request is malformed: {exc}."))
            if area == "arm":
                resp = Response(400, {"error": {"code": "InvalidRequestContent", "message": str(exc)}})
        emu.metrics.inc(f"{area}.status.{resp.status}")
        emu.metrics.inc(f"endpoint.{route.method} {route.template}.{resp.status}")
        return resp
