"""Step `install`: IoT Edge installed and configured on one device (azext_edgetpm.edge).

A failure after the device was reached does not lose the step report: the result carries the
steps done and the failure (as Ansible's fail_json does); the caller decides the exit code.
"""
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from azext_edgetpm.errors import EdgeTpmError


@dataclass
class InstallResult:
    device: str
    registration_id: Optional[str]
    changed: bool
    steps: List[dict] = field(default_factory=list)
    failure: Optional[BaseException] = field(default=None, repr=False)
    report: dict = field(default_factory=dict)   # the full JSON of `az edge-tpm install`

    @property
    def failed(self) -> bool:
        return self.failure is not None

    @property
    def runtime_version(self) -> Optional[str]:
        return (self.report.get("runtime") or {}).get("version")

    @property
    def provisioning(self) -> dict:
        return (self.report.get("runtime") or {}).get("provisioning") or {}

    def to_output(self) -> dict:
        return dict(self.report)


def install(session, settings, id_format: str = "sha256", progress: Optional[Callable[[str], None]] = None,
            ) -> InstallResult:
    """Run the install plan on a connected session. When settings.registration_id is None the
    ID is derived from the device's EK in `id_format` (through operations.identify)."""
    from azext_edgetpm.edge.install import install as run_plan
    from azext_edgetpm.operations.identify import identify

    def read_registration_id(create: bool) -> dict:
        return identify(session, tcti=settings.tcti, create=create, id_format=id_format).to_output()

    try:
        report = run_plan(session, settings, read_registration_id, progress)
        failure = None
    except EdgeTpmError as exc:  # a plan failure with its report (edge.install sets .result)
        report = getattr(exc, "result", None)
        if report is None:
            raise
        failure = exc
    return InstallResult(device=report.get("device") or session.target.display,
                         registration_id=report.get("registrationId"), changed=bool(report.get("changed")),
                         steps=list(report.get("steps") or []), failure=failure, report=report)
