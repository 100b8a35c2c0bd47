"""Where `cmd` stops: arguments and the az context become SSH options, the DPS target and its
client, and a progress callback. Command functions receive these ready; nothing below this
module sees `cmd`.
"""
from contextlib import contextmanager


def _quiet_library_debug_logs():
    """paramiko logs every channel event at DEBUG, and az's root logger passes everything to its
    handlers, which drop it unless --debug: a fleet built ~3,000 such records for 10 devices.
    Unless a handler takes DEBUG, paramiko logs from the level the handlers take."""
    import logging
    levels = [h.level for h in logging.getLogger().handlers]
    # (NOTSET when a handler takes DEBUG: an earlier command in the same process may have raised it)
    logging.getLogger("paramiko").setLevel(min(levels) if levels and min(levels) > logging.DEBUG else logging.NOTSET)


def ssh_options(host, ssh_user=None, ssh_port=None, ssh_key=None, ssh_config=None, known_hosts=None,
                accept_new_host_key=False, ssh_timeout=None, sudo_password=None):
    from azext_edgetpm.operations.device import SshOptions
    _quiet_library_debug_logs()
    return SshOptions.from_args(host, ssh_user=ssh_user, ssh_port=ssh_port, ssh_key=ssh_key, ssh_config=ssh_config,
                                known_hosts=known_hosts, accept_new_host_key=bool(accept_new_host_key),
                                ssh_timeout=ssh_timeout, sudo_password=sudo_password)


def ek_ca_bundle(path):
    """The CA certificates of --ek-ca-bundle (tpm.ekcert), or None without it."""
    if not path:
        return None
    from azext_edgetpm.tpm.ekcert import load_ca_bundle
    return load_ca_bundle(path)


def dps_target(cmd, dps_name=None, resource_group_name=None, login=None, auth_type=None, rights=None):
    """The DPS target (ARM lookup and keys, or a connection string), resolved once."""
    from knack.log import get_logger
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE, resolve_target
    target = resolve_target(cmd, dps_name=dps_name, resource_group=resource_group_name, login=login,
                            auth_type=auth_type, rights=rights or ENROLLMENT_WRITE)
    get_logger(__name__).info("DPS target: %s", target.describe())
    return target


def dps_client(cmd, target, budget=None, pool_size=None):
    """One DPS service client for a target (share it between threads; `budget`: a dps.ratelimit.DpsBudget)."""
    from azext_edgetpm.dps.client import DpsClient
    return DpsClient(target, cli_ctx=cmd.cli_ctx, budget=budget, pool_size=pool_size)


def hub_clients(cmd):
    """IoT hub clients on the az login identity (asked for it on first use; a missing login is
    reported per device, not raised)."""
    from azext_edgetpm.dps.discovery import bearer_credential
    from azext_edgetpm.dps.hub import HubClients
    return HubClients(lambda: bearer_credential(cmd), cli_ctx=cmd.cli_ctx)


def device_endpoint(target, id_scope=None, global_endpoint=None):
    """(ID scope, device endpoint) for config.toml: given ones win, else the resource's."""
    scope = id_scope or (target.id_scope if target else None)
    endpoint = global_endpoint
    if not endpoint and target is not None and target.device_host:
        endpoint = "https://" + target.device_host
    return scope, endpoint


@contextmanager
def progress(cmd, message):
    """A progress callback: az's progress controller on a terminal (begin/end around the block);
    off a terminal (a pipeline log, where az's controller shows nothing) each step on its own line
    of stderr, none with --only-show-errors."""
    import sys
    stream = sys.stderr
    if not stream.isatty():
        quiet = bool(getattr(cmd.cli_ctx, "only_show_errors", False))

        def line(text):
            if not quiet:
                stream.write(f"{message}: {text}\n")
                stream.flush()
        line("started")
        yield line
        return
    controller = cmd.cli_ctx.get_progress_controller()
    controller.begin(message=message)
    try:
        yield lambda text: controller.add(message=text)
    finally:
        controller.end()


def fail_after_output(cmd, error, exit_code=None):
    """Let az print the command's result first, then fail with `error` (non-zero exit): a fleet's
    per-device results are printed even when some devices failed. `exit_code`: a code of its own
    (az's error handler knows only 1 and 3): the error is printed as az prints errors, then the
    command exits with it (the error is the SystemExit's cause)."""
    from knack.events import EVENT_CLI_SUCCESSFUL_EXECUTE
    cli_ctx = cmd.cli_ctx

    def raise_error(_cli_ctx, **_kwargs):
        cli_ctx.unregister_event(EVENT_CLI_SUCCESSFUL_EXECUTE, raise_error)
        if exit_code is None:
            raise error
        error.print_error()
        error.send_telemetry()
        raise SystemExit(exit_code) from error

    cli_ctx.register_event(EVENT_CLI_SUCCESSFUL_EXECUTE, raise_error)


def end_fleet(cmd, tally, state, inventory, stopped_by=None, single_error=None):
    """How a fleet command ends, after its results are printed (fleet/summary.py lists the codes):
    stopped by a signal -> the stop report and 128 + the signal; devices failed -> the failure
    report and EXIT_SOME_FAILED (with --host: the device's own error, exit 1); else 0."""
    from azure.cli.core.azclierror import ManualInterrupt, UnclassifiedUserFault
    from azext_edgetpm.fleet import summary
    if stopped_by is not None:
        error = ManualInterrupt(summary.stop_text(tally, stopped_by.name))
        error.set_recommendation(summary.resume_text(state))
        fail_after_output(cmd, error, stopped_by.exit_code)
    elif tally.failed and not inventory and single_error:
        fail_after_output(cmd, UnclassifiedUserFault(*single_error))
    elif tally.failed:
        how = ("Fix the causes named above, then run the same command again"
               + (f" with --state {state}: finished devices are skipped (--retry-failed runs only the failed ones)."
                  if state else "; add --state FILE so that a re-run skips the devices that are done."))
        fail_after_output(cmd, UnclassifiedUserFault(summary.failure_text(tally), how), summary.EXIT_SOME_FAILED)


def progress_reporter(cmd, total, verb="Provisioning"):
    """A fleet progress reporter (fleet/progress.py): a one-line bar on a terminal, device lines and a
    heartbeat in a pipeline log, failures alone with --only-show-errors. Returns (report, controller)."""
    _quiet_library_debug_logs()
    from azext_edgetpm.fleet.progress import Display
    display = Display(f"{verb} {total} devices", only_errors=bool(getattr(cmd.cli_ctx, "only_show_errors", False)))
    return display, display
