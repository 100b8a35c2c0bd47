"""An Entra ID-like identity endpoint: OpenID discovery, JWKS and the client-credentials grant.

Enough for MSAL's ConfidentialClientApplication, hence for the real
``az login --service-principal`` against the emulator registered as a custom cloud (with
``core.instance_discovery=false``: MSAL would otherwise ask login.microsoftonline.com whether
the authority is known).
"""

from __future__ import annotations

import base64
import hmac
import urllib.parse
from typing import TYPE_CHECKING, Dict, Optional, Tuple

from .errors import OAuthError
from .tokens import normalize_audience
from .web import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator


def _base(req: Request, emu: "Emulator") -> str:
    """The authority host as the client addressed it (MSAL checks the issuer's host)."""
    return f"https://{req.host}" if req.host else emu.identity_endpoint


def _check_tenant(emu: "Emulator", tenant: str) -> None:
    if tenant.lower() not in (emu.tenant.lower(), emu.tenant_domain.lower()):
        raise OAuthError(400, "invalid_request",
                         f"Tenant '{tenant}' not found. Use the emulator's tenant ID.", 90002)


def openid_configuration(emu: "Emulator", req: Request, tenant: str) -> Response:
    _check_tenant(emu, tenant)
    base = _base(req, emu)
    t = emu.tenant
    return Response(200, {
        "token_endpoint": f"{base}/{t}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "jwks_uri": f"{base}/{t}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base}/{t}/v2.0",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{base}/{t}/openid/userinfo",
        "authorization_endpoint": f"{base}/{t}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/{t}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/{t}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "appid"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "devkit.local",
        "cloud_graph_host_name": "graph.devkit.local",
        "msgraph_host": "graph.devkit.local",
    })


def openid_configuration_v1(emu: "Emulator", req: Request, tenant: str) -> Response:
    resp = openid_configuration(emu, req, tenant)
    base = _base(req, emu)
    resp.body["token_endpoint"] = f"{base}/{emu.tenant}/oauth2/token"
    resp.body["issuer"] = f"https://sts.windows.net/{emu.tenant}/"
    return resp


def jwks(emu: "Emulator", req: Request, tenant: str) -> Response:
    _check_tenant(emu, tenant)
    return Response(200, emu.issuer.jwks())


def instance_discovery(emu: "Emulator", req: Request) -> Response:
    """What login.microsoftonline.com/common/discovery/instance answers, for this authority."""
    base = _base(req, emu)
    host = urllib.parse.urlsplit(base).netloc
    return Response(200, {
        "tenant_discovery_endpoint": f"{base}/{emu.tenant}/v2.0/.well-known/openid-configuration",
        "api-version": "1.1",
        "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
    })


def _client_credentials(req: Request, form: Dict[str, str]) -> Tuple[Optional[str], Optional[str]]:
    auth = req.header("authorization") or ""
    if auth.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(auth[6:].strip()).decode("utf-8")
        except ValueError as exc:
            raise OAuthError(401, "invalid_client", "Malformed basic authorization.", 7000215) from exc
        cid, _, secret = decoded.partition(":")
        return urllib.parse.unquote_plus(cid), urllib.parse.unquote_plus(secret)
    return form.get("client_id"), form.get("client_secret")


def _issue(emu: "Emulator", req: Request, tenant: str, resource: str) -> Response:
    _check_tenant(emu, tenant)
    form = req.form()
    if form.get("grant_type") != "client_credentials":
        raise OAuthError(400, "unsupported_grant_type",
                         "The emulator supports only the client_credentials grant.", 70003)
    client_id, secret = _client_credentials(req, form)
    app = emu.service_principals.get((client_id or "").lower())
    if app is None:
        raise OAuthError(400, "unauthorized_client",
                         f"Application with identifier '{client_id}' was not found in the directory.", 700016)
    if not secret or not hmac.compare_digest(secret.encode(), app.secret.encode()):
        raise OAuthError(401, "invalid_client",
                         "Invalid client secret provided. Ensure the secret being sent in the request is the "
                         "client secret value, not the client secret ID.", 7000215)
    if normalize_audience(resource) not in {normalize_audience(a) for a in emu.token_audiences}:
        raise OAuthError(400, "invalid_resource",
                         f"The resource principal named {resource} was not found in the tenant.", 500011)
    base = _base(req, emu)
    return Response(200, emu.issuer.issue(
        issuer=f"{base}/{emu.tenant}/v2.0", audience=resource, tenant=emu.tenant,
        app_id=app.app_id, object_id=app.object_id,
    ), {"Cache-Control": "no-store", "Pragma": "no-cache"})


def token(emu: "Emulator", req: Request, tenant: str) -> Response:
    """v2.0 token endpoint: ``scope=<resource>/.default``."""
    scope = req.form().get("scope", "")
    resources = [s for s in scope.split() if s.endswith("/.default")]
    if len(resources) != 1:
        raise OAuthError(400, "invalid_scope",
                         "The client-credentials grant needs exactly one '<resource>/.default' scope.", 1002012)
    resource = resources[0][: -len("/.default")]
    return _issue(emu, req, tenant, resource)


def token_v1(emu: "Emulator", req: Request, tenant: str) -> Response:
    """v1 token endpoint: ``resource=<resource>``."""
    resource = req.form().get("resource", "")
    if not resource:
        raise OAuthError(400, "invalid_request", "The 'resource' parameter is required.", 900144)
    return _issue(emu, req, tenant, resource)
