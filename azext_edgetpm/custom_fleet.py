"""Thin command functions of the fleet commands (provision, deprovision, reprovision, rekey,
upgrade, report merge): arguments -> typed options (through _client_factory, where `cmd` stops)
-> the fleet run (fleet/command.py, fleet/runner.py) -> per-device results and the exit code.
Imported by az to read the commands' arguments (even for -h): the rest is imported inside functions."""
from knack.log import get_logger

from azext_edgetpm import _client_factory as factory

logger = get_logger(__name__)


# -- provision: the whole procedure, for one device or a fleet -----------------------------------

def provision(cmd, host=None,  # pylint: disable=too-many-locals,too-many-statements
              inventory=None, inventory_format=None, limit=None, dps_name=None,
              resource_group_name=None, login=None, auth_type=None, id_scope=None, global_endpoint=None,
              ssh_user=None, ssh_port=None, ssh_key=None, ssh_config=None, known_hosts=None,
              accept_new_host_key=False, ssh_timeout=None, tcti=None, id_format="sha256", registration_id=None,
              device_id=None, edge_enabled=True, iot_hubs=None, allocation_policy=None, initial_twin_tags=None,
              initial_twin_properties=None, reprovision_policy=None, force=False, package_source=None,
              offline_packages=None, edge_version=None, log_driver="local", payload=None,
              auto_reprovisioning_mode=None, tpm_access="udev", max_parallel=None, state=None, retry_failed=False,
              only=None, shard=None, dps_ops_per_minute=None, dps_registrations_per_minute=None,
              wait_timeout=None, proxy=None, no_proxy=None, proxy_ca=None, ek_ca_bundle=None,
              state_from_other_run=False, max_fail_percentage=None, canary=None, ci_format=None, junit_xml=None,
              report_file=None, dry_run=False, show=None):
    import copy
    import dataclasses
    import os
    from azure.cli.core.azclierror import RequiredArgumentMissingError
    from azext_edgetpm import stop
    from azext_edgetpm.custom import install_settings
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE
    from azext_edgetpm.dps.ratelimit import DpsBudget
    from azext_edgetpm.fleet import summary
    from azext_edgetpm.fleet.batch import BulkEnroller
    from azext_edgetpm.fleet.command import record_and_budget, select_devices, shard_count, shown
    from azext_edgetpm.fleet.jobs import FleetDefaults, job_for
    from azext_edgetpm.fleet.runner import Progress, Runner
    from azext_edgetpm.fleet.state import Journal, provenance
    from azext_edgetpm.operations.enroll import EnrollOptions
    from azext_edgetpm.operations.plan import plan_pipeline
    from azext_edgetpm.operations.provision import (
        ProvisionServices, pipeline, plan_from_record, result_from_record)

    # Everything local is checked before anything remote starts: the inventory first.
    row_defaults = {"user": ssh_user, "port": ssh_port, "ssh_key": ssh_key, "tcti": tcti, "edge_version": edge_version,
                    "iot_hubs": iot_hubs, "tags": initial_twin_tags, "proxy": proxy, "no_proxy": no_proxy,
                    "proxy_ca": proxy_ca and os.path.abspath(os.path.expanduser(proxy_ca))}
    devices = select_devices(inventory, inventory_format, limit, row_defaults,
                             {"host": host, "registration_id": registration_id, "device_id": device_id}, shard, only)

    bundle = factory.ek_ca_bundle(ek_ca_bundle)
    target = factory.dps_target(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_WRITE)
    id_scope, global_endpoint = factory.device_endpoint(target, id_scope, global_endpoint)
    if not id_scope:
        raise RequiredArgumentMissingError("The DPS's ID scope is not known: a connection string (--login) carries "
                                           "none.", "Add --id-scope (the DPS overview page shows it), or name the "
                                           "DPS with --dps-name [-g].")
    defaults = FleetDefaults(
        enroll=EnrollOptions(edge_enabled=edge_enabled, iot_hubs=tuple(iot_hubs) if iot_hubs else None,
                             allocation_policy=allocation_policy, initial_twin_tags=initial_twin_tags,
                             initial_twin_properties=initial_twin_properties, reprovision_policy=reprovision_policy,
                             force=bool(force)),
        install=install_settings(id_scope, global_endpoint, None, package_source, offline_packages, edge_version,
                                 log_driver, payload, auto_reprovisioning_mode, tpm_access, tcti),
        ssh_config=ssh_config, known_hosts=known_hosts, accept_new_host_key=bool(accept_new_host_key),
        ssh_timeout=ssh_timeout, id_format=str(id_format or "sha256"), tcti=tcti,
        wait_timeout=float(wait_timeout or 300))
    with stop.on_signals() as stopping:
        # A plan (--dry-run) keeps its records in memory: no state file is read or written.
        keep = state and not dry_run
        journal = Journal(state if keep else None, meta={"shard": shard, "devices": len(devices)} if keep else None,
                          origin=provenance("provision", inventory, host, id_scope) if keep else None,
                          from_other_run=bool(state_from_other_run))
        if retry_failed:
            devices = [d for d in devices if journal.record(d.key).get("status") in (
                "failed", "interrupted", "running")]
        parallel = max(1, int(max_parallel or 10))
        budget = DpsBudget.for_shard(dps_ops_per_minute, dps_registrations_per_minute, shard_count(shard))
        todo = sum(1 for d in devices if journal.record(d.key).get("status") != "done")
        report, controller = factory.progress_reporter(cmd, len(devices))
        # Jobs are made as workers free up, and each device's result as it ends (memory stays flat).
        jobs = (job_for(d, defaults) for d in devices)
        if not inventory:
            # One device in the foreground: sudo may ask on the terminal, as the other commands do.
            jobs = [dataclasses.replace(j, ssh=dataclasses.replace(j.ssh, sudo_password=None)) for j in jobs]
        outputs, tally = [None] * len(devices), summary.Tally()
        verb = "provision --dry-run" if dry_run else "provision"
        record, failure_budget = record_and_budget(verb, len(devices), "assigned", max_fail_percentage, canary,
                                                   ci_format, junit_xml, report_file)
        with factory.dps_client(cmd, target, budget=budget, pool_size=parallel + 2) as client:
            services = ProvisionServices(client=client, enroller=BulkEnroller(client, expected=todo), budget=budget,
                                         ek_ca_bundle=bundle)
            runner = Runner(plan_pipeline() if dry_run else pipeline(), services, journal, max_parallel=parallel,
                            progress=Progress(len(devices), report), budget=failure_budget)
            try:
                for index, outcome in runner.stream(jobs, skip=lambda record: record.get("status") == "done"):
                    result = summary.result_of(outcome, journal.record(outcome.key),
                                               plan_from_record if dry_run else result_from_record)
                    tally.add(result)
                    record.add(result)
                    outputs[index] = result.to_output()
            finally:
                if controller is not None:
                    controller.end()
                record.finish(failure_budget and failure_budget.halted)
        journal.close()
        stopped_by = copy.copy(stopping) if stopping.is_set() else None
    logger.warning("%s %d of %d devices (%d done in an earlier run), %d failed%s; DPS: %s",
                   "Planned" if dry_run else "Provisioned", tally.ok,
                   tally.devices, tally.done_earlier, tally.failed,
                   f", {tally.interrupted} interrupted, {tally.not_started} not started" if stopped_by else "",
                   ", ".join(f"{k} {v}" for k, v in budget.stats().items()))
    first = outputs[0] if outputs else None
    _end_run(cmd, record, failure_budget, tally, state, inventory, stopped_by,
             first and (f"{first['host']}: {first['error']}",
                        first["recommendation"] or "Fix the cause, then run the command again."))
    if not inventory:
        return first
    return shown(outputs, show, "assigned")


def _end_run(cmd, record, failure_budget, tally, state, inventory, stopped_by, single_error):
    """How a fleet run ends (fleet/summary.py lists the exit codes). With --max-fail-percentage,
    failures within the budget are what the user allowed: the command succeeds (exit 0) with a
    warning, and a CI task is marked SucceededWithIssues; a spent budget exits EXIT_SOME_FAILED."""
    from azext_edgetpm.fleet import summary
    within = bool(failure_budget is not None and failure_budget.max_fail_percentage is not None and inventory
                  and not stopped_by and not failure_budget.halted and tally.failed)
    if within:
        text = (f"{tally.failed} of {tally.devices} devices failed, within the failure budget "
                f"(--max-fail-percentage {failure_budget.max_fail_percentage:g})")
        logger.warning("%s\n%s", summary.failure_text(tally), text)
        if record is not None:
            record.partial_success(text)
        return
    factory.end_fleet(cmd, tally, state, inventory, stopped_by, single_error=single_error)


# -- Later in a device's life: deprovision, reprovision, rekey, upgrade ---------------------------

def _confirm(question, yes):
    """True when --yes, else the user's answer; without a terminal, a clear error."""
    from azure.cli.core.azclierror import RequiredArgumentMissingError
    from knack.prompting import NoTTYException, prompt_y_n
    if yes:
        return True
    try:
        return prompt_y_n(question, default="n")
    except NoTTYException as exc:
        raise RequiredArgumentMissingError(f"Confirmation needed: {question}",
                                           "Add --yes to go ahead without a prompt (or --dry-run to see the plan).") \
            from exc


def _fleet(cmd, *args, **kwargs):
    """A lifecycle command's devices, journal and runner (fleet/command.FleetCommand's arguments),
    with az's progress display."""
    from azext_edgetpm.fleet.command import FleetCommand
    return FleetCommand(*args, reporter=lambda total, verb: factory.progress_reporter(cmd, total, verb), **kwargs)


def _finish(cmd, fleet, outcomes, result_of, ok_status):
    """Per-device results (inventory order); the command's exit code after the results are printed
    (fleet/summary.py: some failed, stopped by a signal), with what is left where."""
    from azext_edgetpm.fleet.command import shown
    results, tally, stopped_by = fleet.finish(outcomes, result_of, ok_status)
    first = results[0] if results else None
    _end_run(cmd, fleet.record, fleet.failure_budget, tally, fleet.state, fleet.inventory, stopped_by,
             first and (f"{first.host}: {first.error}",
                        first.recommendation or "Fix the cause, then run the command again."))
    if not fleet.inventory:
        return first.to_output() if first else None
    return shown([r.to_output() for r in results], fleet.show, ok_status)


def _lifecycle_client(cmd, dps_name, resource_group_name, login, auth_type, parallel, ops_per_minute=None,
                      registrations_per_minute=None, shards=1):
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE
    from azext_edgetpm.dps.ratelimit import DpsBudget
    budget = DpsBudget.for_shard(ops_per_minute, registrations_per_minute, shards)
    target = factory.dps_target(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_WRITE)
    return factory.dps_client(cmd, target, budget=budget, pool_size=parallel + 2), budget


def _what(fleet, host):
    return host if len(fleet.jobs) == 1 and not fleet.inventory else f"{len(fleet.jobs)} devices"


def deprovision(cmd, host=None,  # pylint: disable=too-many-locals
                inventory=None, inventory_format=None, limit=None, registration_id=None,
                mode="disable", uninstall=False, keep_device=False, require_device=False, delete_hub_device=False,
                dry_run=False, yes=False,
                dps_name=None, resource_group_name=None, login=None, auth_type=None, ssh_user=None, ssh_port=None,
                ssh_key=None, ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None,
                tcti=None, id_format="sha256", max_parallel=None, state=None, retry_failed=False, only=None,
                shard=None, dps_ops_per_minute=None, state_from_other_run=False, max_fail_percentage=None, canary=None,
                ci_format=None, junit_xml=None, report_file=None, show=None):
    from azext_edgetpm.operations import deprovision as op
    fleet = _fleet(cmd, "deprovision", host, inventory, inventory_format, limit, shard, only, retry_failed, state,
                   max_parallel, registration_id, (ssh_user, ssh_port, ssh_key, ssh_config, known_hosts,
                                                   accept_new_host_key, ssh_timeout), tcti, id_format, dry_run,
                   state_from_other_run, (max_fail_percentage, canary, ci_format, junit_xml, report_file), show)
    device_part = ("leave the devices alone" if keep_device else
                   "stop IoT Edge, reset its configuration and uninstall it" if uninstall else
                   "stop IoT Edge and reset its configuration")
    hub_part = ", delete the device identity in its IoT hub" if delete_hub_device else ""
    if not dry_run and not _confirm(f"Deprovision {_what(fleet, host)}: {mode} the enrollment, delete the "
                                    f"registration record{hub_part}, {device_part}?", yes):
        return None
    client, budget = _lifecycle_client(cmd, dps_name, resource_group_name, login, auth_type, fleet.parallel,
                                       dps_ops_per_minute, shards=fleet.shards)
    fleet.begin(client.target)
    services = op.DeprovisionServices(client=client, mode=str(mode), uninstall=bool(uninstall),
                                      keep_device=bool(keep_device), require_device=bool(require_device),
                                      dry_run=bool(dry_run), budget=budget,
                                      hubs=factory.hub_clients(cmd) if delete_hub_device else None)
    try:
        with client:
            outcomes = fleet.run(op.pipeline(require_device=bool(require_device),
                                             delete_hub_device=bool(delete_hub_device)), services,
                                 skip=lambda record: op.finished(record, services))
    finally:
        if services.hubs is not None:
            services.hubs.close()  # pylint: disable=no-member
    return _finish(cmd, fleet, outcomes,
                   lambda h, rec, status, secs: op.result_from_record(h, rec, status, services, secs), "done")


def reprovision(cmd, host=None,  # pylint: disable=too-many-locals
                inventory=None, inventory_format=None, limit=None, registration_id=None,
                iot_hubs=None, allocation_policy=None, initial_twin_tags=None, timeout=None, dry_run=False, yes=False,
                dps_name=None, resource_group_name=None, login=None, auth_type=None, ssh_user=None, ssh_port=None,
                ssh_key=None, ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None,
                tcti=None, id_format="sha256", max_parallel=None, state=None, retry_failed=False, only=None,
                shard=None, dps_ops_per_minute=None, dps_registrations_per_minute=None, state_from_other_run=False,
                max_fail_percentage=None, canary=None, ci_format=None, junit_xml=None, report_file=None, show=None):
    from azext_edgetpm.operations import reprovision as op
    fleet = _fleet(cmd, "reprovision", host, inventory, inventory_format, limit, shard, only, retry_failed, state,
                   max_parallel, registration_id, (ssh_user, ssh_port, ssh_key, ssh_config, known_hosts,
                                                   accept_new_host_key, ssh_timeout), tcti, id_format, dry_run,
                   state_from_other_run, (max_fail_percentage, canary, ci_format, junit_xml, report_file), show)
    change = op.EnrollmentChange(iot_hubs=tuple(iot_hubs) if iot_hubs is not None else None,
                                 allocation_policy=allocation_policy, initial_twin_tags=initial_twin_tags)
    if change and not dry_run and not _confirm(f"Change the enrollment of {_what(fleet, host)} and make them "
                                               "register again?", yes):
        return None
    client, budget = _lifecycle_client(cmd, dps_name, resource_group_name, login, auth_type, fleet.parallel,
                                       dps_ops_per_minute, dps_registrations_per_minute, shards=fleet.shards)
    fleet.begin(client.target)
    services = op.ReprovisionServices(client=client, change=change, dry_run=bool(dry_run),
                                      timeout=float(timeout or 300), budget=budget)

    def finished(record):
        return record.get("status") == "done" and "verify" in (record.get("steps") or {})
    with client:
        if change and fleet.inventory:
            # Phase 1: every device's registration ID, then the enrollment changes in bulk (ten per call).
            outcomes = fleet.run(op.identify_pipeline(), services, skip=finished)
            from azext_edgetpm.stop import STOP
            found = {o.key: fleet.journal.record(o.key)["steps"]["identify"]["registrationId"]
                     for o in outcomes if o.status == "done" and not STOP.is_set()}   # (stopped: no phase 2)
            recorded = {k: (fleet.journal.record(k).get("steps") or {}).get("enrollment") or {} for k in found}
            todo = {k: r for k, r in found.items()   # (an entry of another registration ID is not this device's)
                    if recorded[k].get("status") not in ("ok", "changed") or recorded[k].get("registrationId") != r}
            for rid, entry in op.enrollment_changes(services, sorted(set(todo.values()))).items():
                for key in [k for k, r in todo.items() if r == rid]:
                    fleet.journal.step(key, "enrollment", entry)
            jobs = [j for j in fleet.jobs if j.key in found or finished(fleet.journal.record(j.key))]
            outcomes = {o.key: o for o in outcomes if o.key not in found}
            outcomes.update({o.key: o for o in fleet.run(op.pipeline(), services, jobs=jobs, skip=finished)})
            outcomes = [outcomes[j.key] for j in fleet.jobs]
        else:
            outcomes = fleet.run(op.pipeline(), services, skip=finished)
    return _finish(cmd, fleet, outcomes, lambda h, rec, status, secs: op.result_from_record(
        h, rec, status, dry_run=bool(dry_run), seconds=secs), "assigned")


def rekey(cmd, host=None,  # pylint: disable=too-many-locals
          inventory=None, inventory_format=None, limit=None, registration_id=None, timeout=None,
          dry_run=False, yes=False, dps_name=None, resource_group_name=None, login=None, auth_type=None,
          ssh_user=None, ssh_port=None, ssh_key=None, ssh_config=None, known_hosts=None, accept_new_host_key=False,
          ssh_timeout=None, tcti=None, id_format="sha256", max_parallel=None, state=None, retry_failed=False,
          only=None, shard=None, dps_ops_per_minute=None, dps_registrations_per_minute=None,
          state_from_other_run=False, max_fail_percentage=None, canary=None, ci_format=None, junit_xml=None,
          report_file=None, show=None):
    from azext_edgetpm.operations import rekey as op
    fleet = _fleet(cmd, "rekey", host, inventory, inventory_format, limit, shard, only, retry_failed, state,
                   max_parallel, registration_id, (ssh_user, ssh_port, ssh_key, ssh_config, known_hosts,
                                                   accept_new_host_key, ssh_timeout), tcti, id_format, dry_run,
                   state_from_other_run, (max_fail_percentage, canary, ci_format, junit_xml, report_file), show)
    confirm = None
    if not yes and not dry_run:
        if fleet.inventory:   # parallel work never prompts: one question for the whole run
            if not _confirm(f"Replace the enrollment's endorsement key of {len(fleet.jobs)} devices with the key "
                            "their TPM holds now?", False):
                return None
        else:
            def ask(question):
                return _confirm(question, False)
            confirm = ask
    client, budget = _lifecycle_client(cmd, dps_name, resource_group_name, login, auth_type, fleet.parallel,
                                       dps_ops_per_minute, dps_registrations_per_minute, shards=fleet.shards)
    fleet.begin(client.target)
    services = op.RekeyServices(client=client, dry_run=bool(dry_run), timeout=float(timeout or 300),
                                confirm=confirm, budget=budget)
    with client:
        outcomes = fleet.run(op.pipeline(), services)
    return _finish(cmd, fleet, outcomes, lambda h, rec, status, secs: op.result_from_record(
        h, rec, status, dry_run=bool(dry_run), seconds=secs), "assigned")


def upgrade(cmd, host=None,  # pylint: disable=too-many-locals
            inventory=None, inventory_format=None, limit=None, edge_version=None, allow_downgrade=False,
            no_rollback=False, settle_timeout=None, dry_run=False, ssh_user=None, ssh_port=None, ssh_key=None,
            ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None, tcti=None,
            max_parallel=None, state=None, retry_failed=False, only=None, shard=None, canary=None,
            max_fail_percentage=None, ci_format=None, junit_xml=None, report_file=None, show=None):
    from azext_edgetpm.edge.upgrade import UpgradeSettings
    from azext_edgetpm.operations import upgrade as op
    fleet = _fleet(cmd, "upgrade", host, inventory, inventory_format, limit, shard, only, retry_failed, state,
                   max_parallel, None, (ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                                        ssh_timeout), tcti, "sha256", dry_run, False,
                   (max_fail_percentage, canary, ci_format, junit_xml, report_file), show)
    settings = UpgradeSettings(edge_version=edge_version, allow_downgrade=bool(allow_downgrade),
                               rollback=not no_rollback, dry_run=bool(dry_run),
                               settle_timeout=float(settle_timeout or 90))
    services = op.UpgradeServices(settings=settings)
    # --canary/--max-fail-percentage: the runner's failure budget (fleet/budget.py), as for the other commands.
    outcomes = fleet.run(op.pipeline(), services, skip=op.finished)
    return _finish(cmd, fleet, outcomes, lambda h, rec, status, secs: op.result_from_record(
        h, rec, status, dry_run=bool(dry_run), seconds=secs), "upgraded")


def report_merge(cmd, inputs, report_file, summary_file=None):  # pylint: disable=unused-argument
    from azext_edgetpm.fleet.merge import merge
    return merge(inputs, report_file, summary_file).to_output()
