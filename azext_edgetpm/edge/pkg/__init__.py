"""The device's package manager behind one interface, so that the install, upgrade and
deprovision steps never name apt-get or dnf: `PackageManager` (this module) with two
implementations, apt/dpkg (Debian, Ubuntu, Raspberry Pi OS; pkg/apt.py) and dnf/rpm (Red Hat
Enterprise Linux; pkg/dnf.py), chosen from the detected platform (Platform.package_manager).

Installed versions come from the fact gathering (edge/facts.py reads dpkg-query or rpm); the
rest is here: available versions, exact pins and the exact dependency aziot-edge names, the
package source (Microsoft's packages-microsoft-prod, a mirror), offline package sets, removal.
"""
from typing import Dict, List, Optional

from azext_edgetpm.echo import shown
from azext_edgetpm.edge.platform import parse_os_release
from azext_edgetpm.errors import UserInputError, option


class PackageManager:
    """What the steps ask of a package manager. `ctx` is the steps' plan.Context."""
    name = ""                 # apt | dnf
    tools = ()                # commands the device must have
    install_hint = ""         # what to run on the device to see a failed install's output
    update_label = ""         # how an index refresh is named in the report
    remove_label = ""         # how the removal is named in the report
    list_hint = ""            # what lists IoT Edge's packages on the device
    offline_suffix = ""       # .deb | .rpm
    engine_packages = ("moby-engine",)   # the container engine as Microsoft's instructions install it
    source_file = ""          # where a source entry (source_entry) is written

    # -- the package source ----------------------------------------------------------------------
    def is_source_line(self, value: Optional[str]) -> bool:  # pylint: disable=unused-argument
        """Is --package-source a source entry of this manager's own (an apt line), not a URL?"""
        return False

    def source_entry(self, ctx, value: Optional[str]) -> Optional[str]:  # pylint: disable=unused-argument
        """The content of source_file when --package-source is a source of this manager's own (an apt
        line; a dnf repository), None when it names packages-microsoft-prod (a mirror's, or its URL)."""
        if not self.is_source_line(value):
            if len((value or "").split()) > 1:    # (a dnf repository with gpgkey=, on another system)
                raise UserInputError(f"{option('package_source')} {shown(value)} is not a package source "
                                     f"{ctx.display}'s {self.name} reads.",
                                     "Give the base URL of a mirror of packages.microsoft.com, or an apt line.")
            return None
        return "# Package source of IoT Edge (written by az edge-tpm install)\n" + value.strip() + "\n"

    def config_package_url(self, source: Optional[str], plat) -> str:
        """Where packages-microsoft-prod comes from: Microsoft, a URL to the package itself, or a
        mirror of packages.microsoft.com (its config/<distro>/<version>/ path)."""
        suffix = self.offline_suffix
        if not source:
            return plat.microsoft_config_url
        if source.endswith(suffix):
            return source
        return f"{source.rstrip('/')}/config/{plat.repo_distro}/{plat.version}/packages-microsoft-prod{suffix}"

    def install_config_package(self, ctx, url: str) -> str:
        """Install packages-microsoft-prod from `url` (the package sources it carries become usable); what was done."""
        raise NotImplementedError

    def repo_proxy_changes(self, ctx) -> dict:  # pylint: disable=unused-argument
        """{path: edit} of the source files packages-microsoft-prod installed that the proxy's no-proxy
        list changes (dnf: a repository's own proxy=); {} when the manager reads that list itself (apt's
        DIRECT lines)."""
        return {}

    @staticmethod
    def write_repo_proxy_changes(ctx, edits: dict) -> str:
        """Write repo_proxy_changes' edits (each file keeps its mode and owner); what was done."""
        for path, edit in edits.items():
            ctx.session.install_file(edit.text.encode(), path, edit.mode, edit.owner, edit.group)
        return "; ".join(f"wrote {edit.summary(path)}" for path, edit in edits.items())

    def write_source_line(self, ctx, text: str) -> str:
        """Write source_entry's text to source_file and read the source's index from it."""
        raise UserInputError(f"{option('package_source')} {shown(text)} is not a package source {ctx.display}'s "
                             f"{self.name} reads.", "Give the base URL of a mirror of packages.microsoft.com.")

    def unindexed(self, ctx) -> List[str]:  # pylint: disable=unused-argument
        """Sources of ours the manager has no package index of yet (an update is due)."""
        return []

    def update(self, ctx) -> None:
        """Refresh the package indexes of our sources."""

    # -- packages --------------------------------------------------------------------------------
    def spec(self, name: str, version: Optional[str] = None) -> str:
        raise NotImplementedError

    def versions(self, ctx, names: List[str]) -> Dict[str, dict]:
        """{name: {"candidate": v|None, "versions": [...]}} as the sources offer them (no refresh)."""
        raise NotImplementedError

    def ensure_candidates(self, ctx, names: List[str]) -> Dict[str, dict]:
        """versions(), refreshing the indexes once when a package is missing; raise when one stays missing."""
        raise NotImplementedError

    def install(self, ctx, specs: List[str], what: str, allow_downgrades: bool = False) -> None:
        raise NotImplementedError

    def exact_requirement(self, ctx, name: str, version: str, dependency: str) -> Optional[str]:
        """The version of `dependency` that `name` `version` requires with `=` (None: no exact one)."""
        raise NotImplementedError

    def remove(self, ctx, names: List[str]) -> str:
        """Remove the packages as IoT Edge's documentation uninstalls them; what was run."""
        raise NotImplementedError

    def read_offline(self, directory: str, arch: str, edge_version: Optional[str]) -> list:
        raise NotImplementedError

    def install_offline(self, ctx, files: list) -> None:
        """Upload the package files into a staging directory on the device, install them from there
        (install_uploaded), and remove the directory whatever happened."""
        import os
        import shlex
        ctx.progress(f"uploading {len(files)} package(s)")
        tmp = ctx.session.staging_dir()  # emptied by the next run if this one loses its connection
        try:
            remote = {}
            for item in files:
                with open(item.path, "rb") as handle:
                    data = handle.read()
                dest = f"{tmp}/{os.path.basename(item.path)}"
                ctx.session.upload(data, dest, 0o644)
                remote[item.path] = dest
            self.install_uploaded(ctx, files, remote)
        finally:
            ctx.session.run(f"rm -rf {shlex.quote(tmp)}")

    def install_uploaded(self, ctx, files: list, remote: Dict[str, str]) -> None:
        """Install `files` (read_offline's), uploaded to the device at remote[file.path]."""
        raise NotImplementedError

    # -- proxy settings and the OS's CA store --------------------------------------------------------
    ca_anchor = ""            # where a CA for the whole system goes
    ca_update = ""            # the command that rebuilds the store from it

    def proxy_files(self, proxy, facts) -> dict:
        """{path: (content, mode) or None} of the package manager's proxy settings (edge/proxy.py's Proxy;
        None: no proxy of ours), credentials only in a root-only file."""
        raise NotImplementedError

    @staticmethod
    def match_version(wanted: str, versions: List[str]) -> Optional[str]:
        """The full package version for `--edge-version` (1.5.10 matches 1.5.10-1 and 1.5.10-1.el9)."""
        from azext_edgetpm.edge.apt import match_version
        return match_version(wanted, versions)


def by_name(name: str) -> PackageManager:
    if name == "dnf":
        from .dnf import DnfManager
        return DnfManager()
    from .apt import AptManager
    return AptManager()


def for_device(plat, facts=None) -> PackageManager:
    """The manager of the detected platform; before detection, the one its os-release implies."""
    if plat is not None:
        return by_name(plat.package_manager)
    os_id = parse_os_release(getattr(facts, "os_release", "") or "").get("ID", "").lower()
    return by_name("dnf" if os_id == "rhel" else "apt")
