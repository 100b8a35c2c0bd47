"""The DPS data model: individual enrollments, registration records and device operations.

Everything is in memory behind one lock; :meth:`Store.save`/:meth:`Store.load` keep
enrollments and registration records in a JSON file so a restarted emulator still knows them.
HTTP concerns (auth, routing, throttling) live elsewhere; the store raises
:class:`~devkit.dps.errors.DpsError` for the API-visible failures.

Here: the :class:`Store` (its state, persistence, etags); its two sides are mixins of their own:
:mod:`.enrollments` (individual enrollments, query, bulk) and :mod:`.registrations`
(registration IDs and records, the device flow).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .enrollments import Enrollments
from .hub import HubRegistry
from .registrations import AuthKey, Operation, Registrations, check_registration_id, reg_key

# what callers import from here (the registration ID's helpers live in .registrations)
__all__ = ["Store", "LinkedHub", "Operation", "check_registration_id", "reg_key"]

SAVE_DELAY_S = 0.3


@dataclass
class LinkedHub:
    """An IoT hub linked to the DPS (``properties.iotHubs`` in ARM)."""

    name: str  # host name, e.g. hub1.azure-devices.net
    location: str = "westeurope"
    allocation_weight: int = 1
    apply_allocation_policy: bool = True


class Store(Enrollments, Registrations):
    """Enrollments, registration records, TPM challenges and device operations of one DPS."""

    def __init__(self, id_scope: str, hubs: List[LinkedHub], allocation_policy: str = "hashed",
                 state_file: Optional[str] = None):
        self.id_scope = id_scope
        self.hubs = list(hubs)
        self.allocation_policy = allocation_policy
        self.state_file = state_file
        self.assignment_delay_s = 0.5
        self.operation_retry_after_s = 1
        self.echo_payload = False
        self._lock = threading.RLock()
        self._etag_counter = 0
        self._enrollments: Dict[str, Dict[str, Any]] = {}
        self._registrations: Dict[str, Dict[str, Any]] = {}
        self._auth_keys: Dict[str, AuthKey] = {}
        self._operations: Dict[str, Operation] = {}
        self._device_payloads: Dict[str, Any] = {}
        self._challenge_blobs: Dict[str, str] = {}
        self._dirty = False
        self._save_timer: Optional[threading.Timer] = None
        # the device identities DPS creates in the hubs it assigns to (served as the hubs' registry)
        self.hub_registry = HubRegistry()

    # ----------------------------------------------------------------- persistence
    def load(self) -> None:
        """Read enrollments, registration records and the device flows in progress from
        ``state_file`` (0600: it holds the keys issued by challenges) if it exists."""
        if not self.state_file or not os.path.exists(self.state_file):
            return
        with open(self.state_file, encoding="utf-8") as f:
            data = json.load(f)
        with self._lock:
            self._etag_counter = int(data.get("etag_counter", 0))
            self._enrollments = {reg_key(e["registrationId"]): e for e in data.get("enrollments", [])}
            self._registrations = {reg_key(r["registrationId"]): r for r in data.get("registrations", [])}
            # the device flow in progress survives a restart too, as in the real service: keys
            # issued by challenges, running operations, the challenge blobs they echo
            self._auth_keys = {k: AuthKey(base64.b64decode(v["key"]), v["issued_at"])
                               for k, v in data.get("auth_keys", {}).items()}
            self._operations = {o["operation_id"]: Operation(**o) for o in data.get("operations", [])}
            self._challenge_blobs = dict(data.get("challenge_blobs", {}))
            self.hub_registry.restore(data.get("hub_registry"))

    def save(self) -> None:
        """Mark the state changed; it is written within ``SAVE_DELAY_S`` (one write per burst)."""
        if not self.state_file:
            return
        with self._lock:
            self._dirty = True
            if self._save_timer is None:
                self._save_timer = threading.Timer(SAVE_DELAY_S, self.flush)
                self._save_timer.daemon = True
                self._save_timer.start()

    def flush(self) -> None:
        """Write enrollments and registration records to ``state_file`` now, if changed."""
        if not self.state_file:
            return
        with self._lock:
            if self._save_timer is not None:
                self._save_timer.cancel()
                self._save_timer = None
            if not self._dirty:
                return
            data = {
                "etag_counter": self._etag_counter,
                "enrollments": list(self._enrollments.values()),
                "registrations": list(self._registrations.values()),
                "auth_keys": {k: {"key": base64.b64encode(v.key).decode("ascii"), "issued_at": v.issued_at}
                              for k, v in self._auth_keys.items()},
                "operations": [dataclasses.asdict(o) for o in self._operations.values()],
                "challenge_blobs": self._challenge_blobs,
                "hub_registry": self.hub_registry.dump(),
            }
            tmp = self.state_file + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # keys inside
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, self.state_file)
            self._dirty = False

    # ----------------------------------------------------------------- helpers
    def _new_etag(self) -> str:
        self._etag_counter += 1
        return base64.b64encode(self._etag_counter.to_bytes(8, "big")).decode("ascii")

    def hub_names(self) -> List[str]:
        return [h.name for h in self.hubs]

    # ----------------------------------------------------------------- introspection
    def device_payload(self, rid: str) -> Any:
        with self._lock:
            return copy.deepcopy(self._device_payloads.get(reg_key(rid)))

    def counts(self) -> Dict[str, int]:
        with self._lock:
            return {"enrollments": len(self._enrollments), "registrations": len(self._registrations),
                    "operations": len(self._operations)}
