"""Argument validators: cheap checks that run before a command does anything."""
from azure.cli.core.azclierror import MutuallyExclusiveArgumentError, RequiredArgumentMissingError


def validate_device_source(namespace):
    """Exactly one of --host and --local."""
    if getattr(namespace, "local", False) and getattr(namespace, "host", None):
        raise MutuallyExclusiveArgumentError("--host and --local cannot be used together.",
                                             "Use --host for a device over SSH, or --local for this machine.")
    if not getattr(namespace, "local", False) and not getattr(namespace, "host", None):
        raise RequiredArgumentMissingError("No device given.",
                                           "Pass --host [user@]host[:port], or --local for this machine's TPM.")
