"""The admin API: plain HTTP, bound to 127.0.0.1 only (devices in network namespaces cannot
reach it), never throttled or fault-injected.

=======  =====================================  ============================================
GET      /_emulator/health                      ``{"ok": true}``
GET      /_emulator/config                      limits, faults, behaviour, object counts
POST     /_emulator/config                      change them (JSON, see Emulator.configure)
GET      /_emulator/counters                    request/status/throttle/fault counters
POST     /_emulator/counters/reset              zero the counters
GET      /_emulator/section                     the devkit.json section (holds secrets)
GET      /_emulator/registrations/{id}/payload  the payload the device last sent
=======  =====================================  ============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .web import Request, Response

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator


class AdminApp:
    """Callable app of the admin port."""

    def __init__(self, emu: "Emulator"):
        self.emu = emu

    def __call__(self, req: Request) -> Response:
        seg = req.segments
        if not seg or seg[0] != "_emulator":
            return Response(404, {"message": "not found"})
        seg = seg[1:]
        try:
            if seg == ["health"] and req.method == "GET":
                return Response(200, {"ok": True})
            if seg == ["config"] and req.method == "GET":
                return Response(200, self.emu.describe())
            if seg == ["config"] and req.method == "POST":
                body = req.json() or {}
                if not isinstance(body, dict):
                    return Response(400, {"message": "body must be a JSON object"})
                return Response(200, self.emu.configure(**body))
            if seg == ["counters"] and req.method == "GET":
                return Response(200, self.emu.counters())
            if seg == ["counters", "reset"] and req.method == "POST":
                self.emu.reset_counters()
                return Response(200, {"ok": True})
            if seg == ["section"] and req.method == "GET":
                return Response(200, self.emu.section())
            if len(seg) == 3 and seg[0] == "registrations" and seg[2] == "payload" and req.method == "GET":
                return Response(200, {"payload": self.emu.store.device_payload(seg[1])})
        except (ValueError, TypeError) as exc:
            return Response(400, {"message": str(exc)})
        return Response(404, {"message": "not found"})
