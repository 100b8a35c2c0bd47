"""The DPS emulator as a devkit rig service (protocol in devkit/services.py).

``up`` starts ``python -m devkit.dps serve`` as its own process (it outlives the process that ran
``python -m devkit up``), listening on all addresses with the rig's ``host_ip`` as the device
endpoint, state in ``<rig dir>/dps``; ``down`` stops it by the pid recorded in the section.
``prepare_device`` copies the emulator's CA into each device at ``DEVICE_CA_PATH`` (a device
cannot see the host's /tmp, where rig directories often live); the section names that path as
``device_ca_bundle``. Registered as ``dps`` in devkit/services.py.
"""

from __future__ import annotations

from ..services import ProcessService

DEVICE_CA_PATH = "/usr/local/share/ca-certificates/devkit-dps-ca.crt"
RHEL_DEVICE_CA_PATH = "/etc/pki/ca-trust/source/anchors/devkit-dps-ca.pem"


class DpsService(ProcessService):
    """Runs the DPS emulator next to a rig's devices."""

    name = "dps"
    module = "devkit.dps"

    def __init__(self, port: int = 0):
        super().__init__()
        self.port = port
        self._ca_pem: bytes = b""

    def serve_args(self, rig, section_file):
        argv = ["--dir", self.state_dir(rig), "--port", str(self.port), "--section-file", section_file]
        if rig.host_ip:
            argv += ["--host-ip", rig.host_ip]
        return argv

    def up(self, rig) -> dict:
        """Start the emulator process; return the devkit.json section (with its ``pid``)."""
        section = super().up(rig)
        with open(section["ca_bundle"], "rb") as f:
            self._ca_pem = f.read()
        section["device_ca_bundle"] = DEVICE_CA_PATH
        return section

    def prepare_device(self, rig, spec) -> None:
        """Make devices trust the emulator's CA system-wide, as real devices trust the public CA
        behind the real DPS: the runtime (and anything else) then verifies it with the default
        trust store, nothing configured per program."""
        if not self._ca_pem:
            # a rig loaded in another process (Rig.load(dir).add_device(), `python -m devkit
            # add`): this instance did not start the server; its CA is in the saved section
            bundle = (getattr(rig, "sections", {}).get(self.name) or {}).get("ca_bundle")
            if bundle:
                with open(bundle, "rb") as f:
                    self._ca_pem = f.read()
        if self._ca_pem and spec.notes.get("rhel"):  # RHEL's place and tool (variants.py)
            spec.write_file(RHEL_DEVICE_CA_PATH, self._ca_pem, mode=0o644)
            spec.run("update-ca-trust", "extract")
        elif self._ca_pem:
            spec.write_file(DEVICE_CA_PATH, self._ca_pem, mode=0o644)
            spec.run("update-ca-certificates", "--fresh")
