"""pipelines/provision-fleet.yml run as an agent runs it, against the dev kit.

Every `bash:` step and AzureCLI@2 inline script of the build, plan, apply and report stages runs
with bash exactly as written (tests/latest/agent.py: the pipeline's variables as environment,
TF_BUILD=True, `$(...)` macros replaced as Azure Pipelines does, secure files as files, the
previous step's `task.setvariable` read back). What only the service does (artifacts, secure file
download, the service connection's login, publishing test results) is imitated by agent.py and
named there. The build stage's pip builds the wheel, `az extension add --source` installs it into
a clean azure-cli (.venv-notss), the plan stage plans the devices without writing anything, the
apply stage provisions 4 simulated devices through the DPS emulator with the service
connection's identity (`--auth-type login`), "Rerun failed jobs" of shard 1 skips its finished
devices and of shard 2 (no state of its attempt 2: the download fails, the job goes on) changes
nothing, and the report stage finds every shard's JUnit file and merges the shards' reports into
one (az edge-tpm report merge), checked in Chromium.
"""
import glob
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from azext_edgetpm.tests.latest.agent import Agent, template
from azext_edgetpm.tests.latest.browser import chart_colours, open_page
from azext_edgetpm.tests.latest.conftest import NOTSS, REPO, WHEELHOUSE
from azext_edgetpm.tests.latest.test_dps_support import EmulatorEnv, start_emulator
from azext_edgetpm.tests.latest.test_fleet_ci import JUNIT_XSD, add_devices, file_hashes, junit_cases

pytestmark = pytest.mark.devkit

PIPELINE = os.path.join(REPO, "pipelines", "provision-fleet.yml")
SHARDS = 2          # the pipeline's `shards` parameter, as set when the run is queued


@pytest.fixture(scope="module")
def dps(rig, tmp_path_factory):
    env = EmulatorEnv(start_emulator(tmp_path_factory.mktemp("pipeline-dps"), host_ips=[rig.host_ip]))
    yield env
    env.close()


@pytest.fixture(scope="module")
def devices(rig, dps):
    """4 devices, in both shards: the shard is a hash of host:port, and the rig's addresses vary, so
    a device is added (and one of the full shard's dropped) while one shard is empty."""
    from azext_edgetpm.fleet.inventory import shard_of
    found = add_devices(rig, dps, 4)
    for _ in range(12):
        shards = [shard_of(f"{d.host}:{d.port}", SHARDS) for d in found]
        if len(set(shards)) == SHARDS:
            break
        extra = add_devices(rig, dps, 1)[0]
        if shard_of(f"{extra.host}:{extra.port}", SHARDS) != shards[0]:
            found, extra = found[:-1] + [extra], found[-1]
        rig.remove_device(extra)
    yield found
    for dev in found:
        rig.remove_device(dev)


def _sources(tmp_path, devices):
    """What `checkout: self` gets: this repository's files, and the user's inventory in it."""
    sources = tmp_path / "repo"
    listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(os.path.dirname(sources / name), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), sources / name)
    for extra in glob.glob(os.path.join(REPO, "azext_edgetpm", "fleet", "*.py")):   # (new, maybe not yet added)
        shutil.copy2(extra, sources / "azext_edgetpm" / "fleet")
    os.makedirs(sources / "fleet", exist_ok=True)
    with open(sources / "fleet" / "devices.csv", "w", encoding="utf-8") as handle:
        handle.write("host,tcti\n" + "".join(f"root@{d.host}:{d.port},\"{d.tcti}\"\n" for d in devices))
    return str(sources)


def _agent_env(tmp_path, dps):
    """The agent machine: `az` is a clean azure-cli, `python3` one with pip and setuptools; no
    package index here (pip takes the wheelhouse and builds without isolation), the emulator's
    CA trusted as a plant's agent trusts its DPS's."""
    bin_dir = tmp_path / "agent-bin"
    bin_dir.mkdir()
    os.symlink(os.path.join(NOTSS, "az"), bin_dir / "az")
    # (a wrapper, not a symlink: a venv's python found through a symlink elsewhere is not the venv's)
    python3 = bin_dir / "python3"
    python3.write_text(f"#!/bin/sh\nexec {os.path.join(REPO, '.venv', 'bin', 'python3')} \"$@\"\n")
    python3.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
            "PYTHONPATH": "", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELHOUSE, "PIP_NO_BUILD_ISOLATION": "0",
            "PKG_CONFIG_LIBDIR": "/nonexistent", "AZURE_CORE_COLLECT_TELEMETRY": "no",
            "REQUESTS_CA_BUNDLE": dps.section["ca_bundle"]}


def _service_connection_login(dps):
    """What AzureCLI@2 does before the script: log in with the service connection's identity."""
    s = dps.section

    def login(env):
        az = os.path.join(NOTSS, "az")
        # (the dev kit's cloud: ARM's endpoint, and its IoT domains where the emulator has them)
        cloud = (["--cloud-config", json.dumps(s["cloud_config"])] if "cloud_config" in s
                 else ["--endpoint-resource-manager", s["arm_endpoint"]])
        for args in (["cloud", "register", "-n", s["cloud_name"], *cloud],
                     ["config", "set", "core.instance_discovery=false"], ["cloud", "set", "-n", s["cloud_name"]],
                     ["login", "--service-principal", "-u", s["sp"]["app_id"], "-p", "@" + dps.sp_secret_file,
                      "--tenant", s["tenant"], "-o", "none"]):
            proc = subprocess.run([az, *args], env=env, capture_output=True, text=True, timeout=300,
                                  cwd=env["AGENT_TEMPDIRECTORY"], check=False)
            assert proc.returncode == 0, (args, proc.stderr[-2000:])
    return login


def _dps_records(dps):
    """What DPS holds: every enrollment (its etag and update time move on any write) and its
    registration record, and the emulator's counts of PUT, DELETE and PATCH calls (a device's
    registration included)."""
    store = dps.emu.store
    enrollments = {e["registrationId"]: e for e in store.query_enrollments({"query": "*"}, 10 ** 6, None)[0]}
    registrations = {rid: store.get_registration(rid) for rid in enrollments}
    return enrollments, registrations, {k: v for k, v in dps.emu.counters().items()
                                        if re.match(r"endpoint\.(PUT|DELETE|PATCH) ", k)}


@pytest.mark.timeout(1800)
def test_the_pipeline_runs_as_written(rig, dps, repo, devices, tmp_path):
    with open(PIPELINE, encoding="utf-8") as handle:
        doc = yaml.safe_load(handle)
    parameters = {p["name"]: p["default"] for p in doc["parameters"]}
    parameters["shards"] = SHARDS
    stages = {s["stage"]: s for s in doc["stages"]}
    variables = dict(doc["variables"], dpsName=dps.section["dps_name"], resourceGroup=dps.section["resource_group"],
                     provisionOptions=f"--package-source {repo['base_url']}")
    sources, artifacts = _sources(tmp_path, devices), tmp_path / "artifacts"
    artifacts.mkdir()
    secure = {variables["sshKeySecureFile"]: devices[0].key("root"), variables["knownHostsSecureFile"]: rig.known_hosts}
    base_env, login = _agent_env(tmp_path, dps), _service_connection_login(dps)

    def run_job(job, name, position=1, total=1, attempt=1):
        assert template(job["pool"]["name"], parameters) == parameters["agentPool"]
        agent = Agent(str(tmp_path / "agents" / name), str(artifacts), sources,
                      dict(variables, **{"System.JobPositionInPhase": str(position),
                                         "System.TotalJobsInPhase": str(total), "System.JobName": name,
                                         "System.JobAttempt": str(attempt)}),
                      secure, base_env, login)
        steps = job["steps"] if "steps" in job else job["strategy"]["runOnce"]["deploy"]["steps"]
        for step in steps:
            run = agent.run_step(step)
            assert run.result != "Failed", f"{name}: {run.name} exited {run.rc}\n{run.stdout[-3000:]}\n" \
                                           f"{run.stderr[-3000:]}"
        return agent

    def shards_of(job):
        total = int(template(job["strategy"]["parallel"], parameters))
        assert total == SHARDS
        return range(1, total + 1)

    # Build: the wheel, published as the artifact the later stages download.
    run_job(stages["build"]["jobs"][0], "build")
    wheels = glob.glob(str(artifacts / "edge-tpm-wheel" / "edge_tpm-*.whl"))
    assert len(wheels) == 1

    # Plan: provision --dry-run per shard; a plan per device, nothing written in DPS.
    writes_before = dps.count("endpoint.PUT") + dps.count("endpoint.POST /enrollments")
    plan_job = stages["plan"]["jobs"][0]
    planned = []
    for position in shards_of(plan_job):
        agent = run_job(plan_job, f"plan-{position}", position, SHARDS)
        ext = os.path.join(agent.variables["Agent.TempDirectory"], ".azclitask", "cliextensions", "edge-tpm")
        assert os.path.isdir(os.path.join(ext, "azext_edgetpm")), "az extension add --source did not install it"
        with open(artifacts / f"fleet-plan-{position}" / f"plan-{position}.json", encoding="utf-8") as handle:
            planned += json.load(handle)
    assert sorted(p["host"] for p in planned) == sorted(f"root@{d.host}:{d.port}" for d in devices)
    assert {p["status"] for p in planned} == {"planned"}
    assert all(p["plan"]["enrollment"] == "create" for p in planned), planned
    assert dps.count("endpoint.PUT") + dps.count("endpoint.POST /enrollments") == writes_before

    # Apply: the approval job (the environment's checks hold the stage), then the shards.
    apply = {j.get("job") or j.get("deployment"): j for j in stages["apply"]["jobs"]}
    assert template(apply["approved"]["environment"], parameters) == parameters["approvalEnvironment"]
    assert apply["provision"]["dependsOn"] == "approved"
    run_job(apply["approved"], "approved")
    assigned = []
    for position in shards_of(apply["provision"]):
        agent = run_job(apply["provision"], f"provision-{position}", position, SHARDS)
        script = agent.runs[-2]   # the AzureCLI@2 step (the publish follows)
        assert "##vso[task.setprogress value=100]" in script.stderr, script.stderr[-3000:]
        assert "##vso[task.uploadsummary]" in script.stderr and "task.logissue" not in script.stderr
        # No secret variable FLEET_SUDO_PASSWORD: its macro text never reached sudo as a password.
        published = artifacts / f"fleet-state-{position}-1"
        assert {"fleet-state.json", "junit.xml", "report.html"} <= set(os.listdir(published))
        cases = junit_cases(str(published / "junit.xml"))
        assert all(not c["failed"] for c in cases)
        assigned += cases
    assert len(assigned) == len(devices)
    for dev in devices:
        rows = [c for c in assigned if c["name"].startswith(f"root@{dev.host}:{dev.port}")]
        assert len(rows) == 1
    # "Rerun failed jobs": attempt 2 of shard 1 takes attempt 1's state; its devices are skipped.
    writes_before = dps.count("endpoint.PUT")
    agent = run_job(apply["provision"], "provision-1-again", 1, SHARDS, attempt=2)
    download = [r for r in agent.runs if r.kind == "DownloadPipelineArtifact@2"]
    assert len(download) == 1 and download[0].rc == 0 and agent.result == "Succeeded"
    rerun = junit_cases(str(artifacts / "fleet-state-1-2" / "junit.xml"))
    assert rerun and len(rerun) == len(junit_cases(str(artifacts / "fleet-state-1-1" / "junit.xml")))
    assert all(not c["failed"] for c in rerun)
    with open(artifacts / "fleet-state-1-2" / "edge-tpm-provision-summary.md", encoding="utf-8") as handle:
        assert f"({len(rerun)} done in an earlier run)" in handle.read()
    assert dps.count("endpoint.PUT") == writes_before

    # "Rerun failed jobs" of shard 2 as its attempt 3, with no state of attempt 2 (it ended before
    # publishing): the download fails, continueOnError lets the job go on (SucceededWithIssues), and
    # provision checks every device again and changes nothing, in DPS or on the devices.
    shard2 = junit_cases(str(artifacts / "fleet-state-2-1" / "junit.xml"))
    shard2_devices = [d for d in devices if any(c["name"].startswith(f"root@{d.host}:{d.port}") for c in shard2)]
    assert shard2_devices and len(shard2_devices) == len(shard2)
    before = {d.name: file_hashes(d) for d in shard2_devices}
    records_before = _dps_records(dps)
    agent = run_job(apply["provision"], "provision-2-attempt-3", 2, SHARDS, attempt=3)
    download = [r for r in agent.runs if r.kind == "DownloadPipelineArtifact@2"]
    assert len(download) == 1 and download[0].rc != 0 and "fleet-state-2-2 was not found" in download[0].stderr
    assert download[0].result == "SucceededWithIssues" and agent.result == "SucceededWithIssues"
    again = junit_cases(str(artifacts / "fleet-state-2-3" / "junit.xml"))
    assert len(again) == len(shard2) and all(not c["failed"] for c in again)
    with open(artifacts / "fleet-state-2-3" / "edge-tpm-provision-summary.md", encoding="utf-8") as handle:
        assert f"**{len(shard2)} devices**: {len(shard2)} assigned (0 done in an earlier run)" in handle.read()
    # (Without a state, the devices' enrollments go to DPS as a bulk create, which DPS refuses for
    # existing ones; each is then compared, and found as wanted: nothing is written.)
    assert _dps_records(dps) == records_before
    assert {d.name: file_hashes(d) for d in shard2_devices} == before
    registrations = dps.emu.store.query_enrollments({"query": "*"}, 10 ** 6, None)[0]
    assert len(registrations) == len(devices)
    for enrollment in registrations:
        assert dps.emu.store.get_registration(enrollment["registrationId"])["status"] == "assigned"

    # Report: the latest attempt of every shard; PublishTestResults@2 finds each shard's JUnit file.
    agent = run_job(stages["report"]["jobs"][0], "report")
    published = [r for r in agent.runs if r.kind == "PublishTestResults@2"][0]
    files = published.stdout.split()
    assert len(files) == SHARDS
    latest = tmp_path / "agents" / "report" / "latest"
    assert (latest / ".attempt-1").read_text(encoding="utf-8").strip() == "2"   # the latest attempt of shard 1
    assert (latest / ".attempt-2").read_text(encoding="utf-8").strip() == "3"   # ... and of shard 2
    import xmlschema
    schema = xmlschema.XMLSchema(JUNIT_XSD)
    for path in files:
        schema.validate(path)
    # One merged report of both shards' latest attempts (az edge-tpm report merge, from the wheel),
    # published in fleet-reports with its counts.
    merged = json.loads((artifacts / "fleet-reports" / "fleet-report.json").read_text(encoding="utf-8"))
    assert (merged["devices"], merged["assigned"], merged["failed"]) == (len(devices), len(devices), 0), merged
    assert merged["doneEarlier"] == len(rerun) and merged["replaced"] == []
    assert sorted(merged["inputs"]) == ["latest/shard-1/report.html", "latest/shard-2/report.html"]
    recap = artifacts / "fleet-reports" / "fleet-summary.md"
    merge_step = [r for r in agent.runs if r.name == "Merge the shards' reports into one"][0]
    assert f"##vso[task.uploadsummary]{tmp_path / 'agents' / 'report' / 'latest' / 'fleet-summary.md'}" \
        in merge_step.stdout.splitlines()
    assert (f"**{len(devices)} devices**: {len(devices)} assigned ({len(rerun)} done in an earlier run), 0 failed."
            in recap.read_text(encoding="utf-8"))
    page = artifacts / "fleet-reports" / "fleet-report.html"
    text = page.read_text(encoding="utf-8")
    data = json.loads(text.split('<script type="application/json" id="run">', 1)[1].split("</script>", 1)[0])
    assert sorted(r["name"] for r in data["rows"]) == sorted(f"root@{d.host}:{d.port}" for d in devices)
    assert {r["status"] for r in data["rows"]} == {"assigned"} and len(data["merged"]) == SHARDS
    # ... as Chromium shows it: 4 device rows and the chart (shard 1 done from the start, shard 2's
    # attempt 3 running later on the same clock).
    shot, dom = open_page(page, tmp_path)
    assert dom.count("<tr class=\"ok\">") == len(devices) and dom.count("<tr class=") == len(devices)
    assert 'id="timeline"' in dom and dom.count("<polygon") == 4
    drawn = chart_colours(shot)
    assert drawn["done"] > 200 and drawn["running"] > 200, drawn
