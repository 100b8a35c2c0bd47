"""Fixtures shared by the extension's tests."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


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
