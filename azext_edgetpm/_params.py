"""Arguments of every command. Only knack/azure-cli-core helpers are imported here."""
from knack.arguments import CLIArgumentType


def ssh_arguments(c):
    """The SSH options shared by every command that reaches a device."""
    c.argument("host", options_list=["--host"], arg_group="Device",
               help="The device: [user@]host[:port], an IP address (IPv6 in brackets) or a Host alias "
                    "from ~/.ssh/config (HostName, User, Port, IdentityFile and ProxyJump are honoured).")
    c.argument("ssh_user", options_list=["--ssh-user"], arg_group="Device",
               help="User to log in as; overrides user@ in --host and User in ~/.ssh/config.")
    c.argument("ssh_port", options_list=["--ssh-port"], type=int, arg_group="Device",
               help="SSH port; overrides :port in --host and Port in ~/.ssh/config. Default: 22.")
    c.argument("ssh_key", options_list=["--ssh-key"], arg_group="Device",
               help="Private key file. Default: ssh-agent, then IdentityFile from ~/.ssh/config, then ~/.ssh/id_*.")
    c.argument("ssh_config", options_list=["--ssh-config"], arg_group="Device",
               help="OpenSSH client configuration file to read. Default: ~/.ssh/config.")
    c.argument("known_hosts", options_list=["--known-hosts"], arg_group="Device",
               help="known_hosts file that device host keys are checked against (and recorded in with "
                    "--accept-new-host-key). Default: ~/.ssh/known_hosts.")
    c.argument("accept_new_host_key", options_list=["--accept-new-host-key"], arg_group="Device",
               action="store_true",
               help="Trust a device whose host key is not known yet, and record its key (trust on first use). "
                    "A key that differs from the recorded one is always refused.")
    c.argument("ssh_timeout", options_list=["--ssh-timeout"], type=float, arg_group="Device",
               help="Seconds to wait for the SSH connection. Default: 15.")
    c.argument("tcti", options_list=["--tcti"], arg_group="TPM",
               help="TPM Command Transmission Interface for tpm2-tools on the device, e.g. "
                    "'device:/dev/tpmrm0', 'tabrmd' or 'swtpm:host=127.0.0.1,port=2321'. "
                    "Default: the device's own default (tabrmd, then /dev/tpmrm0, /dev/tpm0).")


def load_arguments(self, _):
    from azure.cli.core.commands.parameters import get_enum_type

    id_format_type = CLIArgumentType(
        options_list=["--id-format"], arg_type=get_enum_type(["sha256", "legacy"]),
        help="How the registration ID is derived from the EK: sha256 (lower-case hex SHA-256 of the "
             "marshalled EK, as in the IoT Edge documentation) or legacy (base32 of the same digest, as the "
             "C SDK's tpm_device_provision tool made it).")

    with self.argument_context("edge-tpm ek show") as c:
        ssh_arguments(c)
        c.argument("id_format", id_format_type)
        c.argument("no_create", options_list=["--no-create"], action="store_true", arg_group="TPM",
                   help="Only read: fail if the TPM has no EK instead of creating the EK and SRK.")
        c.argument("install_tools", options_list=["--install-tools"], action="store_true", arg_group="TPM",
                   help="Install tpm2-tools on the device with apt-get when it is missing.")
        c.argument("local", options_list=["--local"], action="store_true",
                   help="Read this machine's own TPM through tpm2-pytss instead of a device over SSH.")
