"""Azure Resource Manager, as much as ``az login`` and the ``--dps-name`` discovery need.

Shapes follow what azure-mgmt-iothubprovisioningservices 1.1.0 (api-version 2021-10-15) and
azure-mgmt-resource's SubscriptionClient deserialize. ``serviceOperationsHostName`` and
``deviceProvisioningHostName`` carry ``host:port`` of the emulator, because the real
``*.azure-devices-provisioning.net`` names do not resolve here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict

from .errors import ArmError
from .web import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator

PROVIDER = "Microsoft.Devices/provisioningServices"


def _check_sub(emu: "Emulator", sub: str) -> None:
    if sub.lower() != emu.subscription.lower():
        raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")


def _check_rg(emu: "Emulator", sub: str, rg: str) -> None:
    _check_sub(emu, sub)
    if rg.lower() != emu.resource_group.lower():
        raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")


def _subscription(emu: "Emulator") -> Dict[str, Any]:
    return {
        "id": f"/subscriptions/{emu.subscription}",
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": emu.subscription,
        "tenantId": emu.tenant,
        "displayName": "devkit emulator subscription",
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    }


def dps_resource(emu: "Emulator") -> Dict[str, Any]:
    """The provisioningServices resource as ARM returns it (without keys)."""
    rid = (f"/subscriptions/{emu.subscription}/resourceGroups/{emu.resource_group}"
           f"/providers/{PROVIDER}/{emu.dps_name}")
    return {
        "id": rid,
        "name": emu.dps_name,
        "type": PROVIDER,
        "location": emu.location,
        "tags": {},
        "etag": "AAAAAAFD6M4=",
        "resourcegroup": emu.resource_group,
        "subscriptionid": emu.subscription,
        "sku": {"name": "S1", "tier": "Standard", "capacity": 1},
        "properties": {
            "state": "Active",
            "publicNetworkAccess": "Enabled",
            "ipFilterRules": [],
            "privateEndpointConnections": [],
            "provisioningState": "Succeeded",
            "iotHubs": [
                {
                    "applyAllocationPolicy": h.apply_allocation_policy,
                    "allocationWeight": h.allocation_weight,
                    "name": h.name,
                    "connectionString": f"HostName={h.name};SharedAccessKeyName=iothubowner;SharedAccessKey=****",
                    "location": h.location,
                }
                for h in emu.store.hubs
            ],
            "allocationPolicy": emu.store.allocation_policy[:1].upper() + emu.store.allocation_policy[1:],
            "serviceOperationsHostName": emu.service_host,
            "deviceProvisioningHostName": emu.device_host,
            "idScope": emu.id_scope,
            "enableDataResidency": False,
        },
        "systemData": {
            "createdBy": "devkit",
            "createdByType": "Application",
            "createdAt": "2024-01-01T00:00:00.0000000Z",
            "lastModifiedBy": "devkit",
            "lastModifiedByType": "Application",
            "lastModifiedAt": "2024-01-01T00:00:00.0000000Z",
        },
    }


def metadata_endpoints(emu: "Emulator", req: Request) -> Response:
    """Cloud metadata (api-version 2022-09-01 shape) for ``az cloud register --endpoint-resource-manager``."""
    return Response(200, emu.cloud_metadata())


def list_tenants(emu: "Emulator", req: Request) -> Response:
    return Response(200, {"value": [{
        "id": f"/tenants/{emu.tenant}",
        "tenantId": emu.tenant,
        "countryCode": "NL",
        "displayName": "devkit emulator tenant",
        "domains": [emu.tenant_domain],
        "tenantCategory": "Home",
        "defaultDomain": emu.tenant_domain,
        "tenantType": "AAD",
    }]})


def list_subscriptions(emu: "Emulator", req: Request) -> Response:
    return Response(200, {"value": [_subscription(emu)], "count": {"type": "Total", "value": 1}})


def get_subscription(emu: "Emulator", req: Request, sub: str) -> Response:
    _check_sub(emu, sub)
    return Response(200, _subscription(emu))


def _resource_group(emu: "Emulator") -> Dict[str, Any]:
    return {
        "id": f"/subscriptions/{emu.subscription}/resourceGroups/{emu.resource_group}",
        "name": emu.resource_group,
        "type": "Microsoft.Resources/resourceGroups",
        "location": emu.location,
        "properties": {"provisioningState": "Succeeded"},
    }


def list_resource_groups(emu: "Emulator", req: Request, sub: str) -> Response:
    _check_sub(emu, sub)
    return Response(200, {"value": [_resource_group(emu)]})


def get_resource_group(emu: "Emulator", req: Request, sub: str, rg: str) -> Response:
    _check_rg(emu, sub, rg)
    return Response(200, _resource_group(emu))


def list_by_subscription(emu: "Emulator", req: Request, sub: str) -> Response:
    _check_sub(emu, sub)
    return Response(200, {"value": [dps_resource(emu)]})


def list_by_resource_group(emu: "Emulator", req: Request, sub: str, rg: str) -> Response:
    _check_rg(emu, sub, rg)
    return Response(200, {"value": [dps_resource(emu)]})


def _check_dps(emu: "Emulator", sub: str, rg: str, name: str) -> None:
    _check_rg(emu, sub, rg)
    if name.lower() != emu.dps_name.lower():
        raise ArmError(404, "ResourceNotFound",
                       f"The Resource '{PROVIDER}/{name}' under resource group '{rg}' was not found.")


def get_dps(emu: "Emulator", req: Request, sub: str, rg: str, name: str) -> Response:
    _check_dps(emu, sub, rg, name)
    return Response(200, dps_resource(emu))


def _rule(policy) -> Dict[str, Any]:
    return {
        "keyName": policy.name,
        "primaryKey": policy.primary_key_b64,
        "secondaryKey": policy.secondary_key_b64,
        "rights": ", ".join(policy.rights),
    }


def list_keys(emu: "Emulator", req: Request, sub: str, rg: str, name: str) -> Response:
    _check_dps(emu, sub, rg, name)
    return Response(200, {"value": [_rule(p) for p in emu.policies.values()]})


def list_key(emu: "Emulator", req: Request, sub: str, rg: str, name: str, key: str) -> Response:
    _check_dps(emu, sub, rg, name)
    policy = emu.policies.get(key.lower())
    if policy is None:
        raise ArmError(404, "KeyNameNotFound", f"The shared access policy '{key}' was not found.")
    return Response(200, _rule(policy))
