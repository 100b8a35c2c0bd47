"""Serve a stand-in repository over HTTP to the simulated devices (standard library only).

``AptRepo(repo_dir, bind_ips).start()`` binds one port on every given address (port 0: a
free port chosen on the first address, then reused on the others), builds the
packages-microsoft-prod package for that address, and serves a private copy of the
repository (hard links) so two servers of the same ``repo_dir`` never clash.
"""
import functools
from concurrent.futures import ThreadPoolExecutor
import json
import os
import shutil
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from . import builder, rpms

CONFIG_PKG_PATH = "config/debian/12/packages-microsoft-prod.deb"
# The Debian releases served as packages.microsoft.com serves them: a pool per release at
# debian/<v>/prod/ and config/debian/<v>/packages-microsoft-prod.deb whose apt line names it.
# Each pool holds the runtime lines Microsoft publishes for that release (1.6 dropped Debian
# 11: Azure/iotedge builds/misc/templates/build-packages.yaml) and, for Debian 12 only, this
# machine's tpm2-tools and libtss2 (Debian 12's, which would break another release's libraries).
DEBIAN_RELEASES = {"12": {"codename": "bookworm", "lines": None, "debian_own": True},
                   "11": {"codename": "bullseye", "lines": ("1.5",), "debian_own": False}}


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static files, no access log on stderr."""

    def log_message(self, *_args):
        """Requests are not logged."""


class AptRepo:
    """A running HTTP server for a repository built by ``build_repo``."""

    def __init__(self, repo_dir, bind_ips, port=0):
        self.repo_dir = os.path.abspath(repo_dir)
        self.bind_ips = list(bind_ips)
        if not self.bind_ips:
            raise ValueError("AptRepo needs at least one address to bind")
        self.port = port
        self.serve_dir = None
        self._servers = []
        self._threads = []

    @property
    def base_url(self):
        """URL of the repository on the first address."""
        return "http://%s:%d/" % (self.bind_ips[0], self.port)

    @property
    def apt_line(self):
        """The sources.list line a device uses."""
        return "deb [trusted=yes] %s ./" % self.base_url

    def _prepare(self):
        """A private served tree: links to the pool, the config packages, fresh indexes."""
        parent = os.path.dirname(self.repo_dir)
        self.serve_dir = tempfile.mkdtemp(prefix="apt-served-%d-" % self.port, dir=parent)
        with open(os.path.join(self.repo_dir, "manifest.json"), "r", encoding="utf-8") as f:
            manifest = json.load(f)
        # The flat repository at the root (today's apt_line): every package, Debian 12's.
        pool = os.path.join(self.serve_dir, "pool")
        os.makedirs(pool)
        for name in os.listdir(os.path.join(self.repo_dir, "pool")):
            builder._link(os.path.join(self.repo_dir, "pool", name), os.path.join(pool, name))
        with open(os.path.join(self.repo_dir, "Packages"), "r", encoding="utf-8") as f:
            stanzas = builder.index_stanzas(f.read())
        config = builder.build_config_package(self.apt_line, pool)
        builder.write_index(self.serve_dir, "".join(stanzas.values())
                            + builder.deb_stanza(config))
        if os.path.exists(os.path.join(self.repo_dir, rpms.KEY_PATH)):
            os.makedirs(os.path.join(self.serve_dir, os.path.dirname(rpms.KEY_PATH)))
            builder._link(os.path.join(self.repo_dir, rpms.KEY_PATH),
                          os.path.join(self.serve_dir, rpms.KEY_PATH))
        with ThreadPoolExecutor(max_workers=len(rpms.EL_RELEASES)) as pool:
            rhel = [pool.submit(self._prepare_rhel_repo, el, manifest) for el in rpms.EL_RELEASES]
            for version, release in DEBIAN_RELEASES.items():
                self._prepare_debian_pool(version, release, manifest, stanzas)
            for future in rhel:
                future.result()

    def _prepare_rhel_repo(self, el, manifest):
        """rhel/<el>/prod/ (the signed RPMs and their repodata, as built), rhel/<el>/untrusted/
        (signed by another key), keys/microsoft.asc (the kit's key) and
        config/rhel/<el>/packages-microsoft-prod.rpm, whose .repo file names them."""
        if el not in manifest.get("rpms", {}):
            return
        for sub in ("prod", "untrusted"):
            shutil.copytree(manifest["rpms"][el][sub if sub == "untrusted" else "repo"],
                            os.path.join(self.serve_dir, "rhel", el, sub),
                            copy_function=builder._link)
        config = os.path.join(self.serve_dir, "config", "rhel", el)
        os.makedirs(config)
        built = rpms.build_config_rpm(self.rhel_repo_url(el), el, config, self.gpgkey_url)
        os.replace(built, os.path.join(config, "packages-microsoft-prod.rpm"))

    def _prepare_debian_pool(self, version, release, manifest, stanzas):
        """debian/<version>/prod/ and its config/debian/<version>/ package."""
        tree = os.path.join(self.serve_dir, "debian", version, "prod")
        pool = os.path.join(tree, "pool")
        os.makedirs(pool)
        lines, debian_own = manifest.get("lines", {}), set(manifest.get("debian_own", ()))
        index = []
        for name in sorted(os.listdir(os.path.join(self.repo_dir, "pool"))):
            if name in debian_own and not release["debian_own"]:
                continue
            if release["lines"] is not None and lines.get(name, release["lines"][0]) \
                    not in release["lines"]:
                continue
            builder._link(os.path.join(self.repo_dir, "pool", name), os.path.join(pool, name))
            index.append(stanzas[name])
        deb = builder.build_config_package(self.debian_apt_line(version), tree,
                                           "1.1-debian%s" % version)
        config_copy = os.path.join(self.serve_dir, "config", "debian", version,
                                   "packages-microsoft-prod.deb")
        os.makedirs(os.path.dirname(config_copy))
        os.replace(deb, config_copy)
        builder.write_index(tree, "".join(index))

    @property
    def gpgkey_url(self):
        """The kit's signing key, where packages.microsoft.com serves Microsoft's."""
        return self.base_url + rpms.KEY_PATH

    def rhel_source(self, el, sub="prod"):
        """What to give --package-source for RHEL ``el``'s dnf repository (``sub``: prod, or
        untrusted, signed by a key the kit does not serve), with the kit's key."""
        return "%srhel/%s/%s/ gpgkey=%s" % (self.base_url, el, sub, self.gpgkey_url)

    def rhel_repo_url(self, el):
        """The dnf repository (baseurl) of RHEL ``el``."""
        return "%srhel/%s/prod/" % (self.base_url, el)

    def debian_apt_line(self, version):
        """The apt line of Debian ``version``'s pool (what its packages-microsoft-prod writes)."""
        return "deb [trusted=yes] %sdebian/%s/prod/ ./" % (self.base_url, version)

    def start(self):
        """Bind, prepare the served tree, serve in background threads; return section()."""
        try:
            for ip in self.bind_ips:
                server = ThreadingHTTPServer((ip, self.port), _QuietHandler)
                server.daemon_threads = True
                self.port = server.server_address[1]
                self._servers.append(server)
            self._prepare()
            handler = functools.partial(_QuietHandler, directory=self.serve_dir)
            for server in self._servers:
                server.RequestHandlerClass = handler
                thread = threading.Thread(target=server.serve_forever, daemon=True,
                                          name="apt-repo-%s" % server.server_address[0])
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self.stop()
            raise
        return self.section()

    def stop(self):
        """Shut the servers down and remove the served tree."""
        for server in self._servers:
            if self._threads:
                server.shutdown()
            server.server_close()
        self._servers, self._threads = [], []
        if self.serve_dir and os.path.isdir(self.serve_dir):
            shutil.rmtree(self.serve_dir)
        self.serve_dir = None

    def section(self):
        """The devkit.json section describing this repository."""
        with open(os.path.join(self.repo_dir, "manifest.json"), "r", encoding="utf-8") as f:
            manifest = json.load(f)
        latest = manifest["latest"]
        return {
            "apt_line": self.apt_line,
            "base_url": self.base_url,
            "urls": ["http://%s:%d/" % (ip, self.port) for ip in self.bind_ips],
            "config_package_url": self.base_url + CONFIG_PKG_PATH,
            "repo_dir": self.serve_dir or self.repo_dir,
            "debs_dir": os.path.join(self.repo_dir, "debs", latest),
            "debs_dirs": {v: os.path.join(self.repo_dir, "debs", v)
                          for v in manifest["edge_versions"]},
            "edge_versions": manifest["edge_versions"],
            "identity_versions": manifest["identity_versions"],
            "latest_edge_version": latest,
            # What to give --package-source on each system: its own pool, as on
            # packages.microsoft.com (the base URL works everywhere: the product then fetches
            # config/<distro>/<version>/packages-microsoft-prod.*); on RHEL, the dnf repository
            # with the kit's key (its packages are signed with it, not with Microsoft's).
            "sources": dict({"debian%s" % v: self.debian_apt_line(v) for v in DEBIAN_RELEASES},
                            **{"rhel%s" % el: self.rhel_source(el) for el in rpms.EL_RELEASES}),
            "untrusted_sources": {"rhel%s" % el: self.rhel_source(el, "untrusted")
                                  for el in rpms.EL_RELEASES},
            "gpgkey_url": self.gpgkey_url,
            "config_package_urls": dict(
                {"debian%s" % v: "%sconfig/debian/%s/packages-microsoft-prod.deb"
                 % (self.base_url, v) for v in DEBIAN_RELEASES},
                **{"rhel%s" % el: "%sconfig/rhel/%s/packages-microsoft-prod.rpm"
                   % (self.base_url, el) for el in rpms.EL_RELEASES}),
            "rpms_dirs": {"rhel%s" % el: dict(manifest["rpms"][el]["offline"])
                          for el in manifest.get("rpms", {})},
            "rpm_system_dirs": {"rhel%s" % el: manifest["rpms"][el]["system"]
                                for el in manifest.get("rpms", {})},
            "lines": dict({"debian%s" % v: sorted({r.line for r in builder.RELEASES
                                                   if r.line in (rel["lines"] or (r.line,))})
                           for v, rel in DEBIAN_RELEASES.items()},
                          **{"rhel%s" % el: sorted({r.line for r in builder.RELEASES})
                             for el in rpms.EL_RELEASES}),
            "latest_edge_versions": dict(
                {"debian%s" % v: [r.edge for r in builder.RELEASES
                                  if r.line in (rel["lines"] or (r.line,))][-1]
                 for v, rel in DEBIAN_RELEASES.items()},
                **{"rhel%s" % el: latest for el in rpms.EL_RELEASES}),
        }

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
