"""One DPS budget for a whole run: token buckets under DPS's per-instance limits, shared by
every thread, and an azure-core policy that takes a token for each service request (each
retry included) and holds the whole budget back when DPS answers 429 with Retry-After.

Defaults from DPS's public limits: 1,000 service operations and 1,000 device registrations per
minute per DPS instance; a run that is one of n shards (`--shard i/n`, parallel processes on the
same DPS) takes 1/n of each unless told otherwise (`for_shard`). A bucket holds at most one
second's worth of tokens, so a run spreads its calls evenly instead of bursting into a 429 storm.

A 429 pauses the whole process: its Retry-After holds the service bucket, so every thread's next
call waits until then (not only the retry of the request that got it). Waits end at once when a
fleet run is stopping (azext_edgetpm.stop).
"""
import threading
import time
from typing import Callable, Optional

from azure.core.pipeline.policies import SansIOHTTPPolicy

from azext_edgetpm import stop

DEFAULT_SERVICE_OPS_PER_MINUTE = 1000
DEFAULT_REGISTRATIONS_PER_MINUTE = 1000


class TokenBucket:
    """`per_minute` tokens a minute, at most `burst` saved up; `take()` blocks until its token is
    due (callers reserve in order, so waiting threads are served first come, first served)."""

    def __init__(self, per_minute: float, burst: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = stop.sleep):
        if per_minute <= 0:
            raise ValueError("a rate must be positive")
        self.rate = per_minute / 60.0
        self.burst = max(1.0, burst if burst is not None else self.rate)
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._last = clock()
        self._hold_until = 0.0
        self.taken = 0
        self.waited = 0.0

    def _due(self, count: int) -> float:
        """Reserve `count` tokens at once; the seconds until the last of them may be used."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= count
            self.taken += count
            debt = -self._tokens / self.rate if self._tokens < 0 else 0.0
            return max(debt, self._hold_until - now, 0.0)

    def take(self, count: int = 1) -> float:
        """Block until `count` tokens are due. They are reserved together, so that the requests
        of one piece of work are not interleaved with other threads' (which would delay each piece
        until every waiting thread had its first token)."""
        wait = self._due(count)
        if wait > 0:
            self.waited += wait
            self._sleep(wait)
        return wait

    def hold(self, seconds: float) -> None:
        """Nobody takes a token for `seconds` (DPS said Retry-After); saved tokens are dropped."""
        with self._lock:
            now = self._clock()
            self._hold_until = max(self._hold_until, now + max(0.0, seconds))
            self._tokens = min(self._tokens, 0.0)
            self._last = now


# The run paces itself a little under the limit it is given: its clock and DPS's never tick in
# step, and calls spaced exactly at the limit would draw a 429 now and then.
MARGIN = 0.95

# DPS counts both register requests of a TPM registration: the one answered with the challenge and
# the signed one.
REGISTER_REQUESTS_PER_TPM_REGISTRATION = 2


class DpsBudget:
    """The service-operation and device-registration budgets of one run, and what it saw."""

    def __init__(self, service_per_minute: float = DEFAULT_SERVICE_OPS_PER_MINUTE,
                 registrations_per_minute: float = DEFAULT_REGISTRATIONS_PER_MINUTE, clock=time.monotonic,
                 sleep=stop.sleep):
        self.service = TokenBucket(service_per_minute * MARGIN, clock=clock, sleep=sleep)
        self.registrations = TokenBucket(registrations_per_minute * MARGIN, clock=clock, sleep=sleep)
        self.throttled = 0
        self._lock = threading.Lock()

    def tpm_registration(self) -> float:
        """Block until a device may register with TPM attestation: two register requests (the
        challenge, then the signed one), both counted by DPS, taken as one pair."""
        return self.registrations.take(REGISTER_REQUESTS_PER_TPM_REGISTRATION)

    @property
    def service_calls(self) -> int:
        return self.service.taken

    def saw_throttling(self, retry_after: float) -> None:
        with self._lock:
            self.throttled += 1
        self.service.hold(retry_after)

    @classmethod
    def for_shard(cls, service_per_minute: Optional[float] = None, registrations_per_minute: Optional[float] = None,
                  shards: int = 1) -> "DpsBudget":
        """The budget of one of `shards` processes sharing one DPS: each limit given explicitly wins,
        else DPS's limit divided by the number of shards."""
        shards = max(1, int(shards or 1))
        return cls(service_per_minute=service_per_minute or DEFAULT_SERVICE_OPS_PER_MINUTE / shards,
                   registrations_per_minute=registrations_per_minute or DEFAULT_REGISTRATIONS_PER_MINUTE / shards)

    @property
    def per_minute(self) -> dict:
        """The limits this budget paces under (before the margin)."""
        return {"serviceOps": round(self.service.rate * 60 / MARGIN, 2),
                "registrations": round(self.registrations.rate * 60 / MARGIN, 2)}

    def stats(self) -> dict:
        return {"serviceCalls": self.service.taken, "throttled": self.throttled,
                "serviceWaitSeconds": round(self.service.waited, 2),
                "registrationWaitSeconds": round(self.registrations.waited, 2)}


class RateLimitPolicy(SansIOHTTPPolicy):
    """Placed after RetryPolicy in the pipeline, so that every attempt is paced."""

    def __init__(self, budget: DpsBudget):
        super().__init__()
        self._budget = budget

    def on_request(self, request):
        self._budget.service.take()

    def on_response(self, request, response):
        if response.http_response.status_code == 429:
            retry_after = response.http_response.headers.get("Retry-After")
            try:
                seconds = float(retry_after)
            except (TypeError, ValueError):
                seconds = 1.0
            self._budget.saw_throttling(seconds)
