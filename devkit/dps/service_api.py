"""DPS service API (api-version 2021-10-01) handlers: individual enrollments and registration
records. Authentication and throttling happen before these run (see :mod:`devkit.dps.app`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors
from .errors import DpsError
from .web import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator


def _etag_header(view) -> dict:
    return {"ETag": f'"{view["etag"]}"'} if view.get("etag") else {}


def get_enrollment(emu: "Emulator", req: Request, id: str) -> Response:  # noqa: A002 (route param)
    view = emu.store.get_enrollment(id)
    return Response(200, view, _etag_header(view))


def put_enrollment(emu: "Emulator", req: Request, id: str) -> Response:  # noqa: A002
    view, _created = emu.store.put_enrollment(id, req.json(), req.header("if-match"))
    return Response(200, view, _etag_header(view))


def delete_enrollment(emu: "Emulator", req: Request, id: str) -> Response:  # noqa: A002
    emu.store.delete_enrollment(id, req.header("if-match"))
    return Response(204)


def get_attestation(emu: "Emulator", req: Request, id: str) -> Response:  # noqa: A002
    return Response(200, emu.store.get_enrollment(id)["attestation"])


def query_enrollments(emu: "Emulator", req: Request) -> Response:
    raw = req.header("x-ms-max-item-count")
    try:
        max_items = int(raw) if raw not in (None, "") else None
    except ValueError as exc:
        raise DpsError(errors.BAD_REQUEST, "x-ms-max-item-count must be an integer.") from exc
    items, token = emu.store.query_enrollments(req.json(), max_items, req.header("x-ms-continuation"))
    headers = {"x-ms-item-type": "Enrollment"}
    if max_items is not None:
        headers["x-ms-max-item-count"] = str(max_items)
    if token:
        headers["x-ms-continuation"] = token
    return Response(200, items, headers)


def bulk(emu: "Emulator", req: Request) -> Response:
    return Response(200, emu.store.bulk(req.json()))


def get_registration(emu: "Emulator", req: Request, id: str) -> Response:  # noqa: A002
    view = emu.store.get_registration(id)
    return Response(200, view, _etag_header(view))


def delete_registration(emu: "Emulator", req: Request, id: str) -> Response:  # noqa: A002
    emu.store.delete_registration(id, req.header("if-match"))
    return Response(204)
