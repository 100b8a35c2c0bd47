"""Step 4 `iotedge`: aziot-edge and the exact aziot-identity-service it depends on, the newest LTS
line for the system or pinned."""
from typing import Optional

from azext_edgetpm.errors import DeviceError, EdgeTpmError, option
from .. import support
from ..plan import Check, Step


EDGE_PACKAGES = ("aziot-edge", "aziot-identity-service")


class IotEdgeStep(Step):
    name = "iotedge"
    title = "Installing IoT Edge (aziot-edge, aziot-identity-service)"

    def check(self, ctx):
        f, s, pkg = ctx.facts, ctx.settings, ctx.pkg
        edge, ident = f.installed("aziot-edge"), f.installed("aziot-identity-service")
        state = f"aziot-edge {edge or 'not installed'}, aziot-identity-service {ident or 'not installed'}"
        if s.edge_version:
            if edge and pkg.match_version(s.edge_version, [edge]):
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
        pin, pkg = check.data.get("pin"), ctx.pkg
        found = pkg.ensure_candidates(ctx, list(EDGE_PACKAGES))
        # The newest version of a line that has packages for this system (not a newer line the table does not
        # know, nor a line this system lacks), else apt's candidate.
        edge_full = support.newest(found["aziot-edge"]["versions"], [line.name for line in ctx.platform.lines()]) \
            or found["aziot-edge"]["candidate"]
        if pin:
            edge_full = pkg.match_version(pin, found["aziot-edge"]["versions"] or [found["aziot-edge"]["candidate"]])
            if edge_full is None:
                if not found["aziot-edge"]["versions"] and not ctx.updated_sources:
                    pkg.update(ctx)
                raise DeviceError(
                    f"aziot-edge {pin} is not offered by the package source of {ctx.display} "
                    f"(available: {', '.join(found['aziot-edge']['versions']) or 'none'}).",
                    f"Pick one of the available versions for {option('edge_version')}, or omit it for the latest.")
        # aziot-edge depends on ONE exact aziot-identity-service, whose number is not its own (1.5.10-1 needs
        # 1.5.3-1). apt takes only candidates for packages not named, so that version is named too (dnf as well).
        ident = self.identity_needed(ctx, edge_full)
        check.data["identity"] = ident
        specs = [pkg.spec("aziot-edge", edge_full)] + ([pkg.spec("aziot-identity-service", ident)] if ident else [])
        pkg.install(ctx, specs, " ".join(specs), allow_downgrades=bool(pin))
        ctx.refresh()
        return (f"installed aziot-edge {ctx.facts.installed('aziot-edge')}, "
                f"aziot-identity-service {ctx.facts.installed('aziot-identity-service')}")

    @staticmethod
    def identity_needed(ctx, edge_version: str) -> Optional[str]:
        """The aziot-identity-service version that aziot-edge `edge_version` depends on with `=`, as the package
        source has it (`apt-cache show`'s Depends, `dnf repoquery --requires`); None when it names no exact one."""
        return ctx.pkg.exact_requirement(ctx, "aziot-edge", edge_version, "aziot-identity-service")

    def verify(self, ctx, check):
        f = ctx.facts
        edge, ident = f.installed("aziot-edge"), f.installed("aziot-identity-service")
        if not edge or not ident or not f.has("iotedge"):
            raise EdgeTpmError(f"IoT Edge is not installed on {ctx.display} after {ctx.pkg.install_hint}.",
                               f"Run {ctx.pkg.install_hint} aziot-edge on the device to see why.")
        pin = check.data.get("pin")
        if pin and not ctx.pkg.match_version(pin, [edge]):
            raise EdgeTpmError(f"aziot-edge {edge} is installed on {ctx.display}, not {pin}.",
                               "Check that the package source offers that version.")
        needed = check.data.get("identity")
        if needed and ident != needed:
            raise EdgeTpmError(f"aziot-identity-service {ident} is installed on {ctx.display}, but aziot-edge {edge} "
                               f"depends on {needed}.",
                               f"Run {ctx.pkg.install_hint} aziot-edge on the device to see why.")
