"""Bulk enrollment for parallel device pipelines: each device's `enroll` step hands its
enrollment to a shared BulkEnroller and waits; the enroller sends DPS one bulk call per (up to)
ten waiting devices, as soon as ten wait, or every device still expected waits, or no device
has joined for `quiet` seconds, or the first has waited `linger` seconds."""
import threading
import time
from typing import List, Optional

from azext_edgetpm.dps.client import BULK_MAX
from azext_edgetpm.stop import STOP, stopped


class _Item:
    def __init__(self, identity, options):
        self.identity, self.options = identity, options
        self.rid = (options.registration_id or identity.registration_id).lower()
        self.since = time.monotonic()
        self.result = None
        self.done = False


class BulkEnroller:
    def __init__(self, client, expected: Optional[int] = None, quiet: float = 1.0, linger: float = 3.0):
        self.client = client
        self.expected = expected          # devices that will enroll in this run (None: unknown)
        self.quiet, self.linger = quiet, linger
        self.calls = 0
        self.settled = 0
        self._last_arrival = time.monotonic()
        self._cond = threading.Condition()
        self._pending: List[_Item] = []

    def enroll(self, identity, options):
        """The operations.enroll.EnrollResult of this device (raises its own failure only)."""
        item = _Item(identity, options)
        with self._cond:
            self._pending.append(item)
            self._last_arrival = item.since
            self._cond.notify_all()
        while True:
            with self._cond:
                batch = []
                while not item.done:
                    if STOP.is_set():   # (the run is stopping: no further batch goes to DPS)
                        if item in self._pending:
                            self._pending.remove(item)
                        raise stopped()
                    batch = self._ready()
                    if batch:
                        break
                    self._cond.wait(0.1)
            if not batch:
                break
            self._send(batch)  # (a batch this thread sends may not hold its own item: then loop)
        if isinstance(item.result, BaseException):
            raise item.result
        return item.result

    def _ready(self) -> List[_Item]:
        """Take a batch off the queue when it is time (called with the lock held)."""
        pending = self._pending
        if not pending:
            return []
        now = time.monotonic()
        due = (len(pending) >= BULK_MAX
               or (self.expected is not None and len(pending) >= self.expected - self.settled)
               or now - self._last_arrival >= self.quiet or now - pending[0].since >= self.linger)
        if not due:
            return []
        batch, self._pending = pending[:BULK_MAX], pending[BULK_MAX:]
        return batch

    def _send(self, batch: List[_Item]) -> None:
        from azext_edgetpm.operations.enroll import enroll_many
        try:
            results = enroll_many(self.client, [(i.identity, i.options) for i in batch])
        except Exception as exc:  # pylint: disable=broad-except  # every device of the batch fails alike
            results = {i.rid: exc for i in batch}
        self.calls += 1
        with self._cond:
            for i in batch:
                i.result = results.get(i.rid)
                i.done = True
            self.settled += len(batch)
            self._cond.notify_all()
