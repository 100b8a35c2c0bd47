"""The DPS's enrollment side (a mixin of :class:`~devkit.dps.store.Store`): individual
enrollments validated as the service API does, etags, query pages and bulk operations, raising
:class:`~devkit.dps.errors.DpsError` for the API-visible failures."""

from __future__ import annotations

import base64
import copy
import json
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import errors, tpm
from .errors import DpsError, utc_now_str
from .registrations import check_registration_id, deletable, normalize_etag, reg_key, registration_view

ALLOCATION_POLICIES = ("hashed", "geoLatency", "static", "custom")
ATTESTATION_TYPES = ("tpm", "x509", "symmetricKey")
BULK_MODES = ("create", "update", "updateIfMatchETag", "delete")
MAX_BULK = 10
DEFAULT_PAGE = 100


def _attested_key(enrollment: Dict[str, Any]) -> Tuple[Optional[str], Optional[str]]:
    att = enrollment.get("attestation") or {}
    return att.get("type"), (att.get("tpm") or {}).get("endorsementKey")


def _bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise DpsError(errors.BAD_REQUEST, f"'{name}' must be a boolean.")


class Enrollments:
    """Individual enrollments of a Store (a mixin: it uses the store's lock, records, etags,
    linked hubs, ``save`` and the registration side's ``_forget_device_keys``)."""
    _lock: threading.RLock
    _enrollments: Dict[str, Dict[str, Any]]
    _registrations: Dict[str, Dict[str, Any]]
    save: Callable[[], None]                   # the store's
    hub_names: Callable[[], List[str]]
    _new_etag: Callable[[], str]
    _forget_device_keys: Callable[[str], None]  # the registration side's

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
            out["registrationState"] = registration_view(reg)
        return out

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

    def delete_enrollment(self, rid: str, if_match: Optional[str]) -> None:
        with self._lock:
            deletable(self._enrollments, rid, if_match, errors.ENROLLMENT_NOT_FOUND, "Enrollment")
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
