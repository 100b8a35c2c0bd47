"""Runs `azdev linter` and `azdev style` on the edge-tpm extension without network access.

azdev expects what `azdev setup` leaves behind (a configuration naming an azure-cli clone and
an extensions repository, its pylint/flake8 configuration files copied into its configuration
directory) and downloads two files from the internet: the azure-cli repository's
scripts/ci/cmdcov.yml (at import time, unless the clone holds it) and a command-example
threshold file (unless the request fails with an HTTP status, when it uses its packaged copy).
This script prepares all of that in a work directory instead:

- an azdev configuration directory with `[cli] repo_path` and `[ext] repo_paths`;
- a stand-in azure-cli checkout holding only scripts/ci/cmdcov.yml, which is this repository's
  scripts/azdev/cmdcov.yml (our own patterns for finding `self.cmd('az ...')` in tests);
- an extensions repository with `edge-tpm/` = this checkout's setup.py and azext_edgetpm
  (linked) plus its egg-info, which is how `azdev style` finds a development extension;
- azdev's own pylintrc/flake8 files, copied where `azdev setup` copies them;
- no network: every HTTP request azdev makes is answered 503 without leaving the machine (so
  azdev takes its packaged example thresholds, and any bare link in help counts as broken).

`azdev linter --include-whl-extensions` checks the extension as installed from the wheel (pass
`--extension-dir`, a directory into which `az extension add` installed it). azdev runs in this
checkout (its git repository): the linter's diff-based rules (command examples and test coverage of
*changed* commands, which azdev applies with --repo/--src/--tgt in a repository of extensions) find
no change here and pass; every other rule checks the whole command table and help.

Usage: python scripts/azdev_offline.py [--extension-dir DIR] [--work DIR] linter|style [azdev args...]
Run it with the interpreter of the azdev environment (.venv-azdev, made by scripts/bootstrap.sh).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTENSION = "edge-tpm"


def prepare(work: str) -> dict:
    """Lay out what `azdev setup` and azdev's downloads would provide; return the environment."""
    import azdev
    cli_repo = os.path.join(work, "azure-cli")
    os.makedirs(os.path.join(cli_repo, "scripts", "ci"), exist_ok=True)
    shutil.copyfile(os.path.join(REPO, "scripts", "azdev", "cmdcov.yml"),
                    os.path.join(cli_repo, "scripts", "ci", "cmdcov.yml"))

    ext_repo = os.path.join(work, "extensions")
    ext_src = os.path.join(ext_repo, EXTENSION)
    os.makedirs(ext_src, exist_ok=True)
    for name in ("setup.py", "README.md", "HISTORY.rst"):
        shutil.copyfile(os.path.join(REPO, name), os.path.join(ext_src, name))
    link = os.path.join(ext_src, "azext_edgetpm")
    if not os.path.islink(link):
        os.symlink(os.path.join(REPO, "azext_edgetpm"), link)
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info"], cwd=ext_src, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    write_pylintrc(os.path.join(ext_repo, "pylintrc"))

    # azdev's environment has azure-cli-core without azure-cli's command modules, so that the
    # linter loads only the extension's command table (seconds instead of a minute): az needs
    # the (empty) azure.cli.command_modules namespace package to be importable.
    stub = os.path.join(work, "no-command-modules")
    os.makedirs(os.path.join(stub, "azure", "cli", "command_modules"), exist_ok=True)
    open(os.path.join(stub, "azure", "cli", "command_modules", "__init__.py"), "a", encoding="utf-8").close()
    sys.path.insert(0, stub)

    env = dict(os.environ, VIRTUAL_ENV=sys.prefix, AZDEV_CONFIG_DIR=os.path.join(work, "azdev"),
               AZURE_CORE_COLLECT_TELEMETRY="no")
    env.setdefault("AZURE_CONFIG_DIR", os.path.join(work, "azure"))
    os.environ.update(env)
    from azdev.utilities.config import get_azdev_config_dir
    config_dir = get_azdev_config_dir()
    # knack reads the configuration from $AZDEV_CONFIG_DIR/config; azdev looks for the style
    # configuration files in its per-environment directory below it.
    for directory in (env["AZDEV_CONFIG_DIR"], config_dir):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config"), "w", encoding="utf-8") as handle:
            handle.write(f"[cli]\nrepo_path = {cli_repo}\n\n[ext]\nrepo_paths = {ext_repo}\n")
    shutil.copytree(os.path.join(os.path.dirname(azdev.__file__), "config"), os.path.join(config_dir, "config_files"),
                    dirs_exist_ok=True, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    return env


# Checks that azdev's extension pylintrc keeps but that this repository turns off, as a repository
# of extensions does with a pylintrc of its own (azdev then uses that one).
EXTRA_DISABLED = {
    # Pylint 3.3 split this out of too-many-arguments, which azdev disables "due to the nature of
    # the CLI": a command function takes one parameter per option.
    "too-many-positional-arguments",
    # Typed results and settings are dataclasses with one attribute per field of the output.
    "too-many-instance-attributes",
    # Steps and enrollers are small strategy objects with one public method (run, enroll).
    "too-few-public-methods",
}


def write_pylintrc(path: str) -> None:
    """azdev's own extension pylintrc with EXTRA_DISABLED added to its disable list."""
    import configparser
    import azdev
    config = configparser.ConfigParser(inline_comment_prefixes=None, comment_prefixes=("#",))
    config.read(os.path.join(os.path.dirname(azdev.__file__), "config", "ext_pylintrc"), encoding="utf-8")
    disabled = [d.strip() for d in config["MESSAGES CONTROL"]["disable"].replace("\n", ",").split(",") if d.strip()]
    config["MESSAGES CONTROL"]["disable"] = ",".join(disabled + sorted(EXTRA_DISABLED - set(disabled)))
    with open(path, "w", encoding="utf-8") as handle:
        config.write(handle)


def no_network():
    """Answer every request of `requests` with 503 (nothing leaves the machine)."""
    import requests

    def offline(self, request, **_kwargs):  # pylint: disable=unused-argument
        response = requests.Response()
        response.status_code = 503
        response.reason = "offline (scripts/azdev_offline.py)"
        response.url = request.url
        response.request = request
        response._content = b""  # pylint: disable=protected-access
        return response
    requests.sessions.Session.send = offline


def extension_only_cli():
    """Without azure-cli's command modules nothing sets the invocation's command string that
    az's global argument registration reads while it loads every argument (in a full azure-cli
    the storage module happens to set it): set it to '' (all commands) before that step."""
    import azure.cli.core as core
    from azure.cli.core.commands.events import EVENT_INVOKER_PRE_LOAD_ARGUMENTS
    make_cli = core.get_default_cli

    def get_default_cli():
        cli = make_cli()

        def all_commands(cli_ctx, **_kwargs):
            if cli_ctx.invocation.data.get("command_string") is None:
                cli_ctx.invocation.data["command_string"] = ""
        cli.register_event(EVENT_INVOKER_PRE_LOAD_ARGUMENTS, all_commands)
        return cli
    core.get_default_cli = get_default_cli


def command_coverage() -> int:
    """Which commands the tests run, found the way azdev's coverage rules find them (its own
    regex reader over test_*.py with the cmdcov.yml patterns): prints {command: covered} as JSON
    and fails when a command of the extension is not run by any test."""
    import glob
    import json
    import yaml
    from azdev.operations.regex import get_all_tested_commands_from_regex
    sys.path.insert(0, REPO)
    from azext_edgetpm._help import helps
    commands = sorted(name for name, text in helps.items() if (yaml.safe_load(text) or {}).get("type") == "command")
    tested = []
    for path in sorted(glob.glob(os.path.join(REPO, "azext_edgetpm", "tests", "**", "test_*.py"), recursive=True)):
        with open(path, encoding="utf-8") as handle:
            tested += get_all_tested_commands_from_regex(handle.readlines())
    covered = {name: any(f"az {name} " in t + " " for t in tested) for name in commands}
    print(json.dumps(covered, indent=2))
    return 0 if all(covered.values()) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--extension-dir", help="AZURE_EXTENSION_DIR holding the extension installed from its wheel")
    parser.add_argument("--work", help="work directory (default: a temporary one, removed afterwards)")
    parser.add_argument("command", choices=["linter", "style", "coverage"])
    parser.add_argument("azdev_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="edgetpm-azdev-")
    try:
        if args.extension_dir:
            os.environ["AZURE_EXTENSION_DIR"] = os.path.abspath(args.extension_dir)
        prepare(os.path.abspath(work))
        no_network()
        extension_only_cli()
        if args.command == "coverage":
            return command_coverage()
        if args.command == "linter":
            azdev_argv = ["linter", "--include-whl-extensions", EXTENSION] + args.azdev_args
        else:
            azdev_argv = ["style", EXTENSION] + args.azdev_args
        from azdev.__main__ import main as azdev_main
        os.chdir(REPO)  # GitPython finds the repository the linter's diff-based rules read from the cwd
        sys.argv = ["azdev"] + azdev_argv
        try:
            code = azdev_main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        return int(code or 0)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
