"""Keeps the fleet serving what the repository holds: desired state (the repository's settled,
valid models) against each backend's actual state (read back from the backend), continuously.

A model whose content differs on some backends is rolled out as a transaction: one backend
first (the canary), then the rest a few at a time; each must load it, report every served
version READY and answer the golden requests like the local ONNX Runtime session. The first
failure stops the rollout and puts back what was there (the previous content, or nothing);
the previous version keeps serving meanwhile.

Traffic follows proof, through ``gate``: a backend gets requests for a managed model's version
only once that version passed there. A backend met for the first time keeps its own READY
versions routed until the gateway pushes to it; one that restarts gets nothing of the managed
models until it is given them and passes again. Versions that leave the repository leave the
routes first (the edge confirms the snapshot), and are unloaded after ``drain_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog
from watchfiles import awatch

from gateway.backends.pool import BackendPool
from gateway.backends.triton import TritonBackend
from gateway.repository.content import ModelContent, VersionPins, pinned
from gateway.repository.history import RolloutEvent, RolloutLog
from gateway.repository.metrics import RepositoryMetrics
from gateway.repository.push import (
    PushError,
    PushesRefusedError,
    PushSettings,
    load_request,
    prove,
    push,
    served,
    unload,
)
from gateway.repository.scanner import RepositoryScanner
from gateway.repository.store import ContentStore
from gateway.routing.table import ModelKey

log = structlog.get_logger(__name__)

EdgeSync = Callable[[float], Awaitable[bool]]
"""Publish the routes and wait until the data plane serves them (False: it did not in time)."""


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    rescan_interval_s: float
    reconcile_interval_s: float
    parallelism: int
    drain_s: float
    push: PushSettings


@dataclass(frozen=True, slots=True)
class BackendServing:
    backend: str
    versions: tuple[str, ...]
    """Versions with traffic there (proven)."""
    sha256: str
    """Digest of the content proven there ("" before any)."""


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    sha256: str
    """The repository's content ("" once removed)."""
    serving_sha256: str
    """The content of the last completed rollout."""
    served_versions: tuple[str, ...]
    rolling_out: bool
    failed: bool
    """The repository's content failed its rollout (the previous one keeps serving)."""
    backends: tuple[BackendServing, ...]
    history: tuple[RolloutEvent, ...]


def _numeric(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


class RepositoryManager:
    def __init__(
        self,
        scanner: RepositoryScanner,
        store: ContentStore,
        pool: BackendPool,
        settings: ManagerSettings,
        metrics: RepositoryMetrics,
        *,
        edge_sync: EdgeSync,
        on_contents: Callable[[dict[str, ModelContent]], None] = lambda contents: None,
        on_rolled_out: Callable[[ModelContent], None] = lambda content: None,
        pins: Callable[[str], VersionPins] = lambda model: VersionPins(),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._scanner = scanner
        self._store = store
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._edge_sync = edge_sync
        self._on_contents = on_contents
        self._on_rolled_out = on_rolled_out
        self._pins = pins
        self._clock = clock
        self._desired: dict[str, ModelContent] = {}
        self.rollouts = RolloutLog(wall_clock)
        self._serving: dict[tuple[str, str], str] = {}
        """(backend, model) -> digest of the content proven there."""
        self._good: dict[str, ModelContent] = {}
        """Per model: the content that last completed a rollout (what a rollback puts back)."""
        self._managed: set[str] = set()
        self._admitted: dict[tuple[str, str], frozenset[str]] = {}
        """(backend, model) -> versions that passed there. Absent: not touched yet, the
        backend's own READY versions are routed."""
        self._incoming: dict[tuple[str, str], frozenset[str]] = {}
        self._failed: dict[str, str] = {}
        """Model -> content digest whose rollout failed: not tried again until it changes."""
        self._accepted_at: dict[str, float] = {}
        self._rolled_out: set[str] = set()
        self._met: set[str] = set()
        """Backends seen up at least once."""
        """Models whose rollout pushed to every stale backend and awaits its confirmation."""
        self._settling = False
        self._first_scan = asyncio.Event()
        self._next_scan_s = settings.rescan_interval_s
        self._reconciling = False
        self._scan_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._scan_due = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.idle = asyncio.Event()
        """Set whenever a reconcile pass left nothing to do (tests and the CLI wait on it)."""

    # -- wiring --------------------------------------------------------------------------------

    def status(self) -> list[ModelStatus]:
        """Every model of the repository (and those being retired): what should serve, what
        serves where, and its rollout history."""
        found = []
        for name in sorted(set(self._desired) | self._managed):
            desired = self._desired.get(name)
            good = self._good.get(name)
            backends = tuple(
                BackendServing(
                    backend=backend,
                    versions=tuple(sorted(versions, key=_numeric)),
                    sha256=self._serving.get((backend, model), ""),
                )
                for (backend, model), versions in sorted(self._admitted.items())
                if model == name
            )
            found.append(
                ModelStatus(
                    name=name,
                    sha256=desired.digest if desired is not None else "",
                    serving_sha256=good.digest if good is not None else "",
                    served_versions=desired.served_versions if desired is not None else (),
                    rolling_out=name in self.rollouts.in_progress,
                    failed=name in self._failed,
                    backends=backends,
                    history=tuple(self.rollouts.history(name)),
                )
            )
        return found

    def gate(self, backend: str, models: frozenset[ModelKey]) -> frozenset[ModelKey]:
        """The READY versions of ``backend`` that may get traffic."""
        if not self._managed:
            return models
        return frozenset(
            (model, version)
            for model, version in models
            if model not in self._managed
            or (backend, model) not in self._admitted
            or version in self._admitted[(backend, model)]
        )

    def expected(self, backend: str) -> frozenset[ModelKey]:
        """Versions the backend should report READY (asked one by one: Triton's index does
        not always list pushed models)."""
        return frozenset(
            (model, version)
            for (name, model), versions in self._admitted.items()
            if name == backend
            for version in versions
        )

    def pinned_latest(self) -> dict[str, str]:
        """The newest version of each model's last completed rollout: "latest" stays there
        while it is routed somewhere, until the next rollout is through."""
        return {
            name: content.served_versions[-1]
            for name, content in self._good.items()
            if content.served_versions
        }

    def incoming(self, backend: str) -> frozenset[ModelKey]:
        """Versions just loaded on the backend (the health poll may not know them yet): Triton
        would answer unversioned requests with them, so those requests name the latest."""
        return frozenset(
            (model, version)
            for (name, model), versions in self._incoming.items()
            if name == backend
            for version in versions
        )

    def backend_restarted(self, backend: str) -> None:
        """A backend came up. Met for the first time, its own READY versions stay routed until
        the gateway pushes to it; back after being down, it lost whatever was pushed, so
        nothing managed is routed to it until proven again."""
        if backend in self._met:
            for model in self._managed:
                self._admitted[(backend, model)] = frozenset()
        self._met.add(backend)
        self.wake()

    def version_digest(self, model: str, version: str) -> str | None:
        """The digest of a version of the repository's model (None: not there)."""
        content = self._desired.get(model)
        if content is None or version not in content.versions:
            return None
        return content.version_digest(version)

    def wake(self) -> None:
        self._wake.set()

    def rescan(self) -> None:
        self._scan_due.set()

    async def start(self, first_scan_wait_s: float) -> None:
        """Follow the repository: file-system events, and a full rescan every
        ``rescan_interval_s``. Waits up to ``first_scan_wait_s`` for the first scan, so the
        fallback and the first snapshot know the repository; a repository of large models
        (every file is hashed and copied) finishes it in the background instead of holding
        up the start."""
        self._tasks = [
            asyncio.create_task(self._scan_forever(), name="repository-scan"),
            asyncio.create_task(self._watch(), name="repository-watch"),
        ]
        try:
            await asyncio.wait_for(self._first_scan.wait(), first_scan_wait_s)
        except TimeoutError:
            log.warning("repository_first_scan_slow", waited_s=first_scan_wait_s)

    def start_reconciling(self) -> None:
        """Keep the fleet serving the repository (``repository.push``)."""
        self._reconciling = True
        self._publish_contents()
        self._tasks.append(
            asyncio.create_task(self._reconcile_forever(), name="repository-reconcile")
        )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_idle(self, timeout_s: float) -> None:
        """Until a reconcile pass finds the fleet as the repository wants it."""
        await self._scan()  # what is on disk now counts
        self.idle.clear()
        self.wake()
        await asyncio.wait_for(self.idle.wait(), timeout_s)

    # -- scanning ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        try:
            async for _ in awatch(self._scanner.root, debounce=100, step=50):
                self.rescan()
        except (OSError, RuntimeError) as exc:
            log.warning("repository_watch_stopped", error=str(exc), hint="rescans continue")

    async def _scan_forever(self) -> None:
        while True:
            try:
                await self._scan()
            except Exception:  # a scan that failed (the store's disk, say) is tried again
                log.exception("repository_scan_failed")
            self._first_scan.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._scan_due.wait(), self._next_scan_s)
            self._scan_due.clear()

    async def _scan(self) -> None:
        async with self._scan_lock:
            result = await asyncio.to_thread(self._scanner.scan)
        self._settling = result.settling
        self._next_scan_s = (
            min(self._settings.rescan_interval_s, 0.25)
            if result.settling
            else self._settings.rescan_interval_s
        )
        # Versions routes name are kept and withheld ones left out (the traffic state's
        # word beside the version policy): a route change calls ``rescan``.
        desired = {
            name: pinned(content, self._pins(name)) for name, content in result.contents.items()
        }
        if desired != self._desired:
            for name, content in desired.items():
                if name not in self._desired or self._desired[name].digest != content.digest:
                    self._accepted_at[name] = self._clock()
                    log.info(
                        "model_drop_accepted",
                        model=name,
                        versions=list(content.versions),
                        served_versions=list(content.served_versions),
                        sha256=content.digest,
                    )
            self._desired = desired
            self._managed |= set(self._desired)
            self._publish_contents()
            self.wake()

    def _publish_contents(self) -> None:
        """What the local fallback serves: without ``push``, the repository; with it, what the
        fleet serves — a model's last completed rollout, so a version still rolling out or
        rolled back is not answered locally — and, for a model never rolled out yet, its
        validated content (the fallback is the only one to serve it meanwhile)."""
        if not self._reconciling:
            self._on_contents(dict(self._desired))
            return
        serving = {
            name: self._good.get(name, content)
            for name, content in self._desired.items()
            if name in self._good or not self._failed_now(content)
        }
        self._on_contents(serving)

    # -- reconciling ---------------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self._reconcile()
            except Exception:  # one bad pass must not end reconciliation for good
                log.exception("repository_reconcile_failed")
                busy = True
            if not busy and not self._wake.is_set() and not self._settling:
                self.idle.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.reconcile_interval_s)

    async def _reconcile(self) -> bool:
        """One pass over every model; True if something is still to do."""
        backends = list(self._pool.ready_backends)
        busy = False
        for name in sorted(self._desired):
            busy |= await self._reconcile_model(self._desired[name], backends)
        for name in sorted(self._managed - set(self._desired)):
            busy |= await self._retire(name, backends)
        # By frozen tree: a pinned content reads the tree of the content it was made from.
        needed = {c.directory.name for c in self._desired.values()} | {
            c.directory.name for c in self._good.values()
        }
        await asyncio.to_thread(self._store.keep_only, needed)
        return busy

    async def _reconcile_model(self, content: ModelContent, backends: list[TritonBackend]) -> bool:
        # Content whose rollout failed is not tried again until it changes: the fleet is kept
        # on the last good content instead (a backend that lost the model gets that back).
        failed = self._failed_now(content)
        target = self._good.get(content.name) if failed else content
        if target is None:
            return False
        timeout = self._settings.push.call_timeout_s
        states = await asyncio.gather(
            *(served(b, target, timeout) for b in backends), return_exceptions=True
        )
        stale: list[TritonBackend] = []
        for backend, state in zip(backends, states, strict=True):
            if isinstance(state, BaseException):
                continue  # unreachable now: the next pass sees it again
            complete = state.digest == target.digest and set(target.served_versions) <= (
                state.ready
            )
            if complete:
                self._admit(backend.name, target)
            else:
                stale.append(backend)
        if not stale:
            good = self._good.get(content.name)
            # Finished too when the fleet went back to the last good content by a rollout of
            # its own (a version withheld, then restored before the first change completed).
            rolled_out = content.name in self._rolled_out
            if not failed and (good is None or good.digest != content.digest or rolled_out):
                self._finish(content, backends)
            return False
        previous = None if failed else self._good.get(content.name)
        return await self._rollout(target, stale, rollback_to=previous)

    def _failed_now(self, content: ModelContent) -> bool:
        return self._failed.get(content.name) == content.digest

    async def _rollout(
        self,
        content: ModelContent,
        targets: list[TritonBackend],
        rollback_to: ModelContent | None,
    ) -> bool:
        name = content.name
        started = self._clock()
        log.info(
            "model_rollout_started",
            model=name,
            sha256=content.digest,
            backends=[b.name for b in targets],
            canary=targets[0].name,
        )
        self.rollouts.record(
            name,
            "started",
            content.digest,
            tuple(b.name for b in targets),
            f"canary {targets[0].name}",
        )
        await self._withdraw_removed_versions(content)
        pushed: list[TritonBackend] = []
        try:
            failure = await self._push_to(targets[0], content, pushed, rollback_to)
            if failure is None and len(targets) > 1:
                failure = await self._push_rest(targets[1:], content, pushed, rollback_to)
            if failure is not None:
                await self._fail(content, failure, pushed, rollback_to, started)
                return False
        finally:
            for backend in targets:
                self._incoming.pop((backend.name, name), None)
        log.info(
            "model_rollout_backends_done",
            model=name,
            backends=[b.name for b in targets],
            seconds=round(self._clock() - started, 3),
        )
        self._rolled_out.add(name)
        self._wake.set()  # the next pass, at once, confirms every backend and finishes
        return True

    async def _fail(
        self,
        content: ModelContent,
        failure: str,
        pushed: list[TritonBackend],
        rollback_to: ModelContent | None,
        started: float,
    ) -> None:
        name = content.name
        self._failed[name] = content.digest
        self._publish_contents()
        log.error(
            "model_rollout_failed",
            model=name,
            sha256=content.digest,
            error=failure,
            rolling_back=[b.name for b in pushed],
            restoring=rollback_to.digest if rollback_to is not None else None,
        )
        await asyncio.gather(*(self._roll_back(b, name, rollback_to) for b in pushed))
        self._pool.republish()
        self._metrics.rollouts.labels(model=name, outcome="rolled_back").inc()
        seconds = round(self._clock() - started, 3)
        self.rollouts.record(
            name, "rolled_back", content.digest, tuple(b.name for b in pushed), failure, seconds
        )
        log.info("model_rollout_rolled_back", model=name, seconds=seconds)

    async def _push_rest(
        self,
        targets: list[TritonBackend],
        content: ModelContent,
        pushed: list[TritonBackend],
        previous: ModelContent | None,
    ) -> str | None:
        gate = asyncio.Semaphore(self._settings.parallelism)
        failures: list[str] = []

        async def one(backend: TritonBackend) -> None:
            async with gate:
                if failures:
                    return  # the rollout already stopped
                failure = await self._push_to(backend, content, pushed, previous)
                if failure is not None:
                    failures.append(failure)

        await asyncio.gather(*(one(b) for b in targets))
        return failures[0] if failures else None

    async def _push_to(
        self,
        backend: TritonBackend,
        content: ModelContent,
        pushed: list[TritonBackend],
        previous: ModelContent | None,
    ) -> str | None:
        settings = self._settings.push
        key = (backend.name, content.name)
        # While it reloads, only versions whose files stay the same keep traffic there (Triton
        # serves them until the new ones are loaded), and unversioned requests name the latest:
        # once loaded, Triton would answer them with the new version, not proven here yet. The
        # edge confirms before the load starts. Backends not reached yet serve as they are.
        before = self._admitted.get(key)
        self._admitted[key] = self._unchanged_versions(backend.name, content, previous)
        self._incoming[key] = frozenset(content.served_versions)
        self._pool.republish()
        if not await self._edge_sync(settings.call_timeout_s):
            log.warning("repository_routes_unconfirmed", model=content.name, backend=backend.name)
        try:
            request = await asyncio.to_thread(load_request, content, cpu_only=settings.cpu_only)
            pushed.append(backend)
            try:
                await push(backend, request, settings.load_timeout_s)
            except PushesRefusedError:
                # Nothing changed there: it keeps serving what it served, routed as before.
                pushed.remove(backend)
                if before is None:
                    self._admitted.pop(key, None)
                else:
                    self._admitted[key] = before
                self._incoming.pop(key, None)
                self._pool.republish()
                raise
            await self._pool.poll_now(backend)  # the versions it no longer has, at once
            await prove(backend, content, settings)
        except (PushError, OSError) as exc:
            return str(exc)
        self._admit(backend.name, content)
        self._pool.republish()
        log.info("model_pushed", model=content.name, backend=backend.name, sha256=content.digest)
        return None

    async def _roll_back(
        self, backend: TritonBackend, name: str, previous: ModelContent | None
    ) -> None:
        settings = self._settings.push
        try:
            if previous is not None:
                request = await asyncio.to_thread(
                    load_request, previous, cpu_only=settings.cpu_only
                )
                await push(backend, request, settings.load_timeout_s)
                await prove(backend, previous, settings)
                self._admit(backend.name, previous)
            else:
                self._admitted[(backend.name, name)] = frozenset()
                await unload(backend, name, settings.call_timeout_s)
        except (PushError, OSError) as exc:
            self._admitted[(backend.name, name)] = frozenset()
            log.error("model_rollback_failed", model=name, backend=backend.name, error=str(exc))

    async def _withdraw_removed_versions(self, content: ModelContent) -> None:
        """Versions the new content no longer serves leave every backend's routes now, and
        the edge confirms it, before any backend unloads them (unversioned requests then name
        the remaining latest: see ``RouteTable.build``)."""
        served_now = set(content.served_versions)
        withdrawn = False
        for (backend, model), versions in list(self._admitted.items()):
            if model == content.name and versions - served_now:
                self._admitted[(backend, model)] = frozenset(versions & served_now)
                withdrawn = True
        if withdrawn:
            await self._drain()

    async def _drain(self) -> None:
        self._pool.republish()
        if not await self._edge_sync(self._settings.push.call_timeout_s):
            log.warning("repository_drain_unconfirmed", hint="the edge did not confirm in time")
        # Calls already sent to a withdrawn version finish; Triton waits for them too.
        await asyncio.sleep(self._settings.drain_s)

    def _unchanged_versions(
        self, backend: str, content: ModelContent, previous: ModelContent | None
    ) -> frozenset[str]:
        admitted = self._admitted.get((backend, content.name))
        if admitted is None or previous is None:
            return frozenset()
        return frozenset(
            v
            for v in admitted
            if v in content.served_versions
            and v in previous.versions
            and content.version_digest(v) == previous.version_digest(v)
        )

    def _admit(self, backend: str, content: ModelContent) -> None:
        self._serving[(backend, content.name)] = content.digest
        versions = frozenset(content.served_versions)
        if self._admitted.get((backend, content.name)) != versions:
            self._admitted[(backend, content.name)] = versions
            self._pool.republish()
        for version in content.served_versions:
            self._metrics.content.labels(
                model=content.name, version=version, backend=backend, sha256=content.digest
            ).set(1)

    def _finish(self, content: ModelContent, backends: Iterable[TritonBackend]) -> None:
        previous = self._good.get(content.name)
        self._good[content.name] = content
        self._failed.pop(content.name, None)
        self._publish_contents()
        self._pool.republish()
        accepted = self._accepted_at.pop(content.name, None)
        seconds = None if accepted is None else round(self._clock() - accepted, 3)
        if previous is not None and previous.digest != content.digest:
            self._forget_content_metrics(previous)
        if content.name not in self._rolled_out:
            # Every backend already served this content (a gateway restarted over its fleet).
            log.info("model_found_served", model=content.name, sha256=content.digest)
            self.rollouts.record(
                content.name, "found_served", content.digest, tuple(b.name for b in backends)
            )
            return
        self._rolled_out.discard(content.name)
        if seconds is not None:
            self._metrics.rollout_seconds.labels(model=content.name).set(seconds)
        self._metrics.rollouts.labels(model=content.name, outcome="completed").inc()
        self.rollouts.record(
            content.name,
            "completed",
            content.digest,
            tuple(b.name for b in backends),
            seconds=seconds,
        )
        desired = self._desired.get(content.name)
        if desired is not None and desired.digest == content.digest:
            # Not when a newer content was accepted meanwhile (a version withheld while this
            # one rolled out, say): that one's completion speaks for the model.
            self._on_rolled_out(content)
        log.info(
            "model_rollout_completed",
            model=content.name,
            sha256=content.digest,
            served_versions=list(content.served_versions),
            backends=[b.name for b in backends],
            seconds_since_accepted=seconds,
        )

    def _forget_content_metrics(self, content: ModelContent) -> None:
        for backend in [b.name for b in self._pool.backends]:
            for version in content.served_versions:
                with contextlib.suppress(KeyError):
                    self._metrics.content.remove(content.name, version, backend, content.digest)

    async def _retire(self, name: str, backends: list[TritonBackend]) -> bool:
        """A model gone from the repository: out of the routes, then unloaded."""
        withdrawn = False
        for key, versions in list(self._admitted.items()):
            if key[1] == name and versions:
                self._admitted[key] = frozenset()
                withdrawn = True
        if withdrawn:
            log.info("model_retiring", model=name)
            await self._drain()
        good = self._good.get(name)
        remaining = False
        for backend in backends:
            try:
                state = await served(backend, name, self._settings.push.call_timeout_s)
                if good is not None and state.digest == good.digest:
                    await unload(backend, name, self._settings.push.call_timeout_s)
            except PushError as exc:
                log.warning("model_unload_failed", model=name, backend=backend.name, error=str(exc))
                remaining = True
        if remaining:
            return True
        self._managed.discard(name)
        self._failed.pop(name, None)
        for key in [k for k in self._admitted if k[1] == name]:
            del self._admitted[key]
        if good is not None:
            self._forget_content_metrics(good)
            del self._good[name]
        self._pool.republish()
        log.info("model_retired", model=name)
        return False
