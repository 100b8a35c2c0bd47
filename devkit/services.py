"""Optional rig services (the DPS emulator, the package repository, ...).

A service runs next to the devices, usually on the host side of the rig's bridge
(``rig.host_ip``), and publishes what clients need in its own top-level section of
devkit.json. ``Rig.up(..., services=["dps"])`` / ``python -m devkit up --services dps``
start it; ``down`` stops it, also after a crash (its section is saved in devkit.json
before the devices boot).

To add one, implement the protocol below and register it by import path (imported only
when used)::

    # devkit/services.py
    SERVICES["dps"] = "devkit.dps.service:DpsService"

Protocol (duck-typed; every method but ``up`` and ``down`` is optional)::

    class MyService:
        name = "dps"
        def __init__(self): ...
        def up(self, rig) -> dict:            # start; return the devkit.json section
        def prepare_device(self, rig, spec):  # edit a DeviceSpec before the device boots
        def device_ready(self, rig, device):  # called after a device accepts SSH
        def down(self, rig, section: dict):   # stop (idempotent, may be a fresh process)
"""
import importlib

SERVICES = {
    "dps": "devkit.dps.service:DpsService",
    "packages": "devkit.packages.service:AptService",
}


def register(name, target):
    """Register a service class by ``"module:attribute"`` path."""
    SERVICES[name] = target


def load(name):
    """Instantiate the service registered as ``name``."""
    try:
        target = SERVICES[name]
    except KeyError:
        raise ValueError("unknown devkit service %r (known: %s)"
                         % (name, ", ".join(sorted(SERVICES)) or "none")) from None
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)()
