"""Development kit for az edge-tpm: simulated TPM devices and their services.

Not part of the extension's wheel. Entry point: ``python -m devkit {up,down,status,...}``;
Python API: :class:`devkit.devices.Rig`, :class:`devkit.device.Device`; pytest fixtures:
``devkit.pytest_plugin``. See devkit/README.md.
"""
