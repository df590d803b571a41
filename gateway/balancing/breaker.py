"""Circuit breaker per backend: a pure state machine on an injected clock, no I/O.

closed → open after ``consecutive_failures`` backend faults in a row, or when the failure rate
over the last ``window_s`` reaches ``failure_rate`` with at least ``min_requests`` outcomes;
open for ``base_ejection_s`` * 2^(ejections so far), capped at ``max_ejection_s``; then
half-open, admitting ``half_open_trials`` requests: a success closes it (and resets the
ejection count), a failure opens it again for longer. Only backend faults count: client errors
are reported as successes of the backend.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_requests: int = 20
    window_s: float = 10.0
    base_ejection_s: float = 1.0
    max_ejection_s: float = 30.0
    half_open_trials: int = 1


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._window_failures = 0  # failures in _outcomes, kept as a count: O(1) per outcome
        self._ejections = 0
        self._open_until = 0.0
        self._trials_left = 0

    @property
    def state(self) -> BreakerState:
        """The state now: an open breaker whose time is up reads as half-open."""
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._state = BreakerState.HALF_OPEN
            self._trials_left = self._policy.half_open_trials
        return self._state

    def seconds_until_trial(self) -> float:
        """How long an open breaker stays open (0 when it is not open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def admits(self) -> bool:
        """Whether the backend may be offered new requests (no side effect)."""
        state = self.state
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and self._trials_left > 0
        )

    def on_request(self) -> None:
        """A request was sent to the backend; in half-open it uses up one trial."""
        if self.state is BreakerState.HALF_OPEN and self._trials_left > 0:
            self._trials_left -= 1

    def abandon(self) -> None:
        """A request sent with ``on_request`` ended without an outcome (the client gave up):
        give its half-open trial back, or the breaker would wait forever for its answer."""
        if self.state is BreakerState.HALF_OPEN:
            self._trials_left = min(self._trials_left + 1, self._policy.half_open_trials)

    def record(self, success: bool) -> BreakerState:
        """One outcome; returns the state after it."""
        now = self._clock()
        state = self.state
        if state is BreakerState.HALF_OPEN:
            if success:
                self._close()
            else:
                self._open(now)
            return self._state
        if state is BreakerState.OPEN:
            return state  # late answers of calls sent before it opened
        self._outcomes.append((now, success))
        self._window_failures += 0 if success else 1
        while self._outcomes and self._outcomes[0][0] < now - self._policy.window_s:
            _, ok = self._outcomes.popleft()
            self._window_failures -= 0 if ok else 1
        self._consecutive = 0 if success else self._consecutive + 1
        over_rate = (
            len(self._outcomes) >= self._policy.min_requests
            and self._window_failures / len(self._outcomes) >= self._policy.failure_rate
        )
        if self._consecutive >= self._policy.consecutive_failures or over_rate:
            self._open(now)
        return self._state

    def _open(self, now: float) -> None:
        duration = min(
            self._policy.base_ejection_s * (2**self._ejections), self._policy.max_ejection_s
        )
        self._ejections += 1
        self._open_until = now + duration
        self._state = BreakerState.OPEN
        self._consecutive = 0
        self._outcomes.clear()
        self._window_failures = 0

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._ejections = 0
        self._consecutive = 0
        self._outcomes.clear()
        self._window_failures = 0
