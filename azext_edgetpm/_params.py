"""Arguments of every command. Only knack/azure-cli-core helpers are imported here: az loads this
module for every run of a command (and its -h), before anything is validated.

A validator on an argument is named, never imported: ``validator=validator("validate_x")`` with
``validate_x`` in _validators.py; it is imported when the command runs, and runs before the
command's own validator (see _lazy.py; test_load.py guards what loads)::

    c.argument("size", options_list=["--size"], type=int, validator=validator("validate_size"),
               help="...")
"""
from knack.arguments import CLIArgumentType

# (imported for the validators to come: name them with it, as the docstring shows)
from azext_edgetpm._lazy import validator  # noqa: F401  pylint: disable=unused-import


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
               help="File of known SSH host keys (OpenSSH known_hosts format) that device host keys are checked "
                    "against (and recorded in with --accept-new-host-key). Default: ~/.ssh/known_hosts.")
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


def proxy_arguments(c):
    """An HTTP proxy between the device and the internet."""
    c.argument("proxy", options_list=["--proxy"], arg_group="Network",
               help="HTTP proxy through which the device reaches the package source, DPS, IoT Hub and container "
                    "registries: http://[user:password@]host:port, or @file holding it (keeps the password off "
                    "command lines), or 'none'. Written for apt (credentials in /etc/apt/auth.conf.d, root only), "
                    "the container engine, aziot-edged and aziot-identityd (systemd drop-ins) and edgeAgent "
                    "([agent.env] https_proxy, UpstreamProtocol AmqpWs). Without it (or with 'none') proxy settings "
                    "an earlier --proxy wrote are removed. The device must reach the proxy, and through it the "
                    "package source and DPS, before anything changes. With --inventory: the default of the "
                    "columns proxy, no_proxy and proxy_ca, which each row may set (proxy 'none': direct).")
    c.argument("no_proxy", options_list=["--no-proxy"], arg_group="Network",
               help="Comma-separated hosts, domains or networks the container engine and apt reach directly "
                    "(NO_PROXY), besides localhost and 127.0.0.1; dnf reaches the repositories whose hosts "
                    "are all listed directly (an empty proxy= in their .repo file). Only with --proxy.")
    c.argument("proxy_ca", options_list=["--proxy-ca"], arg_group="Network",
               help="PEM file of the root CA of a proxy that inspects TLS: installed into the device's trust store "
                    "(/usr/local/share/ca-certificates) and as IoT Edge's trust_bundle_cert for the modules. "
                    "Only with --proxy.")


# `az configure --defaults edge-tpm-dps=NAME`: the DPS every command uses when --dps-name is not given.
DPS_NAME_DEFAULT = "edge-tpm-dps"
# The azure-iot extension's configured default of --auth-type for DPS data-plane commands
# (`az configure --defaults iotdps-data-auth-type=login`), honoured here too.
AUTH_TYPE_DEFAULT = "iotdps-data-auth-type"


def dps_arguments(c, authentication=True):
    """How a command finds the Device Provisioning Service (and, with `authentication`, how it
    authenticates to its service API: commands that only read the resource through ARM have no
    --login or --auth-type)."""
    from azure.cli.core.commands.parameters import get_enum_type, resource_group_name_type
    c.argument("dps_name", options_list=["--dps-name", "-n"], arg_group="DPS", configured_default=DPS_NAME_DEFAULT,
               help="Name of the Device Provisioning Service, found through Azure Resource Manager with the "
                    "identity of `az login` (its ID scope and host names come from the resource). You can "
                    f"configure the default using `az configure --defaults {DPS_NAME_DEFAULT}=<name>`.")
    c.argument("resource_group_name", arg_type=resource_group_name_type, arg_group="DPS",
               help="Resource group of the DPS; without it the DPS of that name is searched for in the subscription. "
                    "You can configure the default group using `az configure --defaults group=<name>`.")
    if not authentication:
        return
    c.argument("login", options_list=["--login", "-l"], arg_group="DPS",
               help="Connection string of a DPS shared access policy (HostName=...;SharedAccessKeyName=...;"
                    "SharedAccessKey=...), used instead of --dps-name without any ARM call. Give it as @file to "
                    "keep the key off the command line and shell history. With --auth-type login, the DPS host "
                    "name alone is enough.")
    c.argument("auth_type", options_list=["--auth-type"], arg_type=get_enum_type(["key", "login"]),
               arg_group="DPS", configured_default=AUTH_TYPE_DEFAULT,
               help="How to authenticate to the DPS service API: key (a shared access policy with the right "
                    "needed, read through ARM or taken from --login) or login (an Entra ID token of the az login "
                    "identity, for a DPS with local authentication disabled; needs the 'Device Provisioning "
                    "Service Data Contributor' role). Default: key; as with the azure-iot extension, you can "
                    f"configure the default using `az configure --defaults {AUTH_TYPE_DEFAULT}=<type>`.")


def enrollment_arguments(c):
    """What a new or updated enrollment should hold (enrollment create, provision)."""
    from azure.cli.core.commands.parameters import get_enum_type, get_three_state_flag
    c.argument("device_id", options_list=["--device-id"],
               help="IoT Hub device ID the device gets. Default: the registration ID.")
    c.argument("edge_enabled", options_list=["--edge-enabled", "--ee"], arg_type=get_three_state_flag(), default=True,
               help="Whether the device is an IoT Edge device.")
    c.argument("iot_hubs", options_list=["--iot-hubs", "--ih"], nargs="+",
               help="Host names of the IoT hubs the device may be assigned to (space- or comma-separated). "
                    "Default: all hubs linked to the DPS.")
    c.argument("allocation_policy", options_list=["--allocation-policy", "--ap"],
               arg_type=get_enum_type(["hashed", "geoLatency", "static"]),
               help="How DPS picks the hub: hashed (evenly), geoLatency (nearest) or static (the one hub of "
                    "--iot-hubs). Default: the DPS's own policy.")
    c.argument("initial_twin_tags", options_list=["--initial-twin-tags", "--tags"],
               help="Initial device twin tags: a JSON object, or @file with one.")
    c.argument("initial_twin_properties", options_list=["--initial-twin-properties", "--props"],
               help="Initial desired properties of the device twin: a JSON object, or @file with one.")
    c.argument("reprovision_policy", options_list=["--reprovision-policy", "--rp"],
               arg_type=get_enum_type(["reprovisionandmigratedata", "reprovisionandresetdata", "never"]),
               help="What happens when the device registers again: reprovisionandmigratedata (DPS default), "
                    "reprovisionandresetdata or never.")
    c.argument("force", options_list=["--force"], action="store_true",
               help="Replace the endorsement key of an existing enrollment that holds another key (an update "
                    "guarded by the etag just read; it fails if the enrollment changes meanwhile).")


def install_arguments(c):
    """How IoT Edge is installed and configured on a device (install, provision)."""
    from azure.cli.core.commands.parameters import get_enum_type
    proxy_arguments(c)
    c.argument("tcti", options_list=["--tcti"], arg_group="TPM",
               help="TCTI of the device's TPM, written to [tpm] tcti of config.toml for aziot-tpmd and used by "
                    "tpm2-tools to read the EK: 'device' (/dev/tpmrm0), 'tabrmd', or "
                    "'swtpm:host=127.0.0.1,port=2321' for a TPM simulator. Default: device (an existing "
                    "config.toml's value is kept).")
    c.argument("id_scope", options_list=["--id-scope"], arg_group="DPS",
               help="ID scope of the DPS (its overview page shows it). Not needed with --dps-name.")
    c.argument("global_endpoint", options_list=["--global-endpoint"], arg_group="DPS",
               help="DPS device endpoint written to config.toml. Default: the --dps-name resource's device "
                    "endpoint, else `https://global.azure-devices-provisioning.net`.")
    c.argument("package_source", options_list=["--package-source"], arg_group="Packages",
               help="Where apt (dnf on Red Hat Enterprise Linux) gets IoT Edge from, for networks that cannot "
                    "reach packages.microsoft.com: the base URL of a mirror of packages.microsoft.com (its "
                    "`config/<distro>/<version>/packages-microsoft-prod.deb` or `.rpm` is installed), the URL of "
                    "such a .deb or .rpm, or (apt only) a sources.list line ('deb [signed-by=...] URL SUITE "
                    "COMPONENT'), written to /etc/apt/sources.list.d/edge-tpm.list, or (dnf only) a dnf repository "
                    "'URL [gpgkey=KEY-URL]', written to /etc/yum.repos.d/edge-tpm.repo with gpgcheck=1 and the key "
                    "its packages are signed with (default: https://packages.microsoft.com/keys/microsoft.asc; "
                    "file:///path for a key on the device). Default: Microsoft's "
                    "packages-microsoft-prod for the device's distribution and version.")
    c.argument("offline_packages", options_list=["--offline-packages"], arg_group="Packages",
               help="Directory on this machine holding .deb files (moby-engine, aziot-identity-service, "
                    "aziot-edge, optionally tpm2-tools and its libraries), or .rpm files for Red Hat Enterprise "
                    "Linux (moby-engine, moby-cli, aziot-identity-service, aziot-edge): those not installed at "
                    "their version are uploaded over SFTP and installed with apt-get (the container engine and "
                    "tpm2-tools first, then aziot-identity-service and aziot-edge, whose installer needs the "
                    "engine) or in one dnf transaction from those files alone. No package source is configured.")
    c.argument("edge_version", options_list=["--edge-version"], arg_group="Packages",
               help="Install this IoT Edge version (e.g. 1.5.10 or 1.5.10-1), with the one "
                    "aziot-identity-service version that aziot-edge version depends on (its own number: "
                    "aziot-edge 1.5.10-1 needs aziot-identity-service 1.5.3-1); downgrades too. Default: the "
                    "latest, and an installed version is left as it is.")
    c.argument("log_driver", options_list=["--log-driver"], arg_group="Packages",
               help="Docker log driver set in /etc/docker/daemon.json (other keys are kept; the engine restarts "
                    "only when the file changes), or 'keep' to leave the file alone. local (rotated logs) is "
                    "what IoT Edge recommends.")
    c.argument("payload", options_list=["--payload"], arg_group="DPS",
               help="JSON file sent to DPS at registration (e.g. for custom allocation by IoT Plug and Play "
                    "model ID); uploaded to /var/secrets/aziot/identityd/dps-additional-data.json (root-owned, "
                    "readable by the identity service only) and referenced as a file:// URI in config.toml. "
                    "Without it, a payload the file already names is kept.")
    c.argument("auto_reprovisioning_mode", options_list=["--auto-reprovisioning-mode", "--reprovisioning-mode"],
               arg_group="DPS",
               arg_type=get_enum_type(["Dynamic", "AlwaysOnStartup", "OnErrorOnly"]),
               help="When the device provisions again with DPS; written as a top-level key of config.toml. "
                    "Default: the file's current value (the runtime's default is Dynamic).")
    c.argument("tpm_access", options_list=["--tpm-access"], arg_group="TPM",
               arg_type=get_enum_type(["udev", "tss-group", "root"]),
               help="How the aziottpm service user gets access to /dev/tpm0 and /dev/tpmrm0: udev (a udev rule "
                    "making it the owner, as the IoT Edge documentation shows), tss-group (membership of the tss "
                    "group, which tpm2-tss's rule gives the devices), or root (aziot-tpmd runs as root through a "
                    "systemd override; least preferred). Skipped when the device has no /dev/tpm* (a TPM over "
                    "TCP).")


def fleet_arguments(c):
    """One device (--host) or an inventory, and how a fleet run goes (provision and the lifecycle commands)."""
    from azure.cli.core.commands.parameters import get_enum_type
    c.argument("inventory", options_list=["--inventory", "-i"], arg_group="Fleet",
               help="A fleet: a CSV file (header row; columns host, port, user, ssh_key, registration_id, "
                    "device_id, tags (JSON), iot_hubs, tcti, edge_version, sudo_password_env), a YAML or JSON "
                    "file (a list of such devices, or {defaults: {...}, devices: [...]}), or an Ansible "
                    "inventory (.ini or Ansible YAML, read with ansible-inventory's static parsers: ansible_host, "
                    "ansible_user, ansible_port, ansible_ssh_private_key_file). The whole file (at most 16 MiB) is "
                    "checked before anything starts. The SSH, TPM and package options act as defaults for every "
                    "row.")
    c.argument("inventory_format", options_list=["--inventory-format"], arg_group="Fleet",
               arg_type=get_enum_type(["csv", "yaml", "json", "ansible", "ansible-script"]),
               help="Format of --inventory. Default: from the file name (.csv, .json, .yml/.yaml, .ini; a YAML "
                    "file with Ansible's groups is an Ansible inventory); any other name needs this option. "
                    "ansible: an Ansible INI or YAML inventory of any name, read, never run. ansible-script: "
                    "an executable dynamic inventory, RUN on this machine through ansible-inventory (with your "
                    "environment and credentials): the only way an inventory is ever executed.")
    c.argument("limit", options_list=["--limit"], arg_group="Fleet",
               help="Ansible inventories: only the hosts of these groups or hosts (comma-separated), as "
                    "ansible's --limit.")
    c.argument("max_parallel", options_list=["--max-parallel"], type=int, arg_group="Fleet",
               help="Devices worked on at the same time (one SSH connection each). Default: 10.")
    c.argument("state", options_list=["--state"], arg_group="Fleet",
               help="Journal file recording every device's steps as they end (JSON lines, appended; locked while "
                    "a run uses it). A re-run with the same file skips finished devices and finished steps (no "
                    "DPS write, no device change made twice) and continues the rest. The file only says what was "
                    "done: what a step acts on (registration ID, hub) is read again from the inventory, the device "
                    "or DPS. A file written by another command, inventory or DPS is refused (see "
                    "--state-from-other-run).")
    c.argument("state_from_other_run", options_list=["--state-from-other-run"], action="store_true",
               arg_group="Fleet",
               help="With --state: use the file even though another command, inventory (a changed file counts) "
                    "or DPS wrote it. Every device's record is still checked against the device and DPS before "
                    "anything is changed.")
    c.argument("retry_failed", options_list=["--retry-failed"], action="store_true", arg_group="Fleet",
               help="With --state: run only the devices that failed (or were interrupted) in the earlier run.")
    c.argument("only", options_list=["--only"], nargs="+", arg_group="Fleet",
               help="Only these devices of the inventory (host or host:port; space- or comma-separated).")
    c.argument("shard", options_list=["--shard"], arg_group="Fleet",
               help="Shard i/n: only the devices of shard i of n (a stable hash of the registration ID or host:port, "
                    "independent of the row order), e.g. --shard $(System.JobPositionInPhase)/"
                    "$(System.TotalJobsInPhase) in parallel pipeline jobs.")
    c.argument("max_fail_percentage", options_list=["--max-fail-percentage"], type=float, arg_group="Fleet",
               help="Failure budget: failures up to this percentage of the devices started are accepted (exit 0 "
                    "with a warning; in Azure Pipelines the task ends SucceededWithIssues). Once more than this "
                    "percentage of the devices started in this run have failed, no further device starts; the "
                    "running ones finish and the command exits with the \"some devices failed\" code (4). The "
                    "devices not started start on a re-run with the same --state. Default: no budget (every "
                    "device is tried, any failure exits 4).")
    c.argument("canary", options_list=["--canary"], type=int, arg_group="Fleet",
               help="Start only this many devices first; the others start once all of them have ended, and only "
                    "if none failed.")
    c.argument("ci_format", options_list=["--ci-format"], arg_group="Output",
               arg_type=get_enum_type(["azure-pipelines", "none"]),
               help="Write a CI system's logging commands on stderr (stdout stays the results): an issue per "
                    "failed device, the progress and a Markdown summary of the run. Default: azure-pipelines "
                    "when TF_BUILD is set (as Azure Pipelines sets it in every step), else none.")
    c.argument("junit_xml", options_list=["--junit-xml"], arg_group="Output",
               help="Write the run as a JUnit XML file: one test case per device (classname: the command), "
                    "failures with the step and the reason, durations; for PublishTestResults@2.")
    c.argument("show", options_list=["--show"], arg_group="Output", arg_type=get_enum_type(["all", "failed"]),
               help="Which devices the results list: all (default) or failed (failed, interrupted and not started "
                    "ones; the counts, the exit code and the --junit-xml/--report files still cover every device).")
    c.argument("report_file", options_list=["--report"], arg_group="Output",
               help="Write a self-contained HTML report of the run: counts, a sortable table of the devices, "
                    "each failure's step and message, a timeline of devices per state.")


def dps_budget_arguments(c, when):
    """The run's share of DPS's per-instance limits (provision and the lifecycle commands)."""
    c.argument("dps_ops_per_minute", options_list=["--dps-ops-per-minute"], type=float, arg_group="Fleet",
               help="DPS service operations per minute this run may use (all devices together; retries "
                    "included). Default: 1000, DPS's per-instance limit, divided by n with --shard i/n; lower it "
                    "when other jobs share the DPS.")
    if when:
        c.argument("dps_registrations_per_minute", options_list=["--dps-registrations-per-minute", "--dps-reg-rate"],
                   type=float, arg_group="Fleet",
                   help=f"Device registrations per minute this run may start (the devices register with DPS {when}). "
                        "Default: 1000, DPS's per-instance limit, divided by n with --shard i/n.")


def load_arguments(self, _):  # pylint: disable=too-many-statements
    from azure.cli.core.commands.parameters import get_enum_type

    id_format_type = CLIArgumentType(
        options_list=["--id-format"], arg_type=get_enum_type(["sha256", "legacy"]),
        help="How the registration ID is derived from the EK: sha256 (lower-case hex SHA-256 of the "
             "marshalled EK, as in the IoT Edge documentation) or legacy (base32 of the same digest, as the "
             "C SDK's tpm_device_provision tool made it).")

    ek_ca_bundle_type = CLIArgumentType(
        options_list=["--ek-ca-bundle"], arg_group="TPM",
        help="CA certificates of the TPM makers (a PEM or DER file, or a directory of .pem/.crt/.cer/.der files): "
             "the device's EK certificate (NV index 0x01C00002) must be issued by one of them, be within its "
             "validity period and carry the EK itself; otherwise the device is refused, with the reason, before "
             "anything is enrolled.")

    with self.argument_context("edge-tpm ek show") as c:
        ssh_arguments(c)
        c.argument("ek_ca_bundle", ek_ca_bundle_type)
        c.argument("id_format", id_format_type)
        c.argument("no_create", options_list=["--no-create"], action="store_true", arg_group="TPM",
                   help="Only read: fail if the TPM has no EK instead of creating the EK and SRK.")
        c.argument("install_tools", options_list=["--install-tools"], action="store_true", arg_group="TPM",
                   help="Install tpm2-tools on the device with apt-get (dnf on Red Hat Enterprise Linux) when it "
                        "is missing.")
        c.argument("local", options_list=["--local"], action="store_true",
                   help="Read this machine's own TPM through tpm2-pytss instead of a device over SSH.")

    with self.argument_context("edge-tpm enrollment") as c:
        dps_arguments(c)
        c.argument("registration_id", options_list=["--enrollment-id", "--eid", "--registration-id"],
                   help="ID of the individual enrollment, which for TPM attestation is the device's registration "
                        "ID (case-insensitive; shown in lower case).")

    with self.argument_context("edge-tpm enrollment create") as c:
        ssh_arguments(c)
        enrollment_arguments(c)
        c.argument("id_format", id_format_type)
        c.argument("ek_ca_bundle", ek_ca_bundle_type)
        c.argument("registration_id", options_list=["--enrollment-id", "--eid", "--registration-id"],
                   help="ID of the enrollment (= the device's registration ID). Default: derived from the EK as "
                        "--id-format says (what `az edge-tpm ek show` shows).")
        c.extra("attestation_type", options_list=["--attestation-type", "--at"], arg_group="TPM",
                help="Accepted for scripts written for `az iot dps enrollment create`: tpm, the only attestation "
                     "this command enrolls (any other value is refused).")
        c.argument("endorsement_key", options_list=["--endorsement-key", "--ek"], arg_group="TPM",
                   help="The device's EK as DPS takes it: base64 of the marshalled TPM2B_PUBLIC (`tpm2_readpublic "
                        "-c 0x81010001 -o ek.pub; base64 -w0 ek.pub`). Instead of --host.")
        c.argument("provisioning_status", options_list=["--provisioning-status", "--ps"],
                   arg_type=get_enum_type(["enabled", "disabled"]),
                   help="Whether the device may register. Default: enabled for a new enrollment, unchanged for an "
                        "existing one.")

    with self.argument_context("edge-tpm enrollment list") as c:
        c.argument("top", options_list=["--top"], type=int,
                   help="Return at most this many enrollments (at least 1; -1 for all). Default: all (every page).")

    with self.argument_context("edge-tpm registration") as c:
        dps_arguments(c)
        c.argument("registration_id", options_list=["--registration-id"],
                   help="Registration ID of the device (what `az edge-tpm ek show` shows).")

    with self.argument_context("edge-tpm registration wait") as c:
        c.argument("timeout", options_list=["--timeout"], type=float,
                   help="Seconds to wait for the device to be assigned. Default: 300.")
        c.argument("interval", options_list=["--interval"], type=float,
                   help="Seconds between two reads of the registration state (at least 1; DPS throttling is "
                        "honoured on top). Default: 5.")

    with self.argument_context("edge-tpm install") as c:
        ssh_arguments(c)
        dps_arguments(c, authentication=False)  # the DPS resource is read through ARM only
        install_arguments(c)
        c.extra("login", options_list=["--login", "-l"], arg_group="DPS",
                help="Not taken by install, which needs no DPS key (a connection string carries no ID scope): "
                     "it is refused, without repeating its value. Use --id-scope, or --dps-name to look the ID "
                     "scope and device endpoint up.")
        c.argument("id_format", id_format_type)
        c.argument("registration_id", options_list=["--registration-id"], arg_group="DPS",
                   help="Registration ID to provision with; it must equal the enrollment's. Default: derived from "
                        "the TPM's endorsement key, as `az edge-tpm ek show` shows it.")
        c.argument("dry_run", options_list=["--dry-run"], action="store_true",
                   help="Show which steps would change what, without changing anything on the device.")

    with self.argument_context("edge-tpm status") as c:
        ssh_arguments(c)

    with self.argument_context("edge-tpm provision") as c:
        ssh_arguments(c)
        dps_arguments(c)
        enrollment_arguments(c)
        install_arguments(c)
        c.argument("id_format", id_format_type)
        c.argument("ek_ca_bundle", ek_ca_bundle_type)
        c.argument("host", options_list=["--host"], arg_group="Device",
                   help="One device: [user@]host[:port] or a Host alias from ~/.ssh/config. Instead of --inventory.")
        c.argument("registration_id", options_list=["--registration-id"], arg_group="DPS",
                   help="With --host: the registration ID (= enrollment ID). Default: derived from the EK as "
                        "--id-format says. In an inventory: the registration_id column.")
        c.argument("device_id", options_list=["--device-id"],
                   help="With --host: the IoT Hub device ID. Default: the registration ID. In an inventory: the "
                        "device_id column.")
        c.argument("wait_timeout", options_list=["--wait-timeout"], type=float,
                   help="Seconds to wait per device for DPS to assign it. Default: 300.")
        c.argument("dry_run", options_list=["--dry-run"], action="store_true",
                   help="Plan only: per device, whether its EK exists, whether its enrollment would be created, "
                        "updated (which fields) or left alone, and which install steps would change the device. "
                        "Nothing is written in DPS or on the devices, and no state file is read or written.")
        fleet_arguments(c)
        dps_budget_arguments(c, "at the end of their install")

    load_lifecycle_arguments(self)
    load_upgrade_arguments(self)


def load_upgrade_arguments(self):
    """upgrade: installed devices to a newer runtime line (no DPS involved)."""
    with self.argument_context("edge-tpm upgrade") as c:
        ssh_arguments(c)
        fleet_arguments(c)
        c.argument("host", options_list=["--host"], arg_group="Device",
                   help="One device: [user@]host[:port] or a Host alias from ~/.ssh/config. Instead of --inventory.")
        c.argument("edge_version", options_list=["--edge-version"], arg_group="Packages",
                   help="The aziot-edge version to move to, e.g. 1.6.0 (aziot-identity-service follows: the exact "
                        "version that aziot-edge depends on). Default: the newest version of the newest IoT Edge LTS "
                        "line in support for the device's system that its package source offers.")
        c.argument("allow_downgrade", options_list=["--allow-downgrade"], action="store_true", arg_group="Packages",
                   help="Allow an --edge-version older than the installed one (refused otherwise).")
        c.argument("no_rollback", options_list=["--no-rollback"], action="store_true",
                   help="Leave a device whose runtime is not healthy and assigned after the upgrade as it is (by "
                        "default it is put back on the exact package versions it had and its previous config.toml).")
        c.argument("canary", options_list=["--canary"], type=int, arg_group="Fleet",
                   help="Upgrade this many devices first (the first ones of the inventory not finished yet); the "
                        "others start once all of them have ended, and only if none failed (a re-run with the same "
                        "--state starts them).")
        c.argument("settle_timeout", options_list=["--settle-timeout"], type=float,
                   help="Seconds to wait after the apply for the runtime to start. Default: 90.")
        c.argument("dry_run", options_list=["--dry-run"], action="store_true",
                   help="Show per device the installed and the target versions and what would change, changing "
                        "nothing.")


def load_lifecycle_arguments(self):
    """deprovision, reprovision and rekey."""
    from azure.cli.core.commands.parameters import get_enum_type
    for command in ("deprovision", "reprovision", "rekey"):
        with self.argument_context(f"edge-tpm {command}") as c:
            ssh_arguments(c)
            dps_arguments(c)
            fleet_arguments(c)
            dps_budget_arguments(c, "when they register again" if command != "deprovision" else None)
            c.argument("host", options_list=["--host"], arg_group="Device",
                       help="One device: [user@]host[:port] or a Host alias from ~/.ssh/config. Instead of "
                            "--inventory.")
            c.argument("id_format", options_list=["--id-format"], arg_type=get_enum_type(["sha256", "legacy"]),
                       help="How a registration ID is derived from the EK when the device's config.toml names "
                            "none: sha256 or legacy.")
            c.argument("registration_id", options_list=["--registration-id", "--enrollment-id"],
                       help="With --host: the device's registration ID (= its enrollment's ID). Default: the one in "
                            "the device's /etc/aziot/config.toml" + (
                                ", else derived from its EK." if command != "rekey" else
                                " (the TPM's new EK names another ID).") + " In an inventory: the registration_id "
                            "column.")
            c.argument("dry_run", options_list=["--dry-run"], action="store_true",
                       help="Show what would change in DPS and on the device, changing nothing.")
            c.argument("yes", options_list=["--yes", "-y"], action="store_true",
                       help="Do not ask for confirmation.")
    with self.argument_context("edge-tpm deprovision") as c:
        c.argument("mode", options_list=["--mode"], arg_type=get_enum_type(["disable", "delete"]),
                   help="What happens to the enrollment: disable (provisioningStatus disabled: the device can no "
                        "longer register, the enrollment stays for later) or delete.")
        c.argument("uninstall", options_list=["--uninstall"], action="store_true", arg_group="Device",
                   help="Also purge the IoT Edge packages (aziot-edge, aziot-identity-service) from the device. "
                        "The container engine, the package source and the TPM's keys stay.")
        c.argument("keep_device", options_list=["--keep-device"], action="store_true", arg_group="Device",
                   help="Change only DPS; leave the device as it is.")
        c.argument("delete_hub_device", options_list=["--delete-hub-device"], action="store_true",
                   help="After the DPS side, also delete the device's identity in the IoT hub DPS assigned it to "
                        "(through the IoT Hub service API, with your az login identity; it needs IoT Hub Registry "
                        "Contributor or Data Contributor there). When the hub cannot be reached or refuses, the "
                        "identity stays and the result says so, with the command that removes it.")
        c.argument("require_device", options_list=["--require-device"], action="store_true", arg_group="Device",
                   help="Change nothing in DPS unless the device can be reached (default: the cloud side is done "
                        "even when the device is not reachable, and the result says what is left).")
    for command in ("reprovision", "rekey"):
        with self.argument_context(f"edge-tpm {command}") as c:
            c.argument("timeout", options_list=["--timeout"], type=float,
                       help="Seconds to wait for the device's new assignment. Default: 300.")
    with self.argument_context("edge-tpm reprovision") as c:
        c.argument("iot_hubs", options_list=["--iot-hubs"], nargs="+", arg_group="Enrollment change",
                   help="Set the enrollment's IoT hubs (host names, space- or comma-separated) before the device "
                        "registers again.")
        c.argument("allocation_policy", options_list=["--allocation-policy"], arg_group="Enrollment change",
                   arg_type=get_enum_type(["hashed", "geoLatency", "static"]),
                   help="Set the enrollment's allocation policy (static needs exactly one hub).")
        c.argument("initial_twin_tags", options_list=["--initial-twin-tags"], arg_group="Enrollment change",
                   help="Set the enrollment's initial twin tags: a JSON object, or @file with one.")

    with self.argument_context("edge-tpm report merge") as c:
        c.argument("inputs", options_list=["--input"], nargs="+", required=True,
                   help="The HTML reports to merge: the --report files of runs of one fleet command, e.g. each "
                        "pipeline shard's (space-separated; a shell glob such as shard-*/report.html works). A "
                        "device in several of them keeps its row of the latest run.")
        c.argument("report_file", options_list=["--report"], required=True,
                   help="The merged HTML report to write (written whole or not at all): every device once, the "
                        "counts summed, one timeline on the clock of the earliest run.")
        c.argument("summary_file", options_list=["--summary"],
                   help="Also write a Markdown recap of the merged runs (counts, durations, failed devices with "
                        "step and reason), as fleet commands write for a pipeline's summary page "
                        "(##vso[task.uploadsummary]).")
