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
