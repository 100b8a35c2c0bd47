"""Building the command table and the arguments must stay cheap: no paramiko, tpm2-pytss,
tomlkit, cryptography or Azure SDK import. Checked in a fresh interpreter, so that nothing
this test process already imported can hide a regression."""
import json
import subprocess
import sys

from devkit import loadprobe

HEAVY_PREFIXES = ("paramiko", "tpm2_pytss", "tomlkit", "cryptography", "azure.core", "azure.mgmt",
                  "azure.identity", "azure.keyvault", "msal")
# (requests is imported by azure-cli-core itself when any command loader is built, so it is not ours.)

PROBE = ("import json, sys\n" + loadprobe.SETUP + "before = set(sys.modules)\n" + loadprobe.LOAD
         + 'print(json.dumps({"commands": sorted(table), "new": sorted(set(sys.modules) - before)}))\n')


def test_command_table_imports_nothing_heavy():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "edge-tpm ek show" in probe["commands"]
    heavy = [m for m in probe["new"] if m.startswith(HEAVY_PREFIXES)]
    assert heavy == [], f"loading the command table imported {heavy}"
    # The probe itself must be able to see a heavy import: importing paramiko afterwards does.
    check = subprocess.run([sys.executable, "-c", PROBE.replace("print(", "import paramiko\nprint(")],
                           capture_output=True, text=True, check=True)
    after = json.loads(check.stdout.strip().splitlines()[-1])
    assert any(m.startswith("paramiko") for m in after["new"])
