"""Argument validators: cheap checks that run before a command does anything."""
from azure.cli.core.azclierror import MutuallyExclusiveArgumentError, RequiredArgumentMissingError
from azure.cli.core.azclierror import InvalidArgumentValueError


def validate_device_source(namespace):
    """Exactly one of --host and --local."""
    if getattr(namespace, "local", False) and getattr(namespace, "host", None):
        raise MutuallyExclusiveArgumentError("--host and --local cannot be used together.",
                                             "Use --host for a device over SSH, or --local for this machine.")
    if not getattr(namespace, "local", False) and not getattr(namespace, "host", None):
        raise RequiredArgumentMissingError("No device given.",
                                           "Pass --host [user@]host[:port], or --local for this machine's TPM.")


def _json_object(value, option):
    """JSON text (az has already expanded @file) or the path of a JSON file, as a dict."""
    import os
    from azure.cli.core.util import get_file_json, shell_safe_json_parse
    if value is None or isinstance(value, dict):
        return value
    parsed = get_file_json(value) if os.path.isfile(value) else shell_safe_json_parse(value)
    if not isinstance(parsed, dict):
        raise InvalidArgumentValueError(f"{option} must be a JSON object.",
                                        f"For example: {option} '{{\"location\": \"plant-1\"}}' or {option} @tags.json.")
    return parsed


def validate_enrollment_create(namespace):
    """Exactly one of --host and --endorsement-key; hubs, allocation and twin JSON checked."""
    from azext_edgetpm.dps.enrollment import normalize_registration_id
    host, key = getattr(namespace, "host", None), getattr(namespace, "endorsement_key", None)
    if host and key:
        raise MutuallyExclusiveArgumentError("--host and --endorsement-key cannot be used together.",
                                             "Use --host to read the EK from the device, or --endorsement-key "
                                             "to give it yourself.")
    if not host and not key:
        raise RequiredArgumentMissingError("No endorsement key given.",
                                           "Pass --host [user@]host to read it from the device over SSH, or "
                                           "--endorsement-key <base64 of ek.pub>.")
    if namespace.registration_id:
        namespace.registration_id = normalize_registration_id(namespace.registration_id, "--enrollment-id")
    if namespace.iot_hubs is not None:
        hubs = [h for item in namespace.iot_hubs for h in item.replace(",", " ").split()]
        namespace.iot_hubs = hubs
    if namespace.allocation_policy == "static" and len(namespace.iot_hubs or []) != 1:
        raise InvalidArgumentValueError("--allocation-policy static needs exactly one IoT hub.",
                                        "Add --iot-hubs <hub>.azure-devices.net with a single hub, or use "
                                        "--allocation-policy hashed for several.")
    namespace.initial_twin_tags = _json_object(namespace.initial_twin_tags, "--initial-twin-tags")
    namespace.initial_twin_properties = _json_object(namespace.initial_twin_properties,
                                                     "--initial-twin-properties")
