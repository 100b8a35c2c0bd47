"""Inventory rows + the run's defaults -> typed per-device jobs of the provision pipeline."""
import dataclasses
from dataclasses import dataclass
from typing import Optional

from azext_edgetpm.operations.device import SshOptions, non_interactive_sudo
from azext_edgetpm.operations.provision import DeviceJob


@dataclass(frozen=True)
class FleetDefaults:
    """What applies to every device unless its row says otherwise."""
    enroll: object                     # operations.enroll.EnrollOptions
    install: object                    # edge.plan.InstallSettings
    ssh_user: Optional[str] = None
    ssh_port: Optional[int] = None
    ssh_key: Optional[str] = None
    ssh_config: Optional[str] = None
    known_hosts: Optional[str] = None
    accept_new_host_key: bool = False
    ssh_timeout: Optional[float] = None
    id_format: str = "sha256"
    tcti: Optional[str] = None
    wait_timeout: float = 300.0


def job_for(device, defaults: FleetDefaults) -> DeviceJob:
    """The DeviceJob of one inventory row (fleet/inventory.InventoryDevice). Parallel work never
    prompts: the sudo password comes from the row's sudo_password_env (or AZ_EDGETPM_SUDO_PASSWORD)."""
    ssh = ssh_for(device, defaults.ssh_config, defaults.known_hosts, defaults.accept_new_host_key,
                  defaults.ssh_timeout, defaults.ssh_user, defaults.ssh_key)
    enroll = dataclasses.replace(
        defaults.enroll, registration_id=device.registration_id or None, device_id=device.device_id or None,
        iot_hubs=tuple(device.iot_hubs) if device.iot_hubs else defaults.enroll.iot_hubs,
        initial_twin_tags=device.tags if device.tags is not None else defaults.enroll.initial_twin_tags)
    tcti = device.tcti or defaults.tcti
    install = dataclasses.replace(defaults.install, tcti=tcti,
                                  edge_version=device.edge_version or defaults.install.edge_version,
                                  proxy=device.proxy)
    return DeviceJob(key=device.key, host=device.ssh_host, ssh=ssh, enroll=enroll, install=install,
                     id_format=defaults.id_format, tcti=tcti, wait_timeout=defaults.wait_timeout,
                     source=device.source)


def ssh_for(device, ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None, ssh_user=None,
            ssh_key=None) -> SshOptions:
    """How to reach one inventory row. Parallel work never prompts: the sudo password comes from the
    row's sudo_password_env (or AZ_EDGETPM_SUDO_PASSWORD)."""
    return SshOptions(host=device.ssh_host, ssh_user=device.user or ssh_user, ssh_key=device.ssh_key or ssh_key,
                      ssh_config=ssh_config, known_hosts=known_hosts, accept_new_host_key=bool(accept_new_host_key),
                      ssh_timeout=ssh_timeout, sudo_password=non_interactive_sudo(env_name=device.sudo_password_env))


def lifecycle_job_for(device, ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None,
                      id_format: str = "sha256", tcti: Optional[str] = None):
    """The job of one inventory row for deprovision, reprovision and rekey."""
    from azext_edgetpm.operations.lifecycle import LifecycleJob
    return LifecycleJob(key=device.key, host=device.ssh_host,
                        ssh=ssh_for(device, ssh_config, known_hosts, accept_new_host_key, ssh_timeout),
                        registration_id=device.registration_id or None, id_format=id_format,
                        tcti=device.tcti or tcti, source=device.source)
