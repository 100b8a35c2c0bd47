"""Stand-in IoT Edge packages and their apt repository for the development kit.

API::

    repo_dir = build_repo(out_dir)                 # cached; seconds the first time
    repo = AptRepo(repo_dir, [host_ip, ...])       # serve it to the simulated devices
    section = repo.start()                         # -> the devkit.json "packages" section
    ...
    repo.stop()

See README.md beside this file for what the packages contain, how the stand-in runtime
behaves, and the decisions (systemctl, CA trust, TCTI) behind it.
"""
from .builder import EDGE_VERSIONS, MOBY_VERSION, RELEASES, BuildError
from .repo import build_repo
from .server import AptRepo

__all__ = ["AptRepo", "BuildError", "EDGE_VERSIONS", "MOBY_VERSION", "RELEASES", "build_repo"]
