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
    from azure.cli.core.azclierror import FileOperationError
    from azure.cli.core.util import read_file_content, shell_safe_json_parse
    from knack.util import CLIError
    if value is None or isinstance(value, dict):
        return value
    if value.startswith("@"):  # az leaves @file as it was when it cannot read the file
        raise FileOperationError(f"{option} {value}: the file cannot be read.",
                                 "Check the path after @ and that the file is readable.")
    if os.path.isfile(value):
        try:
            value = read_file_content(value)
        except (OSError, UnicodeError) as exc:
            raise FileOperationError(f"{option}: cannot read {value!r}: {exc}",
                                     "Give a readable UTF-8 JSON file.") from exc
    example = f"For example: {option} '{{\"location\": \"plant-1\"}}' or {option} @tags.json."
    try:
        parsed = shell_safe_json_parse(value)
    except CLIError as exc:  # (InvalidArgumentValueError in current az, a bare CLIError in older ones)
        raise InvalidArgumentValueError(f"{option}: {getattr(exc, 'error_msg', exc)}",
                                        list(getattr(exc, "recommendations", [])) + [example]) from exc
    if not isinstance(parsed, dict):
        raise InvalidArgumentValueError(f"{option} must be a JSON object.", example)
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


def validate_edge_install(namespace):
    """`edge-tpm install`: where the DPS comes from, and the shape of every value that will be
    written into a file or a command on the device (checked before anything connects)."""
    import os
    import re
    from azure.cli.core.azclierror import ArgumentUsageError
    if not getattr(namespace, "host", None):
        raise RequiredArgumentMissingError("No device given.", "Pass --host [user@]host[:port].")
    scope, dps_name, login = namespace.id_scope, namespace.dps_name, namespace.login
    if scope and dps_name:
        raise MutuallyExclusiveArgumentError("--id-scope and --dps-name cannot be used together.",
                                             "The ID scope of --dps-name comes from the DPS resource; drop one.")
    if not scope and not dps_name:
        raise RequiredArgumentMissingError(
            "No DPS given.", "Pass --id-scope (the DPS overview page shows it), or --dps-name [-g] to look it up "
            "with your az login identity." if not login else
            "A DPS connection string (--login) carries no ID scope: add --id-scope, or use --dps-name [-g].")
    for name, value in (("--id-scope", scope), ("--tcti", namespace.tcti), ("--edge-version", namespace.edge_version),
                        ("--log-driver", namespace.log_driver), ("--package-source", namespace.package_source),
                        ("--global-endpoint", namespace.global_endpoint)):
        if value is not None and (not str(value).strip() or re.search(r"[\x00-\x1f]", str(value))):
            raise InvalidArgumentValueError(f"{name} must be one line of text.", f"Check the value of {name}.")
    if scope and not re.fullmatch(r"[A-Za-z0-9]{1,64}", scope):
        raise InvalidArgumentValueError(f"--id-scope {scope!r} is not a DPS ID scope.",
                                        "Copy the ID scope (e.g. 0ne00ABCDEF) from the DPS overview page.")
    if namespace.registration_id:
        from azext_edgetpm.dps.enrollment import normalize_registration_id
        namespace.registration_id = normalize_registration_id(namespace.registration_id)
    endpoint = namespace.global_endpoint
    if endpoint and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(?::\d{1,5})?/?", endpoint):
        raise InvalidArgumentValueError(f"--global-endpoint {endpoint!r} is not an https:// URL of a host.",
                                        "Use https://global.azure-devices-provisioning.net (the default), or the "
                                        "device endpoint of your DPS.")
    source, offline = namespace.package_source, namespace.offline_packages
    if source and offline:
        raise MutuallyExclusiveArgumentError("--package-source and --offline-packages cannot be used together.",
                                             "Use a mirror (--package-source) or .deb files (--offline-packages).")
    if source and not (source.split(" ", 1)[0] in ("deb", "deb-src") or
                       re.fullmatch(r"(https?|file)://\S+", source)):
        raise InvalidArgumentValueError(
            f"--package-source {source!r} is neither an apt line nor a URL.",
            "Give a mirror of packages.microsoft.com as its base URL (https://mirror.example.com/microsoft), the URL "
            "of a packages-microsoft-prod.deb, or a sources.list line ('deb [signed-by=...] https://... ./').")
    if source and re.search(r"[a-z]+://[^/\s@]*@", source):
        # Never echo it: the part before @ is a user name and password.
        raise InvalidArgumentValueError(
            "--package-source carries credentials in its URL; they would land on the device's command lines "
            "and in messages.",
            "Give the URL without user:password@ and put the credentials in /etc/apt/auth.conf.d/ on the device "
            "(apt's own place for them).")
    if offline and not os.path.isdir(os.path.expanduser(offline)):
        raise InvalidArgumentValueError(f"--offline-packages {offline!r} is not a directory.",
                                        "Give a directory holding the .deb files to install.")
    if namespace.edge_version and not re.fullmatch(r"[0-9][0-9A-Za-z.+~:\-]*", namespace.edge_version):
        raise InvalidArgumentValueError(f"--edge-version {namespace.edge_version!r} is not a package version.",
                                        "Use a version such as 1.5.10 or 1.5.10-1.")
    if namespace.log_driver and not re.fullmatch(r"[A-Za-z0-9_.:/\-]+", namespace.log_driver):
        raise InvalidArgumentValueError(f"--log-driver {namespace.log_driver!r} is not a log driver name.",
                                        "Use local (default), json-file, journald, ... or keep.")
    if namespace.payload and not os.path.isfile(os.path.expanduser(namespace.payload)):
        raise InvalidArgumentValueError(f"--payload {namespace.payload!r} is not a file.",
                                        "Give the path of a JSON file to send to DPS at registration.")
    if getattr(namespace, "resource_group_name", None) and not dps_name:
        raise ArgumentUsageError("--resource-group only goes with --dps-name.", "Add --dps-name, or drop -g.")
