"""The install plan: settings, the context the steps share, and the runner that takes each
step through check -> (apply -> verify) and reports ok / changed / failed / skipped, or
would-change under --dry-run (where nothing on the device is touched).
"""
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set

from knack.log import get_logger

from azext_edgetpm.errors import EdgeTpmError
from . import facts as facts_mod

logger = get_logger(__name__)

OK, CHANGED, FAILED, SKIPPED, WOULD_CHANGE = "ok", "changed", "failed", "skipped", "would-change"
DEFAULT_LOG_DRIVER = "local"
TPM_ACCESS_MODES = ("udev", "tss-group", "root")


@dataclass
class InstallSettings:
    """What the user asked for (already validated)."""
    id_scope: str
    global_endpoint: str
    registration_id: Optional[str] = None
    package_source: Optional[str] = None
    offline_packages: Optional[str] = None
    edge_version: Optional[str] = None
    log_driver: str = DEFAULT_LOG_DRIVER
    payload: Optional[bytes] = None
    payload_name: Optional[str] = None
    auto_reprovisioning_mode: Optional[str] = None
    tpm_access: str = "udev"
    tcti: Optional[str] = None
    dry_run: bool = False
    settle_timeout: float = 90.0
    # Called right before the runtime is applied (and registers with DPS): a fleet takes a token of
    # its device-registration budget there.
    before_registration: Optional[Callable[[], None]] = field(default=None, repr=False, compare=False)
    proxy: Optional[object] = None  # edge.proxy.Proxy (None: direct; proxy files of ours are removed)


@dataclass
class Check:
    """What a step's check found: the differences to change (empty: ok), a description of
    the current state, or a reason to skip the step."""
    changes: List[str] = field(default_factory=list)
    detail: str = ""
    skip: Optional[str] = None
    data: dict = field(default_factory=dict)


class Step:
    """One idempotent step. Subclasses implement check(); apply() and verify() when they can
    change something. Errors are domain errors (azext_edgetpm.errors) with a recommendation."""
    name = "step"
    title = "Step"

    def check(self, ctx: "Context") -> Check:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, ctx: "Context", check: Check) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def verify(self, ctx: "Context", check: Check) -> Optional[str]:  # pylint: disable=unused-argument
        return None


class Context:
    """What the steps share during one run: the session, settings, the device's facts (refreshed
    after every change), and which steps changed (or would change)."""

    def __init__(self, session, settings: InstallSettings,
                 read_registration_id: Optional[Callable[[bool], dict]] = None,
                 progress: Optional[Callable[[str], None]] = None,
                 managed_files=()):
        self.session = session
        self.settings = settings
        self.display = session.target.display
        self._read_registration_id = read_registration_id
        self._progress = progress
        self.managed_files = list(managed_files)
        self.extra_packages: List[str] = []
        self.facts: Optional[facts_mod.Facts] = None
        self.platform = None
        self.changed: Set[str] = set()
        self.pending: Set[str] = set()
        self.notes: List[str] = []
        self.warnings: List[str] = []
        self.extra: Dict[str, object] = {}
        self._registration_id: Optional[str] = settings.registration_id
        self.registration_id_source = "argument" if settings.registration_id else None
        self.created_keys: List[str] = []
        self.updated_sources = False
        self.full_update_result = None

    @property
    def dry_run(self) -> bool:
        return self.settings.dry_run

    @property
    def pkg(self):
        """The device's package manager (edge/pkg: apt/dpkg or dnf/rpm), by the detected platform."""
        from .pkg import for_device
        return for_device(self.platform, self.facts)

    def progress(self, message: str) -> None:
        logger.info("%s: %s", self.display, message)
        if self._progress:
            self._progress(message)

    def refresh(self) -> facts_mod.Facts:
        self.facts = facts_mod.gather(self.session, self.managed_files, packages=self.extra_packages)
        return self.facts

    def run(self, command: str, timeout: float = 300.0):
        """A command as root (sudo for other users)."""
        return self.session.run(command, sudo=True, timeout=timeout)

    def touched(self, *names: str) -> bool:
        """Did (or, under --dry-run, would) one of these steps change something?"""
        return any(n in self.changed or n in self.pending for n in names)

    def registration_id(self, create: bool = True) -> Optional[str]:
        """The registration ID: --registration-id, else derived from the TPM's EK (read once;
        with `create`, an EK and SRK are created in a TPM that has none, as `ek show` does)."""
        if self._registration_id is None and self._read_registration_id is not None:
            identity = self._read_registration_id(create)
            self._registration_id = identity["registrationId"]
            self.created_keys = list(identity.get("createdKeys") or [])
            self.registration_id_source = "endorsement key"
        return self._registration_id

    @property
    def known_registration_id(self) -> Optional[str]:
        return self._registration_id


def run_steps(ctx: Context, steps: List[Step]) -> List[dict]:
    """Run the steps in order; stop at the first failure (the rest are reported as skipped) and
    raise that failure after logging what was done, so a re-run continues from there. The raised
    error carries the step report as `.report`."""
    report: List[dict] = []
    failure: Optional[EdgeTpmError] = None
    for step in steps:
        if failure is not None:
            report.append({"name": step.name, "status": SKIPPED, "detail": "not run: an earlier step failed"})
            continue
        started = time.monotonic()
        ctx.progress(step.title)
        try:
            found = step.check(ctx)
            if found.skip:
                entry = {"name": step.name, "status": SKIPPED, "detail": found.skip}
            elif not found.changes:
                entry = {"name": step.name, "status": OK, "detail": found.detail}
            elif ctx.dry_run:
                ctx.pending.add(step.name)
                entry = {"name": step.name, "status": WOULD_CHANGE,
                         "detail": "would " + "; ".join(found.changes)}
            else:
                detail = step.apply(ctx, found)
                ctx.changed.add(step.name)
                ctx.refresh()
                extra = step.verify(ctx, found)
                entry = {"name": step.name, "status": CHANGED,
                         "detail": "; ".join(d for d in (detail, extra) if d)}
        except EdgeTpmError as exc:
            failure = exc
            entry = {"name": step.name, "status": FAILED, "detail": str(exc)}
        entry["seconds"] = round(time.monotonic() - started, 2)
        report.append(entry)
        logger.info("%s: %s %s: %s", ctx.display, step.name, entry["status"], entry["detail"])
    if failure is not None:
        done = ", ".join(f"{e['name']} {e['status']}" for e in report)
        logger.warning("%s: %s", ctx.display, done)
        failed = next(e for e in report if e["status"] == FAILED)
        failure.prefix(f"Step {failed['name']} failed: ")
        failure.report = report
        raise failure
    return report
