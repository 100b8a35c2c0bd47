"""Step 3 `container-engine`: moby-engine; /etc/docker/daemon.json merged; the engine restarted
only when it changed."""
import json
import shlex
from typing import Optional

from azext_edgetpm.errors import EdgeTpmError, LocalFileError, option
from .. import apt
from ..plan import Check, Step
from ..services import ServiceManager
from .base import DAEMON_JSON, backup


def merge_daemon_json(current_text: Optional[str], log_driver: str, display: str = "the device"):
    """(new dict or None when nothing is to be written, old dict) for /etc/docker/daemon.json."""
    old = {}
    if current_text is not None and current_text.strip():
        try:
            old = json.loads(current_text)
        except ValueError as exc:
            raise LocalFileError(f"{DAEMON_JSON} on {display} is not valid JSON ({exc}); it was left as it is.",
                                 "Fix the file (or remove it), then run the command again; "
                                 f"{option('log_driver')} keep leaves it alone.") from exc
        if not isinstance(old, dict):
            raise LocalFileError(f"{DAEMON_JSON} on {display} is not a JSON object; it was left as it is.",
                                 "Fix the file (or remove it), then run the command again.")
    if log_driver == "keep" or old.get("log-driver") == log_driver:
        return None, old
    new = dict(old)
    new["log-driver"] = log_driver
    return new, old


class ContainerEngineStep(Step):
    name = "container-engine"
    title = "Installing and configuring the container engine"

    def check(self, ctx):
        f, s = ctx.facts, ctx.settings
        changes, detail, data = [], [], {}
        engine = next(((p, f.installed(p)) for p in ("moby-engine", "docker-ce", "docker.io") if f.installed(p)), None)
        if engine is None:
            changes.append("install " + " ".join(ctx.pkg.engine_packages))
            data["install"] = True
        else:
            detail.append(f"{engine[0]} {engine[1]}")
        current = f.file(DAEMON_JSON)
        new, old = merge_daemon_json(current.text if current else None, s.log_driver, ctx.display)
        if new is not None:
            was = old.get("log-driver")
            changes.append(f"set \"log-driver\": \"{s.log_driver}\" in {DAEMON_JSON} "
                           + (f"(was {was!r})" if was else "(engine default json-file)")
                           + " and restart the engine")
            data["daemon_json"] = json.dumps(new, indent=2) + "\n"
        else:
            detail.append(f"log driver {old.get('log-driver', 'json-file (engine default)')}"
                          + (" (kept)" if s.log_driver == "keep" else ""))
        return Check(changes=changes, detail="; ".join(detail), data=data)

    def apply(self, ctx, check):
        done = []
        if check.data.get("install"):
            names = list(ctx.pkg.engine_packages)
            ctx.pkg.ensure_candidates(ctx, names)
            ctx.pkg.install(ctx, names, " ".join(names))
            ctx.refresh()
            done.append(f"installed moby-engine {ctx.facts.installed('moby-engine')}")
        if "daemon_json" in check.data:
            current = ctx.facts.file(DAEMON_JSON)
            saved = backup(ctx, DAEMON_JSON) if current is not None else None
            ctx.run(f"mkdir -p {shlex.quote('/etc/docker')}")
            ctx.session.install_file(check.data["daemon_json"].encode(), DAEMON_JSON, 0o644)
            done.append(f"wrote {DAEMON_JSON}" + (f" (backup {saved})" if saved else ""))
            done.append(self._restart(ctx, current))
        return "; ".join(d for d in done if d)

    @staticmethod
    def _restart(ctx, previous) -> str:
        ctx.refresh()
        manager = ServiceManager.detect(ctx.facts, "docker")
        ctx.progress("restarting the container engine")
        result = manager.restart(ctx.session, "docker")
        if result is None:
            ctx.notes.append("The container engine was not restarted (no systemd, no /etc/init.d/docker): "
                             "restart it so that daemon.json applies.")
            return "engine not restarted: no service manager on the device (restart it yourself)"
        if result.ok:
            return f"restarted the engine ({manager.kind})"
        # The engine refused the new file: put the old one back and bring the engine up again.
        if previous is not None:
            ctx.session.install_file(previous.data, DAEMON_JSON, previous.mode, previous.owner, previous.group)
        else:
            ctx.run(f"rm -f {shlex.quote(DAEMON_JSON)}")
        manager.restart(ctx.session, "docker")
        raise EdgeTpmError(
            f"The container engine did not restart with the new {DAEMON_JSON} on {ctx.display} "
            f"({apt.tail(result.stderr + result.stdout)}); the previous file was restored.",
            f"Check {option('log_driver')} (e.g. local, json-file, journald) or use {option('log_driver')} keep.")

    def verify(self, ctx, check):
        f = ctx.facts
        if check.data.get("install") and not f.installed("moby-engine"):
            raise EdgeTpmError(f"moby-engine is not installed on {ctx.display} after {ctx.pkg.install_hint}.",
                               f"Run {ctx.pkg.install_hint} moby-engine on the device to see why.")
        if "daemon_json" in check.data:
            current = f.file(DAEMON_JSON)
            if current is None or json.loads(current.text).get("log-driver") != ctx.settings.log_driver:
                raise LocalFileError(f"{DAEMON_JSON} on {ctx.display} does not have the log driver set.",
                                     "Check the file on the device and run the command again.")
