"""`az edge-tpm upgrade` on one connected device, as Microsoft's "Update IoT Edge" procedure does
it: aziot-edge and aziot-identity-service together to the target version (the exact identity
service that aziot-edge version depends on), the container engine when the target line needs a
newer one, config.toml's edgeAgent image to the target line (comments and other settings kept),
`iotedge config apply`, then the install's health verification. Provisioning is kept: the identity
service starts from its device_info backup (same hub, same device ID, no new registration).

A device already on the target changes nothing. A target older than the installed version is
refused unless allow_downgrade. When the runtime is not healthy and assigned after the upgrade,
the exact package versions recorded before are installed again and config.toml is put back byte
for byte (unless rollback is off); the result says so.
"""
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from azext_edgetpm.errors import DeviceError, EdgeTpmError, option
from . import apt, configtoml, platform, runtime, support
from .plan import Context
from .steps import IotEdgeStep, RuntimeStep, backup

EDGE_PACKAGES = ("aziot-edge", "aziot-identity-service")
ENGINE = "moby-engine"
BACKUP_DIR = "/var/backups/edge-tpm"


@dataclass
class UpgradeSettings:
    """What the user asked for (the attribute names the install's RuntimeStep reads are kept)."""
    edge_version: Optional[str] = None
    allow_downgrade: bool = False
    rollback: bool = True
    dry_run: bool = False
    settle_timeout: float = 90.0
    registration_id: Optional[str] = None           # (never registers: kept for the shared Context)
    proxy: Optional[object] = None                  # (the device's own proxy settings are kept)
    before_registration: Optional[Callable[[], None]] = field(default=None, repr=False, compare=False)


class _UpgradeRuntimeStep(RuntimeStep):
    """The install's apply-and-verify, judged on the device's own settings: behind a proxy (its
    config.toml's [agent.env]) the checks that need a direct connection are left out, and the
    edgeAgent container's proxy environment is the device's, not this command's to change."""

    @staticmethod
    def _dont_run(ctx):
        from .proxy import DIRECT_ONLY_CHECKS
        return DIRECT_ONLY_CHECKS if ctx.extra.get("behind_proxy") else ()

    @staticmethod
    def _stale_agent_env(ctx):
        return None


def _plan(ctx: Context) -> dict:
    """What is installed, the target, and what would change (reads only)."""
    f = ctx.facts
    arch = platform.debian_arch(f.dpkg_arch, f.uname_machine)
    plat = platform.detect(f.os_release, arch, ctx.display, ctx.settings.edge_version)
    ctx.platform = plat
    before = {name: f.installed(name) for name in (*EDGE_PACKAGES, ENGINE)}
    # A package dpkg left half-way (an earlier run killed while it installed): its recorded version stands for
    # the installed one, and the package is installed again whatever the target.
    broken = [n for n in EDGE_PACKAGES if not before[n] and n in f.packages and
              f.packages[n].status.split()[-1] in ("half-installed", "unpacked", "half-configured",
                                                   "triggers-awaited", "triggers-pending")]
    for name in broken:
        before[name] = f.packages[name].version
    if not before["aziot-edge"]:
        raise DeviceError(f"IoT Edge is not installed on {ctx.display}; there is nothing to upgrade.",
                          f"Install it with az edge-tpm provision (or install) {option('host')} "
                          f"{ctx.session.target.alias} ...")
    config = f.file(configtoml.CONFIG_PATH)
    if config is None:
        raise DeviceError(f"{ctx.display} has IoT Edge but no {configtoml.CONFIG_PATH}; it was never configured.",
                          f"Configure it with az edge-tpm install {option('host')} {ctx.session.target.alias} ...")
    ctx.extra["behind_proxy"] = bool(configtoml.agent_proxy_url(config.text))
    found = ctx.pkg.versions(ctx, list(EDGE_PACKAGES))
    if not ctx.dry_run and not (found.get("aziot-edge") or {}).get("versions"):
        found = ctx.pkg.ensure_candidates(ctx, list(EDGE_PACKAGES))
    versions = (found.get("aziot-edge") or {}).get("versions") or []
    pin = ctx.settings.edge_version
    target = ctx.pkg.match_version(pin, versions) if pin else support.newest(versions, [plat.line.name])
    if target is None:
        what = f"aziot-edge {pin}" if pin else f"a version of IoT Edge {plat.line.name} LTS"
        raise DeviceError(
            f"The package source of {ctx.display} does not offer {what} (it offers: {', '.join(versions) or 'none'}). "
            "Nothing was changed on the device.",
            f"Point the device at a source that has it (az edge-tpm install {option('package_source')} ...), or "
            f"pick an offered version with {option('edge_version')}.")
    current = before["aziot-edge"]
    order = (support.version_key(target) > support.version_key(current)) - \
        (support.version_key(target) < support.version_key(current))
    if order < 0 and not ctx.settings.allow_downgrade:
        raise DeviceError(
            f"aziot-edge {target} is older than the version installed on {ctx.display} ({current}). Nothing was "
            "changed on the device.",
            f"Give a newer {option('edge_version')}, or add {option('allow_downgrade')} to go back on purpose.")
    line = support.by_name(support.line_of(target))
    edit = configtoml.with_agent_image(config.text, line.agent_image) if line else configtoml.ConfigEdit(config.text)
    changes, plan = [], {"before": before, "target": {"aziot-edge": target}, "line": line, "config": config,
                         "edit": edit, "engine": None, "broken": broken}
    if order != 0 or broken:
        ident = IotEdgeStep.identity_needed(ctx, target)
        plan["target"]["aziot-identity-service"] = ident
        verb = "downgrade" if order < 0 else "upgrade" if order > 0 else "install again"
        changes.append(f"{verb} aziot-edge {current} -> {target}, aziot-identity-service "
                       f"{before['aziot-identity-service']} -> {ident or 'what it needs'}"
                       + (f" ({', '.join(broken)} left half-installed by an interrupted run)" if broken else ""))
        needed = line.min_engine if line else None
        if needed and before[ENGINE] and support.version_key(before[ENGINE]) < support.version_key(needed):
            plan["engine"] = True
            changes.append(f"upgrade {ENGINE} {before[ENGINE]} (IoT Edge {line.name} needs {needed} or newer)")
    changes += [f"config.toml: {c}" for c in edit.changes]
    if changes:
        changes.append("iotedge config apply, then check the runtime")
    plan["changes"] = changes
    return plan


def upgrade(session, settings: UpgradeSettings, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Upgrade (or, with settings.dry_run, plan the upgrade of) IoT Edge on one device."""
    started = time.monotonic()
    ctx = Context(session, settings, None, progress, managed_files=(configtoml.CONFIG_PATH,))
    ctx.extra_packages = [ENGINE]
    ctx.progress("Reading the device's state")
    ctx.refresh()
    plan = _plan(ctx)
    before, target, line = plan["before"], plan["target"], plan["line"]
    result = {"device": ctx.display, "dryRun": settings.dry_run, "platform": ctx.platform.to_dict(),
              "current": {k: v for k, v in before.items() if v}, "target": dict(target),
              "changes": plan["changes"], "changed": False, "rolledBack": False, "notes": ctx.notes,
              "warnings": ctx.warnings, "hub": hub_side(line) if line else None}
    warn = support.warning(line) if line else None
    if warn:
        ctx.warnings.append(warn)
    if not plan["changes"]:
        result["summary"] = f"nothing to change: aziot-edge {before['aziot-edge']} is the target"
        return _done(result, started)
    if settings.dry_run:
        result["summary"] = "dry run: would " + "; ".join(plan["changes"])
        return _done(result, started)
    prior = runtime.collect(session, with_check=False)["provisioning"]
    config = plan["config"]
    saved = backup(ctx, configtoml.CONFIG_PATH, BACKUP_DIR)
    result["config"] = {"path": configtoml.CONFIG_PATH, "backup": saved}
    try:
        _apply(ctx, plan)
        result["changed"] = True
        report = ctx.extra.get("runtime") or {}
        _judge(ctx, report, prior)
    except EdgeTpmError as exc:
        result["changed"] = True
        result["error"] = str(exc)
        if settings.rollback:
            result["rolledBack"] = _rollback(ctx, before, config)
            back = "it runs again" if result["rolledBack"] == "healthy" else result["rolledBack"]
            exc.prefix(f"the upgrade failed and the device was put back on aziot-edge {before['aziot-edge']} with "
                       f"its previous config.toml ({back}): ")
        else:
            ctx.notes.append(f"No rollback ({option('no_rollback')}): the previous config.toml is {saved}; the "
                             f"previous versions were aziot-edge {before['aziot-edge']}, aziot-identity-service "
                             f"{before['aziot-identity-service']}.")
        result["failed"] = True
        result["summary"] = "failed: " + str(exc)
        exc.result = _done(result, started)
        raise
    ctx.refresh()
    result["installed"] = {k: ctx.facts.installed(k) for k in (*EDGE_PACKAGES, ENGINE)}
    result["runtime"] = {"version": report.get("version"), "healthy": report.get("healthy"),
                         "provisioning": report.get("provisioning")}
    now = result["installed"]["aziot-edge"]
    result["summary"] = (f"upgraded aziot-edge {before['aziot-edge']} -> {now}" if now != before["aziot-edge"] else
                         f"finished the upgrade to aziot-edge {now} (its packages were on the target already, e.g. "
                         "from an interrupted run): " + "; ".join(plan["changes"]))
    return _done(result, started)


def _apply(ctx: Context, plan: dict) -> None:
    target, pkg = plan["target"], ctx.pkg
    specs = [pkg.spec("aziot-edge", target["aziot-edge"])]
    if target.get("aziot-identity-service"):
        specs.append(pkg.spec("aziot-identity-service", target["aziot-identity-service"]))
    if plan["engine"]:
        specs.append(ENGINE)
    if target["aziot-edge"] != plan["before"]["aziot-edge"] or plan["broken"]:
        # (apt's install finishes an interrupted dpkg run first, as apt asks: dpkg --configure -a)
        pkg.install(ctx, specs, " ".join(specs), allow_downgrades=ctx.settings.allow_downgrade)
        ctx.changed.add("iotedge")
    edit, config = plan["edit"], plan["config"]
    if edit.changes:
        ctx.progress("writing config.toml (edgeAgent image)")
        ctx.session.install_file(edit.text.encode(), configtoml.CONFIG_PATH, config.mode, config.owner, config.group)
        ctx.changed.add("config")
    _recreate_agent(ctx, configtoml.summarize(edit.text).get("agentImage"))
    ctx.refresh()
    installed = ctx.facts.installed("aziot-edge")
    if installed != target["aziot-edge"]:
        raise EdgeTpmError(f"aziot-edge {installed} is installed on {ctx.display} after the upgrade, not "
                           f"{target['aziot-edge']}.", f"Run {pkg.install_hint} on the device to see why.")
    _run_runtime_step(ctx)


def _recreate_agent(ctx: Context, image: Optional[str]) -> None:
    """`iotedge config apply` starts an existing edgeAgent container as it is (the image of
    [agent.config] reaches only a new one): a container of another image is removed first, so that
    aziot-edged creates it from the new image."""
    if not image:
        return
    found = ctx.run("docker inspect --format '{{.Config.Image}}' edgeAgent 2>/dev/null", timeout=60)
    running = (found.stdout or "").strip()
    if found.ok and running and running != image:
        ctx.progress(f"removing the edgeAgent container of {running}")
        ctx.run("docker rm -f edgeAgent >/dev/null 2>&1", timeout=120)
        ctx.changed.add("config")


def _run_runtime_step(ctx: Context) -> None:
    step = _UpgradeRuntimeStep()
    found = step.check(ctx)
    if found.changes:
        step.apply(ctx, found)
        ctx.refresh()
        step.verify(ctx, found)


def _judge(ctx: Context, report: dict, prior: dict) -> None:
    """After an upgrade the runtime must be as it was: running, and assigned to the same hub as
    the same device (the identity service's backup), which the install alone does not demand."""
    prov = report.get("provisioning") or {}
    if not report.get("healthy"):
        raise EdgeTpmError(f"IoT Edge on {ctx.display} is not healthy after the upgrade: {runtime.summary(report)}",
                           "Run iotedge check and iotedge system logs on the device for details.")
    if prior.get("state") == "assigned" and (prov.get("state") != "assigned" or
                                             prov.get("deviceId") != prior.get("deviceId") or
                                             prov.get("assignedHub") != prior.get("assignedHub")):
        raise EdgeTpmError(
            f"IoT Edge on {ctx.display} is not provisioned as before the upgrade (before: {prior.get('deviceId')} on "
            f"{prior.get('assignedHub')}; now: {prov.get('state')}, {prov.get('deviceId')} on "
            f"{prov.get('assignedHub')}).",
            "Run iotedge system logs on the device for details.")


def _rollback(ctx: Context, before: Dict[str, Optional[str]], config) -> str:
    """The exact versions recorded before, config.toml byte for byte, applied; 'healthy' or why not."""
    ctx.progress(f"rolling back to aziot-edge {before['aziot-edge']}")
    specs = [ctx.pkg.spec(name, before[name]) for name in EDGE_PACKAGES if before[name]]
    try:
        ctx.pkg.install(ctx, specs, " ".join(specs), allow_downgrades=True)
        ctx.session.install_file(config.data, configtoml.CONFIG_PATH, config.mode, config.owner, config.group)
        ctx.refresh()
        result = ctx.run("iotedge config apply", timeout=600)
        apt.raise_for(result, "iotedge config apply", ctx.display)
        report = runtime.collect(ctx.session, with_check=False)
        ctx.notes.append(f"Rolled back to aziot-edge {before['aziot-edge']}, aziot-identity-service "
                         f"{before['aziot-identity-service']} and the previous config.toml: {runtime.summary(report)}")
        return "healthy" if report.get("healthy") else runtime.summary(report)
    except EdgeTpmError as exc:
        ctx.notes.append(f"The rollback failed too: {exc}")
        return f"failed: {exc}"


def hub_side(line: support.Line) -> dict:
    """What the IoT hub's deployments must change: a deployment naming another line's edgeAgent /
    edgeHub image brings the old modules back."""
    return {"agentImage": line.agent_image, "hubImage": f"mcr.microsoft.com/azureiotedge-hub:{line.name}",
            "note": (f"Deployments that pin azureiotedge-agent or azureiotedge-hub of another line bring the old "
                     f"modules back: set edgeAgent's image to {line.agent_image} and edgeHub's to "
                     f"mcr.microsoft.com/azureiotedge-hub:{line.name} in the deployment manifest's $edgeAgent "
                     "systemModules, then apply it."),
            "command": ("az iot edge set-modules --hub-name HUB --device-id DEVICE --content deployment.json "
                        "(one device) or az iot edge deployment create --hub-name HUB --deployment-id ID "
                        "--content deployment.json --target-condition ... (at scale)")}


def _done(result: dict, started: float) -> dict:
    result["seconds"] = round(time.monotonic() - started, 1)
    return result
