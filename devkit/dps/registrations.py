"""The DPS's registration side (a mixin of :class:`~devkit.dps.store.Store`): registration IDs,
registration records and the device flow (TPM challenge, device SAS, assigning operations,
allocation to a linked hub, reprovisioning), raising :class:`~devkit.dps.errors.DpsError` for
the API-visible failures."""

from __future__ import annotations

import copy
import hashlib
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

from . import errors, sas, tpm
from .errors import DpsError, utc_now_str

REGISTRATION_ID_RE = re.compile(r"^[A-Za-z0-9\-._:]{1,128}$")


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
class AuthKey:
    """The key a TPM challenge issued to a device (it signs the device's SAS tokens)."""
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


def deletable(records: Dict[str, Dict[str, Any]], rid: str, if_match: Optional[str], not_found: str,
              what: str) -> Dict[str, Any]:
    """The record of ``rid`` that a DELETE with ``if_match`` (an etag, ``*`` or none) may remove;
    DpsError ``not_found`` when there is none, PRECONDITION_FAILED when its etag is another."""
    if_match = normalize_etag(if_match)
    rec = records.get(reg_key(rid))
    if rec is None:
        raise DpsError(not_found, f"{what} {rid} not found.")
    if if_match not in (None, "", "*") and if_match != rec["etag"]:
        raise DpsError(errors.PRECONDITION_FAILED,
                       f"Precondition failed: the etag does not match {what.lower()} {rid}.")
    return rec


def registration_view(reg: Dict[str, Any]) -> Dict[str, Any]:
    """What the API returns for a registration record: its fields but those starting with ``_``."""
    return {k: copy.deepcopy(v) for k, v in reg.items() if not k.startswith("_")}


class Registrations:
    """Registration records and the device flow of a Store (a mixin: it uses the store's id
    scope, linked hubs, allocation policy, enrollments, locks, etags and ``save``)."""
    id_scope: str
    hubs: list
    allocation_policy: str
    assignment_delay_s: float
    echo_payload: bool
    hub_registry: Any  # the store's hub.HubRegistry
    _lock: threading.RLock
    _enrollments: Dict[str, Dict[str, Any]]
    _registrations: Dict[str, Dict[str, Any]]
    _auth_keys: Dict[str, AuthKey]
    _operations: Dict[str, Operation]
    _device_payloads: Dict[str, Any]
    _challenge_blobs: Dict[str, str]
    save: Callable[[], None]                   # the store's
    _new_etag: Callable[[], str]

    # ----------------------------------------------------------------- registration records
    def get_registration(self, rid: str) -> Dict[str, Any]:
        with self._lock:
            self._resolve_pending(reg_key(rid))
            reg = self._registrations.get(reg_key(rid))
            if reg is None:
                raise DpsError(errors.REGISTRATION_NOT_FOUND, f"Registration {rid} not found.")
            return registration_view(reg)

    def delete_registration(self, rid: str, if_match: Optional[str]) -> None:
        with self._lock:
            deletable(self._registrations, rid, if_match, errors.REGISTRATION_NOT_FOUND, "Registration")
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
            self._auth_keys[reg_key(rid)] = AuthKey(challenge.hmac_key)
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
        op.result = registration_view(state)
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
