"""Throttling, fault injection and counters.

Throttling uses token buckets: ``rate`` operations per ``period`` seconds, with a burst capacity
(defaults to the rate, so "1000 per minute" allows a burst of 1000 and then one per 60 ms).
A refused request is told to come back when the next token is due (``Retry-After`` in whole
seconds, at least 1), as DPS does with HTTP 429.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import defaultdict
from typing import Dict, Optional


class TokenBucket:
    """``rate`` tokens per ``period`` seconds, holding at most ``burst``."""

    def __init__(self, rate: float, period: float = 60.0, burst: Optional[float] = None):
        self.configure(rate, period, burst)
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def configure(self, rate: float, period: float = 60.0, burst: Optional[float] = None) -> None:
        if rate <= 0 or period <= 0:
            raise ValueError("rate and period must be positive")
        self.rate = float(rate)
        self.period = float(period)
        self.burst = float(burst if burst is not None else rate)
        if hasattr(self, "_tokens"):
            self._tokens = min(self._tokens, self.burst)

    def _refill(self, now: float) -> None:
        per_s = self.rate / self.period
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * per_s)
        self._stamp = now

    def take(self) -> Optional[int]:
        """Take a token: ``None`` when allowed, else the whole seconds to wait."""
        now = time.monotonic()
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        per_s = self.rate / self.period
        return max(1, math.ceil((1.0 - self._tokens) / per_s))

    def reset(self) -> None:
        self._tokens = self.burst
        self._stamp = time.monotonic()


class Limits:
    """The DPS limits the emulator enforces, adjustable at runtime."""

    def __init__(self, service_ops_per_minute: float = 1000, device_registrations_per_minute: float = 1000,
                 polls_per_10s: float = 5, service_burst: Optional[float] = None,
                 device_burst: Optional[float] = None):
        self._lock = threading.Lock()
        self.service = TokenBucket(service_ops_per_minute, 60.0, service_burst)
        self.device = TokenBucket(device_registrations_per_minute, 60.0, device_burst)
        self.polls_per_10s = float(polls_per_10s)
        self._polls: Dict[str, TokenBucket] = {}

    def take_service(self) -> Optional[int]:
        with self._lock:
            return self.service.take()

    def take_device_registration(self) -> Optional[int]:
        with self._lock:
            return self.device.take()

    def take_poll(self, registration_id: str) -> Optional[int]:
        with self._lock:
            bucket = self._polls.get(registration_id)
            if bucket is None:
                bucket = self._polls[registration_id] = TokenBucket(self.polls_per_10s, 10.0)
            return bucket.take()

    def configure(self, *, service_ops_per_minute: Optional[float] = None, service_burst: Optional[float] = None,
                  device_registrations_per_minute: Optional[float] = None, device_burst: Optional[float] = None,
                  polls_per_10s: Optional[float] = None) -> None:
        with self._lock:
            if service_ops_per_minute is not None or service_burst is not None:
                rate = service_ops_per_minute if service_ops_per_minute is not None else self.service.rate
                self.service.configure(rate, 60.0, service_burst)
                self.service.reset()
            if device_registrations_per_minute is not None or device_burst is not None:
                rate = (device_registrations_per_minute if device_registrations_per_minute is not None
                        else self.device.rate)
                self.device.configure(rate, 60.0, device_burst)
                self.device.reset()
            if polls_per_10s is not None:
                self.polls_per_10s = float(polls_per_10s)
                self._polls.clear()

    def describe(self) -> Dict[str, float]:
        with self._lock:
            return {
                "service_ops_per_minute": self.service.rate,
                "service_burst": self.service.burst,
                "device_registrations_per_minute": self.device.rate,
                "device_burst": self.device.burst,
                "polls_per_10s": self.polls_per_10s,
            }


class Faults:
    """Injected failures and latency, per API area (``service``, ``device``, ``arm``,
    ``identity``) or for ``all``."""

    AREAS = ("service", "device", "arm", "identity")

    def __init__(self):
        self._lock = threading.Lock()
        self.fail_next: Dict[str, int] = defaultdict(int)
        self.fail_probability: Dict[str, float] = defaultdict(float)
        self.latency_ms: Dict[str, float] = defaultdict(float)
        self.status = 503
        self.retry_after: Optional[int] = 1
        self._rng = random.Random()

    def configure(self, spec: Dict[str, object]) -> None:
        """Apply ``{"fail_next": {area: n}, "fail_probability": {area: p}, "latency_ms": {area: ms},
        "status": 503, "retry_after": 1, "seed": 0}``; an int/float instead of a dict means ``all``."""
        with self._lock:
            for name in ("fail_next", "fail_probability", "latency_ms"):
                if name not in spec:
                    continue
                value = spec[name]
                target = getattr(self, name)
                if isinstance(value, dict):
                    for area, v in value.items():
                        if area not in self.AREAS + ("all",):
                            raise ValueError(f"unknown area {area!r}")
                        target[area] = v
                else:
                    target["all"] = value
            if "status" in spec:
                self.status = int(spec["status"])
            if "retry_after" in spec:
                self.retry_after = None if spec["retry_after"] is None else int(spec["retry_after"])
            if "seed" in spec:
                self._rng.seed(spec["seed"])

    def clear(self) -> None:
        with self._lock:
            self.fail_next.clear()
            self.fail_probability.clear()
            self.latency_ms.clear()
            self.status = 503
            self.retry_after = 1

    def latency_for(self, area: str) -> float:
        with self._lock:
            return max(self.latency_ms.get(area, 0.0), self.latency_ms.get("all", 0.0)) / 1000.0

    def should_fail(self, area: str) -> bool:
        with self._lock:
            for key in (area, "all"):
                if self.fail_next.get(key, 0) > 0:
                    self.fail_next[key] -= 1
                    return True
            p = max(self.fail_probability.get(area, 0.0), self.fail_probability.get("all", 0.0))
            return p > 0 and self._rng.random() < p

    def describe(self) -> Dict[str, object]:
        with self._lock:
            return {
                "fail_next": dict(self.fail_next),
                "fail_probability": dict(self.fail_probability),
                "latency_ms": dict(self.latency_ms),
                "status": self.status,
                "retry_after": self.retry_after,
            }


class Counters:
    """Thread-safe named counters; keys look like ``service.requests``, ``service.429``,
    ``device.poll.429``, ``endpoint.PUT /enrollments/{id}.201``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._c: Dict[str, int] = defaultdict(int)

    def inc(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._c[key] += n

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(sorted(self._c.items()))

    def reset(self) -> None:
        with self._lock:
            self._c.clear()
