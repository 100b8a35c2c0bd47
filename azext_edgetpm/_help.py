"""Help texts (YAML, as az expects) with examples for every command and group."""
from knack.help_files import helps

helps["edge-tpm"] = """
type: group
short-summary: Provision Linux devices with a TPM 2.0 as Azure IoT Edge devices through the IoT Hub Device Provisioning Service (DPS).
long-summary: |
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
long-summary: |
    Connects to the device over SSH (host keys are checked against known_hosts; unknown keys are
    refused unless --accept-new-host-key), runs tpm2-tools as root (through sudo for other users)
    and reads the EK at handle 0x81010001. When the TPM has no EK yet, the EK and the storage root
    key (SRK, 0x81000001) are created and persisted, as the IoT Edge documentation's script does,
    unless --no-create is given. Nothing is left behind on the device.
    The registration ID is the lower-case hex SHA-256 of the marshalled EK (--id-format sha256),
    or the older C SDK tool's base32 form (--id-format legacy).
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
  - name: Read this machine's own TPM (running az on the device itself).
    text: az edge-tpm ek show --local
"""
