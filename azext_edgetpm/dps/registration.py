"""Registration state, and waiting until DPS has assigned a device.

The wait polls `GET /registrations/{id}` every `interval` seconds (5 by default: 12 service
operations a minute, far inside DPS's 1,000 per minute). Throttling (429 with Retry-After) and
server errors are absorbed by the client's retry policy; when they outlast it, the wait backs off
and goes on until its timeout instead of failing.
"""
import time
from typing import Callable, Optional

from azure.cli.core.azclierror import AzureInternalError, AzureResponseError, UnclassifiedUserFault
from knack.log import get_logger

from azext_edgetpm.dps.client import DpsClient, DpsThrottledError

logger = get_logger(__name__)

DEFAULT_TIMEOUT = 300.0
DEFAULT_INTERVAL = 5.0
MIN_INTERVAL = 1.0
FAILED_STATES = ("failed", "disabled")


class RegistrationFailedError(AzureResponseError):
    """DPS reports the registration as failed or disabled; `.state` holds what it said."""


class RegistrationTimeoutError(UnclassifiedUserFault):
    """The device was not assigned within the timeout; `.state` holds the last state seen."""


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
    err = RegistrationFailedError(text, how)
    err.state = state
    return err


def wait_for_assignment(client: DpsClient, registration_id: str, timeout: float = DEFAULT_TIMEOUT,
                        interval: float = DEFAULT_INTERVAL, progress: Optional[Callable[[str], None]] = None,
                        clock: Callable[[], float] = time.monotonic,
                        sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll until the registration is assigned (returned), failed or disabled (raised), or the
    timeout passes (raised)."""
    interval = max(MIN_INTERVAL, float(interval))
    deadline = clock() + float(timeout)
    state, polls, last = None, 0, None
    while True:
        delay = interval
        try:
            state = client.find_registration(registration_id)
            polls += 1
        except (DpsThrottledError, AzureInternalError) as exc:
            logger.warning("DPS is busy (%s); trying again.", exc.dps.get("errorCode") or exc.dps.get("status"))
            delay = max(interval, 10.0)
        status = (state or {}).get("status")
        if status == "assigned":
            return state
        if status in FAILED_STATES:
            raise _failure(state)
        now_text = "has not registered yet" if state is None else f"is {status}"
        if now_text != last and progress:
            progress(f"Device {registration_id} {now_text}")
        last = now_text
        remaining = deadline - clock()
        if remaining <= 0:
            err = RegistrationTimeoutError(
                f"The device {registration_id!r} was not assigned within {timeout:g} s "
                f"({polls} polls); it {now_text}.",
                "Check that the device runs IoT Edge with this ID scope and registration ID "
                "(`sudo iotedge system logs` / `iotedge check` on the device), or wait longer with --timeout.")
            err.state = state
            raise err
        sleep(min(delay, remaining))


def show_registration(client: DpsClient, registration_id: str) -> dict:
    """The registration state; a clear error while the device has not tried to register."""
    from azure.cli.core.azclierror import ResourceNotFoundError
    state = client.find_registration(registration_id)
    if state is None:
        raise ResourceNotFoundError(
            f"DPS has no registration state for {registration_id!r}: the device has not tried to register yet.",
            "Check that the enrollment exists (`az edge-tpm enrollment show`), then wait for the device with "
            "`az edge-tpm registration wait`.")
    return state
