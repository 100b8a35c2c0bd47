"""The built wheel installs into a stock azure-cli with `az extension add` and its commands
run there; and the wheel leaves tpm2-pytss out where it cannot be built."""
import os
import subprocess
import sys
import zipfile

import pytest

AZ = os.path.join(os.path.dirname(sys.executable), "az")


def test_wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: edge-tpm" in metadata
    assert 'Requires-Dist: tpm2-pytss>=2.1; sys_platform == "linux"' in metadata
    assert "azext_edgetpm/azext_metadata.json" in names
    assert not [n for n in names if "/tests/" in n or n.startswith("devkit/")]


@pytest.mark.skipif(not os.path.exists(AZ), reason="the full azure-cli (az) is not installed in this environment")
def test_az_extension_add_and_run(wheel, tmp_path):
    env = dict(os.environ, AZURE_CONFIG_DIR=str(tmp_path / "config"),
               AZURE_EXTENSION_DIR=str(tmp_path / "extensions"), AZURE_CORE_COLLECT_TELEMETRY="no")
    add = subprocess.run([AZ, "extension", "add", "--source", str(wheel), "-y"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert add.returncode == 0, add.stderr
    listed = subprocess.run([AZ, "extension", "show", "-n", "edge-tpm", "--query", "version", "-o", "tsv"],
                            env=env, capture_output=True, text=True)
    assert listed.stdout.strip() == "0.1.0"
    helped = subprocess.run([AZ, "edge-tpm", "ek", "show", "-h"], env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "--accept-new-host-key" in helped.stdout
    # A real command through the installed copy: a closed port gives the clean error, no traceback.
    run = subprocess.run([AZ, "edge-tpm", "ek", "show", "--host", "root@127.0.0.1:1"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert "refused the connection" in run.stderr and "Traceback" not in run.stderr
