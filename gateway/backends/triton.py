"""One Triton server reached over one long-lived gRPC channel.

Forwarding methods take and return serialized bytes (no serializer on either side), so the data
path never decodes tensors; the typed stub is used only for health polls and fan-out calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.balancing.breaker import CircuitBreaker
from gateway.routing.table import ModelKey

SERVICE = "inference.GRPCInferenceService"

FORWARDED_UNARY_METHODS = (
    "ModelInfer",
    "ModelReady",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
)


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """What one poll learned: whether the server answers, and its READY model versions."""

    ready: bool
    models: frozenset[ModelKey]

    @classmethod
    def down(cls) -> BackendHealth:
        return cls(ready=False, models=frozenset())


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
        new_breaker: Callable[[], CircuitBreaker],
    ) -> None:
        self.name = name
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            address, options=channel_options(max_message_bytes)
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.unary = {
            method: self._channel.unary_unary(f"/{SERVICE}/{method}")
            for method in FORWARDED_UNARY_METHODS
        }
        self.stream_infer = self._channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")
        self.health = BackendHealth.down()
        self.last_models: frozenset[ModelKey] = frozenset()
        """The READY versions of the last poll that found it up (kept while it is down)."""
        self._new_breaker = new_breaker
        self.breaker = new_breaker()
        """Trips on faults of the whole server: it leaves every route."""
        self.model_breakers: dict[str, CircuitBreaker] = {}
        """Per model name, made at its first fault: trips on faults of one model here."""

    def model_breaker(self, model: str) -> CircuitBreaker:
        breaker = self.model_breakers.get(model)
        if breaker is None:
            breaker = self.model_breakers[model] = self._new_breaker()
        return breaker

    def __repr__(self) -> str:
        return f"TritonBackend({self.name!r}, {self.address!r})"

    async def poll_health(self, timeout_s: float) -> BackendHealth:
        """Ask the server whether it is live and which model versions are READY.

        ServerLive, not ServerReady: with strict readiness Triton reports not-ready while any
        model is loading or unloading, though its other models keep serving. Routing follows
        the per-version READY states instead, so one model's rollout never idles a backend.
        """
        try:
            live = await self.stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout_s)
            if not live.live:
                return BackendHealth.down()
            index = await self.stub.RepositoryIndex(
                service_pb2.RepositoryIndexRequest(ready=True), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return BackendHealth.down()
        models = frozenset(
            (model.name, model.version) for model in index.models if model.state == "READY"
        )
        return BackendHealth(ready=True, models=models)

    async def close(self) -> None:
        await self._channel.close()
