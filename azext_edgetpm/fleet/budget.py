"""The failure budget of a fleet run: --max-fail-percentage and --canary.

The runner (fleet/runner.py) asks `admit()` before a device starts and reports every device that
ends to `ended()`. Once more than P% of the devices started in this run have failed, no further
device starts (the running ones finish) and `halted` says why. With a canary of N devices, the
first N started run alone: the others wait until all N have ended, and start only if none failed.
Devices that never start are left out of the journal, so a re-run with the same --state starts them.
"""
import threading
from typing import Optional

from azext_edgetpm.errors import UserInputError, option, render


class FailureBudget:
    def __init__(self, max_fail_percentage: Optional[float] = None, canary: int = 0):
        if max_fail_percentage is not None and not 0 <= float(max_fail_percentage) < 100:
            raise UserInputError(f"The failure budget must be at least 0 and below 100 (got {max_fail_percentage}).",
                                 "Give the percentage of started devices that may fail, e.g. 10 (0: stop at the "
                                 "first failure).", "max_fail_percentage")
        if canary is not None and int(canary) < 0:
            raise UserInputError(f"The canary must be a count of devices (got {canary}).",
                                 "Give how many devices go first, e.g. 5.", "canary")
        self.max_fail_percentage = None if max_fail_percentage is None else float(max_fail_percentage)
        self.canary = max(0, int(canary or 0))
        self.started = self.failed = self.canaries_ended = self.canaries_failed = 0
        self.halted: Optional[str] = None
        self._canary_keys = set()
        self._cond = threading.Condition()

    @property
    def active(self) -> bool:
        return self.max_fail_percentage is not None or self.canary > 0

    def admit(self, key: str, stopping=lambda: False) -> bool:
        """May this device start? Blocks while the canaries run (until `stopping()`)."""
        with self._cond:
            while True:
                if self.halted or stopping():
                    return False
                if self.started < self.canary:
                    self._canary_keys.add(key)
                    break
                if self.canaries_ended >= self.canary:
                    break
                self._cond.wait(0.2)
            self.started += 1
            return True

    def ended(self, key: str, failed: bool) -> None:
        with self._cond:
            self.failed += int(failed)
            if key in self._canary_keys:
                self.canaries_ended += 1
                self.canaries_failed += int(failed)
                if failed and not self.halted:
                    self.halted = render(f"a canary device failed ({option('canary')} {self.canary}): "
                                   "the other devices were not started")
            if (not self.halted and self.max_fail_percentage is not None and self.started
                    and self.failed * 100.0 > self.max_fail_percentage * self.started):
                self.halted = render(f"{self.failed} of the {self.started} devices started failed, more than "
                               f"{option('max_fail_percentage')} {self.max_fail_percentage:g}%: no further "
                               "device was started")
            self._cond.notify_all()

    def not_started_error(self) -> dict:
        return {"error": f"Not started: {self.halted}.",
                "recommendation": render(f"Fix the cause of the failures, then run the same command again with "
                                         f"the same {option('state')} file: finished devices are skipped, these "
                                         "start."),
                "kind": "budget"}
