"""The az face's side of the domain errors: each becomes one azclierror with a recommendation.

Used as the command groups' ``exception_handler``: whatever a command raises passes through
here; anything that is not a domain error goes on unchanged.
"""

# dest name of an option -> the flag users type (for errors that name their field or mark an
# option with errors.option; one line each, sorted)
FLAGS = {
    "accept_new_host_key": "--accept-new-host-key",
    "allocation_policy": "--allocation-policy",
    "allow_downgrade": "--allow-downgrade",
    "auth_type": "--auth-type",
    "auto_reprovisioning_mode": "--auto-reprovisioning-mode",
    "canary": "--canary",
    "delete_hub_device": "--delete-hub-device",
    "device_id": "--device-id",
    "dps_name": "--dps-name",
    "dps_ops_per_minute": "--dps-ops-per-minute",
    "dps_registrations_per_minute": "--dps-registrations-per-minute",
    "dry_run": "--dry-run",
    "edge_enabled": "--edge-enabled",
    "edge_version": "--edge-version",
    "ek_ca_bundle": "--ek-ca-bundle",
    "endorsement_key": "--endorsement-key",
    "force": "--force",
    "global_endpoint": "--global-endpoint",
    "host": "--host",
    "id_format": "--id-format",
    "id_scope": "--id-scope",
    "initial_twin_properties": "--initial-twin-properties",
    "initial_twin_tags": "--initial-twin-tags",
    "install_tools": "--install-tools",
    "inputs": "--input",
    "interval": "--interval",
    "inventory": "--inventory",
    "inventory_format": "--inventory-format",
    "iot_hubs": "--iot-hubs",
    "keep_device": "--keep-device",
    "known_hosts": "--known-hosts",
    "limit": "--limit",
    "local": "--local",
    "log_driver": "--log-driver",
    "login": "--login",
    "max_fail_percentage": "--max-fail-percentage",
    "max_parallel": "--max-parallel",
    "no_rollback": "--no-rollback",
    "mode": "--mode",
    "no_create": "--no-create",
    "no_proxy": "--no-proxy",
    "offline_packages": "--offline-packages",
    "only": "--only",
    "package_source": "--package-source",
    "payload": "--payload",
    "provisioning_status": "--provisioning-status",
    "proxy": "--proxy",
    "proxy_ca": "--proxy-ca",
    "registration_id": "--registration-id",
    "report_file": "--report",
    "reprovision_policy": "--reprovision-policy",
    "require_device": "--require-device",
    "resource_group_name": "--resource-group",
    "retry_failed": "--retry-failed",
    "shard": "--shard",
    "ssh_config": "--ssh-config",
    "ssh_key": "--ssh-key",
    "ssh_port": "--ssh-port",
    "ssh_timeout": "--ssh-timeout",
    "ssh_user": "--ssh-user",
    "state": "--state",
    "state_from_other_run": "--state-from-other-run",
    "summary_file": "--summary",
    "tcti": "--tcti",
    "timeout": "--timeout",
    "top": "--top",
    "tpm_access": "--tpm-access",
    "uninstall": "--uninstall",
    "wait_timeout": "--wait-timeout",
    "yes": "--yes",
}


def register_option_names():
    """Domain errors name inputs by dest (errors.option); here they get their flags."""
    from azext_edgetpm import errors
    errors.name_options(FLAGS)


def to_azclierror(exc):
    """The azclierror for a domain error (anything else is returned as it is)."""
    from azure.cli.core import azclierror as az
    from azext_edgetpm import errors
    if not isinstance(exc, errors.EdgeTpmError):
        return exc
    register_option_names()
    classes = [
        (errors.MissingInputError, az.RequiredArgumentMissingError),
        (errors.ExclusiveInputsError, az.MutuallyExclusiveArgumentError),
        (errors.UsageError, az.ArgumentUsageError),
        (errors.LocalFileError, az.FileOperationError),
        (errors.UserInputError, az.InvalidArgumentValueError),
        (errors.DeviceError, az.ValidationError),
        (errors.UnreachableError, az.ClientRequestError),
        (errors.CredentialError, az.AuthenticationError),
        (errors.AuthError, az.UnauthorizedError),
        (errors.PermissionDeniedError, az.ForbiddenError),
        (errors.NotFoundError, az.ResourceNotFoundError),
        (errors.ConflictError, az.AzureResponseError),
        (errors.BadRequestError, az.BadRequestError),
        (errors.ServerError, az.AzureInternalError),
        (errors.ServiceError, az.AzureResponseError),
        (errors.TransientError, az.AzureConnectionError),
        (errors.InterruptedWork, az.UnclassifiedUserFault),
    ]
    cls = next((c for d, c in classes if isinstance(exc, d)), az.UnclassifiedUserFault)
    message = exc.message
    flag = FLAGS.get(exc.field or "")
    if flag and flag not in message:
        message = f"{flag}: {message}"
    out = cls(message, recommendation=exc.hint)  # (keyword: AuthenticationError takes msal_error second)
    out.__cause__ = exc
    return out


def exception_handler(exc):
    """az calls this with what a command raised; it must raise."""
    raise to_azclierror(exc) from exc
