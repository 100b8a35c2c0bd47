"""Build (or reuse) the whole stand-in repository: the .debs (builder.py) and the RPMs
(rpms.py) with their indexes and offline sets; see builder.py for the Debian layout and
rpms.py for the RHEL one. Cached by content: a rebuild happens only when the stand-in sources,
the builders, the interpreter or the devkit checkout path change (the packages embed the last
two).
"""
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile

from . import builder, rpms
from .builder import (DEB_ARCHS, DEVKIT_ROOT, EDGE_VERSIONS, IDENTITY_VERSIONS, MOBY_VERSION, RELEASES,
                      RUNTIME, _link, _tomlkit_dir, edge_package, fetch_debian_debs,
                      identity_package, moby_package, scan, shim_package)


def _cache_key(python, devkit_root):
    """Hash of everything the built packages depend on."""
    h = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(RUNTIME, "**", "*"), recursive=True)
                       + [os.path.abspath(__file__), os.path.abspath(builder.__file__),
                  os.path.abspath(rpms.__file__)]):
        if os.path.isfile(path) and "__pycache__" not in path:
            h.update(path.encode())
            with open(path, "rb") as f:
                h.update(f.read())
    h.update(("%s\n%s\n%s\n%s" % (python, devkit_root, RELEASES, MOBY_VERSION)).encode())
    for path in sorted(glob.glob(os.path.join(_tomlkit_dir(), "*.py"))):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def build_repo(out_dir, python=None, devkit_root=None):
    """Build (or reuse) the stand-in repository in ``out_dir``; return its path.

    ``python`` is the interpreter the device-side runtime uses (default: this one, i.e. the
    devkit venv, which devices see at the same path); ``devkit_root`` the checkout holding
    ``devkit/tpmclient.py`` (default: this one).
    """
    python = python or sys.executable
    devkit_root = devkit_root or DEVKIT_ROOT
    out_dir = os.path.abspath(out_dir)
    key = _cache_key(python, devkit_root)
    manifest_path = os.path.join(out_dir, "manifest.json")
    try:
        with open(manifest_path, "r", encoding="utf-8") as f:
            if json.load(f).get("key") == key:
                return out_dir
    except (OSError, ValueError):
        pass
    os.makedirs(os.path.dirname(out_dir) or ".", exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".repo-", dir=os.path.dirname(out_dir))
    os.chmod(staging, 0o755)
    try:
        pool = os.path.join(staging, "pool")
        os.makedirs(pool)
        # name -> the package's files, one per architecture (the shim: one, "all")
        built = {"shim": [shim_package().build(pool)],
                 "moby": [moby_package(a).build(pool) for a in DEB_ARCHS]}
        for version in IDENTITY_VERSIONS:
            built["identity-" + version] = [identity_package(version, python, devkit_root, a)
                                            .build(pool) for a in DEB_ARCHS]
        for release in RELEASES:
            built["edge-" + release.edge] = [edge_package(release, a).build(pool)
                                             for a in DEB_ARCHS]
        debian = fetch_debian_debs(pool, os.path.join(os.path.dirname(out_dir),
                                                      "debian-debs-cache"))
        scan(staging)
        for release in RELEASES:
            offline = os.path.join(staging, "debs", release.edge)
            os.makedirs(offline)
            for path in (built["shim"] + built["moby"] + built["identity-" + release.identity]
                         + built["edge-" + release.edge] + [os.path.join(pool, n) for n in debian]):
                _link(path, os.path.join(offline, os.path.basename(path)))
        lines = {os.path.basename(path): r.line for r in RELEASES
                 for path in built["edge-" + r.edge] + built["identity-" + r.identity]}
        manifest = {"key": key, "edge_versions": list(EDGE_VERSIONS),
                    "lines": lines, "debian_own": sorted(debian),
                    "identity_versions": {r.edge: r.identity for r in RELEASES},
                    "latest": EDGE_VERSIONS[-1], "moby_version": MOBY_VERSION,
                    "python": python, "devkit_root": devkit_root,
                    "pool": sorted(os.listdir(pool))}
        manifest["rpms"] = rpms.build_rpm_repos(staging, python, devkit_root)
        manifest["rpms"] = json.loads(json.dumps(manifest["rpms"]).replace(staging, out_dir))
        with open(os.path.join(staging, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return out_dir
