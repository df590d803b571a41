"""Retry budget: retries may add at most ``ratio`` extra load over a window, with a floor.

Retrying every failure doubles the load on a fleet that is already failing; the budget keeps
retries to a share of recent requests (plus ``min_per_second`` so a quiet gateway can still
retry). Counts live in one-second buckets on an injected clock: O(1) per call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class RetryBudget:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window_s: int = 10,
    ) -> None:
        self._clock = clock
        self._ratio = ratio
        self._min_per_second = min_per_second
        self._window_s = window_s
        # [second, requests, retries], oldest first
        self._buckets: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0

    def on_request(self, count: int = 1) -> None:
        """Requests sent (tgw-edge reports its routed calls in batches)."""
        self._bucket()[1] += count
        self._requests += count

    def try_retry(self) -> bool:
        """Spend one retry if the budget has room; False means do not retry."""
        bucket = self._bucket()
        allowed = max(self._min_per_second * self._window_s, self._ratio * self._requests)
        if self._retries + 1 > allowed:
            return False
        bucket[2] += 1
        self._retries += 1
        return True

    def _bucket(self) -> list[int]:
        second = int(self._clock())
        while self._buckets and self._buckets[0][0] <= second - self._window_s:
            _, requests, retries = self._buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]
