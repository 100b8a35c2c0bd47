"""Step `wait`: until the device is assigned to an IoT hub.

`wait` asks DPS (GET /registrations/{id}, paced and throttle-aware). `from_device` takes the
assignment the device's own identity service reported (no DPS call): the fleet uses it so that
DPS service calls stay with the enrollments, and falls back to DPS when the device has not
reported an assignment.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class WaitResult:
    registration_id: str
    status: str
    assigned_hub: Optional[str] = None
    device_id: Optional[str] = None
    source: str = "dps"                    # dps | device
    state: dict = field(default_factory=dict)

    def to_output(self) -> dict:
        if self.state:
            return dict(self.state)
        return {"registrationId": self.registration_id, "status": self.status, "assignedHub": self.assigned_hub,
                "deviceId": self.device_id, "source": self.source}


def wait(client, registration_id: str, timeout: Optional[float] = None, interval: Optional[float] = None,
         progress: Optional[Callable[[str], None]] = None, clock=None, sleep=None) -> WaitResult:
    """Poll DPS until assigned (returned), failed/disabled or timed out (raised)."""
    import time
    from azext_edgetpm import stop
    from azext_edgetpm.dps.registration import DEFAULT_INTERVAL, DEFAULT_TIMEOUT, wait_for_assignment
    state = wait_for_assignment(client, registration_id, timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                                interval=DEFAULT_INTERVAL if interval is None else interval, progress=progress,
                                clock=clock or time.monotonic, sleep=sleep or stop.sleep)
    return WaitResult(registration_id=state.get("registrationId") or registration_id, status=state.get("status"),
                      assigned_hub=state.get("assignedHub"), device_id=state.get("deviceId"), source="dps",
                      state=state)


def from_device(registration_id: str, provisioning: dict) -> Optional[WaitResult]:
    """The assignment the device reported (runtime provisioning view), or None if it reported none."""
    if (provisioning or {}).get("state") != "assigned" or not provisioning.get("assignedHub"):
        return None
    return WaitResult(registration_id=registration_id, status="assigned", assigned_hub=provisioning["assignedHub"],
                      device_id=provisioning.get("deviceId"), source="device")
