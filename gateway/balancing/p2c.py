"""Power of two choices on calls in flight weighted by a peak-EWMA of latency.

Two candidates are drawn at random and the cheaper one gets the request, where

    cost = (calls in flight to the backend + 1) x latency estimate of the model on it.

Calls in flight are per backend (a Triton server's load is shared by all its models); the
latency estimate is per backend and model (one server can be fast for one model and slow for
another). The estimate is a peak EWMA, as in Finagle and Linkerd: a slower answer than the
estimate replaces it at once (slowness is punished immediately), a faster one is blended in
with a weight that grows with the time since the last answer (forgiveness takes ``decay_s``,
however many requests arrive). A backend fault counts as at least ``fault_penalty_s``, so a
backend failing fast never looks fast. An estimate nobody updates decays toward zero, so a
backend left alone because it was slow is tried again after a while and its estimate
refreshed, rather than starved for good. A backend with no estimate yet for the model is taken
to be as fast as the other candidate, so the two are compared on calls in flight alone.

Drawing two at random (rather than taking the cheapest of all) keeps many gateways and tgw-edge,
each with its own view, from herding onto the same backend. This process's view only: tgw-edge
keeps its own, computed the same way in ``edge/src/routes.rs``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


B = TypeVar("B", bound=Named)


@dataclass(frozen=True, slots=True)
class LoadPolicy:
    decay_s: float = 5.0
    """How long the estimate takes to forgive (time constant of the EWMA and of its decay)."""
    fault_penalty_s: float = 0.25
    """Least latency a backend fault counts as."""


class _Ewma:
    __slots__ = ("seconds", "stamp")

    def __init__(self, seconds: float, stamp: float) -> None:
        self.seconds = seconds
        self.stamp = stamp

    def observe(self, sample_s: float, now: float, decay_s: float) -> None:
        if sample_s >= self.seconds:
            self.seconds = sample_s
        else:
            kept = math.exp(-max(now - self.stamp, 0.0) / decay_s)
            self.seconds = self.seconds * kept + sample_s * (1.0 - kept)
        self.stamp = now

    def current(self, now: float, decay_s: float) -> float:
        return self.seconds * math.exp(-max(now - self.stamp, 0.0) / decay_s)


class _BackendLoad:
    __slots__ = ("in_flight", "latency")

    def __init__(self) -> None:
        self.in_flight = 0
        self.latency: dict[Hashable, _Ewma] = {}


class PowerOfTwoChoices:
    """Chooses among candidates by cost; told when calls start and finish."""

    def __init__(
        self,
        clock: Callable[[], float],
        rng: random.Random,
        policy: LoadPolicy | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._policy = policy or LoadPolicy()
        # Keyed by backend name: a backend removed and added again keeps its history, and the
        # map is bounded by the names the configuration or discovery ever gave.
        self._loads: dict[str, _BackendLoad] = {}

    def choose(self, key: Hashable, candidates: Sequence[B]) -> B:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first = self._rng.randrange(count)
        second = self._rng.randrange(count - 1)
        if second >= first:
            second += 1
        a, b = candidates[first], candidates[second]
        now = self._clock()
        latency_a = self._latency(a.name, key, now)
        latency_b = self._latency(b.name, key, now)
        if latency_a is None:
            latency_a = 1.0 if latency_b is None else latency_b
        if latency_b is None:
            latency_b = latency_a
        cost_a = (self.in_flight(a.name) + 1) * latency_a
        cost_b = (self.in_flight(b.name) + 1) * latency_b
        return b if cost_b < cost_a else a

    def cost(self, backend: str, key: Hashable) -> float | None:
        """The backend's cost for the key now; None before its first answer for the key."""
        latency = self._latency(backend, key, self._clock())
        return None if latency is None else (self.in_flight(backend) + 1) * latency

    def _latency(self, backend: str, key: Hashable, now: float) -> float | None:
        load = self._loads.get(backend)
        ewma = None if load is None else load.latency.get(key)
        return None if ewma is None else ewma.current(now, self._policy.decay_s)

    def started(self, backend: str) -> None:
        load = self._loads.get(backend)
        if load is None:
            load = self._loads[backend] = _BackendLoad()
        load.in_flight += 1

    def finished(self, backend: str, key: Hashable, latency_s: float | None, fault: bool) -> None:
        """A call ended. ``latency_s`` None: the client gave up, nothing learned of the backend."""
        load = self._loads[backend]
        load.in_flight -= 1
        if latency_s is None:
            return
        if fault:
            latency_s = max(latency_s, self._policy.fault_penalty_s)
        now = self._clock()
        ewma = load.latency.get(key)
        if ewma is None:
            load.latency[key] = _Ewma(latency_s, now)
        else:
            ewma.observe(latency_s, now, self._policy.decay_s)

    def in_flight(self, backend: str) -> int:
        load = self._loads.get(backend)
        return 0 if load is None else load.in_flight
