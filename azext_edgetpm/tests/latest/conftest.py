"""Fixtures shared by the extension's tests."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NOTSS = os.path.join(REPO, ".venv-notss", "bin")
WHEELHOUSE = os.path.join(REPO, ".wheelhouse")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """The extension's wheel, built from this checkout as a release would be."""
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    REPO, "-w", str(out)], check=True, cwd=str(build))
    wheels = list(out.glob("edge_tpm-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


class InstalledAz:
    """A clean azure-cli (.venv-notss, made by scripts/bootstrap.sh: azure-cli at the extension's
    minimum version, no tpm2-pytss) with the wheel installed by `az extension add`."""

    def __init__(self, home):
        self.home = home
        self.extension_dir = str(home / "extensions")
        self.env = dict(os.environ, AZURE_CONFIG_DIR=str(home / "config"), AZURE_EXTENSION_DIR=self.extension_dir,
                        AZURE_CORE_COLLECT_TELEMETRY="no", AZURE_CORE_ONLY_SHOW_ERRORS="true", PYTHONPATH="",
                        # No pkg-config data for the TSS libraries: tpm2-pytss cannot be built here, as on
                        # Cloud Shell or az's Docker image; pip takes dependencies from .wheelhouse only.
                        PKG_CONFIG_LIBDIR="/nonexistent", PIP_NO_INDEX="1", PIP_FIND_LINKS=WHEELHOUSE)

    def __call__(self, *args, output="json", timeout=120):
        argv = [os.path.join(NOTSS, "az"), *args] + (["-o", output] if output else [])
        # (az runs `python -m azure.cli`, which puts the working directory first on sys.path: run it
        # outside this checkout, or `import azext_edgetpm` would find the source, not the install.)
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.home))

    @staticmethod
    def json(proc):
        return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def az_without_tss(wheel, tmp_path_factory):
    """`az` of a clean azure-cli without tpm2-pytss, with the extension added from its wheel."""
    if not os.path.exists(os.path.join(NOTSS, "az")):
        pytest.fail(f"{NOTSS}/az is missing: run scripts/bootstrap.sh")
    if not os.path.isdir(WHEELHOUSE):
        pytest.fail(f"{WHEELHOUSE} is missing: run scripts/bootstrap.sh")
    az = InstalledAz(tmp_path_factory.mktemp("az-notss"))
    probe = subprocess.run([os.path.join(NOTSS, "python"), "-c", "import tpm2_pytss"], capture_output=True,
                           env=az.env)
    assert probe.returncode != 0, "the clean azure-cli must not have tpm2-pytss"
    added = az("extension", "add", "--source", str(wheel), "-y", output=None, timeout=300)
    assert added.returncode == 0, added.stderr
    return az


@pytest.fixture(scope="module")
def repo(rig):
    """The stand-in package repository, served to the module rig's devices."""
    from devkit.packages.service import AptService
    service = AptService()
    try:
        section = service.up(rig)
    except Exception as exc:  # pylint: disable=broad-except  # e.g. dpkg-dev missing
        pytest.skip(f"stand-in package repository unavailable: {exc}")
    yield section
    service.down(rig, section)
