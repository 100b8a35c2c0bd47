"""Clearing a simulated device's TPM (`python -m devkit tpm-clear`, `Device.clear_tpm`): every
persistent key goes; the EK made next is the same key after a plain clear and a new one after a
new endorsement seed (a replaced TPM)."""
import hashlib
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.devkit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _persistent(dev):
    out = dev.exec(["tpm2_getcap", "handles-persistent"], env=dev.tpm_env, check=True).stdout
    return [line.strip("- ").strip() for line in out.splitlines() if line.strip()]


def _make_ek(dev):
    """Create (or read) the EK at 0x81010001 as `ek show` does; its SHA-256."""
    dev.exec("tpm2_readpublic -c 0x81010001 -o /tmp/ek.pub >/dev/null 2>&1 || "
             "tpm2_createek -c 0x81010001 -G rsa -u /tmp/ek.pub", env=dev.tpm_env, check=True)
    return hashlib.sha256(dev.exec("cat /tmp/ek.pub", text=False, check=True).stdout).hexdigest()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "devkit", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_tpm_clear_keeps_or_replaces_the_endorsement_key(rig, new_device):
    dev = new_device("fresh")
    first = _make_ek(dev)
    dev.exec("tpm2_createprimary -C o -c /tmp/srk.ctx >/dev/null && tpm2_evictcontrol -c /tmp/srk.ctx 0x81000001",
             env=dev.tpm_env, check=True)
    assert _persistent(dev) == ["0x81000001", "0x81010001"]

    proc = _cli("tpm-clear", "--dir", str(rig.dir), "--keep-seed", dev.name)
    assert proc.returncode == 0, proc.stderr
    assert "evicted 0x81000001, 0x81010001" in proc.stdout
    assert _persistent(dev) == []
    assert _make_ek(dev) == first  # tpm2_clear alone: same endorsement seed, same EK

    assert dev.clear_tpm() == ["0x81010001"]
    assert _persistent(dev) == []
    assert _make_ek(dev) != first  # a new endorsement seed: another EK, as a replaced TPM has
