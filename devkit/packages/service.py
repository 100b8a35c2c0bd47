"""The package repository as a devkit rig service (see devkit/services.py).

``up`` builds the repository (cached under ``<checkout>/.devkit/packages/repo``) and starts
``python -m devkit.packages serve`` as its own process bound to ``rig.host_ip``, so the
repository outlives the process that ran ``python -m devkit up``; ``down`` stops it by the
pid recorded in the section. Registered as ``packages`` in devkit/services.py.
"""
from ..services import ProcessService
from .__main__ import DEFAULT_DIR
from .repo import build_repo


class AptService(ProcessService):
    """Serves the stand-in repository to a rig's devices."""

    name = "packages"
    module = "devkit.packages"

    def __init__(self, repo_dir=None):
        super().__init__()
        self.repo_dir = repo_dir or DEFAULT_DIR

    def serve_args(self, rig, section_file):
        build_repo(self.repo_dir)
        return ["--repo", self.repo_dir, "--host-ip", rig.host_ip, "--section-file", section_file]
