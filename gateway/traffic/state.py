"""The admin state: traffic routes and drains, changed atomically, checked against the
revision the caller read, saved before anyone sees it, and announced to the edge."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import structlog

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.repository.content import VersionPins
from gateway.settings import TrafficSettings
from gateway.traffic.routes import AdminError, normalized, targets
from gateway.traffic.store import RouteStore, RouteStoreError, StateConflict

log = structlog.get_logger(__name__)

_CONFLICT_RETRIES = 5

Servable = Callable[[str, str], bool]
"""(model, version "" for its latest) -> whether a backend holds it READY or the fallback
serves it."""


class TrafficState:
    def __init__(
        self,
        store: RouteStore,
        defaults: TrafficSettings,
        servable: Servable,
        on_change: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._defaults = defaults
        self._servable = servable
        self._on_change = on_change
        self._clock = clock
        self._state = admin_pb2.State()
        self._lock = asyncio.Lock()
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the saved state; with a store shared by replicas, follow their changes."""
        self._state = await self._store.load()
        self._following = asyncio.create_task(self._store.follow(self._adopt), name="state")

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following

    async def _adopt(self, state: admin_pb2.State) -> bool:
        """A state another replica saved: it replaces ours when it is newer (every save of the
        shared store has the next revision; an older one crossed a save of ours)."""
        async with self._lock:
            if state.revision <= self._state.revision:
                return False
            self._state = state
        log.info("traffic_state_followed", revision=state.revision)
        self._on_change()
        return True

    @property
    def revision(self) -> int:
        return int(self._state.revision)

    def routes(self) -> list[admin_pb2.Route]:
        return sorted(self._state.routes, key=lambda r: r.name)

    def route(self, name: str) -> admin_pb2.Route | None:
        return next((r for r in self._state.routes if r.name == name), None)

    def rollouts(self) -> list[admin_pb2.Rollout]:
        return sorted(self._state.rollouts, key=lambda r: r.route)

    def rollout(self, route: str) -> admin_pb2.Rollout | None:
        return next((r for r in self._state.rollouts if r.route == route), None)

    def withheld(self, model: str = "") -> list[admin_pb2.WithheldVersion]:
        return [w for w in self._state.withheld if not model or w.model == model]

    def pins(self, model: str) -> VersionPins:
        """What the routes and the withheld versions ask of ``model``'s versions."""
        kept = {
            variant.version
            for route in self._state.routes
            for variant in [
                *route.variants,
                *([route.shadow.target] if route.HasField("shadow") else []),
            ]
            if variant.model == model and variant.version
        }
        withheld = {(w.version, w.digest) for w in self._state.withheld if w.model == model}
        return VersionPins(frozenset(kept), frozenset(withheld))

    async def restore(self, model: str, version: str) -> admin_pb2.WithheldVersion:
        found: list[admin_pb2.WithheldVersion] = []

        def restore(state: admin_pb2.State) -> None:
            found[:] = [w for w in state.withheld if (w.model, w.version) == (model, version)]
            if not found:
                raise AdminError(
                    grpc.StatusCode.NOT_FOUND, f"version {version} of '{model}' is not withheld"
                )
            kept = [w for w in state.withheld if (w.model, w.version) != (model, version)]
            del state.withheld[:]
            state.withheld.extend(kept)

        await self._change(restore)
        log.info("version_restored", model=model, version=version, revision=self.revision)
        return found[0]

    async def save_rollout(
        self,
        rollout: admin_pb2.Rollout,
        route: admin_pb2.Route | None = None,
        withhold: admin_pb2.WithheldVersion | None = None,
    ) -> admin_pb2.Rollout:
        """Keep ``rollout`` (replacing the route's previous one), with the route change and
        the version withheld that go with it in the same write: the route must still be at
        the revision the rollout last set (``rollout.route_revision``; 0 for one the rollout
        did not set yet)."""
        saved = admin_pb2.Rollout()
        filled = normalized(route, self._defaults) if route is not None else None

        def keep(state: admin_pb2.State) -> None:
            saved.CopyFrom(rollout)
            if filled is not None:
                self._place_route(state, filled, saved.route_revision)
                saved.route_revision = state.revision
            others = [r for r in state.rollouts if r.route != saved.route]
            del state.rollouts[:]
            state.rollouts.extend([*others, saved])
            if withhold is not None:
                still = [
                    w
                    for w in state.withheld
                    if (w.model, w.version) != (withhold.model, withhold.version)
                ]
                del state.withheld[:]
                state.withheld.extend([*still, withhold])

        await self._change(keep)
        if withhold is not None:
            log.info(
                "version_withheld",
                model=withhold.model,
                version=withhold.version,
                reason=withhold.reason,
            )
        return saved

    def drained(self) -> frozenset[str]:
        return frozenset(self._state.drained_backends)

    async def set_route(self, route: admin_pb2.Route, expected_revision: int) -> admin_pb2.Route:
        """Create or replace a route whole; its new revision is the state's next one."""
        filled = normalized(route, self._defaults)
        filled.ClearField("figures")  # the gateway's to fill, never stored
        await self._change(lambda state: self._place_route(state, filled, expected_revision))
        log.info(
            "route_set",
            route=filled.name,
            revision=filled.revision,
            variants={v.name: v.weight for v in filled.variants},
            shadow=filled.shadow.target.name if filled.HasField("shadow") else None,
        )
        return filled

    async def delete_route(self, name: str, expected_revision: int) -> None:
        def delete(state: admin_pb2.State) -> None:
            current = next((r for r in state.routes if r.name == name), None)
            if current is None:
                raise AdminError(grpc.StatusCode.NOT_FOUND, f"model '{name}' has no route")
            self._check_revision(name, current, expected_revision)
            kept = [r for r in state.routes if r.name != name]
            del state.routes[:]
            state.routes.extend(kept)

        await self._change(delete)
        log.info("route_deleted", route=name, revision=self.revision)

    async def set_drained(self, backend: str, drained: bool) -> None:
        if (backend in self.drained()) == drained:
            return

        def drain(state: admin_pb2.State) -> None:
            names = set(state.drained_backends)
            if drained:
                names.add(backend)
            else:
                names.discard(backend)
            del state.drained_backends[:]
            state.drained_backends.extend(sorted(names))

        await self._change(drain)
        log.info("backend_drain_set", backend=backend, drained=drained, revision=self.revision)

    def _place_route(
        self, state: admin_pb2.State, filled: admin_pb2.Route, expected_revision: int
    ) -> None:
        """Put ``filled`` into ``state`` (the next revision) if its current revision there is
        the expected one and what it names can be served."""
        current = next((r for r in state.routes if r.name == filled.name), None)
        self._check_revision(filled.name, current, expected_revision)
        missing = self._missing(filled)
        if missing:
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION, missing)
        filled.revision = state.revision
        filled.updated.FromNanoseconds(int(self._clock() * 1e9))
        kept = [r for r in state.routes if r.name != filled.name]
        del state.routes[:]
        state.routes.extend([*kept, filled])

    def _missing(self, route: admin_pb2.Route) -> str:
        """Why the route cannot be served ("" when it can)."""
        missing = [
            f"{model} version {version}" if version else f"{model} (latest)"
            for model, version in targets(route)
            if not self._servable(model, version)
        ]
        if not missing:
            return ""
        return (
            f"route '{route.name}' names what no backend holds READY and the fallback "
            f"does not serve: {', '.join(missing)}"
        )

    def _check_revision(
        self, name: str, current: admin_pb2.Route | None, expected_revision: int
    ) -> None:
        now = 0 if current is None else current.revision
        if expected_revision != now:
            raise AdminError(
                grpc.StatusCode.ABORTED,
                f"route '{name}' is at revision {now}, not {expected_revision}: someone changed "
                "it since you read it; read it again and retry"
                if now
                else f"route '{name}' does not exist (expected revision {expected_revision}): "
                "create it with revision 0",
            )

    async def _change(self, change: Callable[[admin_pb2.State], None]) -> None:
        """Apply ``change`` (which checks what it relies on, raising AdminError) to the next
        revision of the state and save it. When another replica saved first (a shared
        store), the change is checked and applied again on top of theirs: two changes never
        overwrite each other, and one made on what is no longer there is refused."""
        async with self._lock:
            for _ in range(_CONFLICT_RETRIES):
                state = admin_pb2.State()
                state.CopyFrom(self._state)
                state.revision += 1
                change(state)
                try:
                    # Durable before visible: a crash right after the answer keeps the change.
                    await self._store.save(state)
                except StateConflict:
                    self._state = await self._reload()
                    self._on_change()
                    continue
                except RouteStoreError as exc:
                    raise AdminError(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
                self._state = state
                self._on_change()
                return
        raise AdminError(
            grpc.StatusCode.ABORTED,
            "the traffic state kept changing under this change (other replicas): retry",
        )

    async def _reload(self) -> admin_pb2.State:
        try:
            return await self._store.load()
        except RouteStoreError as exc:
            raise AdminError(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
