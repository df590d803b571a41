"""The live backend set: applies discovery events, polls health, publishes route tables.

Only this object mutates backend state, and only off the request path; request handlers read
``pool.table``, an immutable snapshot replaced in one assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

import structlog

from gateway.backends.triton import BackendHealth, TritonBackend
from gateway.discovery.base import Add, Discovery, DiscoveryEvent, Endpoint, Remove, Reset
from gateway.routing.table import ModelKey, RouteTable

log = structlog.get_logger(__name__)

BackendFactory = Callable[[Endpoint], TritonBackend]
ModelGate = Callable[[str, frozenset[ModelKey]], frozenset[ModelKey]]
"""(backend name, its READY versions) -> those that may get traffic."""
_MIN_POLL_GAP_S = 0.05


class BackendPool:
    """Owns one ``TritonBackend`` per discovered endpoint and the route table built from them."""

    def __init__(
        self,
        factory: BackendFactory,
        *,
        poll_interval_s: float,
        poll_timeout_s: float,
    ) -> None:
        self._factory = factory
        self._poll_interval_s = poll_interval_s
        self._poll_timeout_s = poll_timeout_s
        self._backends: dict[str, TritonBackend] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._listeners: list[Callable[[RouteTable[TritonBackend]], None]] = []
        self._unreachable_listeners: list[Callable[[str], None]] = []
        self._discovered = asyncio.Event()
        self.table: RouteTable[TritonBackend] = RouteTable()
        """READY model versions of the backends that are up and not drained. Breakers and
        outlier ejection are tgw-edge's: it learns from every call's outcome at once."""
        self.ready_backends: tuple[TritonBackend, ...] = ()
        self._drained: frozenset[str] = frozenset()
        self._gate: ModelGate = lambda backend, models: models
        self._expected: Callable[[str], frozenset[ModelKey]] = lambda backend: frozenset()
        self._restart_listeners: list[Callable[[str], None]] = []
        self._pinned_latest: Callable[[], Mapping[str, str]] = dict
        self._incoming: Callable[[str], frozenset[ModelKey]] = lambda backend: frozenset()

    def manage_models(
        self,
        gate: ModelGate,
        expected: Callable[[str], frozenset[ModelKey]],
        on_restart: Callable[[str], None],
        pinned_latest: Callable[[], Mapping[str, str]],
        incoming: Callable[[str], frozenset[ModelKey]],
    ) -> None:
        """Let the repository manager decide which READY versions get traffic (those proven on
        that backend), which versions each poll asks about beyond the index, and hear of
        backends that come back up (they lost what was pushed to them), and which version
        "latest" is for the models it rolled out and which versions a backend is being given."""
        self._gate = gate
        self._pinned_latest = pinned_latest
        self._incoming = incoming
        self._expected = expected
        self._restart_listeners.append(on_restart)

    def republish(self) -> None:
        """Rebuild the route table now (the gate's decisions changed)."""
        self._publish()

    @property
    def backends(self) -> tuple[TritonBackend, ...]:
        return tuple(self._backends.values())

    def on_change(self, listener: Callable[[RouteTable[TritonBackend]], None]) -> None:
        """Call ``listener`` with every new table (readiness reporting hooks in here)."""
        self._listeners.append(listener)

    def on_unreachable(self, listener: Callable[[str], None]) -> None:
        """Call ``listener`` with a backend's name when a poll finds it down (at start, after
        it was up, or for a new reason): discovery looks again, in case it was replaced."""
        self._unreachable_listeners.append(listener)

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
        results = await asyncio.gather(
            *(b.poll_health(self._poll_timeout_s, self._expected(b.name)) for b in backends)
        )
        changed = False
        for backend, health in zip(backends, results, strict=True):
            changed |= self._record(backend, health)
        if changed:
            self._publish()

    async def poll_now(self, backend: TritonBackend) -> None:
        """Poll one backend now: what it serves just changed (a model was pushed to it)."""
        health = await backend.poll_health(self._poll_timeout_s, self._expected(backend.name))
        if self._backends.get(backend.name) is backend and self._record(backend, health):
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

    def poll_soon(self, name: str) -> None:
        """A fault seen by traffic: poll now, so a dead server or a model gone leaves the
        routes at once rather than at the next interval."""
        wake = self._wakes.get(name)
        if wake is not None:
            wake.set()

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
            health = await backend.poll_health(self._poll_timeout_s, self._expected(backend.name))
            if self._backends.get(backend.name) is not backend:
                return
            if self._record(backend, health):
                self._publish()
            # A backend that did not answer is asked again soon: a restart is noticed fast.
            interval = self._poll_interval_s if health.ready else min(self._poll_interval_s, 1.0)
            # A fault seen by traffic asks at once (see ``poll_soon``), but never more often
            # than every _MIN_POLL_GAP_S: a storm of faults costs the backend few polls.
            await asyncio.sleep(_MIN_POLL_GAP_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval - _MIN_POLL_GAP_S)

    def _record(self, backend: TritonBackend, health: BackendHealth) -> bool:
        if health == backend.health:
            return False
        previous = backend.health
        backend.health = health
        if health.ready:
            backend.last_models = health.models
        if health.ready and not previous.ready:
            log.info("backend_ready", backend=backend.name, models=sorted(health.models))
            for listener in self._restart_listeners:
                listener(backend.name)
        elif not health.ready:
            # At start and on every change of reason: where it is and why it cannot be used.
            log.warning(
                "backend_unreachable" if not previous.ready else "backend_not_ready",
                backend=backend.name,
                address=backend.address,
                reason=health.reason,
            )
            for unreachable in self._unreachable_listeners:
                unreachable(backend.name)
        else:
            log.info("backend_models_changed", backend=backend.name, models=sorted(health.models))
        return True

    def _publish(self) -> None:
        live = [b for b in self._backends.values() if b.health.ready]
        routed = [b for b in live if b.name not in self._drained]
        self.table = RouteTable.build(
            {b: self._gate(b.name, b.health.models) for b in routed},
            self._pinned_latest(),
            {b: b.health.models | self._incoming(b.name) for b in routed},
        )
        self.ready_backends = tuple(live)
        for listener in self._listeners:
            listener(self.table)
