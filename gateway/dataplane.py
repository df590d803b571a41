"""What the control plane answers itself, for calls tgw-edge hands over.

tgw-edge makes every per-request decision for the model-scoped calls (routing, balancing,
breakers, retries, timeouts, hedging, shedding). It hands over only what it cannot do: a call
its backends failed for a model the local fallback serves (marked with ``x-gateway-tried``), a
call no route covers (an unknown model, or none ready: the fallback or Triton's own answer),
and the calls that span the fleet: repository index and statistics fan out and merge;
load/unload need the configured key and go to one backend first, then the others one by one.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2

from gateway.aggregation import merge_model_statistics, merge_repository_index
from gateway.backends.pool import BackendPool
from gateway.backends.triton import RESTRICTED_PROTOCOL, TritonBackend
from gateway.control.snapshot import server_identity
from gateway.errors import (
    FleetChangeError,
    FleetChangeRefusedError,
    GatewayError,
    ModelNotFoundError,
    NoBackendAvailableError,
    UpstreamError,
)
from gateway.observability.metrics import UNKNOWN_MODEL, RequestMetrics
from gateway.observability.tracing import PassThroughTracer, Tracer
from gateway.routing.versions import canonical_version
from gateway.routing.wire import read_model_key, read_sequence_id
from gateway.settings import ProtocolKey

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=Message)

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
_MAX_LOGGED_NAME = 200


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


TRIED_METADATA = "x-gateway-tried"
"""Set by tgw-edge (and only by it: it strips the header from clients) on a call it hands over
after its backends failed it: the fallback answers."""
FALLBACK_METADATA = (("x-gateway-served-by", "fallback"),)
"""Trailing metadata on every answer the fallback produced."""


class DataPlane:
    """The calls tgw-edge hands over; servicers only delegate here."""

    def __init__(
        self,
        pool: BackendPool,
        metrics: RequestMetrics,
        *,
        tracer: Tracer | None = None,
        fallback: Fallback | None = None,
        model_repository_key: ProtocolKey | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._tracer: Tracer = tracer or PassThroughTracer()
        self._fallback = fallback
        self._model_repository_key = model_repository_key
        # One fleet change at a time: two interleaved ones could leave backends disagreeing.
        self._fleet_change = asyncio.Lock()
        self._clock = clock

    # -- server-level -----------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Ready while a backend is, or while the local fallback can answer."""
        return bool(self._pool.ready_backends) or self._fallback is not None

    def server_metadata(self) -> service_pb2.ServerMetadataResponse:
        """Triton's own answer for the fleet (name ``triton``, its version and extensions)."""
        identity = server_identity(self._pool)
        return service_pb2.ServerMetadataResponse(
            name=identity.name, version=identity.version, extensions=list(identity.extensions)
        )

    # -- model-scoped: what tgw-edge hands over ---------------------------------------------

    async def model_infer(self, request: bytes, context: CallContext) -> bytes:
        """A call the edge's backends failed, or one no route covers: the local fallback
        answers when it serves the model; otherwise the answer Triton gives for a model no
        server can serve now, or does not have."""
        started = self._clock()
        name, version = _model_key(request)
        tried = _tried_backends(context)
        known = self._pool.knows_model(name, version)
        in_sequence = read_sequence_id(request) is not None
        fallback = self._fallback is not None and self._fallback.serves(name)
        # A sequence's state was on a backend: the stateless fallback does not answer it.
        if fallback and not (known and in_sequence):
            return await self._serve_fallback(request, context, name, version)
        if tried:
            code = NoBackendAvailableError.code
            self._record("ModelInfer", name, version, "", code.name, started)
            failed = ", ".join(sorted(tried))
            if in_sequence:
                # Say why, so the client knows to start the sequence again.
                raise NoBackendAvailableError(
                    f"backend {failed} failed during a sequence; requests of a sequence are "
                    "not sent to another backend"
                )
            raise NoBackendAvailableError(
                f"backend {failed} failed and no other backend can serve model '{name}' now"
            )
        no_backend = known or not self._pool.ready_backends
        code = NoBackendAvailableError.code if no_backend else ModelNotFoundError.code
        self._record("ModelInfer", name, version, "", code.name, started)
        if known or name in self._pool.table.latest_version:
            raise NoBackendAvailableError(
                f"no backend can serve model '{name}' now (down, drained or ejected)"
            )
        self._any_ready()  # with no backend up, say so rather than "unknown model"
        # Triton names the version only of a model it has.
        raise ModelNotFoundError(name, version if self._pool.knows_model(name, "") else "")

    async def model_query(self, method: str, request: bytes, context: CallContext) -> bytes:
        """ModelMetadata / ModelConfig of a model no route covers: one ready backend gives
        Triton's own answer (for a model it does not have: its NOT_FOUND)."""
        name, version = _model_key(request)
        backend = self._any_ready()[0]
        return await self._ask(backend, method, request, context, name, version)

    async def model_ready(self, request: bytes, context: CallContext) -> bytes:
        """A model no route covers: Triton answers ready=false (not an error) for a model it
        does not have; the empty message is exactly that response serialized."""
        _model_key(request)
        return b""

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
        await self.load_everywhere(request, _deadline(context))
        return service_pb2.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: service_pb2.RepositoryModelUnloadRequest, context: CallContext
    ) -> service_pb2.RepositoryModelUnloadResponse:
        """Unload on one backend, then on the others one by one (see ``unload_everywhere``)."""
        name = request.model_name
        self._authorize("RepositoryModelUnload", name, context)
        await self.unload_everywhere(request, _deadline(context))
        return service_pb2.RepositoryModelUnloadResponse()

    async def load_everywhere(
        self, request: service_pb2.RepositoryModelLoadRequest, timeout_s: float | None
    ) -> list[str]:
        """Load on one backend, then on the others one by one; routes refreshed after. The
        backends changed; FleetChangeError at the first that fails (the rest untouched)."""
        name = request.model_name

        async def load(backend: TritonBackend) -> None:
            await backend.stub.RepositoryModelLoad(
                request, timeout=timeout_s, metadata=backend.control_metadata
            )

        changed = await self._change_fleet("RepositoryModelLoad", name, load)
        log.info("fleet_model_loaded", model=name, backends=changed)
        return changed

    async def unload_everywhere(
        self, request: service_pb2.RepositoryModelUnloadRequest, timeout_s: float | None
    ) -> list[str]:
        """Unload as ``load_everywhere`` loads, each time returning once the backend no longer
        holds the model.

        Triton answers an unload before the model is gone; a load sent right after would race
        the unload and lose. Waiting here makes "unload, then load" through the gateway work.
        """
        name = request.model_name

        async def unload(backend: TritonBackend) -> None:
            await backend.stub.RepositoryModelUnload(
                request, timeout=timeout_s, metadata=backend.control_metadata
            )
            await _wait_unloaded(backend, name, self._clock, timeout_s)

        changed = await self._change_fleet("RepositoryModelUnload", name, unload)
        log.info("fleet_model_unloaded", model=name, backends=changed)
        return changed

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
                    tuple(changed),
                )
        finally:
            # Even a partial change changed some backends: re-read them all now.
            await self._pool.refresh()
        return changed

    # -- helpers ----------------------------------------------------------------------------

    async def _ask(
        self,
        backend: TritonBackend,
        method: str,
        request: bytes,
        context: CallContext,
        name: str,
        version: str,
    ) -> bytes:
        """One call to one backend, its answer (or error) passed back unchanged."""
        started = self._clock()
        try:
            with self._tracer.upstream_call(method, name, version, backend.name, context) as md:
                response: bytes = await backend.unary[method](
                    request, timeout=_deadline(context), metadata=md
                )
        except grpc.aio.AioRpcError as exc:
            self._record(method, name, version, backend.name, exc.code().name, started)
            raise UpstreamError(exc.code(), exc.details() or "", backend.name) from exc
        self._record(method, name, version, backend.name, "OK", started)
        return response

    async def _serve_fallback(
        self, request: bytes, context: CallContext, name: str, version: str
    ) -> bytes:
        """Answer from the local runtime, marked as such in trailing metadata."""
        assert self._fallback is not None
        started = self._clock()
        try:
            with self._tracer.upstream_call("ModelInfer", name, version, "local", context):
                response = await self._fallback.infer(request)
        except GatewayError as exc:
            # Its refusals are the fallback's too (its checks are not Triton's own).
            context.set_trailing_metadata(FALLBACK_METADATA)
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
        seconds = self._clock() - started
        self._metrics.observe(key, seconds)
        # The fields of tgw-edge's line for each call it routes: one log query covers both.
        log.debug(
            "request",
            method=method,
            model=name[:_MAX_LOGGED_NAME],
            version=version[:_MAX_LOGGED_NAME],
            backend=backend,
            status=code,
            latency_ms=round(seconds * 1000, 3),
            path=path,
        )

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
            text = value if isinstance(value, str) else value.decode(errors="replace")
            return frozenset(name for name in text.split(",") if name)
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
