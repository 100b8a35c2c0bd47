"""Discovery: turns `--dps-name/-g`, `--login` and `--auth-type` into one DPS target.

- `--dps-name [-g]` (key): the provisioningServices resource is found through ARM with the
  identity of `az login` (searching the subscription when -g is omitted); `listkeys` gives the
  shared access policies, and one with the rights the command needs is used.
- `--dps-name [-g] --auth-type login`: the resource is found the same way, but no keys are
  read: requests carry an Entra ID bearer token of the `az login` identity for the DPS service.
- `--login <connection string>`: no ARM call; host and key come from the string.
- `--login <connection string or host name> --auth-type login`: only the host is used, with a
  bearer token; it must be a DNS name in the cloud's DPS domain (dps/hosts.py), as the token
  goes there.

The ID scope and endpoints come from the resource (properties.idScope,
serviceOperationsHostName, deviceProvisioningHostName), never from the user; a connection
string has no ID scope.
"""
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from knack.log import get_logger

from azext_edgetpm.errors import (
    CredentialError, ExclusiveInputsError, LocalFileError, MissingInputError, NotFoundError, PermissionDeniedError,
    UsageError, UserInputError, option)

logger = get_logger(__name__)

# The shared access policy rights (any one of the set is enough) each kind of command needs.
# In DPS a write right includes the read right, and EnrollmentRead/Write include reading the
# registration state (the default policy, provisioningserviceowner, has no RegistrationStatus* right).
ENROLLMENT_WRITE = ("EnrollmentWrite",)
ENROLLMENT_READ = ("EnrollmentRead", "EnrollmentWrite")
REGISTRATION_READ = ("RegistrationStatusRead", "RegistrationStatusWrite", "EnrollmentRead", "EnrollmentWrite")

AUTH_TYPES = ("key", "login")

# A DPS service host name (or address) with an optional port; nothing else may become a target host.
_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)+"
                   r"|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$")


@dataclass
class DpsTarget:
    """Where the service API is and how to authenticate to it."""
    host: str
    auth_type: str                          # "key" | "login"
    credential: Any = field(repr=False)     # SharedAccessKey | an azure-core TokenCredential
    source: str = "arm"                     # "arm" | "connection-string"
    name: Optional[str] = None
    resource_group: Optional[str] = None
    subscription: Optional[str] = None
    id_scope: Optional[str] = None
    device_host: Optional[str] = None
    policy: Optional[str] = None

    def describe(self) -> dict:
        """What is safe to show: never the credential."""
        return {"host": self.host, "name": self.name, "resourceGroup": self.resource_group,
                "idScope": self.id_scope, "deviceProvisioningHost": self.device_host,
                "authType": self.auth_type, "policy": self.policy}


def parse_connection_string(text: str) -> dict:
    """`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...` as a dict (keys as written,
    matched case-insensitively). The key is never part of an error message."""
    parts = {}
    for item in (text or "").strip().split(";"):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise UserInputError(
                "The DPS connection string is not a list of Name=value pairs separated by ';'.",
                "Pass it as HostName=<dps>.azure-devices-provisioning.net;SharedAccessKeyName=<policy>;"
                "SharedAccessKey=<key> (or @file to read it from a file).")
        parts[name.strip().lower()] = value.strip()
    return parts


def _host_from_login(login: str) -> Tuple[str, dict]:
    login = (login or "").strip()
    if "=" not in login:
        # A bare host name is enough when the credential is a bearer token.
        return login.lower(), {}
    parts = parse_connection_string(login)
    host = parts.get("hostname")
    if not host:
        raise UserInputError("The DPS connection string has no HostName.",
                             "Copy the connection string of a shared access policy of the DPS "
                             "(HostName=...;SharedAccessKeyName=...;SharedAccessKey=...).")
    return host.lower(), parts


def resolve_target(cmd, dps_name: Optional[str] = None, resource_group: Optional[str] = None,
                   login: Optional[str] = None, auth_type: Optional[str] = None,
                   rights=ENROLLMENT_WRITE) -> DpsTarget:
    """The one place that turns the target arguments into a DpsTarget. Values az took from
    `az configure --defaults` (marked is_default) give way to typed ones and are never an error
    by their mere presence: a configured DPS name with --login, a configured group without a DPS."""
    configured = getattr(auth_type, "is_default", False)
    auth_type = str(auth_type or "key").lower()
    if auth_type not in AUTH_TYPES:
        if configured:
            raise UserInputError(
                f"The configured default auth type {auth_type!r} is neither key nor login.",
                "Fix it with `az configure --defaults iotdps-data-auth-type=login` (or =key), or pass "
                f"{option('auth_type')}.")
        raise UserInputError(f"Unknown {option('auth_type')} {auth_type!r}.",
                             f"Use {option('auth_type')} key or login.")
    if dps_name and login and getattr(dps_name, "is_default", False):
        dps_name = None  # a typed --login wins over a configured default DPS
    if dps_name and login:
        raise ExclusiveInputsError(f"{option('dps_name')} and {option('login')} cannot be used together.",
                                   f"Name the DPS with {option('dps_name')} [-g] (found through ARM with your "
                                   f"az login identity), or pass its connection string with {option('login')}.")
    if login:
        # (-g may come from `az configure --defaults group=...`; a connection string needs none.)
        return _target_from_login(cmd, login, auth_type)
    if not dps_name:
        raise MissingInputError(
            "No Device Provisioning Service given.",
            f"Pass {option('dps_name')}/-n <name> [-g <group>] to find it with your az login identity, or "
            f"{option('login')} <connection string> ({option('login')} @file reads it from a file).")
    return _target_from_arm(cmd, dps_name, resource_group, auth_type, rights)


def _target_from_login(cmd, login: str, auth_type: str) -> DpsTarget:
    if login.strip().startswith("@"):  # az leaves @file as it was when it cannot read the file
        raise LocalFileError(f"{option('login')} {login.strip()}: the file cannot be read.",
                             "Check the path after @ and that the file is readable.")
    host, parts = _host_from_login(login)
    if not _HOST.match(host):
        # The value is not repeated: a mangled connection string (',' or ' ' between its pairs, a key
        # pasted alone) would carry the key into the message and, as a host, into later ones.
        raise UserInputError(
            f"{option('login')} is neither a DPS connection string nor a DPS host name (its value is not shown, as "
            "it may hold a key).",
            "Pass HostName=<dps>.azure-devices-provisioning.net;SharedAccessKeyName=...;SharedAccessKey=... "
            f"with ';' between the pairs (or @file); to name the DPS resource instead, use {option('dps_name')}.")
    if auth_type == "login":
        # The az login's token goes where this names: a DNS name in the cloud's DPS domain only. (A key's
        # SAS token names its host in `sr`, so no other host could use it; ARM's answer is ARM's.)
        from azext_edgetpm.dps.hosts import dps_login_host
        host = dps_login_host(host, getattr(cmd, "cli_ctx", None))
        return DpsTarget(host=host, auth_type="login", credential=bearer_credential(cmd),
                         source="connection-string", name=host.partition(".")[0])
    if not parts or not parts.get("sharedaccesskey"):
        raise MissingInputError(
            "The DPS connection string has no SharedAccessKey.",
            f"Pass a connection string with SharedAccessKeyName and SharedAccessKey, or add {option('auth_type')} "
            "login to use your az login identity (Entra ID) instead of a key.")
    from azext_edgetpm.dps.auth import SharedAccessKey
    credential = SharedAccessKey(parts.get("sharedaccesskeyname"), parts["sharedaccesskey"])
    return DpsTarget(host=host, auth_type="key", credential=credential, source="connection-string",
                     name=host.split(".")[0], policy=credential.key_name)


def bearer_credential(cmd):
    """The az login identity as an azure-core TokenCredential (asked for the DPS scope, or an IoT
    hub's, by a bearer token policy)."""
    from azure.cli.core._profile import Profile
    with _az_login_needed():
        credential, _subscription, _tenant = Profile(cli_ctx=cmd.cli_ctx).get_login_credentials()
    return credential


def _mgmt_client(cmd):
    from azure.cli.core.commands.client_factory import get_mgmt_service_client
    from azure.cli.core.profiles import ResourceType
    with _az_login_needed():
        return get_mgmt_service_client(cmd.cli_ctx, ResourceType.MGMT_IOTDPS)


@contextmanager
def _az_login_needed():
    """az's own "Please run 'az login'" (a bare knack CLIError, or an azclierror of az's login
    code with its own recommendation) as a CredentialError with a way out; and the sign-in endpoint
    out of reach (MSAL's requests fail while the az login identity is set up)."""
    from knack.util import CLIError
    from requests.exceptions import RequestException
    from azext_edgetpm.errors import TransientError
    try:
        yield
    except CLIError as exc:
        # (an azclierror keeps its message and recommendations: az's login code knows its case best)
        own = " ".join(str(r) for r in getattr(exc, "recommendations", None) or [])
        raise CredentialError(
            str(getattr(exc, "error_msg", None) or exc),
            own or "Run `az login` (in a pipeline: az login --service-principal or --identity), or pass the DPS "
            f"connection string with {option('login')}, which needs no az login.") from exc
    except RequestException as exc:
        raise TransientError(
            f"Could not reach the sign-in endpoint of az login: {exc}",
            f"Check the network path to it (HTTPS_PROXY/NO_PROXY, DNS, firewall), or use {option('login')} with "
            "the DPS connection string, which needs neither az login nor ARM.") from exc


def _resource_group_of(resource_id: str) -> Optional[str]:
    parts = (resource_id or "").split("/")
    for i, part in enumerate(parts[:-1]):
        if part.lower() == "resourcegroups":
            return parts[i + 1]
    return None


def find_resource(cmd, dps_name: str, resource_group: Optional[str] = None):
    """The provisioningServices resource and its resource group (searching the subscription
    when no group is given)."""
    from azure.core.exceptions import (
        HttpResponseError, ResourceNotFoundError as CoreNotFound, ServiceRequestError, ServiceResponseError)
    from requests.exceptions import RequestException  # the az login token, fetched by MSAL on first use
    client = _mgmt_client(cmd)
    try:
        if resource_group:
            resource = client.iot_dps_resource.get(provisioning_service_name=dps_name,
                                                   resource_group_name=resource_group)
            return client, resource, resource_group
        matches = [r for r in client.iot_dps_resource.list_by_subscription()
                   if (r.name or "").lower() == dps_name.lower()]
    except CoreNotFound as exc:
        raise NotFoundError(
            f"No Device Provisioning Service named {dps_name!r} in resource group {resource_group!r}.",
            "Check the name and group with `az iot dps list -o table`, or omit -g to search the "
            "whole subscription.") from exc
    except HttpResponseError as exc:
        raise _arm_error(exc, dps_name) from exc
    except (ServiceRequestError, ServiceResponseError, RequestException) as exc:
        raise _arm_unreachable(cmd, exc, dps_name) from exc
    if not matches:
        raise NotFoundError(
            f"No Device Provisioning Service named {dps_name!r} in the current subscription.",
            "Check the name with `az iot dps list -o table`, or select the subscription that has it with "
            "`az account set -s <subscription>`.")
    if len(matches) > 1:
        groups = ", ".join(sorted(_resource_group_of(r.id) or "?" for r in matches))
        raise UsageError(f"More than one Device Provisioning Service is named {dps_name!r} ({groups}).",
                         "Add -g <resource group> to say which one.")
    return client, matches[0], _resource_group_of(matches[0].id)


def _arm_error(exc, dps_name):
    from azext_edgetpm.errors import AuthError, ServiceError
    status = getattr(exc, "status_code", None)
    text = getattr(exc, "message", None) or str(exc)
    if status == 401:
        return AuthError(f"ARM refused the az login identity while looking up {dps_name!r}: {text}",
                         "Run `az login` again.")
    if status == 403:
        return PermissionDeniedError(f"The az login identity may not read the DPS {dps_name!r}: {text}",
                                     "Ask for a role with Microsoft.Devices/provisioningServices/read and listkeys "
                                     f"(e.g. Contributor) on it, or use {option('login')} with a connection string.")
    return ServiceError(f"ARM request for the DPS {dps_name!r} failed: {text}",
                        "Retry later; check `az account show` for the subscription in use.")


def _arm_unreachable(cmd, exc, dps_name):
    from azext_edgetpm.errors import TransientError
    arm = getattr(getattr(getattr(cmd, "cli_ctx", None), "cloud", None), "endpoints", None)
    arm = getattr(arm, "resource_manager", None) or "Azure Resource Manager"
    return TransientError(
        f"Could not reach {arm} (or the sign-in endpoint of az login) to look up the DPS {dps_name!r}: {exc}",
        "Check the network path to it (HTTPS_PROXY/NO_PROXY, DNS, firewall; REQUESTS_CA_BUNDLE behind a "
        f"TLS-inspecting proxy), or use {option('login')} with the DPS connection string, which needs no ARM call.")


def _rights_of(policy) -> set:
    return {r.strip().lower() for r in str(policy.rights or "").split(",") if r.strip()}


def pick_policy(policies, rights=ENROLLMENT_WRITE):
    """The shared access policy with one of `rights` and the fewest other rights (least
    privilege); None when no policy has them."""
    wanted = {r.lower() for r in rights}
    usable = [p for p in policies if _rights_of(p) & wanted and p.primary_key]
    if not usable:
        return None
    return min(usable, key=lambda p: len(_rights_of(p)))


def _target_from_arm(cmd, dps_name, resource_group, auth_type, rights) -> DpsTarget:
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
    client, resource, group = find_resource(cmd, dps_name, resource_group)
    props = resource.properties
    host = props.service_operations_host_name
    if not host:
        raise NotFoundError(f"The DPS {dps_name!r} reports no service operations host name.",
                            "Wait until it is fully provisioned (provisioningState Succeeded) and retry.")
    subscription = client._config.subscription_id  # pylint: disable=protected-access
    common = dict(source="arm", name=resource.name, resource_group=group, subscription=subscription,  # pylint: disable=use-dict-literal
                  id_scope=props.id_scope, device_host=props.device_provisioning_host_name, host=host.lower())
    if auth_type == "login":
        logger.info("Using the az login identity (Entra ID) for the DPS %s.", host)
        return DpsTarget(auth_type="login", credential=bearer_credential(cmd), **common)
    try:
        # logging_enable=False: az --debug would otherwise print the listkeys response, keys included.
        policies = list(client.iot_dps_resource.list_keys(provisioning_service_name=resource.name,
                                                          resource_group_name=group, logging_enable=False))
    except HttpResponseError as exc:
        if getattr(exc, "status_code", None) == 403:
            raise PermissionDeniedError(
                f"The az login identity may not list the keys of the DPS {dps_name!r}.",
                f"Use {option('auth_type')} login (Entra ID; needs the 'Device Provisioning Service Data Contributor' "
                f"role), or {option('login')} with a connection string.") from exc
        raise _arm_error(exc, dps_name) from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise _arm_unreachable(cmd, exc, dps_name) from exc
    policy = pick_policy(policies, rights)
    if policy is None:
        names = ", ".join(p.key_name for p in policies) or "none"
        # (the flags of another command, az iot's, spelt as it spells them)
        add = f"az iot dps policy create --dps-name {resource.name} -g {group} --pn edge-tpm --rights {rights[0]}"
        raise PermissionDeniedError(
            f"No shared access policy of the DPS {dps_name!r} has the right {' or '.join(rights)} "
            f"(policies: {names}).",
            f"Add one with `{add}`, or use {option('auth_type')} login.")
    from azext_edgetpm.dps.auth import SharedAccessKey
    logger.info("Using shared access policy %r of the DPS %s.", policy.key_name, host)
    return DpsTarget(auth_type="key", credential=SharedAccessKey(policy.key_name, policy.primary_key),
                     policy=policy.key_name, **common)
