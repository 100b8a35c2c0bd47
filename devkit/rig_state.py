"""Where a rig keeps what it knows (a mixin of :class:`devkit.devices.Rig`): ``devkit.json``
(the rig and its devices, which other processes read with :meth:`RigState.load`),
``known_hosts``, each device's directory and its disk kept under ``STATE_BASE``."""
import hashlib
import json
import os
import threading
from typing import Dict, List, Optional

from devkit import netns
from devkit.device import SSH_PORT, STATE_BASE, Device, DevkitError, state_supported
from devkit.files import atomic_write

DEVKIT_JSON = "devkit.json"
SCHEMA_VERSION = 1


class RigState:
    """The rig's files (a mixin: it uses the rig's directory, slot, services and devices)."""
    dir: str
    owner_pid: Optional[int]
    slot: Optional[int]
    state: str
    service_names: List[str]
    sections: Dict[str, dict]
    _devices: Dict[str, Device]
    _lock: threading.RLock
    host_ip: Optional[str]                     # the rig's (properties of Rig)
    ca_cert: Optional[str]
    devices: List[Device]

    @property
    def json_path(self):
        """DIR/devkit.json."""
        return os.path.join(self.dir, DEVKIT_JSON)

    @property
    def known_hosts(self):
        """DIR/known_hosts: every device's host keys."""
        return os.path.join(self.dir, "known_hosts")

    def to_json(self):
        """The devkit.json document."""
        doc = {"version": SCHEMA_VERSION, "dir": self.dir, "host_ip": self.host_ip,
               "known_hosts": self.known_hosts, "state": self.state, "slot": self.slot,
               "subnet": str(netns.subnet(self.slot)) if self.slot is not None else None,
               "bridge": netns.bridge_name(self.slot) if self.slot is not None else None,
               "ca_cert": self.ca_cert, "owner_pid": self.owner_pid,
               "services": list(self.service_names),
               "devices": [d.to_json() for d in self.devices]}
        for name, section in self.sections.items():
            doc[name] = section
        return doc

    def write_json(self):
        """Write devkit.json and known_hosts atomically."""
        with self._lock:
            lines = []
            for dev in self.devices:
                host = dev.host if dev.port == SSH_PORT else "[%s]:%d" % (dev.host, dev.port)
                lines.extend("%s %s" % (host, k) for k in dev.host_keys)
            atomic_write(self.known_hosts, "".join(x + "\n" for x in lines))
            atomic_write(self.json_path, json.dumps(self.to_json(), indent=2) + "\n")

    def set_section(self, name, section):
        """Store a service's section in devkit.json (written at once)."""
        with self._lock:
            self.sections[name] = section
            self.write_json()

    @classmethod
    def load(cls, dir):
        """The rig described by DIR/devkit.json (DevkitError if there is none)."""
        rig = cls(dir)
        try:
            with open(rig.json_path, "r", encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise DevkitError("no %s in %s (is the rig up?)" % (DEVKIT_JSON, rig.dir)) from None
        rig.slot = doc.get("slot")
        rig.state = doc.get("state", "up")
        rig.owner_pid = doc.get("owner_pid")
        rig.service_names = list(doc.get("services", []))
        rig.sections = {n: doc[n] for n in rig.service_names if n in doc}
        for entry in doc.get("devices", []):
            dev = Device.from_json(entry, doc.get("known_hosts", rig.known_hosts))
            rig._devices[dev.name] = dev
        return rig

    def _device_dir(self, name):
        return os.path.join(self.dir, "devices", name)

    @property
    def _state_root(self):
        return os.path.join(STATE_BASE, hashlib.sha256(self.dir.encode()).hexdigest()[:16])

    def _state_dir(self, name):
        """The device's kept disk on the host (None where power cycles are unsupported)."""
        return os.path.join(self._state_root, name) if state_supported() else None
