"""A fleet command's run as the az face drives it: its devices (an inventory, or the one --host,
then --shard, --only, --retry-failed), its journal, the runner over them with the run's record and
failure budget (fleet/observe.py, fleet/budget.py), and the per-device results at the end.
Shared by provision (the devices, the record) and the lifecycle commands (all of it).
"""
from knack.log import get_logger

from azext_edgetpm.errors import UserInputError
from azext_edgetpm.fleet import inventory as inv

logger = get_logger(__name__)


def select_devices(inventory, inventory_format, limit, row_defaults, host_row, shard=None, only=None):
    """The inventory's devices (--limit), or the one of `host_row` (the --host row: the defaults
    under it); then --shard and --only."""
    if inventory:
        devices = inv.read_inventory(inventory, inventory_format, limit, row_defaults)
    else:
        devices = inv.validate([("--host", dict(row_defaults, **host_row))], {}, base_dir=".")
    if shard:
        devices = inv.select_shard(devices, *inv.parse_shard(shard))
    if only:
        devices = select_only(devices, only)
    return devices


def select_only(devices, only):
    """The devices that --only names (by key, host, host:port or inventory row); a name that
    matches none of them is an error."""
    items = [only] if isinstance(only, str) else list(only)
    wanted = {w.strip().lower() for item in items for w in item.replace(",", " ").split() if w.strip()}
    chosen = [d for d in devices if {d.key, d.host.lower(), d.ssh_host.lower(), d.source.lower()} & wanted]
    names = {n for d in chosen for n in (d.key, d.host.lower(), d.ssh_host.lower(), d.source.lower())}
    missing = sorted(w for w in wanted if w not in names)
    if missing:
        raise UserInputError(f"Not in the inventory (or not in this shard): {', '.join(missing)}.",
                             "Name devices as the inventory does (host, or host:port).", "only")
    return chosen


def shard_count(shard):
    """n of --shard i/n (1 without): the DPS budget's share."""
    return inv.parse_shard(shard)[1] if shard else 1


def record_and_budget(verb, total, ok_status, max_fail_percentage, canary, ci_format, junit_xml, report_file):
    """The run's record (fleet/observe.py: CI logging commands, --junit-xml, --report) and its
    failure budget (fleet/budget.py; None without --max-fail-percentage/--canary)."""
    from azext_edgetpm.fleet.budget import FailureBudget
    from azext_edgetpm.fleet.observe import RunRecord
    budget = FailureBudget(max_fail_percentage, canary)
    return (RunRecord(verb, total, ok_status, ci_format, junit_xml, report_file),
            budget if budget.active else None)


def shown(outputs, show, ok_status):
    """--show failed: only the devices that did not end well (the outputs' dicts)."""
    if show != "failed":
        return outputs
    return [o for o in outputs if o and o.get("status") not in (ok_status, "planned")]


class FleetCommand:
    """The devices of a lifecycle command (--host, or an inventory with --shard/--only/--retry-failed),
    its journal, and a runner over them; shared by deprovision, reprovision, rekey and upgrade.
    `reporter(total, verb)`: the face's progress display, as (report, controller)."""

    def __init__(self, verb, host, inventory, inventory_format,  # pylint: disable=too-many-locals
                 limit, shard, only, retry_failed, state, max_parallel, registration_id, ssh, tcti, id_format,
                 dry_run, from_other_run=False, reporting=None, show=None, reporter=None):
        import dataclasses
        from azext_edgetpm import stop
        from azext_edgetpm.fleet.jobs import lifecycle_job_for
        from azext_edgetpm.fleet.state import Journal
        ssh_user, ssh_port, ssh_key, ssh_config, known_hosts, accept_new_host_key, ssh_timeout = ssh
        row_defaults = {"user": ssh_user, "port": ssh_port, "ssh_key": ssh_key, "tcti": tcti}
        devices = select_devices(inventory, inventory_format, limit, row_defaults,
                                 {"host": host, "registration_id": registration_id}, shard, only)
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
        self.verb, self.inventory, self.state = verb, inventory, state
        self.host, self.from_other_run = host, bool(from_other_run)
        self.parallel = max(1, int(max_parallel or 10))
        self.shards = shard_count(shard)   # (the DPS budget's share)
        # (max_fail_percentage, canary, ci_format, junit_xml, report_file): fleet/observe.py, fleet/budget.py
        self.reporting = tuple(reporting or (None,) * 5)
        self.record = self.failure_budget = None
        self.show = show
        self.reporter = reporter or (lambda total, verb: (None, None))
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
        self.record, self.failure_budget = record_and_budget(self.verb, len(jobs), ok_status, *self.reporting)
        report, controller = self.reporter(len(jobs), self.verb.capitalize().rstrip("e") + "ing")
        try:
            with stop.on_signals(clear=False):
                return Runner(steps, services, self.journal, max_parallel=self.parallel,
                              progress=Progress(len(jobs), report), budget=self.failure_budget).run(jobs, skip=skip)
        finally:
            if controller is not None:
                controller.end()

    def finish(self, outcomes, result_of, ok_status):
        """(per-device results in inventory order, their Tally, the stop request that ended the run or
        None); logs the summary and what is left where. The face then sets the exit code."""
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
        return results, tally, stopped_by
