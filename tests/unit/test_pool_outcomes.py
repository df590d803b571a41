"""Which breakers a call's outcome reaches: every breaker a call went through is settled."""

import asyncio

from gateway.backends.pool import BackendPool
from gateway.backends.triton import BackendHealth
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


class HealthyBackend(Backend):
    """A live backend with ``simple`` version 1 READY, as a health poll leaves it."""

    def __init__(self, clock: FakeClock, name: str) -> None:
        super().__init__(clock)
        self.name = name
        self.health = BackendHealth(ready=True, models=frozenset({("simple", "1")}))
        self.last_models = self.health.models


def test_a_models_last_live_holder_is_never_ejected_by_its_breaker() -> None:
    async def run() -> None:
        clock = FakeClock()
        pool = _pool()
        only = HealthyBackend(clock, "only")
        pool._backends = {"only": only}  # type: ignore[dict-item]
        pool.record_outcome(only, False, "simple", FaultScope.MODEL)  # type: ignore[arg-type]
        assert only.model_breakers["simple"].state is BreakerState.OPEN
        # Ejecting it would make the model read as unknown (NOT_FOUND): it stays routed.
        assert pool.table.lookup("simple", "") == (only,)

    asyncio.run(run())


def test_one_of_two_holders_is_ejected_for_the_model_only() -> None:
    async def run() -> None:
        clock = FakeClock()
        pool = _pool()
        sick, well = HealthyBackend(clock, "sick"), HealthyBackend(clock, "well")
        pool._backends = {"sick": sick, "well": well}  # type: ignore[dict-item]
        pool.record_outcome(sick, False, "simple", FaultScope.MODEL)  # type: ignore[arg-type]
        assert pool.table.lookup("simple", "") == (well,)
        assert sick.breaker.state is BreakerState.CLOSED

    asyncio.run(run())
