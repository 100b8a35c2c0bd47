"""Help texts (YAML, as az expects) with examples for every command and group."""
from knack.help_files import helps

helps["edge-tpm"] = """
type: group
short-summary: Provision Linux devices with a TPM 2.0 as Azure IoT Edge devices through the IoT Hub Device Provisioning Service (DPS).
long-summary: >
    Reads each device's TPM endorsement key over SSH, creates TPM-attested, edge-enabled DPS
    enrollments, installs and configures IoT Edge, and waits until DPS has assigned the device.
"""

helps["edge-tpm ek"] = """
type: group
short-summary: Read a device's TPM endorsement key (EK) and the registration ID derived from it.
"""

helps["edge-tpm ek show"] = """
type: command
short-summary: Show a device's registration ID and TPM endorsement key, creating the EK and SRK if the TPM has none.
long-summary: >
    Connects to the device over SSH (host keys are checked against known_hosts; unknown keys are
    refused unless --accept-new-host-key), runs tpm2-tools as root (through sudo for other users)
    and reads the EK at handle 0x81010001. When the TPM has no EK yet, the EK and the storage root
    key (SRK, 0x81000001) are created and persisted, as the IoT Edge documentation's script does,
    unless --no-create is given. Nothing is left behind on the device.

    The registration ID is the lower-case hex SHA-256 of the marshalled EK (--id-format sha256),
    or the older C SDK tool's base32 form (--id-format legacy).

    The EK certificate the TPM's maker stored (NV index 0x01C00002) is reported; with
    --ek-ca-bundle its chain is verified against the maker's CA certificates, and its key must
    be the EK: a certificate that fails makes the command fail with the reason.

    For users that need a password for sudo, set it in the environment variable
    AZ_EDGETPM_SUDO_PASSWORD (or answer the prompt); it is never taken from the command line.
examples:
  - name: Read the registration ID and EK of a device, logging in as root.
    text: az edge-tpm ek show --host root@192.168.1.20
  - name: Use a Host alias from ~/.ssh/config and trust the device's host key on first use.
    text: az edge-tpm ek show --host edge-01 --accept-new-host-key
  - name: A non-root user with sudo, a TPM simulator, and only the registration ID as plain text.
    text: az edge-tpm ek show --host admin@edge-01 --tcti "swtpm:host=127.0.0.1,port=2321" --query registrationId -o tsv
  - name: Read only, never create keys; give the ID in the legacy (tpm_device_provision) form.
    text: az edge-tpm ek show --host edge-01 --no-create --id-format legacy
  - name: Verify the EK certificate against the TPM maker's CA certificates (chain, validity, key = EK).
    text: az edge-tpm ek show --host root@192.168.1.20 --ek-ca-bundle ./tpm-maker-cas.pem --query ekCertificate.chain
  - name: Read this machine's own TPM (running az on the device itself).
    text: az edge-tpm ek show --local
"""

helps["edge-tpm enrollment"] = """
type: group
short-summary: Manage TPM-attested, edge-enabled individual enrollments in a Device Provisioning Service.
long-summary: >
    The DPS is named with --dps-name/-n [-g] (found through Azure Resource Manager with the identity
    of `az login`; a shared access policy with the right needed is read from it), or given by
    `--login "HostName=...;SharedAccessKeyName=...;SharedAccessKey=..."` (a connection string; no ARM
    call; @file reads it from a file). --auth-type login uses an Entra ID token of the az login
    identity instead of a key, for a DPS with local authentication disabled. Keys and tokens are never
    printed, logged (also with --debug) or put on a command line.

    Defaults: `az configure --defaults edge-tpm-dps=NAME group=NAME` name the DPS, and the azure-iot
    extension's `az configure --defaults iotdps-data-auth-type=login` is honoured. The options of
    `az iot dps enrollment` work here too: --eid, --ek, --ee, --ih, --ap, --tags, --props, --ps, --rp
    and --attestation-type tpm.
"""

helps["edge-tpm enrollment create"] = """
type: command
short-summary: Create a TPM individual enrollment for a device, idempotently.
long-summary: >
    The endorsement key (EK) is read from the device over SSH with --host (as `az edge-tpm ek show`
    does, creating the EK and SRK if the TPM has none) or given with --endorsement-key. The
    enrollment ID (= registration ID) defaults to the one derived from the EK. New enrollments are
    edge-enabled and enabled unless told otherwise. With --ek-ca-bundle the device's EK certificate
    is verified first (chain, validity, key = EK); a device that fails is not enrolled.

    Running it again is safe: the output is the enrollment with two more top-level fields,
    "result" ("created", "updated" or "unchanged") and "changes" (the fields it changed: e.g.
    endorsementKey, deviceId, iotEdge, iotHubs, allocationPolicy, initialTwinTags,
    initialTwinProperties, provisioningStatus, reprovisionPolicy). Options not given keep the
    existing enrollment's values. An enrollment that holds another EK is a conflict error unless
    --force, which replaces the key through an update guarded by the etag just read: if the
    enrollment changes in between, the command fails instead of overwriting.
examples:
  - name: Enroll a device, reading its EK over SSH; the DPS is found through ARM.
    text: az edge-tpm enrollment create --host root@192.168.1.20 --dps-name my-dps -g my-rg
  - name: A script written for `az iot dps enrollment create` runs unchanged (only the group name differs).
    text: az edge-tpm enrollment create --attestation-type tpm --eid edge-01 --ek "$(base64 -w0 ek.pub)" --ee --ih my-hub.azure-devices.net --ap static --tags '{"site":"plant-1"}' --props '{"logLevel":"info"}' --ps enabled --rp reprovisionandmigratedata -n my-dps -g my-rg
  - name: Verify the device's EK certificate against its TPM maker's CA certificates before enrolling it.
    text: az edge-tpm enrollment create --host root@192.168.1.20 -n my-dps --ek-ca-bundle ./tpm-maker-cas/
  - name: Enroll with a known EK and registration ID, with a connection string kept in a file.
    text: az edge-tpm enrollment create --login @dps-connection-string.txt --endorsement-key "$(base64 -w0 ek.pub)" --registration-id edge-01
  - name: Pin the device to one hub with initial twin tags from a file.
    text: az edge-tpm enrollment create --host edge-01 -n my-dps --iot-hubs my-hub.azure-devices.net --allocation-policy static --initial-twin-tags @tags.json
  - name: Use the az login identity (Entra ID) for a DPS with local authentication disabled.
    text: az edge-tpm enrollment create --host edge-01 -n my-dps --auth-type login --device-id line-3-gateway
  - name: Replace the EK of an existing enrollment after the device's TPM was cleared.
    text: az edge-tpm enrollment create --host edge-01 -n my-dps --force
  - name: Create it disabled, not as an IoT Edge device, never re-provisioned.
    text: az edge-tpm enrollment create --host edge-01 -n my-dps --edge-enabled false --provisioning-status disabled --reprovision-policy never
  - name: A non-root user, a key file, a TPM simulator and the legacy registration ID form.
    text: az edge-tpm enrollment create --host admin@edge-01 --ssh-key ~/.ssh/fleet --tcti "swtpm:host=127.0.0.1,port=2321" --id-format legacy -n my-dps
"""

helps["edge-tpm enrollment show"] = """
type: command
short-summary: Show an individual enrollment.
long-summary: Symmetric keys of enrollments made by other tools are not shown.
examples:
  - name: Show an enrollment found through ARM.
    text: az edge-tpm enrollment show --enrollment-id edge-01 --dps-name my-dps -g my-rg
  - name: Only the endorsement key, with a connection string from a file.
    text: az edge-tpm enrollment show --enrollment-id edge-01 --login @dps.txt --query attestation.tpm.endorsementKey -o tsv
"""

helps["edge-tpm enrollment list"] = """
type: command
short-summary: List the individual enrollments of a DPS (all pages).
examples:
  - name: All enrollments as a table.
    text: az edge-tpm enrollment list --dps-name my-dps -o table
  - name: The first 20, with the az login identity (Entra ID).
    text: az edge-tpm enrollment list -n my-dps --auth-type login --top 20
  - name: Every enrollment (as `az iot dps enrollment list --top -1`) of the DPS set with `az configure --defaults edge-tpm-dps=my-dps group=my-rg`.
    text: az edge-tpm enrollment list --top -1
"""

helps["edge-tpm enrollment delete"] = """
type: command
short-summary: Delete an individual enrollment.
long-summary: Asks for confirmation unless --yes. The device's IoT Hub identity is not touched.
examples:
  - name: Delete an enrollment without being asked.
    text: az edge-tpm enrollment delete --enrollment-id edge-01 --dps-name my-dps --yes
"""

helps["edge-tpm registration"] = """
type: group
short-summary: Read a device's DPS registration state, and wait until DPS has assigned it to a hub.
"""

helps["edge-tpm registration show"] = """
type: command
short-summary: Show the registration state of a device (status, assigned hub, device ID, errors).
long-summary: An error until the device has tried to register.
examples:
  - name: Show the registration state.
    text: az edge-tpm registration show --registration-id edge-01 --dps-name my-dps -g my-rg
  - name: Only the assigned hub, with a connection string from a file.
    text: az edge-tpm registration show --registration-id edge-01 --login @dps.txt --query assignedHub -o tsv
"""

helps["edge-tpm registration wait"] = """
type: command
short-summary: Wait until DPS has assigned the device, and show its registration state.
long-summary: >
    Polls the registration state every --interval seconds (DPS throttling with Retry-After is
    honoured) and shows progress. Exits 0 with the state once it is "assigned"; fails with DPS's
    errorCode and errorMessage when it is "failed" or "disabled", or when --timeout passes.
examples:
  - name: Wait up to five minutes (the default).
    text: az edge-tpm registration wait --registration-id edge-01 --dps-name my-dps
  - name: Wait up to ten minutes, polling every 10 seconds, and print the hub.
    text: az edge-tpm registration wait --registration-id edge-01 -n my-dps --timeout 600 --interval 10 --query assignedHub -o tsv
"""

helps["edge-tpm install"] = """
type: command
short-summary: Install IoT Edge on a device over SSH and configure it for DPS provisioning with TPM attestation, idempotently.
long-summary: >
    Does what the IoT Edge documentation makes a person type, as steps that each check the device
    first, change only what differs, then verify, and report ok, changed, failed or skipped.

    (1) os: the OS and architecture against the tier 1 systems of the runtime line to install (1.6:
    Ubuntu 22.04/24.04, Debian 12, Raspberry Pi OS Bookworm, Red Hat Enterprise Linux 8/9; 1.5 also
    Ubuntu 20.04, Debian 11); others, e.g. Raspberry Pi OS Stretch, are refused before anything
    changes. The device's package manager follows: apt/dpkg, or dnf/rpm on Red Hat Enterprise Linux.

    (proxy) the network: the device must reach the package source and DPS, directly or through
    --proxy, before anything changes; with --proxy, apt (credentials in /etc/apt/auth.conf.d, root
    only) or dnf (proxy= in /etc/dnf/dnf.conf, made root only with credentials), the container engine, aziot-edged and aziot-identityd get the proxy (systemd drop-ins,
    the engine restarted only when its drop-in changed) and --proxy-ca goes into the OS trust
    store; without --proxy, what an earlier --proxy wrote is removed.

    (2) package-source: Microsoft's packages-microsoft-prod (.deb, or .rpm on Red Hat Enterprise
    Linux), or --package-source, or --offline-packages; tpm2-tools when missing.

    (3) container-engine: moby-engine (with moby-cli on Red Hat Enterprise Linux); "log-driver" merged into /etc/docker/daemon.json (other keys
    kept); the engine restarts only when the file changed.

    (4) iotedge: aziot-edge and aziot-identity-service, latest or --edge-version.

    (5) config: /etc/aziot/config.toml from the package's template with DPS, TPM attestation,
    registration ID, ID scope, endpoint, payload, auto_reprovisioning_mode (top level), [tpm] tcti
    and an integer auth_key_index; with --proxy the whole [agent] table with [agent.env]
    https_proxy and UpstreamProtocol = "AmqpWs", and with --proxy-ca trust_bundle_cert. Comments and other settings of an existing file are kept, the old
    file is backed up next to it, and the new one is written atomically with mode 0600.

    (6) tpm-access: the aziottpm user's access to /dev/tpm0 and /dev/tpmrm0 (--tpm-access); skipped
    on devices without /dev/tpm* (a TPM over TCP).

    (7) runtime: iotedge config apply when something changed (an edgeAgent container whose proxy
    environment changed is removed first, so that it is created anew), then iotedge system status,
    iotedge check (behind a proxy without its direct AMQP/MQTT checks; proxy-settings must pass)
    and the provisioning lines of the logs; known failures come with what to do.

    Running it again changes nothing on a device that is already installed and configured; after a
    failure it continues where it stopped. --dry-run shows the plan without touching the device.

    Devices without systemd are handled: services restart through their /etc/init.d scripts.

    The registration ID defaults to the one derived from the TPM's endorsement key (as `ek show`);
    it must match the device's enrollment (`az edge-tpm enrollment create`), which may be made
    before or after the install: until it exists, DPS refuses the device and the output says so.

    Non-root users go through sudo (NOPASSWD, or the password in AZ_EDGETPM_SUDO_PASSWORD).
examples:
  - name: Install on a device with a hardware TPM; the ID scope comes from the DPS resource.
    text: az edge-tpm install --host admin@192.168.1.20 --dps-name my-dps -g my-rg
  - name: Show the plan first, changing nothing.
    text: az edge-tpm install --host edge-01 --id-scope 0ne00ABCDEF --dry-run -o table
  - name: A network without access to packages.microsoft.com - a mirror, a pinned version, the Docker log driver left alone.
    text: az edge-tpm install --host edge-01 --id-scope 0ne00ABCDEF --package-source https://mirror.example.com/microsoft --edge-version 1.5.10 --log-driver keep
  - name: An apt line for a local repository.
    text: az edge-tpm install --host edge-01 --id-scope 0ne00ABCDEF --package-source "deb [signed-by=/usr/share/keyrings/microsoft-prod.gpg] https://apt.example.com/microsoft-debian-12 bookworm main"
  - name: No network at all for packages - upload .deb files from a directory.
    text: az edge-tpm install --host edge-01 --id-scope 0ne00ABCDEF --offline-packages ./iotedge-debs
  - name: A Red Hat Enterprise Linux 9 device, packages from a mirror of packages.microsoft.com (dnf installs its config/rhel/9/packages-microsoft-prod.rpm).
    text: az edge-tpm install --host rhel-01 --id-scope 0ne00ABCDEF --package-source https://mirror.example.com/microsoft
  - name: A Red Hat Enterprise Linux 9 device, packages from a dnf repository (an Artifactory mirror of packages.microsoft.com/rhel/9/prod/) whose packages are checked with the key the mirror serves.
    text: az edge-tpm install --host rhel-01 --id-scope 0ne00ABCDEF --package-source "https://artifactory.example.com/rhel9-microsoft/ gpgkey=https://artifactory.example.com/keys/microsoft.asc"
  - name: A custom allocation payload, re-provisioning at every start, TPM access through the tss group.
    text: az edge-tpm install --host edge-01 --id-scope 0ne00ABCDEF --payload ./model-id.json --auto-reprovisioning-mode AlwaysOnStartup --tpm-access tss-group
  - name: A device whose network leads out only through an authenticated HTTP proxy (the URL with user:password in a file).
    text: az edge-tpm install --host edge-01 --id-scope 0ne00ABCDEF --proxy @proxy-url.txt --no-proxy 10.0.0.0/8
  - name: Remove the proxy settings an earlier install wrote.
    text: az edge-tpm install --host edge-01 --id-scope 0ne00ABCDEF --proxy none
  - name: A device whose TPM is a simulator on TCP, with a known registration ID.
    text: az edge-tpm install --host edge-01 --id-scope 0ne00ABCDEF --tcti "swtpm:host=127.0.0.1,port=2321" --registration-id edge-01
"""

helps["edge-tpm status"] = """
type: command
short-summary: Show the health of IoT Edge on a device.
long-summary: >
    Reads over SSH (as root, through sudo for other users) and changes nothing: the runtime's and
    the packages' versions, the state of each service (iotedge system status), the modules
    (iotedge list), iotedge check's results summarised (with the details of warnings and
    errors), the provisioning outcome from the logs (the assigned hub and device ID, or the last
    error with what to do about it), and what config.toml says about provisioning.
examples:
  - name: Health of a device.
    text: az edge-tpm status --host admin@edge-01
  - name: One line, as a table.
    text: az edge-tpm status --host edge-01 -o table
  - name: Only the hub the device is assigned to.
    text: az edge-tpm status --host edge-01 --query provisioning.assignedHub -o tsv
"""

helps["edge-tpm provision"] = """
type: command
short-summary: Provision one device or a whole fleet end to end - EK, enrollment, IoT Edge, assignment, health.
long-summary: >
    Runs, per device: identify (read or create the EK, derive the registration ID), enroll (create
    the individual enrollment or confirm it; an enrollment holding another EK is a conflict unless
    --force), install (IoT Edge, as `az edge-tpm install`), wait (until the device is assigned to an
    IoT hub: the device's own report, else DPS's registration state) and status. Each device uses
    ONE SSH connection for all of its steps.

    With --ek-ca-bundle every device's EK certificate is verified in the identify step (chain to the
    bundle, validity, key = EK): a device that fails is refused with the reason before it is
    enrolled.

    A fleet (--inventory) runs --max-parallel devices at a time in this one process, sharing one DPS
    client and one DPS budget (--dps-ops-per-minute, --dps-registrations-per-minute; 429 answers and
    their Retry-After hold the whole run back). New enrollments go to DPS in bulk calls of ten. The
    inventory is checked as a whole before anything starts; one device failing does not stop the
    others. With --state FILE every step is recorded as it ends, so a re-run (after Ctrl-C, a killed
    process or a reboot) skips finished devices and continues the rest; --retry-failed runs only the
    failed ones. The state file is locked while a run uses it (a second run on it is refused and
    names the first one's process), and it records which command, inventory and DPS wrote it: a
    file of another run is refused unless --state-from-other-run. --shard i/n splits the inventory
    between parallel pipeline jobs, and gives each 1/n of DPS's limits unless
    --dps-ops-per-minute / --dps-registrations-per-minute say otherwise.

    Ctrl+C or SIGTERM (a cancelled pipeline job) stops the run within seconds: no further device
    starts, the commands running on the devices are stopped there, their steps are recorded as
    interrupted, and the summary says what finished and how to resume (the same command with the
    same --state); a second signal ends az at once.

    Progress goes to stderr; the output is one result per device (-o table: a summary table).
    Exit codes: 0 every device done; 4 some devices failed (the others finished; the error lists
    the failed devices and why); 130 stopped by SIGINT, 143 by SIGTERM; 1 the run as a whole
    failed (e.g. the inventory or DPS credentials), 2 a wrong command line.

    Sudo passwords: with --host as for the other commands (AZ_EDGETPM_SUDO_PASSWORD, or a prompt);
    in a fleet never a prompt: the environment variable named by the row's sudo_password_env column,
    else AZ_EDGETPM_SUDO_PASSWORD.
examples:
  - name: One device, end to end.
    text: az edge-tpm provision --host admin@192.168.1.20 --dps-name my-dps -g my-rg
  - name: A fleet from a CSV inventory, 20 devices at a time, resumable.
    text: az edge-tpm provision --inventory fleet.csv --dps-name my-dps -g my-rg --max-parallel 20 --state fleet-state.json -o table
  - name: An Ansible inventory, only the group 'plant7', SSH key and known hosts for all rows.
    text: az edge-tpm provision --inventory hosts.ini --limit plant7 --dps-name my-dps -g my-rg --ssh-key ~/.ssh/fleet --known-hosts ./known_hosts
  - name: An Ansible INI inventory whose name has no extension (read, never run).
    text: az edge-tpm provision --inventory ./hosts --inventory-format ansible --dps-name my-dps -g my-rg
  - name: A dynamic inventory script (an executable the command runs through ansible-inventory; only with ansible-script).
    text: az edge-tpm provision --inventory ./inventory.py --inventory-format ansible-script --limit plant7 --dps-name my-dps -g my-rg
  - name: Only devices whose TPM's EK certificate chains to the makers' CA certificates.
    text: az edge-tpm provision --inventory fleet.csv --dps-name my-dps -g my-rg --ek-ca-bundle ./tpm-maker-cas/
  - name: Re-run only the devices that failed last time.
    text: az edge-tpm provision --inventory fleet.csv --dps-name my-dps -g my-rg --state fleet-state.json --retry-failed
  - name: The second of four parallel pipeline jobs, sharing the DPS's budget with the others.
    text: az edge-tpm provision --inventory fleet.yml --dps-name my-dps -g my-rg --shard 2/4 --state state-2.json
  - name: Resume with the state file of a run whose inventory has changed since (each device's record is checked against the device and DPS).
    text: az edge-tpm provision --inventory fleet-v2.csv --dps-name my-dps -g my-rg --state fleet-state.json --state-from-other-run
"""

helps["edge-tpm deprovision"] = """
type: command
short-summary: Retire a device - disable (or delete) its enrollment, delete its registration record, and stop and reset IoT Edge on it.
long-summary: >
    In order, each step checking first and changing only what differs (a second run, or a run after
    an interruption, finishes the work and does nothing twice):

    (1) identify: the registration ID (--registration-id, else the device's config.toml, else its EK);

    (2) enrollment: --mode disable sets provisioningStatus disabled (the enrollment stays, the device
    can no longer register), --mode delete deletes it; both guarded by the enrollment's etag;

    (3) registration: the device's registration record in DPS is deleted (guarded by its etag;
    with --delete-hub-device after the hub step, and kept while the hub identity is left);

    (4) device: IoT Edge stopped (iotedge system stop), config.toml reset to unprovisioned (its
    [provisioning] removed, a backup kept in /var/backups/edge-tpm - outside /etc/aziot, which the
    purge of --uninstall removes whole -, every other setting kept), the configuration applied by
    iotedge config apply and the identity service's provisioning state removed; with --uninstall the
    aziot-edge and aziot-identity-service packages are purged too.

    The cloud side comes first, so a device that cannot be reached still gets it (unless
    --require-device); the result lists what remains where ("remains"). The device's identity in
    its IoT hub is never deleted by DPS: the result names it with the command that removes it.
    With --delete-hub-device a hub step after the enrollment step deletes it (IoT Hub service API,
    with the az login identity - also when DPS is reached with --login), in the hub and under the
    device ID DPS's registration record names (never those of a --state file; a hub's host name must
    be in the IoT Hub domain of az's cloud); a hub that cannot be reached, or an identity without
    the right there, leaves it in place without failing the device ("hubIdentity": left, and
    "remains" says why and how to remove it; the same fleet command again with its --state file
    tries again); gone already counts as done. On a resumed run the registration ID is read again
    from the row or the device, never taken from the state file alone ("stateMismatch" names a
    record that was not this device's).
    Asks for confirmation unless --yes; --dry-run shows the plan and changes nothing.
examples:
  - name: Retire a device, keeping its enrollment (disabled) for later.
    text: az edge-tpm deprovision --host admin@edge-01 --dps-name my-dps -g my-rg
  - name: Wipe a demo device completely - enrollment deleted, IoT Edge uninstalled - without a prompt.
    text: az edge-tpm deprovision --host admin@edge-01 --login @dps.txt --mode delete --uninstall --yes
  - name: Show the plan only.
    text: az edge-tpm deprovision --host edge-01 --dps-name my-dps --dry-run -o table
  - name: Retire a device completely - its IoT hub identity deleted too (needs az login with rights in the hub).
    text: az edge-tpm deprovision --host admin@edge-01 --dps-name my-dps -g my-rg --mode delete --delete-hub-device --yes
  - name: The device is gone - do the DPS side only.
    text: az edge-tpm deprovision --host edge-01 --registration-id edge-01 --dps-name my-dps --keep-device --yes
  - name: A fleet, ten devices at a time, resumable - a re-run with the same state file finishes what a killed run left.
    text: az edge-tpm deprovision --inventory fleet.csv --login @dps.txt --state retire-state.json --max-parallel 10 --yes -o table
"""

helps["edge-tpm reprovision"] = """
type: command
short-summary: Make a device register with DPS again (after an enrollment change such as a new hub) and report its new hub.
long-summary: >
    Optionally changes the enrollment first (--iot-hubs, --allocation-policy, --initial-twin-tags;
    a write guarded by the enrollment's etag, through DPS's bulk API), then runs `iotedge system
    reprovision` on the device, waits until DPS's registration record is a new one that says
    assigned, and checks that the device itself reports that hub. Whether the device moves to a
    new hub follows the enrollment's reprovision policy. An enrollment change asks for
    confirmation unless --yes; --dry-run shows the plan.
examples:
  - name: Move a device to another hub.
    text: az edge-tpm reprovision --host admin@edge-01 --dps-name my-dps --iot-hubs hub-west.azure-devices.net --allocation-policy static --yes
  - name: Register again after the enrollment was changed elsewhere.
    text: az edge-tpm reprovision --host edge-01 --login @dps.txt --query assignedHub -o tsv
  - name: Move a whole inventory to another hub (enrollments changed in bulk, ten per DPS call), in two pipeline shards.
    text: az edge-tpm reprovision --inventory fleet.csv -n my-dps --iot-hubs hub-west.azure-devices.net --allocation-policy static --shard 1/2 --state move-1.json --yes
"""

helps["edge-tpm rekey"] = """
type: command
short-summary: Give a device's enrollment the new endorsement key of its cleared or replaced TPM, and make it register again.
long-summary: >
    Reads the registration ID the device is configured with (its config.toml, or --registration-id)
    and the EK its TPM holds now (creating the EK and SRK when the clear removed them, as `ek show`
    does), then replaces the enrollment's EK - an update guarded by the etag just read, after a
    confirmation that shows the old and the new key's SHA-256 (unless --yes) - runs `iotedge system
    reprovision` and waits until the device is assigned again. A key that another enrollment holds
    is refused. The old TPM can no longer register. --dry-run shows the plan.
examples:
  - name: Re-key a device after its TPM was cleared.
    text: az edge-tpm rekey --host admin@edge-01 --dps-name my-dps -g my-rg
  - name: Without a prompt, showing the old and the new key.
    text: az edge-tpm rekey --host edge-01 --login @dps.txt --yes --query "[previousEkSha256, ekSha256]" -o tsv
  - name: Several re-imaged devices of an inventory, without a prompt.
    text: az edge-tpm rekey --inventory fleet.csv --only edge-07 edge-12 --login @dps.txt --yes -o table
"""

helps["edge-tpm upgrade"] = """
type: command
short-summary: Upgrade IoT Edge on installed devices to a newer runtime (e.g. from 1.5 LTS to 1.6 LTS), keeping their provisioning.
long-summary: >
    As Microsoft's update procedure: aziot-edge and aziot-identity-service together to the target
    version (default: the newest version of the newest LTS line in support for the device's system
    that its package source offers; aziot-identity-service is the exact version aziot-edge depends
    on), the container engine when the target needs a newer one, config.toml's edgeAgent image
    ([agent.config] image) moved to the target line with every other setting and comment kept,
    `iotedge config apply`, then the same health verification as install. The device keeps its
    identity: no new enrollment, no new registration. A device already on the target changes
    nothing. A device whose runtime is not healthy and assigned as before afterwards is put back on
    the exact package versions it had and its config.toml byte for byte, unless --no-rollback.
    The result names what the IoT hub side must change: deployments pinning the old line's
    edgeAgent/edgeHub images bring the old modules back (az iot edge set-modules, or a deployment).
examples:
  - name: See the installed and target versions of a fleet, changing nothing.
    text: az edge-tpm upgrade --inventory fleet.csv --dry-run -o table
  - name: Upgrade one device to the newest LTS line for its system.
    text: az edge-tpm upgrade --host admin@edge-01
  - name: Upgrade a fleet to 1.6.0, ten devices at a time, resumable.
    text: az edge-tpm upgrade --inventory fleet.csv --edge-version 1.6.0 --state upgrade-state.json --max-parallel 10 -o table
  - name: Two devices first; the rest only if both upgraded.
    text: az edge-tpm upgrade --inventory fleet.csv --canary 2 --state upgrade-state.json -o table
  - name: Stop starting devices once more than 5% of those started have failed (the rest start on a re-run with the same --state).
    text: az edge-tpm upgrade --inventory fleet.csv --max-fail-percentage 5 --state upgrade-state.json --junit-xml upgrade.xml -o table
  - name: Go back to an older version on purpose.
    text: az edge-tpm upgrade --host edge-01 --edge-version 1.5.10 --allow-downgrade
"""

helps["edge-tpm report"] = """
type: group
short-summary: Work with the HTML reports that fleet commands write with --report.
"""

helps["edge-tpm report merge"] = """
type: command
short-summary: Merge the HTML reports of parallel or repeated runs (e.g. a pipeline's shards) into one report.
long-summary: >
    Reads the run data each report carries (its `<script type="application/json" id="run">` island:
    the command, the run's start and one row per device) and writes one self-contained report with
    every device, the counts summed and one timeline of devices per state on a common clock (each
    run placed at its own start). A device found in several reports, such as a shard run again,
    keeps the row of the later run; the result lists those devices. Nothing but the files named is
    read. The result holds the merged counts.

    A file that is not a report of az edge-tpm, one written by a version without run data, a merged
    report, or reports of different commands are refused with the file named, and nothing is
    written.
examples:
  - name: Merge every shard's report of a pipeline run into one.
    text: az edge-tpm report merge --input latest/shard-*/report.html --report fleet-report.html
  - name: The merged counts as a table.
    text: az edge-tpm report merge --input shard-1.html shard-2.html --report fleet-report.html -o table
  - name: With a Markdown recap for an Azure Pipelines run's summary page.
    text: az edge-tpm report merge --input shard-*/report.html --report fleet-report.html --summary fleet-summary.md
  - name: Only the number of failed devices.
    text: az edge-tpm report merge --input shard-*.html --report fleet-report.html --query failed -o tsv
"""
