"""Thin command functions: arguments -> typed options (through _client_factory, where `cmd`
stops) -> one operation per step -> its result's JSON. Domain errors become az errors in
_error_map (the command groups' exception handler). az imports this module to read the
commands' arguments (even for -h): import here only what that needs; the rest inside functions."""
from knack.log import get_logger

from azext_edgetpm import _client_factory as factory
from azext_edgetpm.echo import shown

logger = get_logger(__name__)


def ek_show(cmd, host=None, ssh_user=None, ssh_port=None, ssh_key=None,  # pylint: disable=unused-argument
            ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None, tcti=None,
            id_format="sha256", no_create=False, install_tools=False, local=False, ek_ca_bundle=None):
    from azext_edgetpm.operations.identify import identify, identify_local
    bundle = factory.ek_ca_bundle(ek_ca_bundle)
    if local:
        return identify_local(tcti=tcti, create=not no_create, id_format=id_format,
                              ek_ca_bundle=bundle).to_output()
    opts = factory.ssh_options(host, ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                               ssh_timeout)
    with opts.session() as session:
        return identify(session, tcti=tcti, create=not no_create, id_format=id_format,
                        install_tools=install_tools, ek_ca_bundle=bundle).to_output()


# -- DPS: enrollments and registration state -------------------------------------------------

def _dps_client(cmd, dps_name, resource_group_name, login, auth_type, rights):
    return factory.dps_client(cmd, factory.dps_target(cmd, dps_name, resource_group_name, login, auth_type, rights))


def enrollment_create(cmd, dps_name=None, resource_group_name=None,  # pylint: disable=too-many-locals
                      login=None, auth_type=None, host=None, ssh_user=None, ssh_port=None, ssh_key=None,
                      ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None, tcti=None,
                      id_format="sha256", endorsement_key=None, registration_id=None, device_id=None,
                      edge_enabled=True, iot_hubs=None, allocation_policy=None, initial_twin_tags=None,
                      initial_twin_properties=None, provisioning_status=None, reprovision_policy=None, force=False,
                      ek_ca_bundle=None):
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE
    from azext_edgetpm.operations.enroll import EnrollOptions, enroll
    from azext_edgetpm.operations.identify import identify, identity_from_key
    bundle = factory.ek_ca_bundle(ek_ca_bundle)
    client = _dps_client(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_WRITE)
    if host:
        opts = factory.ssh_options(host, ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                                   ssh_timeout)
        # With --ek-ca-bundle a device whose EK certificate fails is refused here, before DPS is written.
        with opts.session() as session:
            identity = identify(session, tcti=tcti, create=True, id_format=id_format, ek_ca_bundle=bundle)
    else:
        identity = identity_from_key(endorsement_key, id_format)
    options = EnrollOptions(registration_id=registration_id, device_id=device_id, edge_enabled=edge_enabled,
                            iot_hubs=tuple(iot_hubs) if iot_hubs is not None else None,
                            allocation_policy=allocation_policy, initial_twin_tags=initial_twin_tags,
                            initial_twin_properties=initial_twin_properties, provisioning_status=provisioning_status,
                            reprovision_policy=reprovision_policy, force=force)
    with client:
        return enroll(client, identity, options).to_output()


def enrollment_show(cmd, registration_id, dps_name=None, resource_group_name=None, login=None, auth_type=None):
    from azext_edgetpm.dps.discovery import ENROLLMENT_READ
    from azext_edgetpm.dps.enrollment import for_output, normalize_registration_id
    rid = normalize_registration_id(registration_id, "--enrollment-id")
    with _dps_client(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_READ) as client:
        return for_output(client.get_enrollment(rid))


def enrollment_list(cmd, dps_name=None, resource_group_name=None, login=None, auth_type=None, top=None):
    from azext_edgetpm.dps.discovery import ENROLLMENT_READ
    from azext_edgetpm.dps.enrollment import list_enrollments
    with _dps_client(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_READ) as client:
        return list_enrollments(client, top=top)


def enrollment_delete(cmd, registration_id, dps_name=None, resource_group_name=None, login=None, auth_type=None):
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE
    from azext_edgetpm.dps.enrollment import normalize_registration_id
    rid = normalize_registration_id(registration_id, "--enrollment-id")
    with _dps_client(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_WRITE) as client:
        client.delete_enrollment(rid)


def registration_show(cmd, registration_id, dps_name=None, resource_group_name=None, login=None, auth_type=None):
    from azext_edgetpm.dps.discovery import REGISTRATION_READ
    from azext_edgetpm.dps.enrollment import normalize_registration_id
    from azext_edgetpm.dps.registration import show_registration
    rid = normalize_registration_id(registration_id)
    with _dps_client(cmd, dps_name, resource_group_name, login, auth_type, REGISTRATION_READ) as client:
        return show_registration(client, rid)


def registration_wait(cmd, registration_id, dps_name=None, resource_group_name=None, login=None, auth_type=None,
                      timeout=None, interval=None):
    from azext_edgetpm.dps.discovery import REGISTRATION_READ
    from azext_edgetpm.dps.enrollment import normalize_registration_id
    from azext_edgetpm.operations.wait import wait
    rid = normalize_registration_id(registration_id)
    with factory.progress(cmd, f"Waiting for DPS to assign {rid}") as progress, \
            _dps_client(cmd, dps_name, resource_group_name, login, auth_type, REGISTRATION_READ) as client:
        return wait(client, rid, timeout=timeout, interval=interval, progress=progress).to_output()


# -- IoT Edge on a device ----------------------------------------------------------------------

def _payload(payload):
    """(bytes, name) of the --payload file, checked to be JSON."""
    import json
    import os
    from azure.cli.core.azclierror import InvalidArgumentValueError
    if not payload:
        return None, None
    from azext_edgetpm.files import LIMITS, read_bounded
    data = read_bounded(payload, LIMITS["payload"], "The payload file", "payload",
                        "Give a small JSON file to send to DPS at registration.")
    try:
        json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgumentValueError(f"--payload {shown(payload)} is not a JSON document: {exc}",
                                        "DPS receives the payload as JSON; fix the file.") from exc
    return data, os.path.basename(payload)


def install_settings(id_scope, global_endpoint=None, registration_id=None, package_source=None,
                     offline_packages=None, edge_version=None, log_driver="local", payload=None,
                     auto_reprovisioning_mode=None, tpm_access="udev", tcti=None, dry_run=False, proxy=None,
                     no_proxy=None, proxy_ca=None):
    """edge.plan.InstallSettings from the install arguments (shared by install and provision)."""
    import os
    from azext_edgetpm.edge import proxy as proxy_mod
    from azext_edgetpm.edge.configtoml import DEFAULT_GLOBAL_ENDPOINT
    from azext_edgetpm.edge.plan import InstallSettings
    payload_bytes, payload_name = _payload(payload)
    ca_pem = proxy_mod.check_file_readable(os.path.expanduser(proxy_ca)) if proxy_ca else None
    return InstallSettings(
        id_scope=id_scope, global_endpoint=(global_endpoint or DEFAULT_GLOBAL_ENDPOINT).rstrip("/"),
        registration_id=registration_id, package_source=package_source and package_source.strip(),
        offline_packages=offline_packages and os.path.expanduser(offline_packages), edge_version=edge_version,
        log_driver=str(log_driver or "local"), payload=payload_bytes, payload_name=payload_name,
        auto_reprovisioning_mode=auto_reprovisioning_mode and str(auto_reprovisioning_mode),
        tpm_access=str(tpm_access or "udev"), tcti=tcti, dry_run=bool(dry_run),
        proxy=proxy_mod.parse(proxy, no_proxy, ca_pem))


def edge_install(cmd, host, id_scope=None, registration_id=None,  # pylint: disable=too-many-locals
                 dps_name=None, resource_group_name=None, global_endpoint=None, package_source=None,
                 offline_packages=None, edge_version=None,
                 log_driver="local", payload=None, auto_reprovisioning_mode=None, tpm_access="udev", tcti=None,
                 dry_run=False, ssh_user=None, ssh_port=None, ssh_key=None, ssh_config=None, known_hosts=None,
                 accept_new_host_key=False, ssh_timeout=None, id_format="sha256", proxy=None, no_proxy=None,
                 proxy_ca=None):
    from azext_edgetpm.operations.install import install
    if dps_name:
        target = factory.dps_target(cmd, dps_name, resource_group_name, auth_type="login")
        id_scope, global_endpoint = factory.device_endpoint(target, id_scope, global_endpoint)
        logger.info("DPS %s: ID scope %s, device endpoint %s", target.name, id_scope, global_endpoint)
    settings = install_settings(id_scope, global_endpoint, registration_id, package_source, offline_packages,
                                edge_version, log_driver, payload, auto_reprovisioning_mode, tpm_access, tcti,
                                dry_run, proxy, no_proxy, proxy_ca)
    opts = factory.ssh_options(host, ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                               ssh_timeout)
    with factory.progress(cmd, f"{'Planning' if dry_run else 'Installing'} IoT Edge on {host}") as progress, \
            opts.session() as session:
        result = install(session, settings, id_format=id_format, progress=progress)
    for note in result.report.get("notes") or []:
        logger.warning(note)
    if result.failed:
        # The step report was logged step by step; the error says which step failed and why.
        raise result.failure
    return result.to_output()


def edge_status(cmd, host, ssh_user=None, ssh_port=None,  # pylint: disable=unused-argument
                ssh_key=None, ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None):
    from azext_edgetpm.operations.status import status
    opts = factory.ssh_options(host, ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                               ssh_timeout)
    with opts.session() as session:
        return status(session).to_output()


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
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE
    from azext_edgetpm.dps.ratelimit import DpsBudget
    from azext_edgetpm.fleet import inventory as inv, summary
    from azext_edgetpm.fleet.batch import BulkEnroller
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
    if inventory:
        devices = inv.read_inventory(inventory, inventory_format, limit, row_defaults)
    else:
        row = dict(row_defaults, host=host, registration_id=registration_id, device_id=device_id)
        devices = inv.validate([("--host", row)], {}, base_dir=".")
    if shard:
        devices = inv.select_shard(devices, *inv.parse_shard(shard))
    if only:
        devices = _only(devices, only)

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
        budget = DpsBudget.for_shard(dps_ops_per_minute, dps_registrations_per_minute, _shard_count(shard))
        todo = sum(1 for d in devices if journal.record(d.key).get("status") != "done")
        report, controller = factory.progress_reporter(cmd, len(devices))
        # Jobs are made as workers free up, and each device's result as it ends (memory stays flat).
        jobs = (job_for(d, defaults) for d in devices)
        if not inventory:
            # One device in the foreground: sudo may ask on the terminal, as the other commands do.
            jobs = [dataclasses.replace(j, ssh=dataclasses.replace(j.ssh, sudo_password=None)) for j in jobs]
        outputs, tally = [None] * len(devices), summary.Tally()
        verb = "provision --dry-run" if dry_run else "provision"
        record, failure_budget = _reporting(verb, len(devices), "assigned", max_fail_percentage, canary,
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
    return _shown(outputs, show, "assigned")


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


def _shown(outputs, show, ok_status):
    """--show failed: only the devices that did not end well (the outputs' dicts)."""
    if show != "failed":
        return outputs
    return [o for o in outputs if o and o.get("status") not in (ok_status, "planned")]


def _reporting(verb, total, ok_status, max_fail_percentage, canary, ci_format, junit_xml, report_file):
    """The run's record (fleet/observe.py: CI logging commands, --junit-xml, --report) and its
    failure budget (fleet/budget.py; None without --max-fail-percentage/--canary)."""
    from azext_edgetpm.fleet.budget import FailureBudget
    from azext_edgetpm.fleet.observe import RunRecord
    budget = FailureBudget(max_fail_percentage, canary)
    return (RunRecord(verb, total, ok_status, ci_format, junit_xml, report_file),
            budget if budget.active else None)


def _only(devices, only):
    from azext_edgetpm.errors import UserInputError
    items = [only] if isinstance(only, str) else list(only)
    wanted = {w.strip().lower() for item in items for w in item.replace(",", " ").split() if w.strip()}
    chosen = [d for d in devices if {d.key, d.host.lower(), d.ssh_host.lower(), d.source.lower()} & wanted]
    names = {n for d in chosen for n in (d.key, d.host.lower(), d.ssh_host.lower(), d.source.lower())}
    missing = sorted(w for w in wanted if w not in names)
    if missing:
        raise UserInputError(f"Not in the inventory (or not in this shard): {', '.join(missing)}.",
                             "Name devices as the inventory does (host, or host:port).", "only")
    return chosen


# -- Later in a device's life: deprovision, reprovision, rekey ----------------------------------

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


class _Fleet:
    """The devices of a lifecycle command (--host, or an inventory with --shard/--only/--retry-failed),
    its journal, and a runner over them; shared by deprovision, reprovision and rekey."""

    def __init__(self, cmd, verb, host, inventory, inventory_format,  # pylint: disable=too-many-locals
                 limit, shard, only, retry_failed, state, max_parallel, registration_id, ssh, tcti, id_format,
                 dry_run, from_other_run=False, reporting=None, show=None):
        import dataclasses
        from azext_edgetpm.fleet import inventory as inv
        from azext_edgetpm.fleet.jobs import lifecycle_job_for
        from azext_edgetpm.fleet.state import Journal
        ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key, ssh_timeout = ssh
        row_defaults = {"user": ssh_user, "port": ssh_port, "ssh_key": ssh_key, "tcti": tcti}
        if inventory:
            devices = inv.read_inventory(inventory, inventory_format, limit, row_defaults)
        else:
            devices = inv.validate([("--host", dict(row_defaults, host=host, registration_id=registration_id))], {},
                                   base_dir=".")
        if shard:
            devices = inv.select_shard(devices, *inv.parse_shard(shard))
        if only:
            devices = _only(devices, only)
        self.jobs = [lifecycle_job_for(d, ssh_config, known_hosts, accept_new_host_key, ssh_timeout,
                                       str(id_format or "sha256"), tcti) for d in devices]
        if not inventory:  # one device in the foreground: sudo may ask on the terminal
            self.jobs = [dataclasses.replace(j, ssh=dataclasses.replace(j.ssh, sudo_password=None))
                         for j in self.jobs]
        # a dry run never writes the state file: it plans, it does not finish anything
        self.journal = Journal(None if dry_run else state,
                               meta={"command": verb, "shard": shard, "devices": len(self.jobs)} if state else None)
        if retry_failed:
            self.jobs = [j for j in self.jobs
                         if self.journal.record(j.key).get("status") in ("failed", "interrupted", "running")]
        self.cmd, self.verb, self.inventory, self.state = cmd, verb, inventory, state
        self.host, self.from_other_run = host, bool(from_other_run)
        self.parallel = max(1, int(max_parallel or 10))
        # (max_fail_percentage, canary, ci_format, junit_xml, report_file): fleet/observe.py, fleet/budget.py
        self.reporting = tuple(reporting or (None,) * 5)
        self.record = self.failure_budget = None
        self.show = show
        from azext_edgetpm import stop
        stop.STOP.clear()

    def begin(self, target):
        """The state file must be one of this command, inventory and DPS (unless --state-from-other-run):
        checked once the DPS is known, before anything starts."""
        from azext_edgetpm.fleet.state import provenance
        if self.state:
            self.journal.begin(provenance(self.verb, self.inventory, self.host, target.id_scope or target.host),
                               self.from_other_run)

    def run(self, steps, services, jobs=None, skip=lambda record: record.get("status") == "done"):
        """The steps for the jobs (a signal stops the run: fleet/runner.py; finish() reports it)."""
        from azext_edgetpm import stop
        from azext_edgetpm.fleet.runner import Progress, Runner
        jobs = self.jobs if jobs is None else jobs
        ok_status = {"deprovision": "done", "upgrade": "upgraded"}.get(self.verb, "assigned")
        self.record, self.failure_budget = _reporting(self.verb, len(jobs), ok_status, *self.reporting)
        report, controller = factory.progress_reporter(self.cmd, len(jobs), self.verb.capitalize().rstrip("e") + "ing")
        try:
            with stop.on_signals(clear=False):
                return Runner(steps, services, self.journal, max_parallel=self.parallel,
                              progress=Progress(len(jobs), report), budget=self.failure_budget).run(jobs, skip=skip)
        finally:
            if controller is not None:
                controller.end()

    def finish(self, outcomes, result_of, ok_status):
        """Per-device results (inventory order); the command's exit code after the results are printed
        (fleet/summary.py: some failed, stopped by a signal), with what is left where."""
        import copy
        from azext_edgetpm import stop
        from azext_edgetpm.fleet import summary
        stopped_by = copy.copy(stop.STOP) if stop.STOP.is_set() else None
        stop.STOP.clear()
        results, tally = [], summary.Tally(ok_status)
        for outcome in outcomes:
            result = summary.result_of(outcome, self.journal.record(outcome.key), result_of)
            tally.add(result)
            results.append(result)
            if self.record is not None:
                self.record.add(result)
        self.journal.close()
        if self.record is not None:
            self.record.finish(self.failure_budget and self.failure_budget.halted)
        logger.warning("%s: %d of %d devices %s (%d done in an earlier run), %d failed", self.verb, tally.ok,
                       tally.devices, ok_status, tally.done_earlier, tally.failed)
        for r in results:
            if r.status not in (ok_status, "planned"):
                for line in getattr(r, "remains", None) or []:
                    logger.warning("%s: left: %s", r.host, line)
        first = results[0] if results else None
        _end_run(self.cmd, self.record, self.failure_budget, tally, self.state, self.inventory, stopped_by,
                 first and (f"{first.host}: {first.error}",
                            first.recommendation or "Fix the cause, then run the command again."))
        if not self.inventory:
            return first.to_output() if first else None
        return _shown([r.to_output() for r in results], self.show, ok_status)


def _lifecycle_client(cmd, dps_name, resource_group_name, login, auth_type, parallel, ops_per_minute=None,
                      registrations_per_minute=None, shards=1):
    from azext_edgetpm.dps.discovery import ENROLLMENT_WRITE
    from azext_edgetpm.dps.ratelimit import DpsBudget
    budget = DpsBudget.for_shard(ops_per_minute, registrations_per_minute, shards)
    target = factory.dps_target(cmd, dps_name, resource_group_name, login, auth_type, ENROLLMENT_WRITE)
    return factory.dps_client(cmd, target, budget=budget, pool_size=parallel + 2), budget


def _shard_count(shard):
    """n of --shard i/n (1 without): the DPS budget's share."""
    from azext_edgetpm.fleet.inventory import parse_shard
    return parse_shard(shard)[1] if shard else 1


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
    fleet = _Fleet(cmd, "deprovision", host, inventory, inventory_format, limit, shard, only, retry_failed, state,
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
                                       dps_ops_per_minute, shards=_shard_count(shard))
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
    return fleet.finish(outcomes, lambda h, rec, status, secs: op.result_from_record(h, rec, status, services, secs),
                        "done")


def reprovision(cmd, host=None,  # pylint: disable=too-many-locals
                inventory=None, inventory_format=None, limit=None, registration_id=None,
                iot_hubs=None, allocation_policy=None, initial_twin_tags=None, timeout=None, dry_run=False, yes=False,
                dps_name=None, resource_group_name=None, login=None, auth_type=None, ssh_user=None, ssh_port=None,
                ssh_key=None, ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None,
                tcti=None, id_format="sha256", max_parallel=None, state=None, retry_failed=False, only=None,
                shard=None, dps_ops_per_minute=None, dps_registrations_per_minute=None, state_from_other_run=False,
                max_fail_percentage=None, canary=None, ci_format=None, junit_xml=None, report_file=None, show=None):
    from azext_edgetpm.operations import reprovision as op
    fleet = _Fleet(cmd, "reprovision", host, inventory, inventory_format, limit, shard, only, retry_failed, state,
                   max_parallel, registration_id, (ssh_user, ssh_port, ssh_key, ssh_config, known_hosts,
                                                   accept_new_host_key, ssh_timeout), tcti, id_format, dry_run,
                   state_from_other_run, (max_fail_percentage, canary, ci_format, junit_xml, report_file), show)
    change = op.EnrollmentChange(iot_hubs=tuple(iot_hubs) if iot_hubs is not None else None,
                                 allocation_policy=allocation_policy, initial_twin_tags=initial_twin_tags)
    if change and not dry_run and not _confirm(f"Change the enrollment of {_what(fleet, host)} and make them "
                                               "register again?", yes):
        return None
    client, budget = _lifecycle_client(cmd, dps_name, resource_group_name, login, auth_type, fleet.parallel,
                                       dps_ops_per_minute, dps_registrations_per_minute, shards=_shard_count(shard))
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
    return fleet.finish(outcomes, lambda h, rec, status, secs: op.result_from_record(
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
    fleet = _Fleet(cmd, "rekey", host, inventory, inventory_format, limit, shard, only, retry_failed, state,
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
                                       dps_ops_per_minute, dps_registrations_per_minute, shards=_shard_count(shard))
    fleet.begin(client.target)
    services = op.RekeyServices(client=client, dry_run=bool(dry_run), timeout=float(timeout or 300),
                                confirm=confirm, budget=budget)
    with client:
        outcomes = fleet.run(op.pipeline(), services)
    return fleet.finish(outcomes, lambda h, rec, status, secs: op.result_from_record(
        h, rec, status, dry_run=bool(dry_run), seconds=secs), "assigned")


def upgrade(cmd, host=None,  # pylint: disable=too-many-locals
            inventory=None, inventory_format=None, limit=None, edge_version=None, allow_downgrade=False,
            no_rollback=False, settle_timeout=None, dry_run=False, ssh_user=None, ssh_port=None, ssh_key=None,
            ssh_config=None, known_hosts=None, accept_new_host_key=False, ssh_timeout=None, tcti=None,
            max_parallel=None, state=None, retry_failed=False, only=None, shard=None, canary=None,
            max_fail_percentage=None, ci_format=None, junit_xml=None, report_file=None, show=None):
    from azext_edgetpm.edge.upgrade import UpgradeSettings
    from azext_edgetpm.operations import upgrade as op
    fleet = _Fleet(cmd, "upgrade", host, inventory, inventory_format, limit, shard, only, retry_failed, state,
                   max_parallel, None, (ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key,
                                        ssh_timeout), tcti, "sha256", dry_run, False,
                   (max_fail_percentage, canary, ci_format, junit_xml, report_file), show)
    settings = UpgradeSettings(edge_version=edge_version, allow_downgrade=bool(allow_downgrade),
                               rollback=not no_rollback, dry_run=bool(dry_run),
                               settle_timeout=float(settle_timeout or 90))
    services = op.UpgradeServices(settings=settings)
    # --canary/--max-fail-percentage: the runner's failure budget (fleet/budget.py), as for the other commands.
    outcomes = fleet.run(op.pipeline(), services, skip=op.finished)
    return fleet.finish(outcomes, lambda h, rec, status, secs: op.result_from_record(
        h, rec, status, dry_run=bool(dry_run), seconds=secs), "upgraded")


def report_merge(cmd, inputs, report_file, summary_file=None):  # pylint: disable=unused-argument
    from azext_edgetpm.fleet.merge import merge
    return merge(inputs, report_file, summary_file).to_output()
