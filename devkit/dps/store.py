"""The DPS data model: individual enrollments, registration records and device operations.

Everything is in memory behind one lock; :meth:`Store.save`/:meth:`Store.load` keep
enrollments and registration records in a JSON file so a restarted emulator still knows them.
HTTP concerns (auth, routing, throttling) live elsewhere; this module raises
:class:`~devkit.dps.errors.DpsError` for the API-visible failures.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import errors, sas, tpm
from .errors import DpsError, utc_now_str
from .hub import HubRegistry

REGISTRATION_ID_RE = re.compile(r"^[A-Za-z0-9\-._:]{1,128}$")
ALLOCATION_POLICIES = ("hashed", "geoLatency", "static", "custom")
ATTESTATION_TYPES = ("tpm", "x509", "symmetricKey")
BULK_MODES = ("create", "update", "updateIfMatchETag", "delete")
MAX_BULK = 10
DEFAULT_PAGE = 100
SAVE_DELAY_S = 0.3


@dataclass
class LinkedHub:
    """An IoT hub linked to the DPS (``properties.iotHubs`` in ARM)."""

    name: str  # host name, e.g. hub1.azure-devices.net
    location: str = "westeurope"
    allocation_weight: int = 1
    apply_allocation_policy: bool = True


@dataclass
class Operation:
    """A device registration operation, resolved lazily once ``ready_at`` has passed."""

    operation_id: str
    reg_key: str
    registration_id: str
    ready_at: float
    payload: Any = None
    result: Optional[Dict[str, Any]] = None  # the final registrationState


@dataclass
class _AuthKey:
    key: bytes
    issued_at: float = field(default_factory=time.time)


def reg_key(registration_id: str) -> str:
    """Registration IDs compare case-insensitively."""
    return registration_id.lower()


def check_registration_id(registration_id: object) -> str:
    """Validate a registration ID as DPS documents it: <= 128 of ``A-Za-z0-9-._:``, the last
    character alphanumeric or ``-``."""
    if (
        not isinstance(registration_id, str)
        or not REGISTRATION_ID_RE.match(registration_id)
        or not (registration_id[-1].isalnum() or registration_id[-1] == "-")
    ):
        raise DpsError(
            errors.INVALID_REGISTRATION_ID,
            "Registration ID is invalid: up to 128 characters of A-Z a-z 0-9 - . _ :, "
            "the last one a letter, a digit or '-'.",
        )
    return registration_id


def normalize_etag(value: Optional[str]) -> Optional[str]:
    """Strip the weak prefix and quotes HTTP clients may add around an etag."""
    if value is None:
        return None
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]
    return v


def _attested_key(enrollment: Dict[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    att = enrollment.get("attestation") or {}
    return att.get("type"), (att.get("tpm") or {}).get("endorsementKey")


def _bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise DpsError(errors.BAD_REQUEST, f"'{name}' must be a boolean.")


class Store:
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
        self._auth_keys: Dict[str, _AuthKey] = {}
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
            self._auth_keys = {k: _AuthKey(base64.b64decode(v["key"]), v["issued_at"])
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

    def _normalize(self, body: object, path_id: str, existing: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """Validate an individual enrollment body and build the stored record."""
        if not isinstance(body, dict):
            raise DpsError(errors.BAD_REQUEST, "The request body must be an individual enrollment object.")
        rid = body.get("registrationId", path_id)
        check_registration_id(rid)
        if reg_key(rid) != reg_key(path_id):
            raise DpsError(errors.BAD_REQUEST, "The registrationId in the body does not match the URL.")
        att = body.get("attestation")
        if not isinstance(att, dict) or att.get("type") not in ATTESTATION_TYPES:
            raise DpsError(errors.BAD_REQUEST, "'attestation' with type tpm, x509 or symmetricKey is required.")
        attestation: Dict[str, Any] = {"type": att["type"]}
        if att["type"] == "tpm":
            tpm_att = att.get("tpm")
            if not isinstance(tpm_att, dict):
                raise DpsError(errors.ENDORSEMENT_KEY_INVALID, "Endorsement key is invalid.")
            tpm.parse_endorsement_key(tpm_att.get("endorsementKey"))
            tpm_out = {"endorsementKey": tpm_att["endorsementKey"].strip()}
            if tpm_att.get("storageRootKey"):
                tpm.parse_storage_root_key(tpm_att["storageRootKey"])
                tpm_out["storageRootKey"] = tpm_att["storageRootKey"].strip()
            elif existing and existing["attestation"].get("type") == "tpm":
                old = existing["attestation"]["tpm"]
                if old.get("storageRootKey") and old["endorsementKey"] == tpm_out["endorsementKey"]:
                    tpm_out["storageRootKey"] = old["storageRootKey"]
            attestation["tpm"] = tpm_out
        elif att["type"] == "symmetricKey":
            sk = att.get("symmetricKey") or {}
            attestation["symmetricKey"] = {
                "primaryKey": sk.get("primaryKey") or base64.b64encode(os.urandom(64)).decode(),
                "secondaryKey": sk.get("secondaryKey") or base64.b64encode(os.urandom(64)).decode(),
            }
        else:
            attestation["x509"] = att.get("x509") or {}

        rec: Dict[str, Any] = {"registrationId": existing["registrationId"] if existing else rid}
        if body.get("deviceId") is not None:
            if not isinstance(body["deviceId"], str) or not 0 < len(body["deviceId"]) <= 128:
                raise DpsError(errors.BAD_REQUEST, "'deviceId' must be a string of 1 to 128 characters.")
            rec["deviceId"] = body["deviceId"]
        rec["attestation"] = attestation

        caps = body.get("capabilities") or {}
        if not isinstance(caps, dict):
            raise DpsError(errors.BAD_REQUEST, "'capabilities' must be an object.")
        rec["capabilities"] = {"iotEdge": _bool(caps.get("iotEdge", False), "capabilities.iotEdge")}

        if body.get("iotHubHostName"):
            rec["iotHubHostName"] = body["iotHubHostName"]
        twin = body.get("initialTwin")
        if twin is not None:
            if not isinstance(twin, dict):
                raise DpsError(errors.BAD_REQUEST, "'initialTwin' must be an object.")
            rec["initialTwin"] = copy.deepcopy(twin)

        status = body.get("provisioningStatus", "enabled")
        if not isinstance(status, str) or status.lower() not in ("enabled", "disabled"):
            raise DpsError(errors.BAD_REQUEST, "'provisioningStatus' must be enabled or disabled.")
        rec["provisioningStatus"] = status.lower()

        rp = body.get("reprovisionPolicy") or {}
        if not isinstance(rp, dict):
            raise DpsError(errors.BAD_REQUEST, "'reprovisionPolicy' must be an object.")
        rec["reprovisionPolicy"] = {
            "updateHubAssignment": _bool(rp.get("updateHubAssignment", True), "updateHubAssignment"),
            "migrateDeviceData": _bool(rp.get("migrateDeviceData", True), "migrateDeviceData"),
        }

        policy = body.get("allocationPolicy")
        hubs = body.get("iotHubs")
        if hubs is not None:
            if not isinstance(hubs, list) or not all(isinstance(h, str) for h in hubs):
                raise DpsError(errors.BAD_REQUEST, "'iotHubs' must be a list of IoT hub host names.")
            linked = {h.lower() for h in self.hub_names()}
            for h in hubs:
                if h.lower() not in linked:
                    raise DpsError(errors.IOT_HUB_NOT_LINKED,
                                   f"The IoT hub '{h}' is not linked to this provisioning service.")
        if policy is not None:
            match = [p for p in ALLOCATION_POLICIES if p.lower() == str(policy).lower()]
            if not match:
                raise DpsError(errors.INVALID_ALLOCATION,
                               "'allocationPolicy' must be hashed, geoLatency, static or custom.")
            policy = match[0]
            if policy == "static":
                count = len(hubs) if hubs else (1 if body.get("iotHubHostName") else 0)
                if count != 1:
                    raise DpsError(errors.INVALID_ALLOCATION,
                                   "Static allocation requires exactly one IoT hub.")
            rec["allocationPolicy"] = policy
        if hubs is not None:
            rec["iotHubs"] = list(hubs)
        for passthrough in ("customAllocationDefinition", "optionalDeviceInformation"):
            if body.get(passthrough) is not None:
                rec[passthrough] = copy.deepcopy(body[passthrough])

        now = utc_now_str()
        rec["etag"] = self._new_etag()
        rec["createdDateTimeUtc"] = existing["createdDateTimeUtc"] if existing else now
        rec["lastUpdatedDateTimeUtc"] = now
        return rec

    def _view(self, rec: Dict[str, Any]) -> Dict[str, Any]:
        """What the service API returns for an enrollment."""
        out = copy.deepcopy(rec)
        reg = self._registrations.get(reg_key(rec["registrationId"]))
        if reg is not None:
            out["registrationState"] = self._registration_view(reg)
        return out

    @staticmethod
    def _registration_view(reg: Dict[str, Any]) -> Dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in reg.items() if not k.startswith("_")}

    # ----------------------------------------------------------------- enrollments
    def get_enrollment(self, rid: str) -> Dict[str, Any]:
        with self._lock:
            rec = self._enrollments.get(reg_key(rid))
            if rec is None:
                raise DpsError(errors.ENROLLMENT_NOT_FOUND, f"Enrollment {rid} not found.")
            return self._view(rec)

    def put_enrollment(self, rid: str, body: object, if_match: Optional[str]) -> Tuple[Dict[str, Any], bool]:
        """Create (no If-Match) or update (If-Match etag or ``*``); returns (view, created)."""
        check_registration_id(rid)
        if_match = normalize_etag(if_match)
        with self._lock:
            existing = self._enrollments.get(reg_key(rid))
            if existing is None:
                if if_match not in (None, ""):
                    raise DpsError(errors.PRECONDITION_FAILED,
                                   f"Precondition failed: enrollment {rid} does not exist.")
            else:
                if if_match in (None, ""):
                    raise DpsError(errors.ENROLLMENT_EXISTS,
                                   f"Enrollment {rid} already exists; send If-Match with its etag to update it.")
                if if_match != "*" and if_match != existing["etag"]:
                    raise DpsError(errors.PRECONDITION_FAILED,
                                   f"Precondition failed: the etag does not match enrollment {rid}.")
            rec = self._normalize(body, rid, existing)
            if existing is not None and _attested_key(existing) != _attested_key(rec):
                # a new key means another TPM: what was issued to the old one stops working, so a
                # device that still holds the old imported key must go through the challenge again
                self._forget_device_keys(reg_key(rid))
            self._enrollments[reg_key(rid)] = rec
            self.save()
            return self._view(rec), existing is None

    def _forget_device_keys(self, key: str) -> None:
        self._auth_keys.pop(key, None)
        self._challenge_blobs.pop(key, None)

    def _supersede_pending(self, key: str) -> None:
        """A newer attempt's outcome is the record's: unfinished older operations end without
        touching it (they would otherwise resolve later and overwrite it)."""
        for op in self._operations.values():
            if op.reg_key == key and op.result is None:
                op.result = {"registrationId": op.registration_id, "status": "failed",
                             "errorCode": errors.UNAUTHORIZED,
                             "errorMessage": "Superseded by a newer registration attempt."}

    def delete_enrollment(self, rid: str, if_match: Optional[str]) -> None:
        if_match = normalize_etag(if_match)
        with self._lock:
            existing = self._enrollments.get(reg_key(rid))
            if existing is None:
                raise DpsError(errors.ENROLLMENT_NOT_FOUND, f"Enrollment {rid} not found.")
            if if_match not in (None, "", "*") and if_match != existing["etag"]:
                raise DpsError(errors.PRECONDITION_FAILED,
                               f"Precondition failed: the etag does not match enrollment {rid}.")
            del self._enrollments[reg_key(rid)]
            self._registrations.pop(reg_key(rid), None)
            self._forget_device_keys(reg_key(rid))
            self.save()

    def query_enrollments(self, query: object, max_items: Optional[int],
                          continuation: Optional[str]) -> Tuple[List[Dict[str, Any]], Optional[str]]:
        """``SELECT *`` over enrollments, ordered by registration ID, paged by an opaque token."""
        q = query.get("query") if isinstance(query, dict) else None
        if not isinstance(q, str) or q.strip().lower() not in ("*", "select * from enrollments"):
            raise DpsError(errors.BAD_REQUEST, "Only the query '*' (SELECT * FROM enrollments) is supported.")
        size = DEFAULT_PAGE if max_items is None else max_items
        if size < 1:
            raise DpsError(errors.BAD_REQUEST, "x-ms-max-item-count must be a positive integer.")
        after = None
        if continuation:
            try:
                after = json.loads(base64.urlsafe_b64decode(continuation.encode()))["after"]
            except (ValueError, KeyError, TypeError) as exc:
                raise DpsError(errors.BAD_REQUEST, "x-ms-continuation is invalid.") from exc
        with self._lock:
            keys = sorted(k for k in self._enrollments if after is None or k > after)
            page = keys[:size]
            items = [self._view(self._enrollments[k]) for k in page]
            token = None
            if len(keys) > size:
                token = base64.urlsafe_b64encode(json.dumps({"after": page[-1]}).encode()).decode()
            return items, token

    def bulk(self, body: object) -> Dict[str, Any]:
        """The bulk operation: per-item results, at most 10 enrollments."""
        if not isinstance(body, dict) or body.get("mode") not in BULK_MODES:
            raise DpsError(errors.BAD_REQUEST,
                           "'mode' must be create, update, updateIfMatchETag or delete.")
        items = body.get("enrollments")
        if not isinstance(items, list) or not items:
            raise DpsError(errors.BAD_REQUEST, "'enrollments' must be a non-empty list.")
        if len(items) > MAX_BULK:
            raise DpsError(errors.BULK_TOO_LARGE,
                           f"A bulk operation takes at most {MAX_BULK} enrollments, got {len(items)}.")
        mode = body["mode"]
        errs: List[Dict[str, Any]] = []
        with self._lock:
            for item in items:
                rid = item.get("registrationId") if isinstance(item, dict) else None
                try:
                    if not isinstance(rid, str):
                        raise DpsError(errors.BAD_REQUEST, "registrationId is required.")
                    exists = reg_key(rid) in self._enrollments
                    if mode == "create":
                        if exists:
                            raise DpsError(errors.ENROLLMENT_EXISTS, f"Enrollment {rid} already exists.")
                        self.put_enrollment(rid, item, None)
                    elif mode == "update":
                        self.put_enrollment(rid, item, "*" if exists else None)
                    elif mode == "updateIfMatchETag":
                        etag = item.get("etag")
                        if not exists:
                            raise DpsError(errors.ENROLLMENT_NOT_FOUND, f"Enrollment {rid} not found.")
                        if not etag:
                            raise DpsError(errors.PRECONDITION_FAILED, "The enrollment carries no etag.")
                        self.put_enrollment(rid, item, etag)
                    else:
                        self.delete_enrollment(rid, item.get("etag"))
                except DpsError as e:
                    errs.append({"registrationId": rid, "errorCode": e.code, "errorStatus": e.message})
        return {"isSuccessful": not errs, "errors": errs}

    # ----------------------------------------------------------------- registration records
    def get_registration(self, rid: str) -> Dict[str, Any]:
        with self._lock:
            self._resolve_pending(reg_key(rid))
            reg = self._registrations.get(reg_key(rid))
            if reg is None:
                raise DpsError(errors.REGISTRATION_NOT_FOUND, f"Registration {rid} not found.")
            return self._registration_view(reg)

    def delete_registration(self, rid: str, if_match: Optional[str]) -> None:
        if_match = normalize_etag(if_match)
        with self._lock:
            reg = self._registrations.get(reg_key(rid))
            if reg is None:
                raise DpsError(errors.REGISTRATION_NOT_FOUND, f"Registration {rid} not found.")
            if if_match not in (None, "", "*") and if_match != reg["etag"]:
                raise DpsError(errors.PRECONDITION_FAILED,
                               f"Precondition failed: the etag does not match registration {rid}.")
            del self._registrations[reg_key(rid)]
            self.save()

    def _record(self, rid: str, **fields: Any) -> Dict[str, Any]:
        """Create or update the registration record; ``None`` values remove a field."""
        key = reg_key(rid)
        now = utc_now_str()
        reg = self._registrations.get(key)
        if reg is None:
            reg = {"registrationId": rid, "createdDateTimeUtc": now}
            self._registrations[key] = reg
        for k, v in fields.items():
            if v is None:
                reg.pop(k, None)
            else:
                reg[k] = v
        reg["lastUpdatedDateTimeUtc"] = now
        reg["etag"] = self._new_etag()
        # keep the DPS field order readable
        order = ["registrationId", "createdDateTimeUtc", "assignedHub", "deviceId", "status",
                 "substatus", "errorCode", "errorMessage", "lastUpdatedDateTimeUtc", "etag", "payload"]
        ordered = {k: reg[k] for k in order if k in reg}
        ordered.update({k: v for k, v in reg.items() if k not in ordered})
        self._registrations[key] = ordered
        return ordered

    # ----------------------------------------------------------------- device flow
    def check_scope(self, scope: str) -> None:
        if scope.lower() != self.id_scope.lower():
            raise DpsError(errors.NOT_FOUND, f"ID scope {scope} is not known to this service.")

    def tpm_challenge(self, rid: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """First, unauthenticated register call: validate, compare the EK, issue the challenge.

        Returns the 401 body (``authenticationKey`` and the other fields real DPS sends); raises DpsError (401) when the registration is
        unknown or the EK does not match (the latter is recorded as a failed registration).
        """
        tpm_body = body.get("tpm")
        if not isinstance(tpm_body, dict):
            raise DpsError(errors.UNAUTHORIZED, "Unauthorized: TPM attestation data missing.")
        presented_ek = tpm.parse_endorsement_key(tpm_body.get("endorsementKey"))
        srk = tpm.parse_storage_root_key(tpm_body.get("storageRootKey"))
        with self._lock:
            enr = self._enrollments.get(reg_key(rid))
            if enr is None or enr["attestation"].get("type") != "tpm":
                raise DpsError(errors.UNAUTHORIZED, "Unauthorized: no TPM enrollment for this registration ID.")
            enrolled_ek = tpm.parse_endorsement_key(enr["attestation"]["tpm"]["endorsementKey"])
            if not tpm.same_key(enrolled_ek, presented_ek):
                message = "The endorsement key presented by the device does not match the enrollment."
                self._supersede_pending(reg_key(rid))
                self._record(enr["registrationId"], status="failed", errorCode=errors.UNAUTHORIZED,
                             errorMessage=message, assignedHub=None, deviceId=None, substatus=None)
                self.save()
                raise DpsError(errors.UNAUTHORIZED, f"Unauthorized: {message}")
            challenge = tpm.build_challenge(enrolled_ek, srk)
            self._auth_keys[reg_key(rid)] = _AuthKey(challenge.hmac_key)
            enr["attestation"]["tpm"]["storageRootKey"] = tpm_body["storageRootKey"].strip()
            self._challenge_blobs[reg_key(rid)] = challenge.authentication_key
            self.save()
            return challenge.response_body()

    def verify_device_sas(self, rid: str, header: Optional[str]) -> None:
        """Check the SAS of a TPM device, signed with the key imported from the challenge."""
        try:
            token = sas.parse(header or "")
        except sas.SasError as exc:
            raise DpsError(errors.UNAUTHORIZED, f"Unauthorized: {exc}") from exc
        expected = f"{self.id_scope}/registrations/{rid}".lower()
        resource = token.resource.strip().lstrip("/").lower()
        if resource != expected and not resource.endswith("/" + expected):
            raise DpsError(errors.UNAUTHORIZED, "Unauthorized: the token's sr does not name this registration.")
        if token.key_name not in (None, "") and token.key_name.lower() != "registration":
            raise DpsError(errors.UNAUTHORIZED, "Unauthorized: skn must be 'registration'.")
        with self._lock:
            ak = self._auth_keys.get(reg_key(rid))
        if ak is None:
            raise DpsError(errors.UNAUTHORIZED, "Unauthorized: no authentication key was issued; register first.")
        try:
            sas.verify_with(token, sas.hmac_signer(ak.key))
        except sas.SasError as exc:
            raise DpsError(errors.UNAUTHORIZED, f"Unauthorized: {exc}") from exc

    def start_registration(self, rid: str, payload: Any) -> Operation:
        """Second, authenticated register call: start an assigning operation."""
        with self._lock:
            enr = self._enrollments.get(reg_key(rid))
            if enr is None:
                raise DpsError(errors.UNAUTHORIZED, "Unauthorized: no enrollment for this registration ID.")
            op = Operation(
                operation_id=f"4.{uuid.uuid4().hex[:16]}.{uuid.uuid4()}",
                reg_key=reg_key(rid),
                registration_id=enr["registrationId"],
                ready_at=time.time() + self.assignment_delay_s,
                payload=payload,
            )
            self._supersede_pending(op.reg_key)
            self._operations[op.operation_id] = op
            if payload is not None:
                self._device_payloads[reg_key(rid)] = copy.deepcopy(payload)
            # an earlier assignment (hub, substatus) stays visible while assigning: reprovisioning
            # decisions compare against it
            self._record(enr["registrationId"], status="assigning", errorCode=None, errorMessage=None)
            self.save()
            return op

    def _allocate(self, enr: Dict[str, Any], rid: str) -> str:
        policy = (enr.get("allocationPolicy") or self.allocation_policy).lower()
        hubs = enr.get("iotHubs") or ([enr["iotHubHostName"]] if enr.get("iotHubHostName") else None)
        if not hubs:
            hubs = [h.name for h in self.hubs if h.apply_allocation_policy]
        if not hubs:
            raise DpsError(errors.INVALID_ALLOCATION, "No IoT hub is linked to this provisioning service.")
        if policy == "custom":
            raise DpsError(errors.CUSTOM_ALLOCATION_FAILED,
                           "Custom allocation failed: the emulator has no allocation webhook.")
        if policy == "hashed":
            ordered = sorted(hubs, key=str.lower)
            idx = int(hashlib.sha256(rid.lower().encode()).hexdigest(), 16) % len(ordered)
            return ordered[idx]
        return hubs[0]  # static (exactly one) and geoLatency (all hubs are equally near)

    def _resolve(self, op: Operation) -> Dict[str, Any]:
        """Finish an operation: allocate per policy, honour reprovisioning, record the state."""
        enr = self._enrollments.get(op.reg_key)
        prev = self._registrations.get(op.reg_key) or {}
        rid = op.registration_id
        if enr is None:
            state = self._record(rid, status="failed", errorCode=errors.ENROLLMENT_NOT_FOUND,
                                 errorMessage="The enrollment was deleted.", assignedHub=None, deviceId=None)
        elif enr["provisioningStatus"] == "disabled":
            state = self._record(rid, status="disabled", errorCode=errors.ENROLLMENT_DISABLED,
                                 errorMessage="The enrollment is disabled.", assignedHub=None,
                                 deviceId=None, substatus=None)
        else:
            try:
                hub = self._allocate(enr, rid)
            except DpsError as e:
                state = self._record(rid, status="failed", errorCode=e.code, errorMessage=e.message,
                                     assignedHub=None, deviceId=None, substatus=None)
            else:
                policy = enr["reprovisionPolicy"]
                old_hub = prev.get("assignedHub")
                substatus = "initialAssignment"
                if old_hub:
                    if not policy["updateHubAssignment"]:
                        hub = old_hub
                        substatus = prev.get("substatus") or "initialAssignment"
                    elif hub.lower() != old_hub.lower():
                        substatus = "deviceDataMigrated" if policy["migrateDeviceData"] else "deviceDataReset"
                    else:
                        substatus = prev.get("substatus") or "initialAssignment"
                payload = op.payload if (self.echo_payload and op.payload is not None) else None
                state = self._record(rid, status="assigned", assignedHub=hub,
                                     deviceId=enr.get("deviceId") or enr["registrationId"],
                                     substatus=substatus, errorCode=None, errorMessage=None,
                                     payload=payload)
                # as the real DPS: the device identity in the assigned hub (an existing one is kept)
                self.hub_registry.ensure_device(hub, state["deviceId"],
                                                edge=bool((enr.get("capabilities") or {}).get("iotEdge")))
        op.result = self._registration_view(state)
        self.save()
        return op.result

    def _resolve_pending(self, key: str) -> None:
        now = time.time()
        for op in list(self._operations.values()):
            if op.reg_key == key and op.result is None and op.ready_at <= now:
                self._resolve(op)

    def operation_status(self, rid: str, operation_id: str) -> Tuple[int, Dict[str, Any]]:
        """(HTTP status, body) of a device's operation poll: 202 while assigning, then 200."""
        with self._lock:
            op = self._operations.get(operation_id)
            if op is None or op.reg_key != reg_key(rid):
                raise DpsError(errors.OPERATION_NOT_FOUND, f"Operation {operation_id} not found.")
            if op.result is None and op.ready_at <= time.time():
                self._resolve(op)
            if op.result is None:
                return 202, {"operationId": op.operation_id, "status": "assigning",
                             "registrationState": {"registrationId": op.registration_id,
                                                   "status": "assigning"}}
            state = copy.deepcopy(op.result)
            if state["status"] == "assigned":
                blob = self._challenge_blobs.get(op.reg_key)
                if blob:
                    state["tpm"] = {"authenticationKey": blob}
            return 200, {"operationId": op.operation_id, "status": state["status"], "registrationState": state}

    def device_status(self, rid: str) -> Dict[str, Any]:
        """Device registration status lookup (POST .../registrations/{id})."""
        return self.get_registration(rid)

    # ----------------------------------------------------------------- introspection
    def device_payload(self, rid: str) -> Any:
        with self._lock:
            return copy.deepcopy(self._device_payloads.get(reg_key(rid)))

    def counts(self) -> Dict[str, int]:
        with self._lock:
            return {"enrollments": len(self._enrollments), "registrations": len(self._registrations),
                    "operations": len(self._operations)}
