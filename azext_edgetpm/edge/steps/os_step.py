"""Step 1 `os`: /etc/os-release and the architecture against the runtime line's systems
(edge/platform.py, edge/support.py); refuses before anything changes."""

from azext_edgetpm.errors import DeviceError
from .. import platform, support
from ..plan import Check, Step
from ..services import ServiceManager


class OsStep(Step):
    name = "os"
    title = "Checking the operating system"

    def check(self, ctx):
        f = ctx.facts
        arch = platform.debian_arch(f.dpkg_arch, f.uname_machine)
        ctx.platform = platform.detect(f.os_release, arch, ctx.display, ctx.settings.edge_version)
        warn = support.warning(ctx.platform.line)
        if warn and warn not in ctx.warnings:
            ctx.warnings.append(warn)
        pkg = ctx.pkg
        if not all(f.has(tool) for tool in pkg.tools):
            raise DeviceError(f"{ctx.display} has no {'/'.join(pkg.tools)}.",
                              f"IoT Edge's packages install with {pkg.name} on {ctx.platform.pretty_name}; "
                              "install it, or check that /etc/os-release names the device's system.")
        init = ServiceManager.detect(f).describe()
        line = ctx.platform.line
        return Check(detail=f"{ctx.platform.pretty_name} ({ctx.platform.arch}); {init}; IoT Edge {line.name} LTS "
                            f"({'pinned' if ctx.platform.pinned else 'newest LTS line for this system'})")

    def apply(self, ctx, check):
        raise NotImplementedError("the os step only checks: its Check never asks for a change")
