"""Step 2 `package-source`: Microsoft's packages-microsoft-prod (or a mirror's, or an apt line,
or .deb files uploaded over SFTP), and tpm2-tools."""
import shlex
from typing import Optional

from azext_edgetpm.errors import DeviceError, EdgeTpmError, option
from .. import apt
from ..plan import Check, Step
from .base import APT_LIST, source_files, update_sources, unindexed_sources, ensure_candidates, apt_install


def is_apt_line(value: Optional[str]) -> bool:
    return bool(value) and value.strip().split(" ", 1)[0] in ("deb", "deb-src")


def config_package_url(source: Optional[str], plat) -> str:
    """Where packages-microsoft-prod.deb comes from: Microsoft, a URL to the .deb itself, or a
    mirror of packages.microsoft.com (its config/<distro>/<version>/ path)."""
    if not source:
        return plat.microsoft_config_url
    if source.endswith(".deb"):
        return source
    return f"{source.rstrip('/')}/config/{plat.repo_distro}/{plat.version}/packages-microsoft-prod.deb"


class PackageSourceStep(Step):
    name = "package-source"
    title = "Configuring the package source"

    def check(self, ctx):
        s, f = ctx.settings, ctx.facts
        changes, detail, data = [], [], {}
        if s.offline_packages:
            debs = apt.read_offline_dir(s.offline_packages, ctx.platform.arch, s.edge_version)
            ctx.extra["offline_debs"] = debs
            if any(d.package not in ctx.extra_packages for d in debs):
                ctx.extra_packages += [d.package for d in debs]
                f = ctx.refresh()
            todo = [d for d in debs if f.installed(d.package) != d.version]
            data["debs"] = todo
            if todo:
                changes.append(f"upload and install {len(todo)} package(s) from {s.offline_packages}: "
                               + ", ".join(f"{d.package} {d.version}" for d in todo))
            else:
                detail.append(f"the {len(debs)} package(s) of {s.offline_packages} are installed")
        elif is_apt_line(s.package_source):
            want = "# Package source of IoT Edge (written by az edge-tpm install)\n" + s.package_source.strip() + "\n"
            data["list"] = want
            current = f.file(APT_LIST)
            if current is None or current.text != want:
                changes.append(f"write {APT_LIST}: {s.package_source.strip()}")
            else:
                detail.append(f"{APT_LIST}: {s.package_source.strip()}")
                self._check_index(ctx, changes, data)
        else:
            version = f.installed("packages-microsoft-prod")
            url = config_package_url(s.package_source, ctx.platform)
            data["url"] = url
            if version:
                detail.append(f"packages-microsoft-prod {version} installed")
                self._check_index(ctx, changes, data)
            else:
                changes.append(f"install packages-microsoft-prod from {url}")
        tools = f.installed("tpm2-tools")
        offline_tools = any(d.package == "tpm2-tools" for d in data.get("debs", []))
        if not tools and not offline_tools:
            changes.append("install tpm2-tools")
            data["tpm2_tools"] = True
        elif tools:
            detail.append(f"tpm2-tools {tools}")
        return Check(changes=changes, detail="; ".join(detail), data=data)

    @staticmethod
    def _check_index(ctx, changes, data):
        missing = unindexed_sources(ctx, source_files(ctx))
        if missing:
            changes.append(f"apt-get update ({', '.join(missing)} has no package index yet)")
            data["update"] = True

    def apply(self, ctx, check):
        done = []
        if check.data.get("update"):
            update_sources(ctx)
            done.append("apt-get update")
        if "debs" in check.data and check.data["debs"]:
            self._install_offline(ctx, check.data["debs"])
            done.append(f"installed {', '.join(d.package + ' ' + d.version for d in check.data['debs'])} "
                        "from the uploaded .deb files")
        if "list" in check.data and (ctx.facts.file(APT_LIST) is None or
                                     ctx.facts.file(APT_LIST).text != check.data["list"]):
            self._write_list(ctx, check.data["list"])
            done.append(f"wrote {APT_LIST}; apt-get update")
        if "url" in check.data and not ctx.facts.installed("packages-microsoft-prod"):
            self._install_config_package(ctx, check.data["url"])
            ctx.refresh()
            update_sources(ctx)
            done.append(f"installed packages-microsoft-prod from {check.data['url']}; apt-get update")
        if check.data.get("tpm2_tools"):
            ctx.refresh()
            ensure_candidates(ctx, ["tpm2-tools"])
            apt_install(ctx, ["tpm2-tools"], "tpm2-tools")
            done.append("installed tpm2-tools")
        return "; ".join(done)

    def verify(self, ctx, check):
        f = ctx.facts
        missing = [d.package for d in check.data.get("debs", []) if f.installed(d.package) != d.version]
        if "url" in check.data and not f.installed("packages-microsoft-prod"):
            missing.append("packages-microsoft-prod")
        if check.data.get("tpm2_tools") and not f.installed("tpm2-tools"):
            missing.append("tpm2-tools")
        if missing:
            raise EdgeTpmError(f"After installing, {', '.join(missing)} is still not installed on "
                               f"{ctx.display}.", "Run apt-get install on the device to see why.")

    @staticmethod
    def _write_list(ctx, text):
        """Write our apt list and update from it; when apt rejects it (or cannot fetch from it),
        put back the file that was there, or remove ours, so that the device's other apt
        commands keep working."""
        previous = ctx.facts.file(APT_LIST)
        ctx.session.install_file(text.encode(), APT_LIST, 0o644)
        try:
            update_sources(ctx, [APT_LIST])
            # a line apt cannot parse also fails every other apt command: check with all sources
            result = ctx.run("LC_ALL=C apt-cache policy >/dev/null", timeout=120)
            apt.raise_for(result, "Reading the package sources", ctx.display)
        except BaseException:
            if previous is not None:
                ctx.session.install_file(previous.data, APT_LIST, previous.mode, previous.owner, previous.group)
            else:
                ctx.run(f"rm -f -- {shlex.quote(APT_LIST)}")
            raise

    @staticmethod
    def _install_config_package(ctx, url):
        ctx.progress(f"downloading {url}")
        q = shlex.quote(url)
        # Behind a proxy, apt's own downloader fetches it: it uses the proxy step's apt settings and
        # the credentials of auth.conf.d, so that they never reach a command line.
        first = (f"if [ -x /usr/lib/apt/apt-helper ]; then /usr/lib/apt/apt-helper download-file {q} \"$F\"; elif"
                 if ctx.settings.proxy else "if")
        script = (
            "set -e; D=$(mktemp -d); trap 'rm -rf \"$D\"' EXIT; trap 'exit 143' HUP INT TERM; "
            "F=\"$D/packages-microsoft-prod.deb\"; "
            f"{first} command -v curl >/dev/null 2>&1; then curl -fsSL --retry 2 -o \"$F\" {q}; "
            f"elif command -v wget >/dev/null 2>&1; then wget -q -O \"$F\" {q}; "
            "elif command -v python3 >/dev/null 2>&1; then python3 -c "
            "'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "
            f"{q} \"$F\"; "
            "else echo 'E: no curl, wget or python3 to download with' >&2; exit 3; fi; "
            f"{apt.APT_ENV} dpkg --force-confdef --force-confold -i \"$F\"")
        result = ctx.run(script, timeout=600)
        if result.rc == 3 and "no curl" in result.stderr:
            raise DeviceError(f"{ctx.display} has no curl, wget or python3 to download {url} with.",
                              f"Install curl on the device, or use {option('offline_packages')} DIR.")
        apt.raise_for(result, f"Installing the package repository configuration from {url}", ctx.display)

    @staticmethod
    def _install_offline(ctx, debs):
        import os
        ctx.progress(f"uploading {len(debs)} package(s)")
        tmp = ctx.session.staging_dir()  # emptied by the next run if this one loses its connection
        try:
            remote = []
            for deb in debs:
                with open(deb.path, "rb") as handle:
                    data = handle.read()
                dest = f"{tmp}/{os.path.basename(deb.path)}"
                ctx.session.upload(data, dest, 0o644)
                remote.append(dest)
            paths = dict(zip((d.path for d in debs), remote))
            for group in apt.engine_first(debs):
                apt_install(ctx, [paths[d.path] for d in group], ", ".join(d.package for d in group),
                            allow_downgrades=True)
        finally:
            ctx.session.run(f"rm -rf {shlex.quote(tmp)}")
