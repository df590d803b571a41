"""One Triton server reached over one long-lived gRPC channel.

Forwarding methods take and return serialized bytes (no serializer on either side), so the data
path never decodes tensors; the typed stub is used only for health polls and fan-out calls, which
carry the configured ``security.backend_key`` header (``control_metadata``) for servers that run
Triton's ``--grpc-restricted-protocol``.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import structlog
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.routing.table import ModelKey

log = structlog.get_logger(__name__)

SERVICE = "inference.GRPCInferenceService"
RESTRICTED_PROTOCOL = "This protocol is restricted, expecting header "
"""How Triton refuses a call of a protocol restricted by ``--grpc-restricted-protocol`` that
lacks its header (UNAVAILABLE): the caller is refused, the server is fine."""

FORWARDED_UNARY_METHODS = (
    "ModelInfer",
    "ModelReady",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
)


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server says of itself in ServerMetadata."""

    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """What one poll learned: whether the server answers, its READY model versions, and its
    ServerMetadata (None while unknown)."""

    ready: bool
    models: frozenset[ModelKey]
    server: ServerInfo | None = None
    unordered: frozenset[ModelKey] = frozenset()
    """READY versions whose stream answers need not follow request order: decoupled models
    (zero or many answers per request), and those whose config could not be read (an order
    waited for on them could wait for ever)."""
    reason: str = ""
    """Why it is down (the status and message of the failed call)."""

    @classmethod
    def down(cls, reason: str = "not polled yet") -> BackendHealth:
        return cls(ready=False, models=frozenset(), reason=reason)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Keep idle channels warm so the first request after a quiet spell pays no handshake.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class TritonBackend:
    """A Triton endpoint: raw forwarding callables plus a typed stub for control calls."""

    def __init__(
        self,
        name: str,
        address: str,
        *,
        max_message_bytes: int,
        control_metadata: tuple[tuple[str, str], ...] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.control_metadata = control_metadata
        """Header of the gateway's own calls to this server (``security.backend_key``)."""
        self._restriction_reported = False
        options = channel_options(max_message_bytes)
        self._channel = (
            grpc.aio.insecure_channel(address, options=options)
            if credentials is None
            else grpc.aio.secure_channel(address, credentials, options=options)
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.unary = {
            method: self._channel.unary_unary(f"/{SERVICE}/{method}")
            for method in FORWARDED_UNARY_METHODS
        }
        self.health = BackendHealth.down()
        self._decoupled: dict[ModelKey, bool] = {}
        self.last_models: frozenset[ModelKey] = frozenset()
        """The READY versions of the last poll that found it up (kept while it is down)."""

    def __repr__(self) -> str:
        return f"TritonBackend({self.name!r}, {self.address!r})"

    async def poll_health(
        self, timeout_s: float, expected: frozenset[ModelKey] = frozenset()
    ) -> BackendHealth:
        """Ask the server whether it is live and which model versions are READY (the index,
        and ModelReady for each ``expected`` version the index does not list: Triton does not
        always index models pushed with their files).

        ServerLive, not ServerReady: with strict readiness Triton reports not-ready while any
        model is loading or unloading, though its other models keep serving. Routing follows
        the per-version READY states instead, so one model's rollout never idles a backend.
        """
        metadata = self.control_metadata
        try:
            live = await self.stub.ServerLive(
                service_pb2.ServerLiveRequest(), timeout=timeout_s, metadata=metadata
            )
            if not live.live:
                return BackendHealth.down("ServerLive answered not live")
        except grpc.aio.AioRpcError as exc:
            # A server that refuses the call for want of a header answered: it is live.
            if not self._refused_as_restricted(exc, "health"):
                return BackendHealth.down(_failure(exc))
        try:
            index = await self.stub.RepositoryIndex(
                service_pb2.RepositoryIndexRequest(ready=True), timeout=timeout_s, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            if not self._refused_as_restricted(exc, "model-repository"):
                return BackendHealth.down(_failure(exc))
            # It serves, but will not say what: keep routing what it last said it had, rather
            # than sending every request to the fallback.
            return BackendHealth(
                ready=True,
                models=self.last_models,
                server=self.health.server,
                unordered=self.health.unordered,
            )
        models = frozenset(
            (model.name, model.version) for model in index.models if model.state == "READY"
        )
        models |= await self.ready_among(expected - models, timeout_s)
        return BackendHealth(
            ready=True,
            models=models,
            server=await self._server_info(timeout_s),
            unordered=await self._unordered(models, timeout_s),
        )

    async def ready_among(self, keys: frozenset[ModelKey], timeout_s: float) -> frozenset[ModelKey]:
        ready: set[ModelKey] = set()
        for name, version in sorted(keys):
            try:
                answer = await self.stub.ModelReady(
                    service_pb2.ModelReadyRequest(name=name, version=version),
                    timeout=timeout_s,
                    metadata=self.control_metadata,
                )
            except grpc.aio.AioRpcError:
                continue
            if answer.ready:
                ready.add((name, version))
        return frozenset(ready)

    async def _unordered(
        self, models: frozenset[ModelKey], timeout_s: float
    ) -> frozenset[ModelKey]:
        """Which READY versions are decoupled, from their configs (each read once while it
        stays READY)."""
        known = {key: value for key, value in self._decoupled.items() if key in models}
        for name, version in sorted(models - known.keys()):
            try:
                answer = await self.stub.ModelConfig(
                    service_pb2.ModelConfigRequest(name=name, version=version),
                    timeout=timeout_s,
                    metadata=self.control_metadata,
                )
            except grpc.aio.AioRpcError:
                known[(name, version)] = True  # unknown: never wait for its order
                continue
            known[(name, version)] = answer.config.model_transaction_policy.decoupled
        self._decoupled = known
        return frozenset(key for key, decoupled in known.items() if decoupled)

    async def _server_info(self, timeout_s: float) -> ServerInfo | None:
        """ServerMetadata, asked once per start of the server (kept while it stays up)."""
        if self.health.ready and self.health.server is not None:
            return self.health.server
        try:
            metadata = await self.stub.ServerMetadata(
                service_pb2.ServerMetadataRequest(),
                timeout=timeout_s,
                metadata=self.control_metadata,
            )
        except grpc.aio.AioRpcError:
            return None
        return ServerInfo(version=metadata.version, extensions=tuple(metadata.extensions))

    def _refused_as_restricted(self, exc: grpc.aio.AioRpcError, protocol: str) -> bool:
        """Whether the server refused a call of a restricted protocol (warned once)."""
        details = exc.details() or ""
        if exc.code() is not grpc.StatusCode.UNAVAILABLE or not details.startswith(
            RESTRICTED_PROTOCOL
        ):
            return False
        if not self._restriction_reported:
            self._restriction_reported = True
            log.warning(
                "backend_protocol_restricted",
                backend=self.name,
                protocol=protocol,
                triton_message=details,
                sent_key=self.control_metadata is not None,
                hint="set security.backend_key (GATEWAY_SECURITY__BACKEND_KEY) to the KEY=VALUE "
                "of the server's --grpc-restricted-protocol; meanwhile it stays up with the "
                "models it last reported",
            )
        return True

    async def close(self) -> None:
        await self._channel.close()


def _failure(exc: grpc.aio.AioRpcError) -> str:
    """A failed call as a person reads it: its status and the first line of its message."""
    details = (exc.details() or "").splitlines()
    return f"{exc.code().name}: {details[0]}" if details else exc.code().name
