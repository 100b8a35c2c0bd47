"""Step 2 `package-source`: Microsoft's packages-microsoft-prod (or a mirror's, or an apt line, or a
dnf repository with its signing key, or .deb/.rpm files uploaded over SFTP), and tpm2-tools,
through the device's package manager (ctx.pkg: edge/pkg)."""
from typing import Optional

from azext_edgetpm.errors import EdgeTpmError
from ..pkg import by_name
from ..plan import Check, Step


def is_apt_line(value: Optional[str]) -> bool:
    return by_name("apt").is_source_line(value)


def config_package_url(source: Optional[str], plat) -> str:
    """Where packages-microsoft-prod comes from: Microsoft, a URL to the package itself, or a
    mirror of packages.microsoft.com (its config/<distro>/<version>/ path)."""
    return by_name(plat.package_manager).config_package_url(source, plat)


def _summary(entry: str) -> str:
    """A source file's settings on one line (an apt line; a .repo file's baseurl=, gpgcheck=, gpgkey=)."""
    return ", ".join(line for line in entry.splitlines() if line and not line.startswith(("#", "[", "name=")))


class PackageSourceStep(Step):
    name = "package-source"
    title = "Configuring the package source"

    def check(self, ctx):
        s, f, pkg = ctx.settings, ctx.facts, ctx.pkg
        changes, detail, data = [], [], {}
        if s.offline_packages:
            debs = pkg.read_offline(s.offline_packages, ctx.platform.arch, s.edge_version)
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
        elif (want := pkg.source_entry(ctx, s.package_source)) is not None:
            data["list"] = want
            listed = pkg.source_file
            current = f.file(listed)
            if current is None or current.text != want:
                changes.append(f"write {listed}: {_summary(want)}")
            else:
                detail.append(f"{listed}: {_summary(want)}")
                self._check_index(ctx, changes, data)
        else:
            version = f.installed("packages-microsoft-prod")
            url = pkg.config_package_url(s.package_source, ctx.platform)
            data["url"] = url
            if version:
                detail.append(f"packages-microsoft-prod {version} installed")
                edits = pkg.repo_proxy_changes(ctx)
                if edits:
                    data["repo_edits"] = edits
                    changes += [f"write {edit.summary(path)}" for path, edit in edits.items()]
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
        missing = ctx.pkg.unindexed(ctx)
        if missing:
            changes.append(f"{ctx.pkg.update_label} ({', '.join(missing)} has no package index yet)")
            data["update"] = True

    def apply(self, ctx, check):
        done, pkg = [], ctx.pkg
        if check.data.get("repo_edits"):
            done.append(pkg.write_repo_proxy_changes(ctx, check.data["repo_edits"]))
        if check.data.get("update"):
            pkg.update(ctx)
            done.append(pkg.update_label)
        if "debs" in check.data and check.data["debs"]:
            pkg.install_offline(ctx, check.data["debs"])
            done.append(f"installed {', '.join(d.package + ' ' + d.version for d in check.data['debs'])} "
                        f"from the uploaded {pkg.offline_suffix} files")
        listed = ctx.facts.file(pkg.source_file) if pkg.source_file else None
        if "list" in check.data and (listed is None or listed.text != check.data["list"]):
            done.append(pkg.write_source_line(ctx, check.data["list"]))
        if "url" in check.data and not ctx.facts.installed("packages-microsoft-prod"):
            done.append(pkg.install_config_package(ctx, check.data["url"]))
        if check.data.get("tpm2_tools"):
            ctx.refresh()
            pkg.ensure_candidates(ctx, ["tpm2-tools"])
            pkg.install(ctx, ["tpm2-tools"], "tpm2-tools")
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
                               f"{ctx.display}.", f"Run {ctx.pkg.install_hint} on the device to see why.")
