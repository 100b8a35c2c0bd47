"""`az edge-tpm upgrade`: IoT Edge on installed devices moved to a newer runtime (edge/upgrade.py),
one device (--host) or an inventory through the fleet runner and its journal (--state): a device
whose record says done is skipped, a killed run continues, and a device already on the target
changes nothing, so none is upgraded twice. DPS is not involved: the devices keep their identity.
"""
from dataclasses import dataclass, field
from typing import List, Optional

from azext_edgetpm.operations.pipeline import CHANGED, OK, DeviceOutcome, Step, outcome_fields

STEP_NAMES = ("upgrade",)
WOULD_CHANGE = "would-change"


@dataclass
class UpgradeServices:
    settings: object                      # edge.upgrade.UpgradeSettings (the run's defaults)


class UpgradeStep(Step):
    name = "upgrade"

    def run(self, ctx):
        import dataclasses
        from azext_edgetpm.edge.upgrade import upgrade
        settings = ctx.services.settings
        row_version = getattr(ctx.job, "edge_version", None)
        if row_version:
            settings = dataclasses.replace(settings, edge_version=row_version)
        try:
            result = upgrade(ctx.session(), settings)
        except Exception as exc:
            result = getattr(exc, "result", None)
            if result is not None:
                exc.journal = _entry(result)
            raise
        entry = _entry(result)
        entry["status"] = (WOULD_CHANGE if result["dryRun"] and result["changes"] else
                           CHANGED if result["changed"] else OK)
        return entry


def _entry(result: dict) -> dict:
    return {"detail": result.get("summary"), "current": result.get("current"), "target": result.get("target"),
            "installed": result.get("installed"), "changes": result.get("changes"),
            "rolledBack": result.get("rolledBack"), "warnings": result.get("warnings"), "notes": result.get("notes"),
            "hub": result.get("hub"), "configBackup": (result.get("config") or {}).get("backup"),
            "provisioning": (result.get("runtime") or {}).get("provisioning")}


def pipeline() -> List[Step]:
    return [UpgradeStep()]


def finished(record: dict) -> bool:
    return record.get("status") == "done" and "upgrade" in (record.get("steps") or {})


@dataclass
class UpgradeResult(DeviceOutcome):
    """One device's outcome (status: upgraded | planned | failed | interrupted)."""
    current: Optional[dict] = None
    target: Optional[dict] = None
    installed: Optional[dict] = None
    changes: List[str] = field(default_factory=list)
    rolled_back: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    hub: Optional[dict] = None
    config_backup: Optional[str] = None

    def details(self) -> dict:
        return {"current": self.current, "target": self.target, "installed": self.installed,
                "changes": list(self.changes), "rolledBack": self.rolled_back or False,
                "warnings": list(self.warnings), "notes": list(self.notes), "configBackup": self.config_backup,
                "hubSide": self.hub}


def result_from_record(host: str, record: dict, outcome: str, dry_run: bool = False,
                       seconds: float = 0.0) -> UpgradeResult:
    step = (record.get("steps") or {}).get("upgrade") or {}
    return UpgradeResult(
        **outcome_fields(host, record, outcome, STEP_NAMES, "upgraded", dry_run, seconds),
        current=step.get("current"), target=step.get("target"), installed=step.get("installed"),
        changes=list(step.get("changes") or []), rolled_back=step.get("rolledBack") or None,
        warnings=list(step.get("warnings") or []), notes=list(step.get("notes") or []), hub=step.get("hub"),
        config_backup=step.get("configBackup"))
