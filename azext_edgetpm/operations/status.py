"""Step `status`: the health of IoT Edge on one device, read-only."""
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class StatusResult:
    device: str
    runtime_version: Optional[str]
    healthy: bool
    provisioning_state: Optional[str]
    assigned_hub: Optional[str] = None
    device_id: Optional[str] = None
    summary: Optional[str] = None
    report: dict = field(default_factory=dict)   # the full JSON of `az edge-tpm status`

    def to_output(self) -> dict:
        return dict(self.report)


def status(session) -> StatusResult:
    """Versions, services, modules, checks and provisioning of the device behind a session."""
    from azext_edgetpm.edge.install import status as read_status
    report = read_status(session)
    prov = report.get("provisioning") or {}
    return StatusResult(device=report.get("device"), runtime_version=(report.get("runtime") or {}).get("version"),
                        healthy=bool(report.get("healthy")), provisioning_state=prov.get("state"),
                        assigned_hub=prov.get("assignedHub"), device_id=prov.get("deviceId"),
                        summary=report.get("summary"), report=report)
