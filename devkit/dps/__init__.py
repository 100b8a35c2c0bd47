"""A local Azure IoT Hub Device Provisioning Service emulator for tests and demos.

It serves, on one HTTPS port with its own CA: the DPS service API (2021-10-01), the device API
(2021-06-01) with the real TPM attestation challenge, enough Azure Resource Manager for the
``provisioningServices`` resource and ``az login``, and an Entra ID-like token endpoint. See
``README.md`` next to this file.
"""

from .emulator import Emulator, devkit_section

__all__ = ["Emulator", "devkit_section"]
