"""``python -m devkit <command>``: the development kit's single entry point.

Commands are registered by import path in :data:`COMMANDS`; each target is an object with
``help`` (one line), ``configure(parser)`` (adds its arguments) and ``run(args) -> int``.
Later parts add theirs with one line, e.g. ``"dps": "devkit.dps.cli:COMMAND"`` or
``"demo": "devkit.demo:COMMAND"``. Only the chosen command's module does real work at import.
"""
import argparse
import importlib
import sys

COMMANDS = {
    "up": "devkit.cli:UP",
    "down": "devkit.cli:DOWN",
    "status": "devkit.cli:STATUS",
    "add": "devkit.cli:ADD",
    "power-cycle": "devkit.cli:POWER_CYCLE",
    "exec": "devkit.cli:EXEC",
    "ssh": "devkit.cli:SSH",
    "tpm-clear": "devkit.cli:TPM_CLEAR",
    "variants": "devkit.cli:VARIANTS",
    "userlands": "devkit.cli:USERLANDS",
    "gc": "devkit.cli:GC",
    "demo": "devkit.demo:COMMAND",
}


def _load(target):
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_parser():
    """The argparse parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog="python -m devkit",
        description="Simulated TPM devices (and their services) for developing az edge-tpm.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, target in COMMANDS.items():
        command = _load(target)
        command.configure(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv=None):
    """Parse ``argv`` and run the chosen command; return its exit status."""
    args = build_parser().parse_args(argv)
    return _load(COMMANDS[args.command]).run(args)


if __name__ == "__main__":
    sys.exit(main())
