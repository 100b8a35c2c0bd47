"""Step 7 `runtime`: iotedge config apply when needed, then status / check / logs verified."""
import json
import shlex
from typing import Optional

from azext_edgetpm.errors import DeviceError, EdgeTpmError
from .. import apt, configtoml, health, proxy as proxy_mod, runtime
from ..plan import Check, Step
from ..services import AZIOT_UNITS


# Checks whose error means the configuration or the services are broken. tpmd-running is among them for
# what it does check: the real one (aziotctl/src/internal/check/checks/daemons_running.rs) only connects to
# /run/aziot/tpmd.sock, which systemd's aziot-tpmd.socket holds even while aziot-tpmd fails and restarts.
# It says nothing about access to the TPM: that shows in aziot-tpmd's own log lines (KNOWN_FAILURES "tcti",
# "tpm-permission") and in the identity service registering with the TPM's keys.
_CONFIG_CHECKS = ("keyd-config-well-formed", "certd-config-well-formed", "tpmd-config-well-formed",
                  "identityd-config-well-formed", "aziot-edged-config-well-formed", "tpmd-running",
                  "container-engine-uri")


class RuntimeStep(Step):
    name = "runtime"
    title = "Applying the configuration (iotedge config apply) and verifying"

    def check(self, ctx):
        f = ctx.facts
        upstream_changes = [n for n in ("proxy", "iotedge", "config", "tpm-access") if ctx.touched(n)]
        if ctx.dry_run and (upstream_changes or not f.has("iotedge")):
            return Check(changes=["run iotedge config apply, then check the runtime"])
        if not f.has("iotedge"):
            raise DeviceError(f"iotedge is not installed on {ctx.display}.",
                              "Run the command again: the iotedge step installs it.")
        reasons = [f"{n} changed" for n in upstream_changes]
        config_mtime = f.mtimes.get(configtoml.CONFIG_PATH) or (f.file(configtoml.CONFIG_PATH).mtime
                                                                if f.file(configtoml.CONFIG_PATH) else 0)
        from ..facts import APPLIED_CONFIGS
        applied = [f.mtimes.get(p) for p in APPLIED_CONFIGS]
        if not all(applied):
            reasons.append("the configuration was never applied")
        elif config_mtime > min(applied):
            reasons.append("config.toml is newer than the applied configuration")
        stale_agent = self._stale_agent_env(ctx)
        if stale_agent:
            reasons.append(f"the edgeAgent container runs with another proxy environment ({stale_agent})")
        report = None
        if not reasons:
            report = runtime.collect(ctx.session, with_check=True, dont_run=self._dont_run(ctx))
            ctx.extra["runtime"] = report
            if not report["healthy"]:
                reasons.append("services not running: " + runtime.summary(report))
            elif report["provisioning"]["state"] == "failed":
                reasons.append("the last provisioning attempt failed")
        if reasons:
            return Check(changes=["run iotedge config apply (" + "; ".join(reasons) + ")"],
                         data={"report": report, "stale_agent": bool(stale_agent)})
        self._judge(ctx, report)
        return Check(detail=runtime.summary(report))

    @staticmethod
    def _dont_run(ctx):
        return proxy_mod.DIRECT_ONLY_CHECKS if ctx.settings.proxy else ()

    @staticmethod
    def _stale_agent_env(ctx) -> Optional[str]:
        """What differs between the proxy environment config.toml gives edgeAgent and the one its
        running container has (`iotedge config apply` leaves an existing container alone); None
        when they agree or there is no such container."""
        if not ctx.facts.installed("aziot-edge"):
            return None
        result = ctx.run("docker inspect --format '{{json .Config.Env}}' edgeAgent 2>/dev/null", timeout=60)
        if not result.ok or not result.stdout.strip():
            return None
        try:
            env = dict(item.split("=", 1) for item in json.loads(result.stdout.strip()) or [] if "=" in item)
        except (ValueError, TypeError):
            return None
        proxy = ctx.settings.proxy
        want = {"https_proxy": proxy.url, "UpstreamProtocol": configtoml.UPSTREAM_PROTOCOL} if proxy else {}
        wrong = [k for k in ("https_proxy", "UpstreamProtocol") if env.get(k) != want.get(k)]
        return ", ".join(wrong) or None

    def apply(self, ctx, check):
        done = []
        if check.data.get("stale_agent"):
            # Removed first, so that aziot-edged creates it again from the new [agent] table.
            ctx.progress("removing the edgeAgent container (its proxy environment changed)")
            ctx.run("docker rm -f edgeAgent >/dev/null 2>&1", timeout=120)
            done.append("removed the edgeAgent container")
        ctx.progress("iotedge config apply")
        if ctx.settings.before_registration is not None:
            ctx.settings.before_registration()
        # The device's clock (the logs' time) before the apply, and whether the identity service holds
        # a device already (its device_info backup, which it uses at start-up whatever config.toml says).
        # (Enabled again first, if a deprovision disabled them: they start at boot.)
        units = " ".join(shlex.quote(u) for u in AZIOT_UNITS)
        probe = ctx.run(f"systemctl enable {units} >/dev/null 2>&1; date +%s; "
                        f"test -s {shlex.quote(health.DEVICE_INFO)} && echo provisioned", timeout=60)
        words = probe.stdout.split()
        ctx.extra["apply_since"] = int(words[0]) if words and words[0].isdigit() else None
        result = ctx.run("iotedge config apply", timeout=600)
        if not result.ok:
            text = (result.stderr or "") + "\n" + (result.stdout or "")
            self._refused_hostname(ctx, text)
            problems = health.diagnose(text.splitlines())
            message = apt.tail(result.stderr or result.stdout, 4)
            backup_note = (f" The previous config.toml is kept as {ctx.extra['config_backup']}."
                           if ctx.extra.get("config_backup") else "")
            raise DeviceError(
                f"iotedge config apply rejected the configuration on {ctx.display}: {message}.{backup_note}",
                problems[0]["recommendation"] if problems else
                "Fix /etc/aziot/config.toml on the device as the message says, then run the command again.")
        done.append("iotedge config apply")
        moved = ctx.extra.get("provisioning_moved")
        if moved and "provisioned" in words:
            # identity/aziot-identityd/src/identity.rs: only the reprovision API registers again.
            ctx.progress(f"iotedge system reprovision ({', '.join(moved)} changed)")
            if ctx.settings.before_registration is not None:
                ctx.settings.before_registration()
            again = ctx.run("iotedge system reprovision", timeout=600)
            if again.ok:
                done.append(f"iotedge system reprovision ({', '.join(moved)} changed)")
            else:
                ctx.extra["reprovision_error"] = apt.tail(again.stderr or again.stdout, 3)
                done.append(f"iotedge system reprovision failed: {ctx.extra['reprovision_error']}")
        return "; ".join(done)

    @staticmethod
    def _refused_hostname(ctx, text: str):
        """edgelet/iotedge/src/config/apply.rs refuses another hostname while module containers exist."""
        if "is different from the previous hostname" not in text:
            return
        import re
        found = re.search(r"hostname in the config (\S+) is different from the previous hostname (\S+?)\.", text)
        old, new = (found.group(1), found.group(2)) if found else ("?", "?")
        raise DeviceError(
            f"iotedge config apply on {ctx.display} refuses the hostname {new} (it was {old}) while IoT Edge "
            "module containers exist. Nothing was changed on the modules.",
            f'Keep the old name with hostname = "{old}" at the top of /etc/aziot/config.toml, or, to change it and '
            "lose the data stored in the modules, run on the device: sudo iotedge system stop && sudo docker rm -f "
            '$(sudo docker ps -aq -f "label=net.azure-devices.edge.owner=Microsoft.Azure.Devices.Edge.Agent") '
            "&& sudo iotedge config apply; then run the command again.")

    def verify(self, ctx, check):
        ctx.progress("waiting for the runtime to start and provision")
        seconds = max(1, int(ctx.settings.settle_timeout))
        since = ctx.extra.get("apply_since")
        waited = None
        if since is not None:
            # On the device (a shell loop, no traffic): until the identity service logs how provisioning
            # ended since the apply (its backup used, a registration, a failure), or the time is up.
            out = ctx.run(f"i=0; while [ $i -lt {seconds} ]; do iotedge system logs -- --since @{since} 2>/dev/null "
                          f"| grep -q -E {shlex.quote(health.OUTCOME_PATTERN)} && break; sleep 1; i=$((i+1)); done; "
                          "echo $i", timeout=seconds + 60)
            last = (out.stdout or "").split()
            waited = int(last[-1]) if last and last[-1].isdigit() else None
        stale = self._stale_agent_env(ctx)
        if stale:
            # A watchdog of the old aziot-edged may have recreated it before the restart: once more.
            ctx.run("docker rm -f edgeAgent >/dev/null 2>&1; iotedge system restart", timeout=600)
            stale = self._stale_agent_env(ctx)
            if stale:
                raise EdgeTpmError(
                    f"The edgeAgent container on {ctx.display} still runs with another proxy environment ({stale}).",
                    "Remove it on the device (docker rm -f edgeAgent) and restart IoT Edge (iotedge system restart).")
        report = runtime.collect(ctx.session, with_check=True, dont_run=self._dont_run(ctx))
        report["settle"] = {"waitedSeconds": waited, "limitSeconds": seconds}
        error = ctx.extra.get("reprovision_error")
        if error:
            problems = health.diagnose([error])
            report["provisioning"] = {"state": "failed", "assignedHub": None, "deviceId": None,
                                      "lastMessage": error, "error": error, "source": "iotedge system reprovision",
                                      "recommendation": problems[0]["recommendation"] if problems else
                                      "Run iotedge system logs on the device for details."}
        ctx.extra["runtime"] = report
        self._judge(ctx, report)
        return runtime.summary(report) + (f"; provisioning settled after {waited} s" if waited is not None else "")

    @staticmethod
    def _judge(ctx, report):
        """Failures the install can do something about fail the step; a device DPS does not
        (yet) assign is reported, since its enrollment may come later."""
        problem = runtime.first_problem(report)
        check = report.get("checks") or {"errors": [], "problems": []}
        config_errors = [p for p in check["problems"]
                         if p["id"] in _CONFIG_CHECKS and p["result"] in ("error", "fatal")]
        local = problem and problem["kind"] not in ("dps-auth",)
        if config_errors or (not report["healthy"] and local):
            first = config_errors[0] if config_errors else None
            what = (f"check {first['id']}: {' '.join(first['details'])}" if first else
                    f"{problem['meaning']} ({problem['line']})")
            raise EdgeTpmError(
                f"IoT Edge on {ctx.display} is not healthy: {what}. {runtime.summary(report)}",
                problem["recommendation"] if problem else
                "Run iotedge check and iotedge system logs on the device for details.")
        proxy_problem = next((p for p in check["problems"] if p["id"] == "proxy-settings"), None)
        if ctx.settings.proxy and proxy_problem:
            raise EdgeTpmError(
                f"IoT Edge on {ctx.display} does not use one proxy everywhere: check proxy-settings: "
                f"{' '.join(proxy_problem['details'])}",
                "Check the https_proxy of [agent.env] in /etc/aziot/config.toml and of the docker, aziot-edged and "
                "aziot-identityd services (systemctl show --property=Environment UNIT), then run the command again.")
        prov = report["provisioning"]
        if prov["state"] == "failed":
            ctx.notes.append(f"DPS has not assigned the device yet: {prov.get('error')}. "
                             f"{prov.get('recommendation', '')} The identity service tries again every 5 s "
                             "(its unit restarts it), so the device is assigned later, once DPS accepts it.")
