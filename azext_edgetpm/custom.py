"""Thin command functions of one device and of DPS (the fleet commands: custom_fleet.py):
arguments -> typed options (through _client_factory, where `cmd`
stops) -> one operation per step -> its result's JSON. Domain errors become az errors in
_error_map (the command groups' exception handler). az imports this module to read the
commands' arguments (even for -h): import here only what that needs; the rest inside functions."""
from knack.log import get_logger

from azext_edgetpm import _client_factory as factory
from azext_edgetpm.echo import shown

logger = get_logger(__name__)


def ek_show(cmd, host=None, ssh_user=None, ssh_port=None, ssh_key=None,  # pylint: disable=unused-argument
            ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None, tcti=None,
            id_format="sha256", no_create=False, install_tools=False, local=False, ek_ca_bundle=None):
    from azext_edgetpm.operations.identify import identify, identify_local
    bundle = factory.ek_ca_bundle(ek_ca_bundle)
    if local:
        return identify_local(tcti=tcti, create=not no_create, id_format=id_format,
                              ek_ca_bundle=bundle).to_output()
    opts = factory.ssh_options(host, ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                               ssh_timeout)
    with opts.session() as session:
        return identify(session, tcti=tcti, create=not no_create, id_format=id_format,
                        install_tools=install_tools, ek_ca_bundle=bundle).to_output()


# -- DPS: enrollments and registration state -------------------------------------------------

def _dps_client(cmd, dps_name, resource_group_name, login, auth_type, rights):
    return factory.dps_client(cmd, factory.dps_target(cmd, dps_name, resource_group_name, login, auth_type, rights))


def enrollment_create(cmd, dps_name=None, resource_group_name=None,  # pylint: disable=too-many-locals
                      login=None, auth_type=None, host=None, ssh_user=None, ssh_port=None, ssh_key=None,
                      ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None, tcti=None,
                      id_format="sha256", endorsement_key=None, registration_id=None, device_id=None,
                      edge_enabled=True, iot_hubs=None, allocation_policy=None, initial_twin_tags=None,
                      initial_twin_properties=None, provisioning_status=None, reprovision_policy=None, force=False,
                      ek_ca_bundle=None):
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE
    from azext_edgetpm.operations.enroll import EnrollOptions, enroll
    from azext_edgetpm.operations.identify import identify, identity_from_key
    bundle = factory.ek_ca_bundle(ek_ca_bundle)
    client = _dps_client(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_WRITE)
    if host:
        opts = factory.ssh_options(host, ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                                   ssh_timeout)
        # With --ek-ca-bundle a device whose EK certificate fails is refused here, before DPS is written.
        with opts.session() as session:
            identity = identify(session, tcti=tcti, create=True, id_format=id_format, ek_ca_bundle=bundle)
    else:
        identity = identity_from_key(endorsement_key, id_format)
    options = EnrollOptions(registration_id=registration_id, device_id=device_id, edge_enabled=edge_enabled,
                            iot_hubs=tuple(iot_hubs) if iot_hubs is not None else None,
                            allocation_policy=allocation_policy, initial_twin_tags=initial_twin_tags,
                            initial_twin_properties=initial_twin_properties, provisioning_status=provisioning_status,
                            reprovision_policy=reprovision_policy, force=force)
    with client:
        return enroll(client, identity, options).to_output()


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
    from azext_edgetpm.operations.wait import wait
    rid = normalize_registration_id(registration_id)
    with factory.progress(cmd, f"Waiting for DPS to assign {rid}") as progress, \
            _dps_client(cmd, dps_name, resource_group_name, login, auth_type, REGISTRATION_READ) as client:
        return wait(client, rid, timeout=timeout, interval=interval, progress=progress).to_output()


# -- IoT Edge on a device ----------------------------------------------------------------------

def _payload(payload):
    """(bytes, name) of the --payload file, checked to be JSON."""
    import json
    import os
    from azure.cli.core.azclierror import InvalidArgumentValueError
    if not payload:
        return None, None
    from azext_edgetpm.files import LIMITS, read_bounded
    data = read_bounded(payload, LIMITS["payload"], "The payload file", "payload",
                        "Give a small JSON file to send to DPS at registration.")
    try:
        json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgumentValueError(f"--payload {shown(payload)} is not a JSON document: {exc}",
                                        "DPS receives the payload as JSON; fix the file.") from exc
    return data, os.path.basename(payload)


def install_settings(id_scope, global_endpoint=None, registration_id=None, package_source=None,
                     offline_packages=None, edge_version=None, log_driver="local", payload=None,
                     auto_reprovisioning_mode=None, tpm_access="udev", tcti=None, dry_run=False, proxy=None,
                     no_proxy=None, proxy_ca=None):
    """edge.plan.InstallSettings from the install arguments (shared by install and provision)."""
    import os
    from azext_edgetpm.edge import proxy as proxy_mod
    from azext_edgetpm.edge.configtoml import DEFAULT_GLOBAL_ENDPOINT
    from azext_edgetpm.edge.plan import InstallSettings
    payload_bytes, payload_name = _payload(payload)
    ca_pem = proxy_mod.check_file_readable(os.path.expanduser(proxy_ca)) if proxy_ca else None
    return InstallSettings(
        id_scope=id_scope, global_endpoint=(global_endpoint or DEFAULT_GLOBAL_ENDPOINT).rstrip("/"),
        registration_id=registration_id, package_source=package_source and package_source.strip(),
        offline_packages=offline_packages and os.path.expanduser(offline_packages), edge_version=edge_version,
        log_driver=str(log_driver or "local"), payload=payload_bytes, payload_name=payload_name,
        auto_reprovisioning_mode=auto_reprovisioning_mode and str(auto_reprovisioning_mode),
        tpm_access=str(tpm_access or "udev"), tcti=tcti, dry_run=bool(dry_run),
        proxy=proxy_mod.parse(proxy, no_proxy, ca_pem))


def edge_install(cmd, host, id_scope=None, registration_id=None,  # pylint: disable=too-many-locals
                 dps_name=None, resource_group_name=None, global_endpoint=None, package_source=None,
                 offline_packages=None, edge_version=None,
                 log_driver="local", payload=None, auto_reprovisioning_mode=None, tpm_access="udev", tcti=None,
                 dry_run=False, ssh_user=None, ssh_port=None, ssh_key=None, ssh_config=None, known_hosts=None,
                 accept_new_host_key=False, ssh_timeout=None, id_format="sha256", proxy=None, no_proxy=None,
                 proxy_ca=None):
    from azext_edgetpm.operations.install import install
    if dps_name:
        target = factory.dps_target(cmd, dps_name, resource_group_name, auth_type="login")
        id_scope, global_endpoint = factory.device_endpoint(target, id_scope, global_endpoint)
        logger.info("DPS %s: ID scope %s, device endpoint %s", target.name, id_scope, global_endpoint)
    settings = install_settings(id_scope, global_endpoint, registration_id, package_source, offline_packages,
                                edge_version, log_driver, payload, auto_reprovisioning_mode, tpm_access, tcti,
                                dry_run, proxy, no_proxy, proxy_ca)
    opts = factory.ssh_options(host, ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                               ssh_timeout)
    with factory.progress(cmd, f"{'Planning' if dry_run else 'Installing'} IoT Edge on {host}") as progress, \
            opts.session() as session:
        result = install(session, settings, id_format=id_format, progress=progress)
    for note in result.report.get("notes") or []:
        logger.warning(note)
    if result.failed:
        # The step report was logged step by step; the error says which step failed and why.
        raise result.failure
    return result.to_output()


def edge_status(cmd, host, ssh_user=None, ssh_port=None,  # pylint: disable=unused-argument
                ssh_key=None, ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None):
    from azext_edgetpm.operations.status import status
    opts = factory.ssh_options(host, ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                               ssh_timeout)
    with opts.session() as session:
        return status(session).to_output()
