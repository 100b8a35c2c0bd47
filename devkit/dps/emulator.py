"""The emulator object: configuration, identities and keys, servers, and the devkit.json section.

Usage::

    with Emulator("/tmp/dps", host_ips=["10.200.0.1"]) as emu:
        emu.section()          # endpoints, keys, CA bundle for devkit.json
        emu.configure(service_ops_per_minute=30)
        emu.counters()

Identities (subscription, tenant, service principal, ID scope, policy keys, token signing key)
are created on first start and kept in ``<dir>/secrets.json`` (mode 0600), so a restarted
emulator keeps accepting the credentials clients already hold. Enrollments and registration
records are kept in ``<dir>/state.json``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

from . import pki
from .admin import AdminApp
from .app import DPS_AUDIENCE, App
from .hub import IOTHUB_AUDIENCE
from .limits import Counters, Faults, Limits
from .store import LinkedHub, Store
from .tokens import TokenIssuer
from .web import Server, server_ssl_context

log = logging.getLogger("devkit.dps")

ARM_AUDIENCE = "https://management.azure.local/"
PUBLIC_ARM_AUDIENCES = ("https://management.core.windows.net/", "https://management.azure.com/")
CLOUD_NAME = "DevkitEmulator"
# The IoT Hub and DPS domains of the dev kit's cloud, as a sovereign cloud has its own (azure-devices.us, ...):
# `cloud_config()` registers them in az's cloud configuration with the cloud (suffixes iotHubDns, iotDpsDns),
# where the product reads a cloud's IoT domains (azext_edgetpm/dps/hosts.py).
HUB_DOMAIN = "azure-devices.devkit.local"
DPS_DOMAIN = "azure-devices-provisioning.devkit.local"
DEFAULT_HUBS = (f"hub-devkit-1.{HUB_DOMAIN}", f"hub-devkit-2.{HUB_DOMAIN}")
DEFAULT_POLICIES = {
    "provisioningserviceowner": ["ServiceConfig", "DeviceConnect", "EnrollmentWrite"],
    "enrollmentread": ["EnrollmentRead"],
}


@dataclass
class Policy:
    """A shared access policy of the DPS."""

    name: str
    primary_key_b64: str
    secondary_key_b64: str
    rights: List[str]

    @property
    def primary_key(self) -> bytes:
        return base64.b64decode(self.primary_key_b64)

    @property
    def secondary_key(self) -> bytes:
        return base64.b64decode(self.secondary_key_b64)


@dataclass
class ServicePrincipal:
    app_id: str
    object_id: str
    secret: str
    display_name: str = "devkit-sp"


def _new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _new_secret() -> str:
    """A URL-safe client secret that never starts with `-` (a command line would read it as an
    option: `az login -p -xyz` fails) nor with `@` (az would read it as a file name)."""
    while True:
        secret = secrets.token_urlsafe(30)
        if secret[0].isalnum():
            return secret


def _write_private_json(path: str, data: Any) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


class Emulator:
    """A DPS (+ ARM + identity) emulator serving HTTPS on one port and an admin API on loopback."""

    def __init__(
        self,
        directory: str,
        *,
        host_ips: Sequence[str] = (),
        port: int = 0,
        bind: str = "0.0.0.0",
        admin_port: int = 0,
        dps_name: str = "dps-devkit",
        resource_group: str = "rg-devkit",
        location: str = "westeurope",
        subscription: Optional[str] = None,
        tenant: Optional[str] = None,
        id_scope: Optional[str] = None,
        hubs: Iterable[str] = DEFAULT_HUBS,
        allocation_policy: str = "hashed",
        service_ops_per_minute: float = 1000,
        device_registrations_per_minute: float = 1000,
        polls_per_10s: float = 5,
        local_auth_disabled: bool = False,
        assignment_delay_s: float = 0.5,
        operation_retry_after_s: int = 1,
        persist: bool = True,
        extra_names: Iterable[str] = (),
        hub_address: Optional[str] = None,
    ):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.host_ips = list(host_ips)
        self.bind = bind
        self._port = port
        self._admin_port = admin_port
        self.dps_name = dps_name
        self.resource_group = resource_group
        self.location = location
        self.local_auth_disabled = local_auth_disabled
        self.extra_names = list(extra_names)
        # the hubs' registry on HUB_ADDRESS:443 too ("auto": a free 127.x.y.z): a client that
        # resolves a hub host name to that address reaches it under the real URL (no port)
        self.hub_address = hub_address
        self.hub_denied = False
        self._hub_server: Optional[Server] = None
        self.arm_audience = ARM_AUDIENCE
        self.cloud_name = CLOUD_NAME

        self._load_or_create_secrets(subscription, tenant, id_scope)
        self.limits = Limits(service_ops_per_minute, device_registrations_per_minute, polls_per_10s)
        self.faults = Faults()
        self.metrics = Counters()
        self.store = Store(
            self.id_scope,
            [LinkedHub(h, location) for h in hubs],
            allocation_policy,
            state_file=os.path.join(self.directory, "state.json") if persist else None,
        )
        self.store.assignment_delay_s = assignment_delay_s
        self.store.operation_retry_after_s = operation_retry_after_s
        self.store.load()
        self.tls: Optional[pki.TlsFiles] = None
        self._server: Optional[Server] = None
        self._admin: Optional[Server] = None
        self._threads: List[threading.Thread] = []

    # ------------------------------------------------------------------ identities
    def _load_or_create_secrets(self, subscription, tenant, id_scope) -> None:
        path = os.path.join(self.directory, "secrets.json")
        data: Dict[str, Any] = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        changed = not data
        data.setdefault("subscription", subscription or str(uuid.uuid4()))
        data.setdefault("tenant", tenant or str(uuid.uuid4()))
        data.setdefault("id_scope", id_scope or "0ne" + secrets.token_hex(4).upper())
        if "sp" not in data:
            data["sp"] = {"app_id": str(uuid.uuid4()), "object_id": str(uuid.uuid4()),
                          "secret": _new_secret()}
            changed = True
        policies = data.setdefault("policies", {})
        for name, rights in DEFAULT_POLICIES.items():
            if name not in policies:
                policies[name] = {"primary": _new_key(), "secondary": _new_key(), "rights": rights}
                changed = True
        if "token_key_pem" not in data:
            data["token_key_pem"] = TokenIssuer().key_pem().decode("ascii")
            changed = True
        for key, wanted in (("subscription", subscription), ("tenant", tenant), ("id_scope", id_scope)):
            if wanted and data[key] != wanted:
                data[key] = wanted
                changed = True
        if changed:
            _write_private_json(path, data)
        self.secrets_file = path
        self.subscription: str = data["subscription"]
        self.tenant: str = data["tenant"]
        self.id_scope: str = data["id_scope"]
        sp = data["sp"]
        self.service_principals: Dict[str, ServicePrincipal] = {
            sp["app_id"].lower(): ServicePrincipal(sp["app_id"], sp["object_id"], sp["secret"])
        }
        self.sp = self.service_principals[sp["app_id"].lower()]
        self.policies: Dict[str, Policy] = {
            name.lower(): Policy(name, p["primary"], p["secondary"], list(p["rights"]))
            for name, p in policies.items()
        }
        self.issuer = TokenIssuer(data["token_key_pem"].encode("ascii"))

    @property
    def tenant_domain(self) -> str:
        return "devkit.onmicrosoft.local"

    # ------------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return self._server.server_address[1]

    @property
    def admin_port(self) -> int:
        if self._admin is None:
            raise RuntimeError("the emulator is not started")
        return self._admin.server_address[1]

    @property
    def url(self) -> str:
        """Base URL on the loopback address (service API, ARM and identity)."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def service_host(self) -> str:
        """``host:port`` of the service API, as in ARM's serviceOperationsHostName."""
        return f"127.0.0.1:{self.port}"

    @property
    def device_host(self) -> str:
        """``host:port`` devices use (the first host IP, reachable from the network namespaces)."""
        return f"{self.host_ips[0]}:{self.port}" if self.host_ips else self.service_host

    @property
    def device_endpoint(self) -> str:
        return f"https://{self.device_host}"

    @property
    def arm_endpoint(self) -> str:
        return self.url + "/"

    @property
    def identity_endpoint(self) -> str:
        return self.url

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/_emulator"

    @property
    def ca_bundle(self) -> str:
        return os.path.join(self.directory, pki.CA_CERT)

    @property
    def arm_audiences(self) -> List[str]:
        return [self.arm_audience, *PUBLIC_ARM_AUDIENCES]

    @property
    def token_audiences(self) -> List[str]:
        return [*self.arm_audiences, DPS_AUDIENCE, IOTHUB_AUDIENCE]

    def service_host_aliases(self, request_host: str = "") -> List[str]:
        """Names a SAS ``sr`` may carry for the service API (with and without the port)."""
        port = self.port
        names = [f"{self.dps_name}.azure-devices-provisioning.net", self.dps_host_name, "127.0.0.1", "localhost",
                 *self.host_ips]
        out = [self.service_host, request_host] if request_host else [self.service_host]
        for n in names:
            out += [f"{n}:{port}", n]
        return [o for o in out if o]

    def tls_names(self) -> List[str]:
        return [
            "127.0.0.1", *self.host_ips, "localhost",
            f"{self.dps_name}.azure-devices-provisioning.net",
            "global.azure-devices-provisioning.net",
            self.dps_host_name,
            "management.azure.local", "login.azure.local",
            *self.store.hub_names(),
            *self.extra_names,
        ]

    def connection_string(self, policy: str = "provisioningserviceowner") -> str:
        p = self.policies[policy.lower()]
        return f"HostName={self.service_host};SharedAccessKeyName={p.name};SharedAccessKey={p.primary_key_b64}"

    def www_authenticate(self) -> str:
        return (f'Bearer authorization_uri="{self.identity_endpoint}/{self.tenant}", '
                f'error="invalid_token", error_description="The authentication failed"')

    @property
    def dps_host_name(self) -> str:
        """The service API's DNS name in the dev kit's DPS domain (served on the hub listener's :443)."""
        return f"{self.dps_name}.{DPS_DOMAIN}"

    def cloud_config(self) -> Dict[str, Any]:
        """`az cloud register -n <cloud_name> --cloud-config <this JSON>`: ARM's endpoint (the rest comes
        from its metadata) and the cloud's IoT Hub and DPS domains, which ARM's metadata has no field for."""
        return {"endpoints": {"resourceManager": self.arm_endpoint},
                "suffixes": {"iotHubDns": HUB_DOMAIN, "iotDpsDns": DPS_DOMAIN}}

    def cloud_metadata(self) -> Dict[str, Any]:
        """ARM's ``/metadata/endpoints`` document (2022-09-01 shape) describing this cloud."""
        return {
            "name": self.cloud_name,
            "portal": self.url,
            "resourceManager": self.arm_endpoint,
            "authentication": {
                "loginEndpoint": self.identity_endpoint,
                "audiences": [self.arm_audience],
                "tenant": "common",
                "identityProvider": "AAD",
            },
            "media": self.url,
            "graphAudience": "https://graph.azure.local/",
            "graph": "https://graph.azure.local/",
            "activeDirectoryDataLake": "https://datalake.azure.local/",
            "batch": "https://batch.azure.local/",
            "gallery": "https://gallery.azure.local/",
            "sqlManagement": "https://sqlmanagement.azure.local:8443/",
            "microsoftGraphResourceId": "https://graph.azure.local/",
            "appInsightsResourceId": "https://api.applicationinsights.azure.local",
            "appInsightsTelemetryChannelResourceId": "https://dc.applicationinsights.azure.local/v2/track",
            "attestationResourceId": "https://attest.azure.local",
            "synapseAnalyticsResourceId": "https://dev.azuresynapse.azure.local",
            "logAnalyticsResourceId": "https://api.loganalytics.azure.local",
            "ossrdbmsResourceId": "https://ossrdbms-aad.database.azure.local",
            "suffixes": {
                "azureDataLakeStoreFileSystem": "azuredatalakestore.azure.local",
                "acrLoginServer": "azurecr.azure.local",
                "sqlServerHostname": "database.azure.local",
                "azureDataLakeAnalyticsCatalogAndJob": "azuredatalakeanalytics.azure.local",
                "keyVaultDns": "vault.azure.local",
                "storage": "core.azure.local",
                "azureFrontDoorEndpointSuffix": "azurefd.azure.local",
                "storageSyncEndpointSuffix": "afs.azure.local",
                "mhsmDns": "managedhsm.azure.local",
                "mysqlServerEndpoint": "mysql.database.azure.local",
                "postgresqlServerEndpoint": "postgres.database.azure.local",
                "mariadbServerEndpoint": "mariadb.database.azure.local",
                "synapseAnalytics": "dev.azuresynapse.azure.local",
                "attestationEndpoint": "attest.azure.local",
            },
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Emulator":
        """Bind the HTTPS and admin ports and serve in background threads."""
        if self._server is not None:
            return self
        self.tls = pki.ensure_tls(self.directory, self.tls_names())
        ctx = server_ssl_context(self.tls.server_cert, self.tls.server_key)
        self._server = Server((self.bind, self._port), App(self),
                              ssl_context=ctx, on_tls_failure=lambda: self.metrics.inc("tls.handshake_failures"))
        self._admin = Server(("127.0.0.1", self._admin_port), AdminApp(self))
        servers = [("dps-emulator", self._server), ("dps-emulator-admin", self._admin)]
        if self.hub_address:
            self._hub_server = self._hub_listener(ctx)
            servers.append(("dps-emulator-hubs", self._hub_server))
        for name, srv in servers:
            t = threading.Thread(target=srv.serve_forever, name=name, kwargs={"poll_interval": 0.2}, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("DPS emulator on %s (devices: %s), admin on %s", self.url, self.device_endpoint, self.admin_url)
        return self

    def _hub_listener(self, ctx) -> Server:
        """The same app on HUB_ADDRESS:443 (for "auto", the first free 127.213.x.y)."""
        candidates = [self.hub_address] if self.hub_address != "auto" else [
            f"127.213.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}" for _ in range(20)]
        for address in candidates:
            try:
                srv = Server((address, 443), App(self), ssl_context=ctx,
                             on_tls_failure=lambda: self.metrics.inc("tls.handshake_failures"))
            except OSError:
                if address == candidates[-1]:
                    raise
                continue
            self.hub_address = address
            return srv
        raise OSError("no address for the hubs' listener")

    @property
    def hub_ip(self) -> Optional[str]:
        """The address the hubs' registry listens on (port 443), when it does."""
        return self._hub_server.server_address[0] if self._hub_server is not None else None

    def stop(self) -> None:
        """Stop serving and release the ports."""
        for srv in (self._server, self._admin, self._hub_server):
            if srv is not None:
                srv.shutdown()
                srv.close_connections()
                srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self.store.flush()
        self._server = None
        self._admin = None
        self._hub_server = None

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ runtime knobs
    def configure(self, **settings: Any) -> Dict[str, Any]:
        """Change limits, faults and behaviour at runtime (the admin API calls this).

        Keys: ``service_ops_per_minute``, ``service_burst``, ``device_registrations_per_minute``,
        ``device_burst``, ``polls_per_10s``, ``local_auth_disabled``, ``assignment_delay_s``,
        ``operation_retry_after_s``, ``echo_payload``, ``faults`` (see :meth:`Faults.configure`),
        ``clear_faults``, ``reset_counters``, ``hub_denied`` (the hubs refuse every identity: 401).
        """
        known = {"service_ops_per_minute", "service_burst", "device_registrations_per_minute", "device_burst",
                 "polls_per_10s", "local_auth_disabled", "assignment_delay_s", "operation_retry_after_s",
                 "echo_payload", "faults", "clear_faults", "reset_counters", "hub_denied"}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        self.limits.configure(**{k: settings[k] for k in (
            "service_ops_per_minute", "service_burst", "device_registrations_per_minute", "device_burst",
            "polls_per_10s") if k in settings})
        if settings.get("clear_faults"):
            self.faults.clear()
        if "faults" in settings:
            self.faults.configure(settings["faults"])
        if "local_auth_disabled" in settings:
            self.local_auth_disabled = bool(settings["local_auth_disabled"])
        if "assignment_delay_s" in settings:
            self.store.assignment_delay_s = float(settings["assignment_delay_s"])
        if "operation_retry_after_s" in settings:
            self.store.operation_retry_after_s = int(settings["operation_retry_after_s"])
        if "echo_payload" in settings:
            self.store.echo_payload = bool(settings["echo_payload"])
        if "hub_denied" in settings:
            self.hub_denied = bool(settings["hub_denied"])
        if settings.get("reset_counters"):
            self.metrics.reset()
        return self.describe()

    def describe(self) -> Dict[str, Any]:
        return {
            **self.limits.describe(),
            "local_auth_disabled": self.local_auth_disabled,
            "assignment_delay_s": self.store.assignment_delay_s,
            "operation_retry_after_s": self.store.operation_retry_after_s,
            "echo_payload": self.store.echo_payload,
            "faults": self.faults.describe(),
            **self.store.counts(),
        }

    def counters(self) -> Dict[str, int]:
        return self.metrics.snapshot()

    def reset_counters(self) -> None:
        self.metrics.reset()

    # ------------------------------------------------------------------ devkit.json
    def section(self) -> Dict[str, Any]:
        """The ``dps`` section of devkit.json (holds keys and the SP secret: keep the file private)."""
        sp_file = os.path.join(self.directory, "sp.json")
        _write_private_json(sp_file, {"app_id": self.sp.app_id, "tenant": self.tenant, "secret": self.sp.secret})
        return {
            "service_host": self.service_host,
            "connection_string": self.connection_string("provisioningserviceowner"),
            "read_connection_string": self.connection_string("enrollmentread"),
            "id_scope": self.id_scope,
            "device_endpoint": self.device_endpoint,
            "global_endpoint": self.device_endpoint,
            "arm_endpoint": self.arm_endpoint,
            "arm_audience": self.arm_audience,
            "identity_endpoint": self.identity_endpoint,
            "dps_audience": DPS_AUDIENCE,
            "cloud_name": self.cloud_name,
            "cloud_config": self.cloud_config(),
            "dps_host_name": self.dps_host_name,
            "subscription": self.subscription,
            "tenant": self.tenant,
            "resource_group": self.resource_group,
            "dps_name": self.dps_name,
            "iot_hubs": self.store.hub_names(),
            "iothub_audience": IOTHUB_AUDIENCE,
            **({"hub_ip": self.hub_ip} if self.hub_ip else {}),
            "sp": {"app_id": self.sp.app_id, "tenant": self.tenant, "secret": self.sp.secret,
                   "secret_file": sp_file},
            "ca_bundle": self.ca_bundle,
            "admin_url": self.admin_url,
        }


def devkit_section(emulator: Emulator) -> Dict[str, Any]:
    """The devkit.json ``dps`` section of a started emulator."""
    return emulator.section()
