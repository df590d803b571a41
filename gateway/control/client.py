"""A typed client of tgw-edge's control service, over its Unix socket.

The asynchronous channel serves the event loop (describe, apply, watch, shutdown); scrapes of
``/metrics`` run on the exposition thread and use a blocking channel of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from gateway._protos.tgw.control.v1 import control_pb2, control_pb2_grpc

# The socket is local: reconnect at once after an edge restart instead of backing off.
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    # gRPC names a Unix socket's path as the :authority, which is no valid authority: the
    # edge's HTTP/2 server refuses it (RST_STREAM PROTOCOL_ERROR).
    ("grpc.default_authority", "localhost"),
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 200),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


class EdgeControlClient:
    """The control calls of one edge, addressed by its control socket."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        target = f"unix:{socket}"
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = control_pb2_grpc.EdgeControlStub(self._channel)  # type: ignore[no-untyped-call]
        self._blocking = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._blocking_stub = control_pb2_grpc.EdgeControlStub(  # type: ignore[no-untyped-call]
            self._blocking
        )

    async def describe(self, timeout_s: float) -> control_pb2.EdgeDescription:
        description: control_pb2.EdgeDescription = await self._stub.Describe(
            control_pb2.DescribeRequest(), timeout=timeout_s
        )
        return description

    async def apply(
        self, snapshot: control_pb2.Snapshot, timeout_s: float
    ) -> control_pb2.ApplyResult:
        result: control_pb2.ApplyResult = await self._stub.Apply(snapshot, timeout=timeout_s)
        return result

    async def watch(self, interval_s: float) -> AsyncIterator[control_pb2.EdgeReport]:
        """Reports until the edge goes away (the iteration then raises grpc.aio.AioRpcError)."""
        call = self._stub.Watch(control_pb2.WatchRequest(interval=duration(interval_s)))
        try:
            async for report in call:
                yield report
        finally:
            call.cancel()

    async def shutdown(self, grace_s: float, timeout_s: float) -> None:
        await self._stub.Shutdown(
            control_pb2.ShutdownRequest(grace=duration(grace_s)), timeout=timeout_s
        )

    def metrics_text(self, timeout_s: float) -> str:
        """The edge's metrics exposition; blocking (for the scrape thread)."""
        reply: control_pb2.MetricsText = self._blocking_stub.Metrics(
            control_pb2.MetricsRequest(), timeout=timeout_s
        )
        return reply.text

    async def close(self) -> None:
        await self._channel.close()
        self._blocking.close()
