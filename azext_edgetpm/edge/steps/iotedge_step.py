"""Step 4 `iotedge`: aziot-edge and the exact aziot-identity-service it depends on, the newest LTS
line for the system or pinned."""
from typing import Optional

from azext_edgetpm.errors import DeviceError, EdgeTpmError, option
from .. import apt, support
from ..plan import Check, Step
from .base import update_sources, ensure_candidates, apt_install


EDGE_PACKAGES = ("aziot-edge", "aziot-identity-service")


class IotEdgeStep(Step):
    name = "iotedge"
    title = "Installing IoT Edge (aziot-edge, aziot-identity-service)"

    def check(self, ctx):
        f, s = ctx.facts, ctx.settings
        edge, ident = f.installed("aziot-edge"), f.installed("aziot-identity-service")
        state = f"aziot-edge {edge or 'not installed'}, aziot-identity-service {ident or 'not installed'}"
        if s.edge_version:
            if edge and apt.match_version(s.edge_version, [edge]):
                return Check(detail=f"{state} (pinned {s.edge_version})")
            return Check(changes=[f"install aziot-edge {s.edge_version}" + (f" (installed: {edge})" if edge else "")],
                         detail=state, data={"pin": s.edge_version})
        if edge and ident:
            line = support.by_name(support.line_of(edge) or "")
            warn = support.warning(line) if line else None
            if warn and warn not in ctx.warnings:
                ctx.warnings.append(warn)
            return Check(detail=state)
        return Check(changes=["install aziot-edge and aziot-identity-service (latest)"], detail=state, data={})

    def apply(self, ctx, check):
        pin = check.data.get("pin")
        found = ensure_candidates(ctx, list(EDGE_PACKAGES))
        # The newest version of a line that has packages for this system (not a newer line the table does not
        # know, nor a line this system lacks), else apt's candidate.
        edge_full = support.newest(found["aziot-edge"]["versions"], [line.name for line in ctx.platform.lines()]) \
            or found["aziot-edge"]["candidate"]
        if pin:
            edge_full = apt.match_version(pin, found["aziot-edge"]["versions"] or [found["aziot-edge"]["candidate"]])
            if edge_full is None:
                if not found["aziot-edge"]["versions"] and not ctx.updated_sources:
                    update_sources(ctx)
                raise DeviceError(
                    f"aziot-edge {pin} is not offered by the package source of {ctx.display} "
                    f"(available: {', '.join(found['aziot-edge']['versions']) or 'none'}).",
                    f"Pick one of the available versions for {option('edge_version')}, or omit it for the latest.")
        # aziot-edge depends on ONE exact aziot-identity-service, whose number is not its own (1.5.10-1 needs
        # 1.5.3-1). apt takes only candidates for packages not named, so that version is named too.
        ident = self.identity_needed(ctx, edge_full)
        check.data["identity"] = ident
        specs = [f"aziot-edge={edge_full}"] + ([f"aziot-identity-service={ident}"] if ident else [])
        apt_install(ctx, specs, " ".join(specs), allow_downgrades=bool(pin))
        ctx.refresh()
        return (f"installed aziot-edge {ctx.facts.installed('aziot-edge')}, "
                f"aziot-identity-service {ctx.facts.installed('aziot-identity-service')}")

    @staticmethod
    def identity_needed(ctx, edge_version: str) -> Optional[str]:
        """The aziot-identity-service version that aziot-edge `edge_version` depends on with `=`, from its
        control fields in the package source (`apt-cache show`); None when it names no exact one."""
        shown_fields = ctx.run(apt.show_command("aziot-edge", edge_version), timeout=120)
        apt.raise_for(shown_fields, f"Reading the dependencies of aziot-edge {edge_version}", ctx.display)
        return apt.exact_dependency(apt.control_field(shown_fields.stdout, "Depends"), "aziot-identity-service")

    def verify(self, ctx, check):
        f = ctx.facts
        edge, ident = f.installed("aziot-edge"), f.installed("aziot-identity-service")
        if not edge or not ident or not f.has("iotedge"):
            raise EdgeTpmError(f"IoT Edge is not installed on {ctx.display} after apt-get install.",
                               "Run apt-get install aziot-edge on the device to see why.")
        pin = check.data.get("pin")
        if pin and not apt.match_version(pin, [edge]):
            raise EdgeTpmError(f"aziot-edge {edge} is installed on {ctx.display}, not {pin}.",
                               "Check that the package source offers that version.")
        needed = check.data.get("identity")
        if needed and ident != needed:
            raise EdgeTpmError(f"aziot-identity-service {ident} is installed on {ctx.display}, but aziot-edge {edge} "
                               f"depends on {needed}.", "Run apt-get install aziot-edge on the device to see why.")
