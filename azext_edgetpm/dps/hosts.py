"""Which host names an IoT hub or a DPS may have: a DNS name (no port, path or user), inside the
IoT Hub / DPS domain of the cloud az is signed in to. A host read from anywhere but ARM's or
DPS's own answers (a state file, an inventory, an argument) is checked here before a request,
and so before a token, goes to it; dps/hub.py checks every host it is given.

The domains of a cloud: az's cloud configuration when it has them (`iot_hub_dns` and
`iot_dps_dns` among the cloud's suffixes; az keeps any suffix a cloud is registered with, e.g.
`az cloud update --cloud-config '{"suffixes": {"iotHubDns": "azure-devices.example",
"iotDpsDns": "azure-devices-provisioning.example"}}'`), else the table below. az's own suffix
list has no IoT entry; the table is Microsoft's list of the public DNS zones of Azure Private
Link per cloud ("Azure Private Endpoint private DNS zone values", learn.microsoft.com:
Microsoft.Devices/IotHubs and Microsoft.Devices/ProvisioningServices, per cloud).
"""
import re
from typing import Optional, Tuple

from azext_edgetpm.errors import UserInputError, option

HUB, DPS = "IoT hub", "DPS"

# cloud name (as az names it) -> (IoT Hub domain, DPS domain)
KNOWN_DOMAINS = {
    "azurecloud": ("azure-devices.net", "azure-devices-provisioning.net"),
    "azurechinacloud": ("azure-devices.cn", "azure-devices-provisioning.cn"),
    "azureusgovernment": ("azure-devices.us", "azure-devices-provisioning.us"),
}
SUFFIX_ATTRIBUTES = {HUB: "iot_hub_dns", DPS: "iot_dps_dns"}
CLOUD_CONFIG_KEYS = {HUB: "iotHubDns", DPS: "iotDpsDns"}

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")


def _cloud(cli_ctx):
    return getattr(cli_ctx, "cloud", None)


def domain(cli_ctx, kind: str) -> Tuple[str, Optional[str]]:
    """(the cloud's name, its IoT Hub or DPS domain, None when neither az's configuration nor the
    table knows one)."""
    cloud = _cloud(cli_ctx)
    name = str(getattr(cloud, "name", None) or "AzureCloud")
    configured = getattr(getattr(cloud, "suffixes", None), SUFFIX_ATTRIBUTES[kind], None)
    if configured:
        return name, str(configured).strip().strip(".").lower()
    known = KNOWN_DOMAINS.get(name.lower())
    return name, (known[0] if kind == HUB else known[1]) if known else None


def is_dns_name(host: str) -> bool:
    """A DNS name alone: labels of letters, digits and '-', at least two; no port, path, user or address."""
    return bool(host) and len(host) <= 253 and bool(_NAME.match(host)) and not host.replace(".", "").isdigit()


def register_hint(cloud_name: str) -> str:
    example = ", ".join(f'"{CLOUD_CONFIG_KEYS[k]}": "<{k} domain>"' for k in (HUB, DPS))
    return (f"For a cloud az does not know the IoT domains of, register them with az's cloud configuration: "
            f"`az cloud update -n {cloud_name} --cloud-config '{{\"suffixes\": {{{example}}}}}'`.")


def check(host, kind: str, cli_ctx, source: str, *, field: Optional[str] = None, show: bool = True) -> str:
    """`host` (lowercased) when it is a DNS name inside the cloud's `kind` domain; else a
    UserInputError saying where it came from (`source`). `show=False` keeps the value out of the
    message (a mangled connection string may hold a key)."""
    text = str(host or "").strip().lower()
    name, suffix = domain(cli_ctx, kind)
    shown = f"{text[:120]!r} " if show else ""
    article = "an" if kind == HUB else "a"
    if not is_dns_name(text):
        example = suffix or KNOWN_DOMAINS["azurecloud"][0 if kind == HUB else 1]
        raise UserInputError(
            f"The {kind} host {shown}({source}) is not a DNS name alone (no port, path, user or address may be "
            "part of it); no request is sent to it.",
            f"Name {article} {kind} by its host name alone, e.g. <name>.{example}.", field)
    if suffix is None:
        raise UserInputError(
            f"The {kind} host {shown}({source}) cannot be checked: the cloud {name!r} az is set to has no "
            f"{kind} domain in az's cloud configuration; no request is sent to it.", register_hint(name), field)
    if not text.endswith("." + suffix):
        raise UserInputError(
            f"The {kind} host {shown}({source}) is not in the {kind} domain of the cloud {name} ({suffix}); "
            "no request is sent to it.",
            f"Name {article} {kind} of this cloud (<name>.{suffix}), or switch az to the cloud it belongs to "
            f"(`az cloud set -n <cloud>`). {register_hint(name)}", field)
    return text


def dps_login_host(host: str, cli_ctx) -> str:
    """The DPS host of --login when a bearer token of the az login is to go to it."""
    return check(host, DPS, cli_ctx, f"from {option('login')}", field="login", show=False)
