"""pipelines/provision-fleet.yml: valid against the published Azure Pipelines schema, and the
az edge-tpm command lines it runs are valid invocations (az parses and validates them, and the
command starts: it then stops at the inventory, which only exists in the user's repository)."""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from azext_edgetpm.tests.latest.azcli import az

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PIPELINE = os.path.join(REPO, "pipelines", "provision-fleet.yml")


def _check_jsonschema():
    beside = os.path.join(os.path.dirname(sys.executable), "check-jsonschema")
    return shutil.which("check-jsonschema") or (beside if os.path.exists(beside) else None)


def test_pipeline_is_valid_against_the_azure_pipelines_schema():
    exe = _check_jsonschema()
    if not exe:
        pytest.skip("check-jsonschema (requirements-dev.txt) is not installed")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.azure-pipelines", PIPELINE], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def jobs_of(doc):
    for stage in doc["stages"]:
        for job in stage["jobs"]:
            yield job


def az_command_lines(doc):
    """The `az edge-tpm ...` lines of every AzureCLI task's inline script (continuations joined)."""
    for job in jobs_of(doc):
        steps = job["steps"] if "steps" in job else job["strategy"]["runOnce"]["deploy"]["steps"]
        for step in steps:
            if str(step.get("task", "")).startswith("AzureCLI@"):
                script = step["inputs"]["inlineScript"].replace("\\\n", " ")
                for line in script.splitlines():
                    if line.strip().startswith("az edge-tpm "):
                        yield step, line.strip()


def test_its_commands_are_valid_az_edge_tpm_invocations(tmp_path):
    with open(PIPELINE, encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    key, known_hosts = tmp_path / "key", tmp_path / "known_hosts"
    key.write_text("k")
    known_hosts.write_text("")
    parameters = {p["name"]: p["default"] for p in doc["parameters"]}
    values = dict(doc["variables"])
    values.update({"System.JobPositionInPhase": "2", "System.TotalJobsInPhase": str(parameters["shards"]),
                   "sshKey.secureFilePath": str(key), "knownHosts.secureFilePath": str(known_hosts),
                   "Pipeline.Workspace": str(tmp_path), "Build.ArtifactStagingDirectory": str(tmp_path),
                   "inventory": str(tmp_path / "devices.csv")})
    lines = list(az_command_lines(doc))
    assert len(lines) == 2, "the plan and the apply stage each run az edge-tpm provision"
    assert "--dry-run" in lines[0][1] and "--dry-run" not in lines[1][1]
    for step, line in lines:
        # Secrets reach az through the environment, never the command line; DPS through the login.
        assert "PASSWORD" not in line and "--login" not in line and "--auth-type login" in line
        for value in (step.get("env") or {}).values():
            assert value == "$(FLEET_SUDO_PASSWORD)"
        expanded = re.sub(r"\$\(([^)]+)\)", lambda m: values[m.group(1)], line).split(" > ")[0]
        args = shlex.split(expanded)[1:]
        assert "--shard" in args and args[args.index("--shard") + 1] == "2/4"
        # No hard-coded share of the DPS's limits: --shard i/n divides them by n.
        assert not {"--dps-ops-per-minute", "--dps-registrations-per-minute", "--dps-reg-rate"} & set(args)
        result = az(*args)
        # Parsed and validated; the command ran up to reading the inventory.
        assert result.rc != 0 and "devices.csv does not exist" in result.message, (result.message, result.stderr[-800:])
