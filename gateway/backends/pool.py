"""The live backend set: applies discovery events, polls health, publishes route tables.

Only this object mutates backend state, and only off the request path; request handlers read
``pool.table``, an immutable snapshot replaced in one assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from gateway.backends.triton import BackendHealth, TritonBackend
from gateway.balancing.breaker import BreakerState, CircuitBreaker
from gateway.balancing.faults import FaultScope
from gateway.discovery.base import Add, Discovery, DiscoveryEvent, Endpoint, Remove, Reset
from gateway.routing.table import ModelKey, RouteTable

log = structlog.get_logger(__name__)

BackendFactory = Callable[[Endpoint], TritonBackend]
_MIN_POLL_GAP_S = 0.05
BreakerListener = Callable[[str, str, BreakerState], None]
"""Told of every breaker transition: backend name, model name ("" for the whole backend), state."""


class BackendPool:
    """Owns one ``TritonBackend`` per discovered endpoint and the route table built from them."""

    def __init__(
        self,
        factory: BackendFactory,
        *,
        poll_interval_s: float,
        poll_timeout_s: float,
        max_ejected_fraction: float = 0.5,
        on_breaker_change: BreakerListener | None = None,
    ) -> None:
        self._factory = factory
        self._poll_interval_s = poll_interval_s
        self._poll_timeout_s = poll_timeout_s
        self._backends: dict[str, TritonBackend] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._listeners: list[Callable[[RouteTable[TritonBackend]], None]] = []
        self._discovered = asyncio.Event()
        self._max_ejected_fraction = max_ejected_fraction
        self._on_breaker_change = on_breaker_change
        self.table: RouteTable[TritonBackend] = RouteTable()
        self.ready_backends: tuple[TritonBackend, ...] = ()
        self._admitted: frozenset[tuple[str, str]] = frozenset()
        """(backend, model) pairs in the current table; ("backend", "") for each backend."""
        self._drained: frozenset[str] = frozenset()

    @property
    def backends(self) -> tuple[TritonBackend, ...]:
        return tuple(self._backends.values())

    def on_change(self, listener: Callable[[RouteTable[TritonBackend]], None]) -> None:
        """Call ``listener`` with every new table (readiness reporting hooks in here)."""
        self._listeners.append(listener)

    async def follow(self, discovery: Discovery) -> None:
        """Apply discovery events until cancelled."""
        async for event in discovery.watch():
            await self._apply(event)
            self._discovered.set()

    async def wait_discovered(self, timeout_s: float) -> None:
        """Wait for the first discovery event and the first health poll of its backends."""
        try:
            await asyncio.wait_for(self._discovered.wait(), timeout_s)
        except TimeoutError:
            log.warning("discovery_slow", waited_s=timeout_s)
            return
        await self.refresh()

    async def refresh(self) -> None:
        """Poll every backend now (after a model load/unload, or at start)."""
        backends = list(self._backends.values())
        results = await asyncio.gather(*(b.poll_health(self._poll_timeout_s) for b in backends))
        changed = False
        for backend, health in zip(backends, results, strict=True):
            changed |= self._record(backend, health)
        if changed:
            self._publish()

    def set_drained(self, names: frozenset[str]) -> None:
        """Backends that take no new requests; their calls in flight finish normally."""
        if names != self._drained:
            log.warning("backends_drained", drained=sorted(names))
            self._drained = names
            self._publish()

    def knows_model(self, name: str, version: str) -> bool:
        """Whether a backend of the fleet served the version ("": any) when last seen up, even
        if it is down, drained or ejected now: such a model is unavailable, not unknown."""
        return any(
            model == name and version in ("", held)
            for b in self._backends.values()
            for model, held in b.last_models
        )

    def is_drained(self, name: str) -> bool:
        return name in self._drained

    def record_outcome(
        self,
        backend: TritonBackend,
        success: bool,
        model: str = "",
        scope: FaultScope = FaultScope.BACKEND,
    ) -> None:
        """A call's outcome for the breakers: a success counts for the backend and its model;
        a fault for the backend's breaker or, when the fault is the model's, the pair's.

        Every breaker the call went through gets an outcome, so a half-open trial is always
        settled: a model's fault still shows the server answering (a success for the backend),
        and a server fault says nothing of the model (its trial is given back).
        """
        model_breaker = backend.model_breakers.get(model)
        if success:
            self._feed(backend, backend.breaker, "", True)
            if model_breaker is not None:
                self._feed(backend, model_breaker, model, True)
        elif scope is FaultScope.MODEL and model:
            self._feed(backend, backend.breaker, "", True)
            self._feed(backend, backend.model_breaker(model), model, False)
            self._poll_soon(backend)
        else:
            self._feed(backend, backend.breaker, "", False)
            if model_breaker is not None:
                model_breaker.abandon()
            self._poll_soon(backend)

    def record_outcomes(
        self, name: str, model: str, successes: int, faults: int, scope: FaultScope
    ) -> None:
        """Batched outcomes (tgw-edge's reports), applied in order failures-last."""
        backend = self._backends.get(name)
        if backend is None:
            return
        for _ in range(successes):
            self.record_outcome(backend, True, model)
        for _ in range(faults):
            self.record_outcome(backend, False, model, scope)

    def _feed(
        self, backend: TritonBackend, breaker: CircuitBreaker, model: str, success: bool
    ) -> None:
        before = breaker.state
        after = breaker.record(success)
        if after is before:
            return
        log.warning("breaker_changed", backend=backend.name, model=model, state=after.value)
        if self._on_breaker_change is not None:
            self._on_breaker_change(backend.name, model, after)
        self._publish_if_admission_changed()
        if after is BreakerState.OPEN:
            # Offer it again (half-open) the moment its ejection time is over.
            delay = breaker.seconds_until_trial()
            asyncio.get_running_loop().call_later(delay, self._publish_if_admission_changed)

    async def close(self) -> None:
        for task in self._pollers.values():
            task.cancel()
        await asyncio.gather(*self._pollers.values(), return_exceptions=True)
        self._pollers.clear()
        await asyncio.gather(*(b.close() for b in self._backends.values()))
        self._backends.clear()

    async def _apply(self, event: DiscoveryEvent) -> None:
        if isinstance(event, Reset):
            wanted = {e.name: e for e in event.endpoints}
            for name in list(self._backends):
                current = self._backends[name]
                if name not in wanted or wanted[name].address != current.address:
                    await self._remove(name)
            for endpoint in event.endpoints:
                if endpoint.name not in self._backends:
                    self._add(endpoint)
        elif isinstance(event, Add):
            if event.endpoint.name in self._backends:
                await self._remove(event.endpoint.name)
            self._add(event.endpoint)
        elif isinstance(event, Remove):
            await self._remove(event.name)
        self._publish()

    def _add(self, endpoint: Endpoint) -> None:
        backend = self._factory(endpoint)
        self._backends[endpoint.name] = backend
        self._pollers[endpoint.name] = asyncio.create_task(
            self._poll_forever(backend), name=f"poll-{endpoint.name}"
        )
        log.info("backend_added", backend=endpoint.name, address=endpoint.address)

    async def _remove(self, name: str) -> None:
        backend = self._backends.pop(name, None)
        task = self._pollers.pop(name, None)
        self._wakes.pop(name, None)
        if task is not None:
            task.cancel()
        if backend is not None:
            await backend.close()
            log.info("backend_removed", backend=name)

    async def _poll_forever(self, backend: TritonBackend) -> None:
        wake = self._wakes[backend.name] = asyncio.Event()
        while True:
            wake.clear()
            health = await backend.poll_health(self._poll_timeout_s)
            if self._backends.get(backend.name) is not backend:
                return
            if self._record(backend, health):
                self._publish()
            # A backend that did not answer is asked again soon: a restart is noticed fast.
            interval = self._poll_interval_s if health.ready else min(self._poll_interval_s, 1.0)
            # A fault seen by traffic asks at once (see ``_poll_soon``), but never more often
            # than every _MIN_POLL_GAP_S: a storm of faults costs the backend few polls.
            await asyncio.sleep(_MIN_POLL_GAP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval - _MIN_POLL_GAP_S)

    def _poll_soon(self, backend: TritonBackend) -> None:
        """After a fault: poll now, so a dead server or a model gone leaves the routes at once
        rather than at the next interval."""
        wake = self._wakes.get(backend.name)
        if wake is not None:
            wake.set()

    def _record(self, backend: TritonBackend, health: BackendHealth) -> bool:
        if health == backend.health:
            return False
        previous = backend.health
        backend.health = health
        if health.ready:
            backend.last_models = health.models
        if health.ready and not previous.ready:
            log.info("backend_ready", backend=backend.name, models=sorted(health.models))
        elif previous.ready and not health.ready:
            log.warning("backend_not_ready", backend=backend.name)
        else:
            log.info("backend_models_changed", backend=backend.name, models=sorted(health.models))
        return True

    def _admitted_backends(self) -> list[TritonBackend]:
        live = [
            b for b in self._backends.values() if b.health.ready and b.name not in self._drained
        ]
        admitted = [b for b in live if b.breaker.admits()]
        # Outlier detection alone may not eject more than this share of the live fleet;
        # past it, every live backend is offered again (better a sick backend than none).
        if len(live) - len(admitted) > self._ejection_cap(len(live)):
            log.warning("ejection_cap_reached", ejected=len(live) - len(admitted))
            return live
        return admitted

    def _admitted_models(
        self, backends: list[TritonBackend]
    ) -> dict[TritonBackend, frozenset[ModelKey]]:
        """READY versions per backend, less the models whose breaker on it is open; the same
        ejection cap holds per model, counted over the backends that have it."""
        holders: dict[str, int] = {}
        ejected: dict[str, set[str]] = {}
        for backend in backends:
            for name in {name for name, _ in backend.health.models}:
                holders[name] = holders.get(name, 0) + 1
                breaker = backend.model_breakers.get(name)
                if breaker is not None and not breaker.admits():
                    ejected.setdefault(name, set()).add(backend.name)
        for name, names in list(ejected.items()):
            # No floor of one here: a model's last live holder is never ejected by its breaker,
            # or the model would vanish from the routes and read as unknown.
            if len(names) > int(holders[name] * self._max_ejected_fraction):
                log.warning("ejection_cap_reached", model=name, ejected=len(names))
                del ejected[name]
        return {
            b: frozenset(k for k in b.health.models if b.name not in ejected.get(k[0], ()))
            for b in backends
        }

    def _ejection_cap(self, live: int) -> int:
        return max(1, int(live * self._max_ejected_fraction))

    def _admission(
        self,
    ) -> tuple[dict[TritonBackend, frozenset[ModelKey]], frozenset[tuple[str, str]]]:
        admitted = self._admitted_models(self._admitted_backends())
        pairs = frozenset(
            (b.name, name) for b, keys in admitted.items() for name in ("", *(k[0] for k in keys))
        )
        return admitted, pairs

    def _publish_if_admission_changed(self) -> None:
        if self._admission()[1] != self._admitted:
            self._publish()

    def _publish(self) -> None:
        live = [b for b in self._backends.values() if b.health.ready]
        admitted, pairs = self._admission()
        self.table = RouteTable.build(admitted)
        self.ready_backends = tuple(live)
        self._admitted = pairs
        for listener in self._listeners:
            listener(self.table)
