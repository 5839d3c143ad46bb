"""Per-caller rate limits: a token bucket per key or session, in this gateway replica's memory.

Each replica enforces the full rate, so N replicas admit up to N times the configured rate; the limit
protects the generator from one runaway client rather than metering exactly.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from musicrl.errors import RateLimited


BURST_SECONDS = 10.0  # a caller may spend ten seconds' worth of its rate at once
MAX_TRACKED = 100_000  # idle buckets are forgotten beyond this many callers


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float


class RateLimiter:
    """Token buckets keyed by caller.

    Args:
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key: str, requests_per_minute: int) -> None:
        """Spend one token of ``key``'s bucket.

        Raises:
            RateLimited: The bucket is empty; ``retry_after_s`` says when one token is back.
        """
        rate_per_s = requests_per_minute / 60.0
        capacity = max(1.0, rate_per_s * BURST_SECONDS)
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget_full_buckets(now, rate_per_s, capacity)
            bucket = self._buckets[key] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated_at) * rate_per_s)
        bucket.updated_at = now
        if bucket.tokens < 1.0:
            retry_after_s = (1.0 - bucket.tokens) / rate_per_s
            raise RateLimited(
                f"rate limit of {requests_per_minute} requests per minute exceeded; retry in {retry_after_s:.1f} s",
                retry_after_s,
            )
        bucket.tokens -= 1.0

    def _forget_full_buckets(self, now: float, rate_per_s: float, capacity: float) -> None:
        # a bucket that has refilled completely carries no information
        for key in [k for k, b in self._buckets.items() if b.tokens + (now - b.updated_at) * rate_per_s >= capacity]:
            del self._buckets[key]
