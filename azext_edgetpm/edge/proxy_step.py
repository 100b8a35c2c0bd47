"""Step `proxy` of `az edge-tpm install` (after `os`, before anything is downloaded).

check:  the device reaches the package source and DPS (through --proxy, or directly without
        it) -- refused before anything changes when it cannot; then which proxy files differ
        (apt's proxy and auth.conf.d, the drop-ins of docker, aziot-edged, aziot-identityd, the
        proxy's CA in the OS store). Without --proxy (or with --proxy none) the files that an
        earlier --proxy wrote must go.
apply:  write / remove exactly those files (the package manager's through edge/pkg: apt.conf.d and
        auth.conf.d, or dnf.conf's [main]); the OS's CA store rebuilt when the CA changed
        (update-ca-certificates, update-ca-trust on RHEL);
        systemctl daemon-reload when a drop-in changed; restart docker when its drop-in
        changed and it runs. (The aziot services restart in the runtime step's config apply.)
verify: the files read back as written.
"""
import shlex
from typing import List

from azext_edgetpm.errors import EdgeTpmError, LocalFileError, option
from . import apt, proxy as proxy_mod
from .plan import Check, Step
from .services import ServiceManager


def targets(ctx) -> List[proxy_mod.Target]:
    """What the device must reach: the package source (unless .deb files are uploaded) and DPS."""
    from .pkg.dnf import parse_source
    from .steps import config_package_url, is_apt_line
    s = ctx.settings
    found = []
    if not s.offline_packages:
        if is_apt_line(s.package_source):
            uris = apt.source_uris(s.package_source)
            url = uris[0] if uris else None
        elif getattr(ctx.platform, "package_manager", "") == "dnf" and parse_source(s.package_source):
            url = parse_source(s.package_source).url
        else:
            url = config_package_url(s.package_source, ctx.platform)
        t = proxy_mod.target("the package source", url) if url else None
        if t:
            found.append(t)
    t = proxy_mod.target("DPS", s.global_endpoint)
    if t:
        found.append(t)
    return found


class ProxyStep(Step):
    name = "proxy"
    title = "Checking the network and the HTTP proxy settings"

    def check(self, ctx):
        proxy = ctx.settings.proxy
        reach = targets(ctx)
        ctx.notes += proxy_mod.check_reachable(ctx.session, reach, proxy, ctx.display)
        diff = proxy_mod.differences(ctx.facts, proxy, ctx.pkg)
        changes = [(f"remove {path}" if want is None else f"write {path}") for path, want in diff.items()]
        how = f"through {proxy.display}" if proxy else "directly"
        detail = f"{', '.join(t.label for t in reach) or 'nothing to reach'} reachable {how}"
        if proxy and not diff:
            detail += f"; {ctx.pkg.name}, docker, aziot-edged and aziot-identityd use the proxy"
        return Check(changes=changes, detail=detail, data={"diff": diff})

    def apply(self, ctx, check):
        diff = check.data["diff"]
        done = []
        for path, want in diff.items():
            if want is None:
                ctx.run(f"rm -f -- {shlex.quote(path)}")
                done.append(f"removed {path}")
            else:
                ctx.run(f"mkdir -p -- {shlex.quote(path.rsplit('/', 1)[0])}")
                ctx.session.install_file(want[0], path, want[1])
                done.append(f"wrote {path}")
        update_ca = ctx.pkg.ca_update
        if ctx.pkg.ca_anchor in diff:
            result = ctx.run(update_ca, timeout=120)
            if not result.ok:
                raise EdgeTpmError(f"{update_ca.split(' >', 1)[0]} failed on {ctx.display}: "
                                   f"{apt.tail(result.stderr)}", f"Check the CA file of {option('proxy_ca')}.")
            done.append(update_ca.split(" --", 1)[0].split(" >", 1)[0])
        units = [u for u in proxy_mod.UNITS if proxy_mod.dropin(u) in diff]
        if units:
            ctx.refresh()
            manager = ServiceManager.detect(ctx.facts)
            result = ctx.run("systemctl daemon-reload")
            if ctx.facts.systemd and not result.ok:
                raise EdgeTpmError(f"systemctl daemon-reload failed on {ctx.display}: "
                                   f"{apt.tail(result.stderr)}", "Run it on the device to see why.")
            # (without systemd -- and before the packages bring the dev kit's systemctl -- services read
            # their drop-ins when they start)
            done.append("systemctl daemon-reload")
            if "docker" in units and manager.is_active(ctx.session, "docker"):
                ctx.progress("restarting the container engine (its proxy changed)")
                result = manager.restart(ctx.session, "docker")
                if result is not None and not result.ok:
                    raise EdgeTpmError(f"The container engine did not restart on {ctx.display}: "
                                       f"{apt.tail(result.stderr + result.stdout)}",
                                       "Run systemctl status docker on the device.")
                done.append("restarted the container engine")
        return "; ".join(done)

    def verify(self, ctx, check):
        left = proxy_mod.differences(ctx.facts, ctx.settings.proxy, ctx.pkg)
        if left:
            raise LocalFileError(f"{', '.join(left)} on {ctx.display} did not read back as written.",
                                 "Check the files on the device and run the command again.")
