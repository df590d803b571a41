"""The data path, top to bottom: request → route → choose a backend → forward → response.

Model-scoped requests stay serialized bytes: the model name and version are read from fields 1
and 2 without parsing tensors, and the original bytes go to the chosen Triton unchanged. Calls
that span the fleet (repository index, statistics) fan out and merge; calls that change it
(load/unload) need the configured key and go to one backend first, then the others one by one.
"""

from __future__ import annotations

import asyncio
import hmac
import re
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
from gateway.balancing.faults import RESTRICTED_PROTOCOL, FaultScope, fault_scope
from gateway.balancing.retry_budget import RetryBudget
from gateway.balancing.shedding import LoadShedder
from gateway.errors import (
    FleetChangeError,
    FleetChangeRefusedError,
    GatewayError,
    ModelNotFoundError,
    NoBackendAvailableError,
    OverloadedError,
    UpstreamError,
)
from gateway.observability.metrics import UNKNOWN_MODEL, RequestMetrics
from gateway.observability.tracing import PassThroughTracer, Tracer
from gateway.routing.versions import canonical_version
from gateway.routing.wire import read_model_key, read_sequence_id
from gateway.settings import ProtocolKey

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
# Longest deadline passed on upstream. grpc-timeout allows up to 99999999 hours; grpc python
# turns a timeout into an absolute int64 of nanoseconds, so one past ~7e9 s overflows and the
# call fails at once with DEADLINE_EXCEEDED. A deadline beyond the 8-digit seconds of the gRPC
# spec (over three years) means "no deadline".
MAX_DEADLINE_S = 99_999_999.0
_NO_KEY = (
    "{method} is disabled on triton-gateway: set security.model_repository_key (environment "
    "GATEWAY_SECURITY__MODEL_REPOSITORY_KEY) to KEY=VALUE and send the header "
    "'triton-grpc-protocol-KEY: VALUE', as for tritonserver "
    "--grpc-restricted-protocol=model-repository:KEY=VALUE"
)
# Absolute paths in a backend's message (its model repository, temporary folders) stay in logs.
_SERVER_PATH = re.compile(r"(?<![\w.])/[^\s'\"(),;:]+")
_MAX_DETAIL_CHARS = 300


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

    def peer(self) -> str: ...


class Fallback(Protocol):
    """A local runtime for requests no backend can serve (ONNX Runtime in production)."""

    def serves(self, name: str) -> bool: ...

    def knows(self, name: str, version: str) -> bool: ...

    async def infer(self, request: bytes) -> bytes: ...


# Which statuses are backend faults (counted against a breaker, retried on another backend,
# answered by the fallback) is ``fault_scope``'s to say. DEADLINE_EXCEEDED counts only where
# the per-try timeout bound the call (see ``_forward``); otherwise it is the client's deadline.
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
        model_repository_key: ProtocolKey | None = None,
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
        self._model_repository_key = model_repository_key
        # One fleet change at a time: two interleaved ones could leave backends disagreeing.
        self._fleet_change = asyncio.Lock()
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
        name, version = _model_key(request)
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
            # Triton names the version only of a model it has.
            has_model = name in self._pool.table.latest_version or self._pool.knows_model(name, "")
            raise ModelNotFoundError(name, version if has_model else "") from exc
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
        name, version = _model_key(request)
        try:
            candidates = self._pool.table.lookup(name, version)
        except ModelNotFoundError:
            # Unknown to the route table: one backend gives Triton's own answer.
            return await self._try_backends(
                method, request, context, name, version, self._any_ready()[:1], routed=False
            )
        return await self._try_backends(method, request, context, name, version, candidates)

    async def model_ready(self, request: bytes, context: CallContext) -> bytes:
        name, version = _model_key(request)
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
                upstream_requests(), timeout=_deadline(context), metadata=metadata
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
            version = canonical_version(request.version)
            if version:
                backends = table.candidates.get((request.name, version), ())
            else:
                backends = table.backends_with_model(request.name)
            # Unknown model: let one backend give Triton's own error.
            targets = backends or self._any_ready()[:1]
        else:
            targets = self._any_ready()
        timeout = _deadline(context)
        responses: list[service_pb2.ModelStatisticsResponse] = await self._fan_out(
            targets,
            lambda b: b.stub.ModelStatistics(request, timeout=timeout, metadata=b.control_metadata),
        )
        return merge_model_statistics(responses)

    async def repository_index(
        self, request: service_pb2.RepositoryIndexRequest, context: CallContext
    ) -> service_pb2.RepositoryIndexResponse:
        timeout = _deadline(context)
        responses: list[service_pb2.RepositoryIndexResponse] = await self._fan_out(
            self._any_ready(),
            lambda b: b.stub.RepositoryIndex(request, timeout=timeout, metadata=b.control_metadata),
        )
        return merge_repository_index(responses)

    async def repository_model_load(
        self, request: service_pb2.RepositoryModelLoadRequest, context: CallContext
    ) -> service_pb2.RepositoryModelLoadResponse:
        """Load on one backend, then on the others one by one; routes refreshed after."""
        name = request.model_name
        self._authorize("RepositoryModelLoad", name, context, parameters=sorted(request.parameters))

        async def load(backend: TritonBackend) -> None:
            await backend.stub.RepositoryModelLoad(
                request, timeout=_deadline(context), metadata=backend.control_metadata
            )

        changed = await self._change_fleet("RepositoryModelLoad", name, load)
        log.info("fleet_model_loaded", model=name, backends=changed)
        return service_pb2.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: service_pb2.RepositoryModelUnloadRequest, context: CallContext
    ) -> service_pb2.RepositoryModelUnloadResponse:
        """Unload on one backend, then on the others one by one, each time returning once the
        backend no longer holds the model.

        Triton answers an unload before the model is gone; a load sent right after would race
        the unload and lose. Waiting here makes "unload, then load" through the gateway work.
        """
        name = request.model_name
        self._authorize("RepositoryModelUnload", name, context)

        async def unload(backend: TritonBackend) -> None:
            timeout = _deadline(context)
            await backend.stub.RepositoryModelUnload(
                request, timeout=timeout, metadata=backend.control_metadata
            )
            await _wait_unloaded(backend, name, self._clock, timeout)

        changed = await self._change_fleet("RepositoryModelUnload", name, unload)
        log.info("fleet_model_unloaded", model=name, backends=changed)
        return service_pb2.RepositoryModelUnloadResponse()

    def _authorize(
        self, method: str, model: str, context: CallContext, parameters: Sequence[str] = ()
    ) -> None:
        """Fleet changes need the configured key, sent as Triton's restricted protocols ask."""
        key = self._model_repository_key
        peer = context.peer()
        if key is None:
            log.warning(
                "fleet_change_refused", method=method, model=model, peer=peer, reason="no key set"
            )
            raise FleetChangeRefusedError(_NO_KEY.format(method=method))
        if not _carries_key(context, key):
            log.warning(
                "fleet_change_refused",
                method=method,
                model=model,
                peer=peer,
                reason="missing or wrong key header",
            )
            # Triton's own words for a restricted protocol called without its header.
            raise FleetChangeRefusedError(
                f"This protocol is restricted, expecting header '{key.header}'"
            )
        log.info(
            "fleet_change_allowed", method=method, model=model, peer=peer, parameters=parameters
        )

    async def _change_fleet(
        self, method: str, name: str, change: Callable[[TritonBackend], Awaitable[None]]
    ) -> list[str]:
        """Apply ``change`` to one backend (the canary), then to the others one at a time,
        stopping at the first failure: a change that breaks a server breaks only one."""
        async with self._fleet_change:
            return await self._change_one_by_one(method, name, change)

    async def _change_one_by_one(
        self, method: str, name: str, change: Callable[[TritonBackend], Awaitable[None]]
    ) -> list[str]:
        backends = self._any_ready()
        changed: list[str] = []
        try:
            for backend in backends:
                try:
                    await change(backend)
                except grpc.aio.AioRpcError as exc:
                    code, detail = exc.code(), exc.details() or ""
                except GatewayError as exc:  # the unload did not finish within the deadline
                    code, detail = exc.code, exc.message
                else:
                    changed.append(backend.name)
                    continue
                untouched = [b.name for b in backends[len(changed) + 1 :]]
                log.warning(
                    "fleet_change_failed",
                    method=method,
                    model=name,
                    backend=backend.name,
                    code=code.name,
                    detail=detail,
                    changed=changed,
                    untouched=untouched,
                )
                raise FleetChangeError(
                    code,
                    f"{method} of model '{name}' failed on backend {backend.name} "
                    f"({len(changed) + 1} of {len(backends)}): {_client_detail(detail)}; "
                    f"changed before it: {', '.join(changed) or 'none'}; left untouched: "
                    f"{', '.join(untouched) or 'none'}",
                    backend.name,
                )
        finally:
            # Even a partial change changed some backends: re-read them all now.
            await self._pool.refresh()
        return changed

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
        remaining = _deadline(context)
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
            # A model breaker only for models the routes know (``routed``): client input (an
            # unknown model name asked of one backend) must not create breakers or series.
            scope = fault_scope(code.name, exc.details() or "", name, version, routed=routed)
            if per_try_binds and code is grpc.StatusCode.DEADLINE_EXCEEDED:
                scope = FaultScope.BACKEND
            fault = scope is not FaultScope.NONE
            gave_up = not fault and code in _CLIENT_GAVE_UP
            if fault:
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
        key = (path, method, name, version, backend, code)
        self._metrics.observe(key, self._clock() - started)

    def metric_labels(self, name: str, version: str) -> tuple[str, str]:
        """Model and version as label values: only what the fleet or the fallback has, so
        client input cannot add series (``_unknown`` for the rest)."""
        if (name, version) in self._pool.table.candidates:
            return name, version
        fallback = self._fallback
        if (fallback is not None and fallback.knows(name, version)) or self._pool.knows_model(
            name, version
        ):
            return name, version
        if (
            name in self._pool.table.latest_version
            or (fallback is not None and fallback.serves(name))
            or self._pool.knows_model(name, "")
        ):
            return name, UNKNOWN_MODEL
        return UNKNOWN_MODEL, ""

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
        index = await backend.stub.RepositoryIndex(
            request, timeout=max(deadline - clock(), 0.001), metadata=backend.control_metadata
        )
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


def _model_key(request: bytes) -> tuple[str, str]:
    """Model name and canonical version; a version Triton cannot parse is INVALID_ARGUMENT."""
    name, version = read_model_key(request)
    return name, canonical_version(version)


def _deadline(context: CallContext) -> float | None:
    """The client's time left, as a timeout for an upstream call (None: no deadline)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > MAX_DEADLINE_S else remaining


def _carries_key(context: CallContext, key: ProtocolKey) -> bool:
    expected = key.value.encode()
    for header, value in context.invocation_metadata() or ():
        if header == key.header:
            given = value if isinstance(value, bytes) else value.encode(errors="surrogateescape")
            return hmac.compare_digest(given, expected)
    return False


def _client_detail(detail: str) -> str:
    """A backend's message as a client may see it: its first line, server paths removed."""
    first = detail.strip().split("\n", 1)[0]
    redacted = _SERVER_PATH.sub("<path>", first)
    if len(redacted) > _MAX_DETAIL_CHARS:
        redacted = redacted[:_MAX_DETAIL_CHARS] + "..."
    if detail.startswith(RESTRICTED_PROTOCOL):
        redacted += " (the backend restricts this protocol: set security.backend_key)"
    return redacted
