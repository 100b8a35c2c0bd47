"""Argument validators: cheap checks that run before a command does anything."""
from azure.cli.core.azclierror import MutuallyExclusiveArgumentError, RequiredArgumentMissingError
from azure.cli.core.azclierror import InvalidArgumentValueError

from azext_edgetpm.limits import MAX_LENGTHS, MAX_PAYLOAD_BYTES  # noqa: F401  (MAX_LENGTHS re-exported)

# Values that become a single line on the device (a command argument, a config.toml string).
_ONE_LINE = ("host", "ssh_user", "tcti", "id_scope", "registration_id", "device_id", "edge_version", "log_driver",
             "package_source", "global_endpoint", "proxy", "no_proxy")
_OPTION_NAMES = {"resource_group_name": "--resource-group"}
_NEVER_ECHOED = ("login",)  # a connection string holds a key


def typed(value) -> bool:
    """Whether the user gave a value on the command line: az marks a value it took from
    `az configure --defaults` (is_default), and such a value must never cause an error."""
    return value is not None and not getattr(value, "is_default", False)


def option_name(dest: str, namespace=None) -> str:
    if dest == "registration_id" and namespace is not None and hasattr(namespace, "endorsement_key"):
        return "--enrollment-id/--registration-id"
    return _OPTION_NAMES.get(dest, "--" + dest.replace("_", "-"))


def _echoable(dest: str, value: str) -> str:
    """What an error may echo of a value: a proxy value (or any URL) with everything up to its
    last @ replaced, whatever the shape of the password."""
    if "@" in value and (dest == "proxy" or "://" in value):
        from azext_edgetpm.edge.proxy import redact_value
        return redact_value(value)
    return value


def check_values(namespace):
    """Bound the length of every value of MAX_LENGTHS, and refuse control characters (NUL, line
    breaks) in values that become one line on the device; each with one clear error."""
    from azext_edgetpm.echo import control_character, shown
    for dest, limit in MAX_LENGTHS.items():
        value = getattr(namespace, dest, None)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, str):
                continue
            name = option_name(dest, namespace)
            echo = "" if dest in _NEVER_ECHOED else f": {shown(_echoable(dest, item))}"
            if len(item) > limit:
                raise InvalidArgumentValueError(
                    f"{name} is {len(item):,} characters long; at most {limit:,} are accepted{echo}",
                    f"Check the value of {name} (a file's content pasted by mistake, or a variable that "
                    "grew in a script?).")
            bad = control_character(item) if dest in _ONE_LINE else None
            if bad:
                raise InvalidArgumentValueError(
                    f"{name} contains {bad[1]} (at position {bad[0] + 1}), which cannot be passed on to the "
                    f"device{echo}",
                    f"Give {name} as one line of printable text.")


def validate_device_source(namespace):
    """Exactly one of --host and --local; every value bounded."""
    check_values(namespace)
    if getattr(namespace, "local", False) and getattr(namespace, "host", None):
        raise MutuallyExclusiveArgumentError("--host and --local cannot be used together.",
                                             "Use --host for a device over SSH, or --local for this machine.")
    if not getattr(namespace, "local", False) and not getattr(namespace, "host", None):
        raise RequiredArgumentMissingError("No device given.",
                                           "Pass --host [user@]host[:port], or --local for this machine's TPM.")
    _check_bundle_path(namespace)


def _check_bundle_path(namespace):
    import os
    from azure.cli.core.azclierror import FileOperationError
    bundle = getattr(namespace, "ek_ca_bundle", None)
    if bundle and not os.path.exists(os.path.expanduser(bundle)):
        raise FileOperationError(f"--ek-ca-bundle {bundle!r}: no such file or directory.",
                                 "Give the TPM maker's CA certificates: a PEM or DER file, or a directory of them.")


def validate_top(namespace):
    """--top: at least 1, or -1 for all (as the azure-iot extension)."""
    check_values(namespace)
    top = getattr(namespace, "top", None)
    if top == -1:
        namespace.top = None
    elif top is not None and top < 1:
        raise InvalidArgumentValueError(f"--top {top}: give at least 1 (or -1 for all).",
                                        "Use --top N for the first N enrollments, or leave it out for all.")


def _attestation_type(namespace):
    """--attestation-type, accepted for `az iot dps enrollment create` scripts: tpm only."""
    kind = getattr(namespace, "attestation_type", None)
    if hasattr(namespace, "attestation_type"):
        del namespace.attestation_type  # not an argument of the command function
    if kind is not None and str(kind).strip().lower() != "tpm":
        raise InvalidArgumentValueError(
            f"--attestation-type {kind}: this extension enrolls TPM devices only (TPM attestation).",
            "Use --attestation-type tpm (or leave it out); for X.509 or symmetric key enrollments use "
            "`az iot dps enrollment create` of the azure-iot extension.")


def _json_object(value, option):
    """JSON text (az has already expanded @file) or the path of a JSON file, as a dict."""
    import os
    from azure.cli.core.azclierror import FileOperationError
    from azure.cli.core.util import shell_safe_json_parse
    from knack.util import CLIError
    if value is None or isinstance(value, dict):
        return value
    from azext_edgetpm.echo import shown
    if value.startswith("@"):  # az leaves @file as it was when it cannot read the file
        raise FileOperationError(f"{option} {shown(value)}: the file cannot be read.",
                                 "Check the path after @ and that the file is readable.")
    if os.path.isfile(value):
        from azext_edgetpm._error_map import to_azclierror
        from azext_edgetpm.errors import EdgeTpmError
        from azext_edgetpm.files import LIMITS, read_text_bounded
        try:
            value = read_text_bounded(value, LIMITS["twin_json"], f"The JSON file of {option}",
                                      hint="Give a readable UTF-8 JSON file.")
        except EdgeTpmError as exc:
            raise to_azclierror(exc) from exc
    example = f"For example: {option} '{{\"location\": \"plant-1\"}}' or {option} @tags.json."
    try:
        parsed = shell_safe_json_parse(value)
    except CLIError as exc:  # (InvalidArgumentValueError in current az, a bare CLIError in older ones)
        raise InvalidArgumentValueError(f"{option}: {getattr(exc, 'error_msg', exc)}",
                                        list(getattr(exc, "recommendations", [])) + [example]) from exc
    except RecursionError:
        raise InvalidArgumentValueError(f"{option}: the JSON nests too deeply.", example) from None
    if not isinstance(parsed, dict):
        raise InvalidArgumentValueError(f"{option} must be a JSON object.", example)
    return parsed


def validate_enrollment_create(namespace):
    """Exactly one of --host and --endorsement-key; IDs, hubs, allocation and twin JSON checked."""
    from azext_edgetpm.dps.enrollment import normalize_registration_id, validate_device_id
    check_values(namespace)
    _attestation_type(namespace)
    host, key = getattr(namespace, "host", None), getattr(namespace, "endorsement_key", None)
    if key and getattr(namespace, "ek_ca_bundle", None):
        raise MutuallyExclusiveArgumentError("--ek-ca-bundle needs --host: the EK certificate is read from the "
                                             "device's TPM, which --endorsement-key does not reach.",
                                             "Read the EK with --host, or drop --ek-ca-bundle.")
    _check_bundle_path(namespace)
    if host and key:
        raise MutuallyExclusiveArgumentError("--host and --endorsement-key cannot be used together.",
                                             "Use --host to read the EK from the device, or --endorsement-key "
                                             "to give it yourself.")
    if not host and not key:
        raise RequiredArgumentMissingError("No endorsement key given.",
                                           "Pass --host [user@]host to read it from the device over SSH, or "
                                           "--endorsement-key <base64 of ek.pub>.")
    from azext_edgetpm._error_map import to_azclierror
    from azext_edgetpm.errors import EdgeTpmError
    try:
        if namespace.registration_id:
            namespace.registration_id = normalize_registration_id(namespace.registration_id, "--enrollment-id")
        if getattr(namespace, "device_id", None) is not None:
            namespace.device_id = validate_device_id(namespace.device_id)
    except EdgeTpmError as exc:  # (validators run before the command groups' exception handler)
        raise to_azclierror(exc) from exc
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
    from azure.cli.core.azclierror import ArgumentUsageError
    if not getattr(namespace, "host", None):
        raise RequiredArgumentMissingError("No device given.", "Pass --host [user@]host[:port].")
    check_values(namespace)
    if hasattr(namespace, "login"):
        login = namespace.login
        del namespace.login  # not an argument of the command function
        if login is not None:
            raise ArgumentUsageError(
                "install does not take --login: it needs the DPS's ID scope, which a connection string does "
                "not carry, and no DPS key (its value is not shown).",
                "Pass --id-scope (the DPS overview page shows it), or --dps-name [-g] to look it up with your az "
                "login identity.")
    scope, dps_name = namespace.id_scope, namespace.dps_name
    if scope and dps_name and not typed(dps_name):
        namespace.dps_name = dps_name = None  # a configured default DPS gives way to a typed --id-scope
    if scope and dps_name:
        raise MutuallyExclusiveArgumentError("--id-scope and --dps-name cannot be used together.",
                                             "The ID scope of --dps-name comes from the DPS resource; drop one.")
    if not scope and not dps_name:
        raise RequiredArgumentMissingError(
            "No DPS given.", "Pass --id-scope (the DPS overview page shows it), or --dps-name [-g] to look it up "
            "with your az login identity.")
    _install_values(namespace)
    if typed(getattr(namespace, "resource_group_name", None)) and not dps_name:
        raise ArgumentUsageError("--resource-group only goes with --dps-name.", "Add --dps-name, or drop -g.")


def _install_values(namespace):
    """The shape of every install value that will be written into a file or a command on a device."""
    import os
    import re
    from azext_edgetpm.echo import shown
    scope = namespace.id_scope
    for name, value in (("--id-scope", scope), ("--tcti", namespace.tcti), ("--edge-version", namespace.edge_version),
                        ("--log-driver", namespace.log_driver), ("--package-source", namespace.package_source),
                        ("--global-endpoint", namespace.global_endpoint)):
        if value is not None and not str(value).strip():
            raise InvalidArgumentValueError(f"{name} is empty.", f"Give a value for {name}, or leave it out.")
    if scope and not re.fullmatch(r"[A-Za-z0-9]{1,64}", scope):
        raise InvalidArgumentValueError(f"--id-scope {shown(scope)} is not a DPS ID scope.",
                                        "Copy the ID scope (e.g. 0ne00ABCDEF) from the DPS overview page.")
    if namespace.registration_id:
        _registration_id(namespace)
    endpoint = namespace.global_endpoint
    if endpoint and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(?::\d{1,5})?/?", endpoint):
        raise InvalidArgumentValueError(f"--global-endpoint {shown(endpoint)} is not an https:// URL of a host.",
                                        "Use https://global.azure-devices-provisioning.net (the default), or the "
                                        "device endpoint of your DPS.")
    source, offline = namespace.package_source, namespace.offline_packages
    if source and offline:
        raise MutuallyExclusiveArgumentError("--package-source and --offline-packages cannot be used together.",
                                             "Use a mirror (--package-source) or package files (--offline-packages).")
    if source and re.search(r"[a-z]+://[^/\s@]*@", source):
        # Never echo it: the part before @ is a user name and password.
        raise InvalidArgumentValueError(
            "--package-source carries credentials in its URL; they would land on the device's command lines "
            "and in messages.",
            "Give the URL without user:password@ and put the credentials in /etc/apt/auth.conf.d/ on the device "
            "(apt's own place for them).")
    if source and source.strip().split(" ", 1)[0] in ("deb", "deb-src"):
        from azext_edgetpm._error_map import to_azclierror
        from azext_edgetpm.edge.apt import check_apt_line
        from azext_edgetpm.errors import EdgeTpmError
        try:
            check_apt_line(source)
        except EdgeTpmError as exc:  # (validators run before the command groups' exception handler)
            raise to_azclierror(exc) from exc
    elif source and re.match(r"(https?|file)://\S+\s", source.strip() + " ") and len(source.split()) > 1:
        from azext_edgetpm._error_map import to_azclierror
        from azext_edgetpm.edge.pkg.dnf import parse_source
        from azext_edgetpm.errors import EdgeTpmError
        try:
            parse_source(source)
        except EdgeTpmError as exc:  # (validators run before the command groups' exception handler)
            raise to_azclierror(exc) from exc
    elif source and not re.fullmatch(r"(https?|file)://\S+", source):
        raise InvalidArgumentValueError(
            f"--package-source {shown(source)} is neither an apt line nor a URL.",
            "Give a mirror of packages.microsoft.com as its base URL (https://mirror.example.com/microsoft), the URL "
            "of a packages-microsoft-prod.deb (.rpm on Red Hat Enterprise Linux), a sources.list line "
            "('deb [signed-by=...] https://... ./'), or a dnf repository ('https://... gpgkey=https://...').")
    if offline and not os.path.isdir(os.path.expanduser(offline)):
        raise InvalidArgumentValueError(f"--offline-packages {shown(offline)} is not a directory.",
                                        "Give a directory holding the .deb (or .rpm) files to install.")
    if namespace.edge_version and not re.fullmatch(r"[0-9][0-9A-Za-z.+~:\-]*", namespace.edge_version):
        raise InvalidArgumentValueError(f"--edge-version {shown(namespace.edge_version)} is not a package version.",
                                        "Use a version such as 1.5.10 or 1.5.10-1.")
    if namespace.log_driver and not re.fullmatch(r"[A-Za-z0-9_.:/\-]+", namespace.log_driver):
        raise InvalidArgumentValueError(f"--log-driver {shown(namespace.log_driver)} is not a log driver name.",
                                        "Use local (default), json-file, journald, ... or keep.")
    if namespace.payload and not os.path.isfile(os.path.expanduser(namespace.payload)):
        raise InvalidArgumentValueError(f"--payload {shown(namespace.payload)} is not a file.",
                                        "Give the path of a JSON file to send to DPS at registration.")
    if namespace.payload and os.path.getsize(os.path.expanduser(namespace.payload)) > MAX_PAYLOAD_BYTES:
        raise InvalidArgumentValueError(
            f"--payload {shown(namespace.payload)} is {os.path.getsize(os.path.expanduser(namespace.payload)):,} "
            f"bytes; at most {MAX_PAYLOAD_BYTES:,} are accepted.",
            "DPS receives the payload at every registration: keep it a small JSON document.")
    validate_proxy(namespace)


def validate_proxy(namespace):
    """--proxy / --no-proxy / --proxy-ca: parsed (never echoing a password) before anything connects."""
    import os
    proxy = getattr(namespace, "proxy", None)
    if proxy is not None:
        namespace.proxy = proxy.strip()  # (az reads --proxy @file with the file's final newline)
    ca = getattr(namespace, "proxy_ca", None)
    if ca is not None and not os.path.isfile(os.path.expanduser(ca)):
        raise InvalidArgumentValueError("--proxy-ca is not a file.", "Give the PEM file of the proxy's root CA.")
    from azext_edgetpm._error_map import to_azclierror
    from azext_edgetpm.edge.proxy import check_file_readable, parse
    from azext_edgetpm.errors import EdgeTpmError
    try:
        parse(namespace.proxy if proxy is not None else None, getattr(namespace, "no_proxy", None),
              check_file_readable(os.path.expanduser(ca)) if ca else None)
    except EdgeTpmError as exc:  # (validators run before the command groups' exception handler)
        raise to_azclierror(exc) from exc


def _fleet_values(namespace, single_flags):
    """One device (--host) or an inventory, with the options that go with each; positive numbers;
    a valid --shard (provision and the lifecycle commands)."""
    from azure.cli.core.azclierror import ArgumentUsageError
    host, inventory = namespace.host, namespace.inventory
    if host and inventory:
        raise MutuallyExclusiveArgumentError("--host and --inventory cannot be used together.",
                                             "Use --host for one device, or --inventory for a fleet.")
    if not host and not inventory:
        raise RequiredArgumentMissingError("No device given.", "Pass --host [user@]host[:port] for one device, or "
                                           "--inventory FILE for a fleet.")
    fleet_only = [flag for flag, value in (("--limit", namespace.limit), ("--shard", namespace.shard),
                                           ("--only", namespace.only), ("--retry-failed", namespace.retry_failed),
                                           ("--inventory-format", namespace.inventory_format)) if value]
    if host and fleet_only:
        raise ArgumentUsageError(f"{', '.join(fleet_only)} only go(es) with --inventory.",
                                 "Drop it, or give a fleet with --inventory FILE.")
    single_only = [flag for flag in single_flags if getattr(namespace, flag[2:].replace("-", "_"), None)]
    if inventory and single_only:
        raise ArgumentUsageError(f"{', '.join(single_only)} only go(es) with --host.",
                                 "Give per-device IDs in the inventory's registration_id and device_id columns.")
    if getattr(namespace, "state_from_other_run", False) and not namespace.state:
        raise RequiredArgumentMissingError("--state-from-other-run goes with the --state file it is about.",
                                           "Add --state FILE, or drop --state-from-other-run.")
    if namespace.retry_failed and not namespace.state:
        raise RequiredArgumentMissingError("--retry-failed needs the --state file of the earlier run.",
                                           "Add --state FILE (the file the earlier run wrote).")
    for flag in ("--max-parallel", "--dps-ops-per-minute", "--dps-registrations-per-minute", "--wait-timeout",
                 "--timeout"):
        value = getattr(namespace, flag[2:].replace("-", "_"), None)
        if value is not None and value <= 0:
            raise InvalidArgumentValueError(f"{flag} must be positive.", f"Give a number above 0 for {flag}.")
    if namespace.max_parallel is not None and namespace.max_parallel > 200:
        raise InvalidArgumentValueError("--max-parallel is at most 200.",
                                        "Run more devices at once with --shard over several jobs.")
    if namespace.shard:
        from azext_edgetpm.errors import EdgeTpmError
        from azext_edgetpm.fleet.inventory import parse_shard
        try:
            parse_shard(namespace.shard)
        except EdgeTpmError as exc:
            raise InvalidArgumentValueError(f"--shard: {exc.message}", exc.hint) from exc


def _registration_id(namespace):
    """--registration-id in DPS's form (validators run before the command groups' exception
    handler, so the adapter's domain error becomes its azclierror here)."""
    from azext_edgetpm._error_map import to_azclierror
    from azext_edgetpm.dps.enrollment import normalize_registration_id
    from azext_edgetpm.errors import EdgeTpmError
    try:
        namespace.registration_id = normalize_registration_id(namespace.registration_id)
    except EdgeTpmError as exc:
        raise to_azclierror(exc) from exc


def validate_provision(namespace):
    """`edge-tpm provision`: one device (--host) or an inventory, the DPS, and the install values."""
    check_values(namespace)
    _check_bundle_path(namespace)
    _fleet_values(namespace, ("--registration-id", "--device-id"))
    if not namespace.dps_name and not namespace.login:
        raise RequiredArgumentMissingError("No DPS given.", "Pass --dps-name/-n [-g] (found through ARM with your az "
                                           "login identity), or --login with the DPS connection string (@file).")
    if namespace.id_scope and typed(namespace.dps_name):
        raise MutuallyExclusiveArgumentError("--id-scope and --dps-name cannot be used together.",
                                             "The ID scope of --dps-name comes from the DPS resource; drop one.")
    if namespace.registration_id:
        _registration_id(namespace)
    if namespace.iot_hubs is not None:
        namespace.iot_hubs = [h for item in namespace.iot_hubs for h in item.replace(",", " ").split()]
    if namespace.allocation_policy == "static" and len(namespace.iot_hubs or []) != 1:
        raise InvalidArgumentValueError("--allocation-policy static needs exactly one IoT hub.",
                                        "Add --iot-hubs <hub>.azure-devices.net with a single hub, or use "
                                        "--allocation-policy hashed for several.")
    namespace.initial_twin_tags = _json_object(namespace.initial_twin_tags, "--initial-twin-tags")
    namespace.initial_twin_properties = _json_object(namespace.initial_twin_properties, "--initial-twin-properties")
    _install_values(namespace)


def validate_upgrade(namespace):
    """upgrade: a device or an inventory, a package version that looks like one."""
    import re
    from azext_edgetpm.echo import shown
    check_values(namespace)
    _fleet_values(namespace, ())
    if namespace.edge_version and not re.fullmatch(r"[0-9][0-9A-Za-z.+~:\-]*", namespace.edge_version):
        raise InvalidArgumentValueError(f"--edge-version {shown(namespace.edge_version)} is not a package version.",
                                        "Give a version such as 1.6.0, or omit it for the newest LTS line.")
    if namespace.canary is not None and namespace.canary < 0:
        raise InvalidArgumentValueError("--canary must be a count of devices.", "Give e.g. --canary 2.")
    if namespace.settle_timeout is not None and namespace.settle_timeout <= 0:
        raise InvalidArgumentValueError("--settle-timeout must be a positive number of seconds.",
                                        "Give e.g. --settle-timeout 120.")


def validate_lifecycle(namespace):
    """deprovision | reprovision | rekey: a device or an inventory, a valid registration ID, a
    consistent enrollment change."""
    check_values(namespace)
    _fleet_values(namespace, ("--registration-id",))
    if not namespace.dps_name and not namespace.login:
        raise RequiredArgumentMissingError("No DPS given.", "Pass --dps-name/-n [-g] (found through ARM with your az "
                                           "login identity), or --login with the DPS connection string (@file).")
    if getattr(namespace, "registration_id", None):
        _registration_id(namespace)
    if getattr(namespace, "keep_device", False) and getattr(namespace, "uninstall", False):
        raise MutuallyExclusiveArgumentError("--keep-device and --uninstall cannot be used together.",
                                             "--keep-device leaves the device alone; --uninstall removes IoT Edge "
                                             "from it. Choose one.")
    if getattr(namespace, "keep_device", False) and getattr(namespace, "require_device", False):
        raise MutuallyExclusiveArgumentError("--keep-device and --require-device cannot be used together.",
                                             "--require-device needs the device reachable; --keep-device does not "
                                             "touch it.")
    if getattr(namespace, "iot_hubs", None) is not None:
        namespace.iot_hubs = [h for item in namespace.iot_hubs for h in item.replace(",", " ").split()]
        if getattr(namespace, "allocation_policy", None) == "static" and len(namespace.iot_hubs) != 1:
            raise InvalidArgumentValueError("--allocation-policy static needs exactly one IoT hub.",
                                            "Give --iot-hubs a single hub, or use --allocation-policy hashed.")
    if hasattr(namespace, "initial_twin_tags"):
        namespace.initial_twin_tags = _json_object(namespace.initial_twin_tags, "--initial-twin-tags")
