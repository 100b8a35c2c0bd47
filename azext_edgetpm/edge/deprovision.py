"""The device side of `az edge-tpm deprovision`, as idempotent steps (check -> change -> verify):

1 runtime-stop   `iotedge system stop` while an aziot service runs, then `systemctl disable` of the aziot
                 services and their sockets: `iotedge system stop` leaves them enabled (and the sockets
                 listening), so at the next boot they start again and, without configuration, crash-loop
                 (Restart=on-failure every 5 s); `az edge-tpm install` enables them again
2 config-reset   config.toml without [provisioning] (backup in /var/backups/edge-tpm, outside /etc/aziot
                 which a purge removes whole; every other setting kept), the
                 configuration `iotedge config apply` wrote under /etc/aziot/*/config.d removed, and
                 the identity service's provisioning state (device_info, prev_state) removed, so the
                 runtime neither provisions nor starts from a cached identity
3 uninstall      (with uninstall) aziot-edge and aziot-identity-service removed through the device's
                 package manager as the IoT Edge documentation uninstalls them (`apt-get purge`;
                 `dnf remove` on Red Hat Enterprise Linux); the container engine, the package source and
                 the TPM's keys are left (other software may use them)

A second run finds every step ok and changes nothing.
"""
import shlex
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

from azext_edgetpm.errors import DeviceError

from . import apt, configtoml, facts as facts_mod, health
from .services import AZIOT_UNITS
from .plan import CHANGED, WOULD_CHANGE, Check, Context, Step, run_steps
from .steps import backup

# Outside /etc/aziot: purging aziot-identity-service removes /etc/aziot whole (iot-identity-service
# contrib/debian/postrm), a backup next to config.toml included.
BACKUP_DIR = "/var/backups/edge-tpm"
IDENTITY_STATE = ("/var/lib/aziot/identityd/device_info", "/var/lib/aziot/identityd/prev_state")
EDGE_PACKAGES = ("aziot-edge", "aziot-identity-service")
LEFT_ON_DEVICE = "the container engine (moby-engine), the package source and the TPM's EK and SRK"



@dataclass
class DeprovisionSettings:
    uninstall: bool = False
    dry_run: bool = False
    registration_id: Optional[str] = None  # (read by plan.Context; not used by these steps)


def _running(ctx: Context) -> List[str]:
    if not ctx.facts.has("iotedge"):
        return []
    states = health.parse_system_status(ctx.run("iotedge system status 2>&1", timeout=120).stdout)
    return [name for name, s in states.items() if s["state"] == "Running" or s["detail"] == "activating"]


class RuntimeStopStep(Step):
    name = "runtime-stop"
    title = "Stopping IoT Edge"

    def check(self, ctx):
        if not any(ctx.facts.installed(p) for p in EDGE_PACKAGES):
            return Check(skip="IoT Edge is not installed")
        running = _running(ctx)
        if not running:
            return Check(detail="IoT Edge is stopped")
        return Check(changes=[f"stop {', '.join(sorted(running))} (iotedge system stop)"])

    def apply(self, ctx, check):
        result = ctx.run("iotedge system stop", timeout=300)
        apt.raise_for(result, "iotedge system stop", ctx.display)
        if ctx.settings.uninstall:
            return "iotedge system stop"
        units = " ".join(shlex.quote(u) for u in AZIOT_UNITS)
        disabled = ctx.run(f"systemctl disable --now {units} 2>&1", timeout=120)
        if not disabled.ok:
            return (f"iotedge system stop; systemctl disable failed ({apt.tail(disabled.stdout, 1)}): the services "
                    "stay enabled and start again at boot")
        return ("iotedge system stop; systemctl disable --now of the aziot services and sockets (they would start "
                "at boot and crash-loop without configuration; az edge-tpm install enables them again)")

    def verify(self, ctx, check):
        still = _running(ctx)
        if still:
            raise DeviceError(f"{', '.join(still)} still running on {ctx.display} after iotedge system stop.",
                              "Look at `sudo iotedge system status` on the device, then run the command again.")


class ConfigResetStep(Step):
    name = "config-reset"
    title = "Resetting config.toml to unprovisioned"

    def check(self, ctx):
        changes, data = [], {}
        config = ctx.facts.file(configtoml.CONFIG_PATH)
        if config is not None:
            edit = configtoml.unprovisioned(config.text)
            if edit.changes:
                changes.append(f"{', '.join(edit.changes)} in {configtoml.CONFIG_PATH} (a backup is kept)")
                data["config"] = edit.text
        applied = [p for p in facts_mod.APPLIED_CONFIGS if p in ctx.facts.mtimes]
        if applied:
            changes.append(f"remove the applied configuration ({len(applied)} files under /etc/aziot/*/config.d)")
            data["applied"] = applied
        state = [p for p in IDENTITY_STATE if p in ctx.facts.mtimes]
        if state:
            changes.append("remove the identity service's provisioning state (" +
                           ", ".join(p.rsplit("/", 1)[1] for p in state) + ")")
            data["state"] = state
        if not changes:
            if config is None and not any(ctx.facts.installed(p) for p in EDGE_PACKAGES):
                return Check(skip="no IoT Edge configuration on the device")
            return Check(detail="no provisioning configured")
        return Check(changes=changes, data=data)

    def apply(self, ctx, check):
        done = []
        if "config" in check.data:
            saved = backup(ctx, configtoml.CONFIG_PATH, BACKUP_DIR)
            ctx.extra["config_backup"] = saved
            current = ctx.facts.file(configtoml.CONFIG_PATH)
            ctx.session.install_file(check.data["config"].encode("utf-8"), configtoml.CONFIG_PATH,
                                     current.mode & 0o7777 or 0o600, current.owner, current.group)
            done.append(f"provisioning removed from {configtoml.CONFIG_PATH} (backup {saved})")
        paths = check.data.get("applied", []) + check.data.get("state", [])
        if paths:
            result = ctx.run("rm -rf -- " + " ".join(shlex.quote(p) for p in paths), timeout=60)
            apt.raise_for(result, "removing the applied configuration", ctx.display)
            done.append(f"removed {len(paths)} applied configuration and state files")
        return "; ".join(done)

    def verify(self, ctx, check):
        if self.check(ctx).changes:
            raise DeviceError(f"The IoT Edge configuration of {ctx.display} is still provisioned after "
                              "the reset.", "Run the command again; if it persists, look at /etc/aziot on the device.")


class UninstallStep(Step):
    name = "uninstall"
    title = "Uninstalling IoT Edge"

    def check(self, ctx):
        if not ctx.settings.uninstall:
            return Check(skip="not asked (--uninstall removes the packages)")
        installed = [p for p in EDGE_PACKAGES if ctx.facts.installed(p)]
        if not installed:
            return Check(detail="IoT Edge is not installed")
        return Check(changes=[f"{ctx.pkg.remove_label} {' '.join(installed)}"], data={"packages": installed})

    def apply(self, ctx, check):
        return ctx.pkg.remove(ctx, check.data["packages"])

    def verify(self, ctx, check):
        left = [p for p in EDGE_PACKAGES if ctx.facts.installed(p)]
        if left:
            raise DeviceError(f"{', '.join(left)} still installed on {ctx.display} after {ctx.pkg.remove_label}.",
                              f"Look at `{ctx.pkg.list_hint}` on the device, then run the command again.")


STEPS = (RuntimeStopStep, ConfigResetStep, UninstallStep)


class _Context(Context):
    """The install context, gathering the identity service's state files too."""

    def refresh(self):
        self.facts = facts_mod.gather(self.session, self.managed_files,
                                      stat_files=facts_mod.APPLIED_CONFIGS + IDENTITY_STATE)
        return self.facts


def deprovision(session, settings: DeprovisionSettings,
                progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run the device-side deprovision steps (only their checks with settings.dry_run)."""
    started = time.monotonic()
    ctx = _Context(session, settings, None, progress, managed_files=[configtoml.CONFIG_PATH])
    ctx.progress("Reading the device's state")
    ctx.refresh()
    report = run_steps(ctx, [cls() for cls in STEPS])
    return {
        "device": ctx.display,
        "changed": any(s["status"] == CHANGED for s in report),
        "wouldChange": any(s["status"] == WOULD_CHANGE for s in report),
        "steps": report,
        "configBackup": ctx.extra.get("config_backup"),
        "left": LEFT_ON_DEVICE,
        "seconds": round(time.monotonic() - started, 1),
    }
