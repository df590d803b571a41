"""Which breakers a call's outcome reaches: every breaker a call went through is settled."""

import asyncio

from gateway.backends.pool import BackendPool
from gateway.balancing.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from gateway.balancing.faults import FaultScope


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Backend:
    """The part of a TritonBackend the pool's outcome bookkeeping touches."""

    def __init__(self, clock: FakeClock) -> None:
        policy = BreakerPolicy(consecutive_failures=1, base_ejection_s=1.0, half_open_trials=1)
        self.name = "b0"
        self._new = lambda: CircuitBreaker(policy, clock)
        self.breaker = self._new()
        self.model_breakers: dict[str, CircuitBreaker] = {}

    def model_breaker(self, model: str) -> CircuitBreaker:
        return self.model_breakers.setdefault(model, self._new())


def _pool() -> BackendPool:
    return BackendPool(lambda endpoint: None, poll_interval_s=1.0, poll_timeout_s=1.0)  # type: ignore[arg-type, return-value]


def _half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.record(False)
    clock.now += 1.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.on_request()  # the trial call is on its way


def test_a_model_fault_settles_the_backend_trial_as_a_success() -> None:
    async def run() -> None:
        clock = FakeClock()
        backend = Backend(clock)
        _half_open(backend.breaker, clock)
        _pool().record_outcome(backend, False, "m", FaultScope.MODEL)  # type: ignore[arg-type]
        assert backend.breaker.state is BreakerState.CLOSED  # the server answered
        assert backend.model_breakers["m"].state is BreakerState.OPEN

    asyncio.run(run())


def test_a_server_fault_gives_the_model_trial_back() -> None:
    async def run() -> None:
        clock = FakeClock()
        backend = Backend(clock)
        _half_open(backend.model_breaker("m"), clock)
        assert not backend.model_breakers["m"].admits()
        _pool().record_outcome(backend, False, "m", FaultScope.BACKEND)  # type: ignore[arg-type]
        assert backend.breaker.state is BreakerState.OPEN
        assert backend.model_breakers["m"].admits()  # not stuck waiting for an answer

    asyncio.run(run())
