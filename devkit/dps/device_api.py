"""DPS device API (api-version 2021-06-01) handlers with the TPM attestation flow.

1. ``PUT /{idScope}/registrations/{id}/register`` with ``tpm`` and no Authorization: 401
   ``{"message", "authenticationKey", "unencryptedAuthenticationKey": null, "keyName":
   "registration"}`` (the TPM challenge, shaped as real DPS answers), or a DPS error when the registration is
   unknown or the EK does not match the enrollment.
2. The same PUT with ``Authorization: SharedAccessSignature ...`` signed by the imported key:
   202 ``{"operationId", "status": "assigning"}`` with Retry-After.
3. ``GET .../operations/{operationId}``: 202 while assigning, then 200 with ``status``
   ``assigned`` | ``failed`` | ``disabled`` and ``registrationState``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors
from .errors import DpsError
from .registrations import check_registration_id
from .web import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator


def _body(req: Request, rid: str) -> dict:
    body = req.json() or {}
    if not isinstance(body, dict):
        raise DpsError(errors.BAD_REQUEST, "The request body must be a device registration object.")
    if body.get("registrationId") is not None and str(body["registrationId"]).lower() != rid.lower():
        raise DpsError(errors.BAD_REQUEST, "The registrationId in the body does not match the URL.")
    return body


def _pending_headers(store, scope: str, rid: str, op_id: str) -> dict:
    """``retry-after`` and ``Location`` of a 202, as the REST reference lists them."""
    return {"Retry-After": str(store.operation_retry_after_s),
            "Location": f"/{scope}/registrations/{rid}/operations/{op_id}"}


def register(emu: "Emulator", req: Request, scope: str, id: str) -> Response:  # noqa: A002
    store = emu.store
    store.check_scope(scope)
    check_registration_id(id)
    body = _body(req, id)
    auth = req.header("authorization")
    if auth:
        try:
            store.verify_device_sas(id, auth)
        except DpsError:
            if not isinstance(body.get("tpm"), dict):
                raise
            auth = None  # a stale or foreign token with TPM data: answer with a fresh challenge
    if not auth:
        if not isinstance(body.get("tpm"), dict):
            raise DpsError(errors.UNAUTHORIZED, "Unauthorized: no credentials and no TPM attestation data.")
        return Response(401, store.tpm_challenge(id, body))
    op = store.start_registration(id, body.get("payload"))
    return Response(202, {"operationId": op.operation_id, "status": "assigning"},
                    _pending_headers(store, scope, id, op.operation_id))


def operation_status(emu: "Emulator", req: Request, scope: str, id: str, op: str) -> Response:  # noqa: A002
    store = emu.store
    store.check_scope(scope)
    store.verify_device_sas(id, req.header("authorization"))
    status, body = store.operation_status(id, op)
    return Response(status, body, _pending_headers(store, scope, id, op) if status == 202 else {})


def status_lookup(emu: "Emulator", req: Request, scope: str, id: str) -> Response:  # noqa: A002
    store = emu.store
    store.check_scope(scope)
    store.verify_device_sas(id, req.header("authorization"))
    return Response(200, store.device_status(id))
