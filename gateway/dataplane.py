"""The data path, top to bottom: request → route → choose a backend → forward → response.

Model-scoped requests stay serialized bytes: the model name and version are read from fields 1
and 2 without parsing tensors, and the original bytes go to the chosen Triton unchanged. Calls
that span the fleet (repository index, statistics, load/unload) fan out and merge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2

from gateway import __version__
from gateway.aggregation import merge_model_statistics, merge_repository_index
from gateway.backends.pool import BackendPool
from gateway.backends.triton import TritonBackend
from gateway.balancing.affinity import backend_for_sequence
from gateway.balancing.faults import FaultScope, fault_scope
from gateway.balancing.retry_budget import RetryBudget
from gateway.balancing.shedding import LoadShedder
from gateway.errors import (
    GatewayError,
    ModelNotFoundError,
    NoBackendAvailableError,
    OverloadedError,
    UpstreamError,
)
from gateway.observability.metrics import UNKNOWN_MODEL, RequestMetrics
from gateway.observability.tracing import PassThroughTracer, Tracer
from gateway.routing.wire import read_model_key, read_sequence_id

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=Message)

SERVER_NAME = "triton-gateway"
# What the gateway itself honours. Shared-memory extensions are left out on purpose: a region
# registered through the gateway would live on one backend, not where the next request lands.
EXTENSIONS = (
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
)
NO_BACKEND_READY = "no Triton backend is ready"
# Model states in which a backend still holds (or is about to hold) a model.
_HELD_STATES = frozenset({"READY", "LOADING", "UNLOADING"})
_UNLOAD_POLL_S = 0.05
_UNLOAD_WAIT_S = 60.0


class Balancer(Protocol):
    """Chooses a backend per request and learns from each call's outcome."""

    def choose(
        self, key: tuple[str, str], candidates: Sequence[TritonBackend]
    ) -> TritonBackend: ...

    def started(self, backend: str) -> None: ...

    def finished(
        self, backend: str, key: tuple[str, str], latency_s: float | None, fault: bool
    ) -> None: ...


class CallContext(Protocol):
    """The part of a grpc.aio ServicerContext the data path needs."""

    def time_remaining(self) -> float | None: ...

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str]]) -> None: ...


class Fallback(Protocol):
    """A local runtime for requests no backend can serve (ONNX Runtime in production)."""

    def serves(self, name: str) -> bool: ...

    async def infer(self, request: bytes) -> bytes: ...


# Backend faults: they count against the backend's breaker, are retried on another backend,
# and may be answered by the fallback. DEADLINE_EXCEEDED counts only where the per-try timeout
# bound the call (see ``_forward``); otherwise it is the client's own deadline.
BACKEND_FAULTS = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL}
)
# The client's own deadline or cancellation: nothing is learned of the backend.
_CLIENT_GAVE_UP = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
TRIED_METADATA = "x-gateway-tried"
"""Set by tgw-edge on a call it hands over after its backend failed: do not pick it again."""
FALLBACK_METADATA = (("x-gateway-served-by", "fallback"),)
"""Trailing metadata on every answer the fallback produced."""


class DataPlane:
    """Routes and forwards every data-plane call; servicers only delegate here."""

    def __init__(
        self,
        pool: BackendPool,
        balancer: Balancer,
        metrics: RequestMetrics,
        *,
        tracer: Tracer | None = None,
        fallback: Fallback | None = None,
        retry_budget: RetryBudget | None = None,
        per_try_timeout_s: float | None = None,
        shedder: LoadShedder | None = None,
        honour_tried_header: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._pool = pool
        self._balancer = balancer
        self._metrics = metrics
        self._tracer: Tracer = tracer or PassThroughTracer()
        self._fallback = fallback
        self._retry_budget = retry_budget or RetryBudget(time.monotonic)
        self._per_try_timeout_s = per_try_timeout_s
        self._honour_tried_header = honour_tried_header
        self._shedder = shedder or LoadShedder(None, None)
        self._clock = clock

    # -- server-level -----------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Ready while a backend is, or while the local fallback can answer."""
        return bool(self._pool.ready_backends) or self._fallback is not None

    @staticmethod
    def server_metadata() -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS)
        )

    # -- model-scoped, forwarded as bytes ---------------------------------------------------

    async def model_infer(self, request: bytes, context: CallContext) -> bytes:
        started = self._clock()
        name, version = read_model_key(request)
        if not self._shedder.try_enter(name):
            self._record("ModelInfer", name, version, "", OverloadedError.code.name, started)
            raise OverloadedError(
                f"triton-gateway is at capacity for model '{name}': too many requests in flight"
            )
        try:
            return await self._route_and_forward(request, context, name, version, started)
        finally:
            self._shedder.leave(name)

    async def _route_and_forward(
        self, request: bytes, context: CallContext, name: str, version: str, started: float
    ) -> bytes:
        try:
            candidates = self._pool.table.lookup(name, version)
        except ModelNotFoundError as exc:
            # A model the fleet served but no backend can now (down, drained, ejected) is
            # unavailable, not unknown; and a sequence's state was on one of those backends, so
            # the stateless fallback does not answer it.
            known = self._pool.knows_model(name, version)
            in_sequence = read_sequence_id(request) is not None
            fallback = self._fallback is not None and self._fallback.serves(name)
            if fallback and not (known and in_sequence):
                return await self._serve_fallback(request, context, name, version)
            no_backend = known or not self._pool.ready_backends
            code = NoBackendAvailableError.code if no_backend else exc.code
            self._record("ModelInfer", name, version, "", code.name, started)
            if known:
                raise NoBackendAvailableError(
                    f"no backend can serve model '{name}' now (down, drained or ejected)"
                ) from exc
            self._any_ready()  # with no backend up, say so rather than "unknown model"
            raise
        try:
            return await self._try_backends(
                "ModelInfer", request, context, name, version, candidates
            )
        except UpstreamError as exc:
            # Client errors pass through unchanged: the fallback never answers them. Nor does
            # it answer a request of a sequence that may have reached a backend: the sequence's
            # state lives there, and a stateless answer would hide that it is lost.
            if (
                not exc.backend_fault
                or self._fallback is None
                or not self._fallback.serves(name)
                or read_sequence_id(request) is not None
            ):
                raise
            log.warning("backend_fault_fallback", code=exc.code.name)
        except NoBackendAvailableError:
            if self._fallback is None or not self._fallback.serves(name):
                raise
        return await self._serve_fallback(request, context, name, version)

    async def _try_backends(
        self,
        method: str,
        request: bytes,
        context: CallContext,
        name: str,
        version: str,
        candidates: Sequence[TritonBackend],
        *,
        routed: bool = True,
    ) -> bytes:
        """Forward to a chosen backend; on a backend fault, to another while policy allows.

        ``routed``: the candidates come from the route table (they have the model READY), so a
        NOT_FOUND from one is a stale route, tried elsewhere. Raises the last backend's error,
        or NoBackendAvailableError when every candidate was already tried.
        """
        self._retry_budget.on_request()
        tried = _tried_backends(context) if self._honour_tried_header else frozenset()
        sequence = read_sequence_id(request) if method == "ModelInfer" else None
        if tried and sequence is not None:
            # tgw-edge handed over a sequence request its backend failed: it may have reached
            # that backend, which holds the sequence's state; another backend must not start
            # the sequence afresh.
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE,
                f"backend {', '.join(sorted(tried))} failed during a sequence; requests of a "
                "sequence are not sent to another backend",
                "",
            )
        if tried and not self._retry_budget.try_retry():
            # tgw-edge handed over a call its backend failed: that is a retry, and the budget
            # bounds the extra load however the retry arrives.
            self._metrics.retry_budget_exhausted.inc()
            raise UpstreamError(
                grpc.StatusCode.UNAVAILABLE,
                f"backend {', '.join(sorted(tried))} failed and the retry budget is spent",
                "",
                backend_fault=True,
            )
        while True:
            choices = candidates if not tried else [c for c in candidates if c.name not in tried]
            if not choices:
                raise NoBackendAvailableError(NO_BACKEND_READY)
            if sequence is not None:
                backend = backend_for_sequence(sequence, choices)
            else:
                backend = self._balancer.choose((name, version), choices)
            try:
                return await self._forward(
                    backend, method, request, context, name, version, routed=routed
                )
            except UpstreamError as exc:
                if not self._may_retry(exc, context, sequence is not None):
                    raise
                tried = tried | {backend.name}
                self._metrics.retries.labels(backend=backend.name, code=exc.code.name).inc()

    def _may_retry(self, exc: UpstreamError, context: CallContext, in_sequence: bool) -> bool:
        """Retry on another backend only for backend faults, never for a sequence request
        (its state lives on the backend it reached), within the deadline and the budget."""
        if not exc.backend_fault:
            return False
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return False
        if in_sequence:
            return False
        if not self._retry_budget.try_retry():
            self._metrics.retry_budget_exhausted.inc()
            return False
        return True

    async def model_query(self, method: str, request: bytes, context: CallContext) -> bytes:
        """ModelMetadata / ModelConfig: answered by a backend that has the model.

        For a model no backend has, any ready backend is asked, so the client gets Triton's own
        answer for an unknown model.
        """
        name, version = read_model_key(request)
        try:
            candidates = self._pool.table.lookup(name, version)
        except ModelNotFoundError:
            # Unknown to the route table: one backend gives Triton's own answer.
            return await self._try_backends(
                method, request, context, name, version, self._any_ready()[:1], routed=False
            )
        return await self._try_backends(method, request, context, name, version, candidates)

    async def model_ready(self, request: bytes, context: CallContext) -> bytes:
        name, version = read_model_key(request)
        try:
            candidates = self._pool.table.lookup(name, version)
        except ModelNotFoundError:
            # Triton answers ready=false (not an error) for a model it does not have; the
            # empty message is exactly that response serialized.
            return b""
        return await self._try_backends("ModelReady", request, context, name, version, candidates)

    async def model_stream_infer(
        self, requests: AsyncIterator[bytes], context: CallContext
    ) -> AsyncIterator[bytes]:
        """Proxy one bidirectional stream to the backend chosen by its first request."""
        first = await anext(requests, None)
        if first is None:
            return
        name, version = read_model_key(first)
        backend = self._choose_or_any(name, version)

        async def upstream_requests() -> AsyncIterator[bytes]:
            yield first
            async for request in requests:
                yield request

        with self._tracer.upstream_call(
            "ModelStreamInfer", name, version, backend.name, context
        ) as metadata:
            call = backend.stream_infer(
                upstream_requests(), timeout=context.time_remaining(), metadata=metadata
            )
            try:
                async for response in call:
                    yield response
            except grpc.aio.AioRpcError as exc:
                raise UpstreamError(exc.code(), exc.details() or "", backend.name) from exc
            finally:
                call.cancel()

    # -- fleet-wide: fan out and merge ------------------------------------------------------

    async def model_statistics(
        self, request: service_pb2.ModelStatisticsRequest, context: CallContext
    ) -> service_pb2.ModelStatisticsResponse:
        if request.name:
            table = self._pool.table
            if request.version:
                backends = table.candidates.get((request.name, request.version), ())
            else:
                backends = table.backends_with_model(request.name)
            # Unknown model: let one backend give Triton's own error.
            targets = backends or self._any_ready()[:1]
        else:
            targets = self._any_ready()
        responses: list[service_pb2.ModelStatisticsResponse] = await self._fan_out(
            targets, lambda b: b.stub.ModelStatistics(request, timeout=context.time_remaining())
        )
        return merge_model_statistics(responses)

    async def repository_index(
        self, request: service_pb2.RepositoryIndexRequest, context: CallContext
    ) -> service_pb2.RepositoryIndexResponse:
        responses: list[service_pb2.RepositoryIndexResponse] = await self._fan_out(
            self._any_ready(),
            lambda b: b.stub.RepositoryIndex(request, timeout=context.time_remaining()),
        )
        return merge_repository_index(responses)

    async def repository_model_load(
        self, request: service_pb2.RepositoryModelLoadRequest, context: CallContext
    ) -> service_pb2.RepositoryModelLoadResponse:
        """Load on every ready backend, then refresh routes so traffic can use it at once."""
        await self._on_every_backend_then_refresh(
            lambda b: b.stub.RepositoryModelLoad(request, timeout=context.time_remaining())
        )
        log.info("fleet_model_loaded", model=request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: service_pb2.RepositoryModelUnloadRequest, context: CallContext
    ) -> service_pb2.RepositoryModelUnloadResponse:
        """Unload on every ready backend and return once no backend still holds the model.

        Triton answers an unload before the model is gone; a load sent right after would race
        the unload and lose. Waiting here makes "unload, then load" through the gateway work.
        """
        name = request.model_name
        timeout = context.time_remaining()

        async def unload(backend: TritonBackend) -> service_pb2.RepositoryModelUnloadResponse:
            response: service_pb2.RepositoryModelUnloadResponse = (
                await backend.stub.RepositoryModelUnload(request, timeout=timeout)
            )
            await _wait_unloaded(backend, name, self._clock, timeout)
            return response

        await self._on_every_backend_then_refresh(unload)
        log.info("fleet_model_unloaded", model=name)
        return service_pb2.RepositoryModelUnloadResponse()

    # -- helpers ----------------------------------------------------------------------------

    async def _forward(
        self,
        backend: TritonBackend,
        method: str,
        request: bytes,
        context: CallContext,
        name: str,
        version: str,
        *,
        routed: bool = True,
    ) -> bytes:
        started = self._clock()
        self._metrics.add_in_flight("python", 1)
        self._balancer.started(backend.name)
        backend.breaker.on_request()
        model_breaker = backend.model_breakers.get(name)
        if model_breaker is not None:
            model_breaker.on_request()
        remaining = context.time_remaining()
        per_try = self._per_try_timeout_s
        # The per-try timeout binds when it is shorter than what the client left us; then a
        # DEADLINE_EXCEEDED is this backend's slowness, not the client giving up.
        per_try_binds = per_try is not None and (remaining is None or per_try < remaining)
        timeout = per_try if per_try_binds else remaining
        # What the call taught about the backend's latency; None while the client gave up (then
        # the breakers got no outcome either, and a half-open trial is given back).
        latency: float | None = None
        fault = False
        try:
            with self._tracer.upstream_call(method, name, version, backend.name, context) as md:
                response: bytes = await backend.unary[method](request, timeout=timeout, metadata=md)
            latency = self._clock() - started
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            self._record(method, name, version, backend.name, code.name, started)
            fault = (
                code in BACKEND_FAULTS
                or (per_try_binds and code is grpc.StatusCode.DEADLINE_EXCEEDED)
                # The route table said this backend has the model: it left since the last poll.
                or (routed and code is grpc.StatusCode.NOT_FOUND)
            )
            gave_up = not fault and code in _CLIENT_GAVE_UP
            if fault:
                # A model breaker only for models the routes know: client input (an unknown
                # model name asked of one backend) must not create breakers or series.
                scope = (
                    fault_scope(code.name, exc.details() or "", name)
                    if routed
                    else FaultScope.BACKEND
                )
                self._pool.record_outcome(backend, False, name, scope)
            elif not gave_up:
                # A client error: the backend and the model are fine.
                self._pool.record_outcome(backend, True, name)
            if not gave_up:
                latency = self._clock() - started
            raise UpstreamError(
                code, exc.details() or "", backend.name, backend_fault=fault
            ) from exc
        finally:
            self._metrics.add_in_flight("python", -1)
            if latency is None:
                backend.breaker.abandon()
                if model_breaker is not None:
                    model_breaker.abandon()
            # Only inference latency feeds the estimate: metadata calls are cheap everywhere.
            learned = latency if method == "ModelInfer" else None
            self._balancer.finished(backend.name, (name, version), learned, fault)
        self._pool.record_outcome(backend, True, name)
        self._record(method, name, version, backend.name, "OK", started)
        log.debug(
            "request",
            method=method,
            model=name,
            version=version,
            backend=backend.name,
            status="OK",
            latency_ms=round((self._clock() - started) * 1000, 3),
        )
        return response

    async def _serve_fallback(
        self, request: bytes, context: CallContext, name: str, version: str
    ) -> bytes:
        """Answer from the local runtime, marked as such in trailing metadata."""
        assert self._fallback is not None
        started = self._clock()
        try:
            response = await self._fallback.infer(request)
        except GatewayError as exc:
            self._record("ModelInfer", name, version, "local", exc.code.name, started, "fallback")
            raise
        context.set_trailing_metadata(FALLBACK_METADATA)
        self._record("ModelInfer", name, version, "local", "OK", started, "fallback")
        return response

    def _record(
        self,
        method: str,
        name: str,
        version: str,
        backend: str,
        code: str,
        started: float,
        path: str = "python",
    ) -> None:
        # Only models the fleet or the fallback serves become label values; client input
        # cannot add series.
        known = name in self._pool.table.latest_version or (
            self._fallback is not None and path == "fallback"
        )
        if not known:
            name, version = UNKNOWN_MODEL, ""
        key = (path, method, name, version, backend, code)
        self._metrics.observe(key, self._clock() - started)

    def _choose_or_any(self, name: str, version: str) -> TritonBackend:
        try:
            candidates = self._pool.table.lookup(name, version)
        except ModelNotFoundError:
            candidates = self._any_ready()
        return self._balancer.choose((name, version), candidates)

    def _any_ready(self) -> tuple[TritonBackend, ...]:
        ready = self._pool.ready_backends
        if not ready:
            raise NoBackendAvailableError(NO_BACKEND_READY)
        return ready

    async def _on_every_backend_then_refresh(
        self, call: Callable[[TritonBackend], Awaitable[Message]]
    ) -> None:
        try:
            await self._fan_out(self._any_ready(), call)
        finally:
            # Even a partial failure changed some backends: re-read them all now.
            await self._pool.refresh()

    @staticmethod
    async def _fan_out(
        backends: Sequence[TritonBackend],
        call: Callable[[TritonBackend], Awaitable[R]],
    ) -> list[R]:
        async def one(backend: TritonBackend) -> R:
            try:
                result: R = await call(backend)
            except grpc.aio.AioRpcError as exc:
                raise UpstreamError(exc.code(), exc.details() or "", backend.name) from exc
            return result

        return list(await asyncio.gather(*(one(b) for b in backends)))


async def _wait_unloaded(
    backend: TritonBackend, name: str, clock: Callable[[], float], budget_s: float | None
) -> None:
    """Poll the backend's index until no version of ``name`` is held, within the deadline."""
    deadline = clock() + (budget_s if budget_s is not None else _UNLOAD_WAIT_S)
    request = service_pb2.RepositoryIndexRequest()
    while True:
        index = await backend.stub.RepositoryIndex(request, timeout=max(deadline - clock(), 0.001))
        if not any(m.name == name and m.state in _HELD_STATES for m in index.models):
            return
        if clock() >= deadline:
            raise GatewayError(
                f"model '{name}' still unloading on {backend.name}",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        await asyncio.sleep(_UNLOAD_POLL_S)


def _tried_backends(context: CallContext) -> frozenset[str]:
    for key, value in context.invocation_metadata() or ():
        if key == TRIED_METADATA:
            return frozenset({value if isinstance(value, str) else value.decode()})
    return frozenset()
