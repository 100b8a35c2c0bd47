"""Registration state, and waiting until DPS has assigned a device.

The wait polls `GET /registrations/{id}` every `interval` seconds (5 by default: 12 service
operations a minute, far inside DPS's 1,000 per minute). A DPS that cannot be reached, throttles
(429 with Retry-After) or fails (5xx) is polled again with back-off until the timeout, and a wait
that times out that way names the last error DPS (or the network) gave.
"""
import time
from typing import Callable, Optional

from knack.log import get_logger

from azext_edgetpm.dps.client import DpsClient
from azext_edgetpm.errors import (
    EdgeTpmError, NotFoundError, ServerError, ServiceError, ThrottledError, TransientError, option)

logger = get_logger(__name__)

DEFAULT_TIMEOUT = 300.0
DEFAULT_INTERVAL = 5.0
MIN_INTERVAL = 1.0
MAX_BACKOFF = 60.0
FAILED_STATES = ("failed", "disabled")


class RegistrationFailedError(ServiceError):
    """DPS reports the registration as failed or disabled; `.state` holds what it said."""

    def __init__(self, message, hint=None, state=None):
        super().__init__(message, hint)
        self.state = state


class RegistrationTimeoutError(EdgeTpmError):
    """The device was not assigned within the timeout; `.state` holds the last state seen,
    `.last_error` the last error of a poll (or None)."""

    def __init__(self, message, hint=None, state=None, last_error=None):
        super().__init__(message, hint)
        self.state = state
        self.last_error = last_error


def _failure(state: dict) -> RegistrationFailedError:
    rid, status = state.get("registrationId"), state.get("status")
    code, message = state.get("errorCode"), state.get("errorMessage")
    text = f"DPS did not assign the device {rid!r}: status {status}"
    if code or message:
        text += f", errorCode {code}: {message}"
    if state.get("lastUpdatedDateTimeUtc"):
        text += f" (at {state['lastUpdatedDateTimeUtc']})"
    if status == "disabled" or "disabled" in str(message or "").lower():
        how = ("The enrollment (or the device's registration) is disabled. Enable it with "
               "`az edge-tpm enrollment create ... --provisioning-status enabled`, then restart the device's "
               "provisioning (`sudo iotedge config apply`).")
    elif str(code or "").startswith("401"):
        how = ("The device could not prove its TPM to DPS: its endorsement key differs from the enrollment's. "
               "Compare `az edge-tpm ek show --host <device> --query endorsementKey` with `az edge-tpm enrollment "
               "show --query attestation.tpm.endorsementKey`, then run `az edge-tpm enrollment create --host "
               "<device> --force`.")
    else:
        how = "Fix the cause DPS names, then let the device register again (`sudo iotedge config apply`)."
    return RegistrationFailedError(text, how, state=state)


def _transient(exc: Exception) -> bool:
    """Errors a wait outlives: DPS unreachable, throttling, server errors (not TLS or auth)."""
    if isinstance(exc, TransientError):
        return getattr(exc, "transient", True)
    return isinstance(exc, (ThrottledError, ServerError))


def _describe(exc: Exception) -> str:
    dps = getattr(exc, "dps", None) or {}
    if dps.get("status"):
        code = f", errorCode {dps['errorCode']}" if dps.get("errorCode") else ""
        return f"DPS answered HTTP {dps['status']}{code}: {dps.get('message')}"
    return str(exc)


def wait_for_assignment(client: DpsClient, registration_id: str, timeout: float = DEFAULT_TIMEOUT,
                        interval: float = DEFAULT_INTERVAL, progress: Optional[Callable[[str], None]] = None,
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep, previous_etag: Optional[str] = None) -> dict:
    """Poll until the registration is assigned (returned), failed or disabled (raised), or the
    timeout passes (raised, naming the last state or the last DPS error).

    Each poll is one request without the client's own retries, bounded by the time left: an
    unreachable, throttling or failing DPS is polled again with back-off (honouring Retry-After)
    until the timeout, which is kept within one poll interval.
    With `previous_etag`, the record with that etag does not count: the wait is for the
    device's next registration (after a reprovision)."""
    interval = max(MIN_INTERVAL, float(interval))
    started = clock()
    deadline = started + float(timeout)
    state, polls, attempts, failures, last, last_error = None, 0, 0, 0, None, None
    while True:
        remaining = max(deadline - clock(), MIN_INTERVAL)
        attempts += 1
        try:
            state = client.find_registration(registration_id, retry_total=0,
                                             connection_timeout=min(20.0, remaining),
                                             read_timeout=min(60.0, remaining))
            polls += 1
            failures, last_error, delay = 0, None, interval
        except EdgeTpmError as exc:  # (the client's errors: DPS's answers and the network's)
            if not _transient(exc):
                raise
            failures += 1
            last_error = exc
            retry_after = (getattr(exc, "dps", None) or {}).get("retryAfter")
            delay = max(interval, retry_after or 0.0, min(interval * 2 ** (failures - 1), MAX_BACKOFF))
            logger.warning("DPS did not answer the poll (%s); trying again in %.0f s.", _describe(exc), delay)
        status = (state or {}).get("status")
        if previous_etag is not None and state is not None and state.get("etag") == previous_etag:
            status = "unchanged since the reprovision"
        if status == "assigned":
            return state
        if status in FAILED_STATES:
            raise _failure(state)
        now_text = ("has not registered yet" if state is None else f"is {status}")
        if last_error is not None:
            now_text = f"cannot be read from DPS ({_describe(last_error)})"
        if now_text != last and progress:
            progress(f"Device {registration_id} {now_text}")
        last = now_text
        remaining = deadline - clock()
        if remaining <= 0:
            if last_error is not None:
                seen = (f"; the last state it reported: {state.get('status')}" if state else "")
                err = RegistrationTimeoutError(
                    f"The device {registration_id!r} was not assigned within {timeout:g} s: the last of "
                    f"{attempts} polls ({polls} answered) failed: {_describe(last_error)}{seen}.",
                    " ".join(h for h in (last_error.hint, "Run `az edge-tpm registration wait` again once DPS "
                                         "answers; the device keeps registering on its own meanwhile.") if h),
                    state=state, last_error=last_error)
            else:
                err = RegistrationTimeoutError(
                    f"The device {registration_id!r} was not assigned within {timeout:g} s "
                    f"({polls} polls); it {now_text}.",
                    "Check that the device runs IoT Edge with this ID scope and registration ID "
                    "(`sudo iotedge system logs` / `iotedge check` on the device), or wait longer with "
                    f"{option('timeout')}.",
                    state=state)
            raise err
        sleep(min(delay, remaining))


def show_registration(client: DpsClient, registration_id: str) -> dict:
    """The registration state; a clear error while the device has not tried to register."""
    state = client.find_registration(registration_id)
    if state is None:
        raise NotFoundError(
            f"DPS has no registration state for {registration_id!r}: the device has not tried to register yet.",
            "Check that the enrollment exists (`az edge-tpm enrollment show`), then wait for the device with "
            "`az edge-tpm registration wait`.")
    return state
