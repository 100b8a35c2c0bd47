"""`az edge-tpm install` and `az edge-tpm status` on one connected device: the plan of
steps.py run through plan.run_steps, and the runtime's health report, shaped for output."""
import time
from typing import Callable, Optional

from azext_edgetpm.errors import DeviceError, EdgeTpmError, option
from . import configtoml, facts as facts_mod, platform, runtime, steps
from .plan import CHANGED, WOULD_CHANGE, Context, InstallSettings, run_steps
from .proxy import DIRECT_ONLY_CHECKS
from .proxy_step import ProxyStep

STEPS = (steps.OsStep, ProxyStep, steps.PackageSourceStep, steps.ContainerEngineStep, steps.IotEdgeStep,
         steps.ConfigStep, steps.TpmAccessStep, steps.RuntimeStep)


def install(session, settings: InstallSettings, read_registration_id: Optional[Callable[[bool], dict]] = None,
            progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run the install plan (or, with settings.dry_run, only its checks) and report it."""
    started = time.monotonic()
    ctx = Context(session, settings, read_registration_id, progress, managed_files=steps.MANAGED_FILES)
    ctx.progress("Reading the device's state")
    ctx.refresh()
    failure = None
    try:
        report = run_steps(ctx, [cls() for cls in STEPS])
    except EdgeTpmError as exc:  # run_steps' failure, with its step report
        if getattr(exc, "report", None) is None:
            raise
        failure, report = exc, exc.report
    changed = any(s["status"] == CHANGED for s in report)
    result = {
        "device": ctx.display,
        "registrationId": ctx.known_registration_id,
        "registrationIdSource": ctx.registration_id_source,
        "dryRun": settings.dry_run,
        "changed": changed,
        "summary": _summary(report, settings.dry_run),
        "platform": ctx.platform.to_dict() if ctx.platform else None,
        "steps": report,
        "config": {"path": configtoml.CONFIG_PATH, "backup": ctx.extra.get("config_backup")},
        "runtime": _runtime_view(ctx.extra.get("runtime")),
        "notes": ctx.notes,
        "warnings": ctx.warnings,
        "seconds": round(time.monotonic() - started, 1),
    }
    if settings.dry_run:
        result["wouldChange"] = any(s["status"] == WOULD_CHANGE for s in report)
    if failure is not None:
        # As Ansible's fail_json: the error carries everything that was done before it.
        result["failed"] = True
        result["error"] = str(failure)
        failure.result = result
        raise failure
    return result


def _summary(report, dry_run: bool) -> str:
    if dry_run:
        names = [s["name"] for s in report if s["status"] == WOULD_CHANGE]
        return ("dry run: would change " + ", ".join(names)) if names else "dry run: nothing to change"
    names = [s["name"] for s in report if s["status"] == CHANGED]
    if names:
        return "changed " + ", ".join(names)
    return "nothing changed: the device was already installed and configured"


def _runtime_view(report: Optional[dict]) -> Optional[dict]:
    if not report:
        return None
    return {"version": report.get("version"), "healthy": report.get("healthy"),
            "services": {k: v["state"] for k, v in (report.get("services") or {}).items()},
            "provisioning": report.get("provisioning"),
            "checks": (report.get("checks") or {}).get("counts"),
            "settle": report.get("settle")}


def status(session) -> dict:
    """Health of IoT Edge on a device, read-only."""
    facts = facts_mod.gather(session, [configtoml.CONFIG_PATH])
    display = session.target.display
    if not facts.has("iotedge") or not facts.installed("aziot-edge"):
        raise DeviceError(f"IoT Edge is not installed on {display}.",
                          f"Install it with az edge-tpm install {option('host')} {session.target.alias} ...")
    config = facts.file(configtoml.CONFIG_PATH)
    behind_proxy = bool(config and configtoml.agent_proxy_url(config.text))
    report = runtime.collect(session, with_check=True, dont_run=DIRECT_ONLY_CHECKS if behind_proxy else ())
    try:
        config_summary = configtoml.summarize(config.text) if config else None
    except ValueError as exc:
        config_summary = {"error": f"not valid TOML: {exc}"}
    try:
        arch = platform.debian_arch(facts.dpkg_arch, facts.uname_machine)
        os_name = platform.parse_os_release(facts.os_release).get("PRETTY_NAME")
    except Exception:  # pylint: disable=broad-except  # os info is informative only
        arch, os_name = None, None
    prov = report["provisioning"]
    if not (config_summary or {}).get("source") and "error" not in (config_summary or {}):
        # No provisioning configured (never installed, or deprovisioned): an assignment in the
        # logs is history, not the device's state.
        prov = {"state": "not configured", "assignedHub": None, "deviceId": None,
                "lastMessage": f"{configtoml.CONFIG_PATH} configures no provisioning",
                "previous": {k: prov.get(k) for k in ("state", "assignedHub", "deviceId")}}
        report["provisioning"] = prov
    result = {
        "device": display,
        "os": os_name,
        "architecture": arch,
        "runtime": {"version": report["version"],
                    "packages": {p: facts.installed(p) for p in ("aziot-edge", "aziot-identity-service",
                                                                 "moby-engine", "tpm2-tools")}},
        "healthy": report["healthy"] and prov["state"] == "assigned",
        "services": report["services"],
        "modules": report["modules"],
        "checks": report["checks"],
        "provisioning": prov,
        "config": config_summary,
        "summary": runtime.summary(report),
    }
    if report.get("problems"):
        result["problems"] = report["problems"]
    return result
