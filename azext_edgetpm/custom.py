"""Thin command functions: turn arguments into calls of the operations, shape the output."""
from knack.log import get_logger

logger = get_logger(__name__)


def ek_show(cmd, host=None, ssh_user=None, ssh_port=None, ssh_key=None, ssh_config=None,
            known_hosts=None, accept_new_host_key=False, ssh_timeout=None, tcti=None,
            id_format="sha256", no_create=False, install_tools=False, local=False):
    from azext_edgetpm.operations import device_identity, local_identity, SshOptions
    if local:
        return local_identity(tcti=tcti, create=not no_create, id_format=id_format)
    opts = SshOptions.from_args(host, ssh_user=ssh_user, ssh_port=ssh_port, ssh_key=ssh_key,
                                ssh_config=ssh_config, known_hosts=known_hosts,
                                accept_new_host_key=accept_new_host_key, ssh_timeout=ssh_timeout)
    return device_identity(opts, tcti=tcti, create=not no_create, id_format=id_format,
                           install_tools=install_tools)


# -- DPS: enrollments and registration state -------------------------------------------------

def _dps_client(cmd, dps_name, resource_group_name, login, auth_type, rights):
    from azext_edgetpm.dps.client import DpsClient
    from azext_edgetpm.dps.discovery import resolve_target
    target = resolve_target(cmd, dps_name=dps_name, resource_group=resource_group_name, login=login,
                            auth_type=auth_type, rights=rights)
    logger.info("DPS target: %s", target.describe())
    return DpsClient(target, cli_ctx=cmd.cli_ctx)


def enrollment_create(cmd, dps_name=None, resource_group_name=None, login=None, auth_type=None,
                      host=None, ssh_user=None, ssh_port=None, ssh_key=None, ssh_config=None, known_hosts=None,
                      accept_new_host_key=False, ssh_timeout=None, tcti=None, id_format="sha256",
                      endorsement_key=None, registration_id=None, device_id=None, edge_enabled=True,
                      iot_hubs=None, allocation_policy=None, initial_twin_tags=None, initial_twin_properties=None,
                      provisioning_status=None, reprovision_policy=None, force=False):
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE
    from azext_edgetpm.dps.enrollment import EnrollmentSpec, create_enrollment
    client = _dps_client(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_WRITE)
    if host:
        from azext_edgetpm.operations import SshOptions, device_identity
        opts = SshOptions.from_args(host, ssh_user=ssh_user, ssh_port=ssh_port, ssh_key=ssh_key,
                                    ssh_config=ssh_config, known_hosts=known_hosts,
                                    accept_new_host_key=accept_new_host_key, ssh_timeout=ssh_timeout)
        identity = device_identity(opts, tcti=tcti, create=True, id_format=str(id_format))
        key, derived_id = identity["endorsementKey"], identity["registrationId"]
    else:
        from azext_edgetpm.tpm.ek import decode_endorsement_key, parse_endorsement_key
        ek = parse_endorsement_key(decode_endorsement_key(endorsement_key))
        key, derived_id = ek.base64, ek.registration_id(str(id_format))
    spec = EnrollmentSpec(registration_id=registration_id or derived_id, endorsement_key=key,
                          device_id=device_id, edge_enabled=edge_enabled, iot_hubs=iot_hubs,
                          allocation_policy=allocation_policy, initial_twin_tags=initial_twin_tags,
                          initial_twin_properties=initial_twin_properties,
                          provisioning_status=provisioning_status, reprovision_policy=reprovision_policy)
    with client:
        return create_enrollment(client, spec, force=force)


def enrollment_show(cmd, registration_id, dps_name=None, resource_group_name=None, login=None, auth_type=None):
    from azext_edgetpm.dps.discovery import ENROLLMENT_READ
    from azext_edgetpm.dps.enrollment import for_output, normalize_registration_id
    rid = normalize_registration_id(registration_id, "--enrollment-id")
    with _dps_client(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_READ) as client:
        return for_output(client.get_enrollment(rid))


def enrollment_list(cmd, dps_name=None, resource_group_name=None, login=None, auth_type=None, top=None):
    from azext_edgetpm.dps.discovery import ENROLLMENT_READ
    from azext_edgetpm.dps.enrollment import list_enrollments
    with _dps_client(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_READ) as client:
        return list_enrollments(client, top=top)


def enrollment_delete(cmd, registration_id, dps_name=None, resource_group_name=None, login=None, auth_type=None):
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE
    from azext_edgetpm.dps.enrollment import normalize_registration_id
    rid = normalize_registration_id(registration_id, "--enrollment-id")
    with _dps_client(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_WRITE) as client:
        client.delete_enrollment(rid)


def registration_show(cmd, registration_id, dps_name=None, resource_group_name=None, login=None, auth_type=None):
    from azext_edgetpm.dps.discovery import REGISTRATION_READ
    from azext_edgetpm.dps.enrollment import normalize_registration_id
    from azext_edgetpm.dps.registration import show_registration
    rid = normalize_registration_id(registration_id)
    with _dps_client(cmd, dps_name, resource_group_name, login, auth_type, REGISTRATION_READ) as client:
        return show_registration(client, rid)


def registration_wait(cmd, registration_id, dps_name=None, resource_group_name=None, login=None, auth_type=None,
                      timeout=None, interval=None):
    from azext_edgetpm.dps.discovery import REGISTRATION_READ
    from azext_edgetpm.dps.enrollment import normalize_registration_id
    from azext_edgetpm.dps.registration import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, wait_for_assignment
    rid = normalize_registration_id(registration_id)
    progress = cmd.cli_ctx.get_progress_controller()
    progress.begin(message=f"Waiting for DPS to assign {rid}")
    try:
        with _dps_client(cmd, dps_name, resource_group_name, login, auth_type, REGISTRATION_READ) as client:
            return wait_for_assignment(client, rid, timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                                       interval=DEFAULT_INTERVAL if interval is None else interval,
                                       progress=lambda message: progress.add(message=message))
    finally:
        progress.end()


# -- IoT Edge on a device ----------------------------------------------------------------------

def edge_install(cmd, host, id_scope=None, registration_id=None, dps_name=None, resource_group_name=None,
                 login=None, global_endpoint=None, package_source=None, offline_packages=None, edge_version=None,
                 log_driver="local", payload=None, auto_reprovisioning_mode=None, tpm_access="udev", tcti=None,
                 dry_run=False, ssh_user=None, ssh_port=None, ssh_key=None, ssh_config=None, known_hosts=None,
                 accept_new_host_key=False, ssh_timeout=None):
    import os
    from azext_edgetpm.edge.configtoml import DEFAULT_GLOBAL_ENDPOINT
    from azext_edgetpm.edge.plan import InstallSettings
    from azext_edgetpm.operations import SshOptions, edge_install as install
    if dps_name:
        from azext_edgetpm.dps.discovery import resolve_target
        target = resolve_target(cmd, dps_name=dps_name, resource_group=resource_group_name, auth_type="login")
        id_scope = target.id_scope
        if not global_endpoint and target.device_host:
            global_endpoint = "https://" + target.device_host
        logger.info("DPS %s: ID scope %s, device endpoint %s", target.name, id_scope, global_endpoint)
    payload_bytes = None
    if payload:
        import json
        from azure.cli.core.azclierror import InvalidArgumentValueError
        with open(os.path.expanduser(payload), "rb") as handle:
            payload_bytes = handle.read()
        try:
            json.loads(payload_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgumentValueError(f"--payload {payload!r} is not a JSON document: {exc}",
                                            "DPS receives the payload as JSON; fix the file.") from exc
    settings = InstallSettings(
        id_scope=id_scope, global_endpoint=(global_endpoint or DEFAULT_GLOBAL_ENDPOINT).rstrip("/"),
        registration_id=registration_id, package_source=package_source and package_source.strip(),
        offline_packages=offline_packages and os.path.expanduser(offline_packages), edge_version=edge_version,
        log_driver=str(log_driver or "local"), payload=payload_bytes,
        payload_name=payload and os.path.basename(payload),
        auto_reprovisioning_mode=auto_reprovisioning_mode and str(auto_reprovisioning_mode),
        tpm_access=str(tpm_access or "udev"), tcti=tcti, dry_run=bool(dry_run))
    opts = SshOptions.from_args(host, ssh_user=ssh_user, ssh_port=ssh_port, ssh_key=ssh_key, ssh_config=ssh_config,
                                known_hosts=known_hosts, accept_new_host_key=accept_new_host_key,
                                ssh_timeout=ssh_timeout)
    progress = cmd.cli_ctx.get_progress_controller()
    progress.begin(message=f"{'Planning' if dry_run else 'Installing'} IoT Edge on {host}")
    try:
        result = install(opts, settings, progress=lambda message: progress.add(message=message))
    finally:
        progress.end()
    for note in result.get("notes") or []:
        logger.warning(note)
    return result


def edge_status(cmd, host, ssh_user=None, ssh_port=None, ssh_key=None, ssh_config=None, known_hosts=None,
                accept_new_host_key=False, ssh_timeout=None):
    from azext_edgetpm.operations import SshOptions, edge_status as status
    opts = SshOptions.from_args(host, ssh_user=ssh_user, ssh_port=ssh_port, ssh_key=ssh_key, ssh_config=ssh_config,
                                known_hosts=known_hosts, accept_new_host_key=accept_new_host_key,
                                ssh_timeout=ssh_timeout)
    return status(opts)
