"""Stopping a run that works on many devices at once.

Python delivers a signal to the main thread only, while a fleet's work runs in worker threads.
So a fleet run turns the first SIGINT (Ctrl+C; Azure Pipelines' first word when a job is
cancelled) or SIGTERM into a process-wide stop request, `STOP`, and every long wait of every
layer watches it: a remote command (remote/signals.py stops it on the device), the DPS budget's
pacing and a registration poll (dps/), a bulk enrollment waiting for its batch (fleet/batch.py)
and the runner itself, which launches no further device. A second signal ends the process at once.

Outside a fleet run nothing sets `STOP`, and `sleep()` is `time.sleep`.
"""
import contextlib
import os
import signal
import threading
import time
from typing import Optional

from azext_edgetpm.errors import InterruptedWork, option

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set once per run by the first signal; `signum` says which (the exit code is 128 + it)."""

    def __init__(self):
        self._event = threading.Event()
        self.signum: Optional[int] = None
        self.since: Optional[float] = None       # time.monotonic() of the request

    def request(self, signum: int) -> None:
        if not self._event.is_set():
            self.signum, self.since = signum, time.monotonic()
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()
        self.signum = self.since = None

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True (at once) when a stop is requested."""
        return self._event.wait(max(0.0, seconds))

    @property
    def exit_code(self) -> Optional[int]:
        return 128 + self.signum if self.signum else None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a stop request"


STOP = StopRequest()


def stopped() -> InterruptedWork:
    """The error a piece of work raises when it gives up because of the stop request."""
    return InterruptedWork(f"Stopped by {STOP.name} before this device finished.",
                           f"Run the same command again with the same {option('state')} file: finished devices are "
                           "skipped and this one continues where it stopped.")


def check() -> None:
    if STOP.is_set():
        raise stopped()


def sleep(seconds: float) -> None:
    """time.sleep that ends at once, raising InterruptedWork, when a stop is requested."""
    if seconds > 0 and STOP.wait(seconds):
        raise stopped()
    check()


@contextlib.contextmanager
def on_signals(clear: bool = True):
    """Within: the first SIGINT or SIGTERM sets STOP (and says so on stderr); a second one ends
    the process at once with 128 + its number. With `clear`, STOP is cleared on the way in and out
    (copy it first to keep what it said). Only the main thread can install signal handlers:
    elsewhere (a host application's thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    if clear:
        STOP.clear()

    def handler(signum, _frame):
        if STOP.is_set():
            os.write(2, f"\n{signal.Signals(signum).name} again: stopping at once.\n".encode())
            os._exit(128 + signum)  # pylint: disable=protected-access  # the user asked twice
        STOP.request(signum)
        os.write(2, f"\n{signal.Signals(signum).name}: stopping - no further device starts, running commands "
                    "are stopped on the devices (a second signal ends az at once).\n".encode())

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield STOP
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if clear:
            STOP.clear()
