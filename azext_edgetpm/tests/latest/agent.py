"""A small stand-in for an Azure Pipelines agent, for tests of pipelines/provision-fleet.yml.

It runs a job's steps as the agent would, on this machine: `bash:`/`script:` steps and AzureCLI@2
inline scripts with bash (in the sources directory, the pipeline's variables and the agent's
predefined ones as environment, TF_BUILD=True, `$(name)` macros replaced as Azure Pipelines
replaces them: a known variable's value, anything else left as written), `##vso[task.setvariable]`
lines read back, a step's `env:` mapped after macro replacement. The steps that are tasks of the
service are imitated, and the test says so: `checkout` (a copy of the sources), `publish` /
`download` (a folder per artifact), DownloadSecureFile@1 (a file in the agent's temp directory;
sets `<name>.secureFilePath`), DownloadPipelineArtifact@2 (fails as the task does when the
artifact does not exist), AzureCLI@2's login (`az cloud register`
+ `az login --service-principal` against the DPS emulator's ARM and identity endpoints, in a
fresh AZURE_CONFIG_DIR as the task makes one), PublishTestResults@2 (the files its pattern finds).

A step that fails with `continueOnError: true` ends "SucceededWithIssues" and the job goes on, as
in Azure Pipelines; the job's result is then SucceededWithIssues too (`Agent.result`).
"""
import fnmatch
import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

MACRO = re.compile(r"\$\(([A-Za-z0-9_.]+)\)")
SETVARIABLE = re.compile(r"^##vso\[task\.setvariable variable=([^;\]]+)[^\]]*\](.*)$")


def template(text, parameters: Dict[str, str]):
    """`${{ parameters.x }}` (compile-time expressions) replaced."""
    if not isinstance(text, str):
        return text
    return re.sub(r"\$\{\{\s*parameters\.(\w+)\s*\}\}", lambda m: str(parameters[m.group(1)]), text)


@dataclass
class StepRun:
    name: str
    kind: str
    rc: int
    stdout: str = ""
    stderr: str = ""
    result: str = "Succeeded"              # Succeeded | SucceededWithIssues (failed, continueOnError) | Failed


@dataclass
class Agent:
    """One job's agent: its directories, variables and the artifacts of the run (shared)."""
    root: str                              # this job's agent directory
    artifacts: str                         # the run's artifact store (one folder per artifact)
    sources: str                           # what `checkout: self` copies
    variables: Dict[str, str]
    secure_files: Dict[str, str]           # secure file name -> path of its content
    base_env: Dict[str, str]
    login: Optional[Callable[[Dict[str, str]], None]] = None   # AzureCLI@2's login, given the env
    runs: List[StepRun] = field(default_factory=list)

    def __post_init__(self):
        dirs = {"Pipeline.Workspace": self.root, "Agent.BuildDirectory": self.root,
                "Build.SourcesDirectory": os.path.join(self.root, "s"),
                "System.DefaultWorkingDirectory": os.path.join(self.root, "s"),
                "Build.ArtifactStagingDirectory": os.path.join(self.root, "a"),
                "Agent.TempDirectory": os.path.join(self.root, "_temp")}
        for path in dirs.values():
            os.makedirs(path, exist_ok=True)
        self.variables = dict(self.variables, **dirs)
        self.variables.setdefault("Build.BuildNumber", "20261207.1")
        self.variables.setdefault("Build.DefinitionName", "provision-fleet")
        self.variables.setdefault("System.JobAttempt", "1")
        self.variables.setdefault("Agent.OS", "Linux")

    # -- macros and environment -------------------------------------------------------------
    def expand(self, text: str) -> str:
        lowered = {k.lower(): v for k, v in self.variables.items()}
        return MACRO.sub(lambda m: lowered.get(m.group(1).lower(), m.group(0)), str(text))

    def env(self, step_env=None) -> Dict[str, str]:
        env = dict(self.base_env, TF_BUILD="True")
        for name, value in self.variables.items():
            env[name.upper().replace(".", "_")] = str(value)
        for name, value in (step_env or {}).items():
            env[name] = self.expand(value)
        return env

    # -- steps -------------------------------------------------------------------------------
    def run_steps(self, steps) -> None:
        for step in steps:
            self.run_step(step)

    @property
    def result(self) -> str:
        """The job's result as Azure Pipelines gives it from its steps' results."""
        results = {run.result for run in self.runs}
        return next((r for r in ("Failed", "SucceededWithIssues") if r in results), "Succeeded")

    def run_step(self, step) -> StepRun:
        run = self._run_step(step)
        if run.rc != 0:
            run.result = "SucceededWithIssues" if step.get("continueOnError") else "Failed"
        return run

    def _run_step(self, step) -> StepRun:
        if "checkout" in step:
            if step["checkout"] == "self":
                shutil.copytree(self.sources, self.variables["Build.SourcesDirectory"], dirs_exist_ok=True)
            return self._record(step, "checkout", 0)
        if "publish" in step:
            return self._publish(step)
        if "download" in step:
            return self._download(step)
        if "bash" in step or "script" in step:
            return self._bash(step, step.get("bash", step.get("script")), step.get("env"))
        task = str(step.get("task", ""))
        inputs = {k: self.expand(v) if isinstance(v, str) else v for k, v in (step.get("inputs") or {}).items()}
        if task == "DownloadSecureFile@1":
            name = inputs["secureFile"]
            target = os.path.join(self.variables["Agent.TempDirectory"], name)
            shutil.copyfile(self.secure_files[name], target)
            self.variables[f"{step['name']}.secureFilePath"] = target
            return self._record(step, task, 0)
        if task == "DownloadPipelineArtifact@2":
            condition = str(step.get("condition", ""))
            if "JobAttempt" in condition and int(self.variables["System.JobAttempt"]) <= 1:
                return self._record(step, task + " (skipped: condition)", 0)
            source = os.path.join(self.artifacts, inputs["artifactName"])
            if not os.path.isdir(source):   # (the task's own words)
                return self._record(step, task, 1, stderr=f"##[error]Artifact {inputs['artifactName']} was not "
                                                          "found for build.")
            shutil.copytree(source, inputs["targetPath"], dirs_exist_ok=True)
            return self._record(step, task, 0)
        if task == "AzureCLI@2":
            assert inputs["scriptType"] == "bash" and inputs["scriptLocation"] == "inlineScript"
            env = self.env(step.get("env"))
            env["AZURE_CONFIG_DIR"] = os.path.join(self.variables["Agent.TempDirectory"], ".azclitask")
            os.makedirs(env["AZURE_CONFIG_DIR"], exist_ok=True)
            if self.login:
                self.login(env)
            return self._bash(step, step["inputs"]["inlineScript"], None, env=env)
        if task == "PublishTestResults@2":
            found = sorted(glob.glob(os.path.join(inputs["searchFolder"], inputs["testResultsFiles"])))
            return self._record(step, task, 0, stdout="\n".join(found))
        raise AssertionError(f"this stand-in agent does not know the step {step}")

    def _bash(self, step, script: str, step_env, env=None) -> StepRun:
        path = os.path.join(self.variables["Agent.TempDirectory"], f"step-{len(self.runs)}.sh")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.expand(script))
        env = env if env is not None else self.env(step_env)
        # (The agent runs a bash step as `bash --noprofile --norc FILE` in the default working directory.)
        proc = subprocess.run(["bash", "--noprofile", "--norc", path], cwd=self.variables["Build.SourcesDirectory"],
                              env=env, capture_output=True, text=True, timeout=1200, check=False)
        for line in (proc.stdout + "\n" + proc.stderr).splitlines():
            found = SETVARIABLE.match(line.strip())
            if found:
                self.variables[found.group(1)] = found.group(2)
        return self._record(step, "bash", proc.returncode, proc.stdout, proc.stderr)

    def _publish(self, step) -> StepRun:
        source = self.expand(step["publish"])
        target = os.path.join(self.artifacts, self.expand(step["artifact"]))
        assert not os.path.exists(target), f"artifact {target} published twice"
        shutil.copytree(source, target)
        return self._record(step, "publish", 0)

    def _download(self, step) -> StepRun:
        assert step["download"] == "current"
        if step.get("artifact"):
            names = [self.expand(step["artifact"])]
        else:
            top = str(step.get("patterns", "**")).split("/", 1)[0]
            names = [n for n in os.listdir(self.artifacts) if fnmatch.fnmatch(n, top)]
        for name in names:
            shutil.copytree(os.path.join(self.artifacts, name), os.path.join(self.root, name), dirs_exist_ok=True)
        return self._record(step, "download", 0, stdout="\n".join(names))

    def _record(self, step, kind, rc, stdout="", stderr="") -> StepRun:
        run = StepRun(str(step.get("displayName") or kind), kind, rc, stdout, stderr)
        self.runs.append(run)
        return run
