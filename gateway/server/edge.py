"""Runs ``tgw-edge``, the compiled HTTP/2 data plane, and keeps its routes current.

The Python gateway stays the authority: tgw-edge forwards the model-scoped unary calls it has a
route for straight to Triton and hands every other call to this process over a Unix socket only
this user can open. Routes go to its stdin as one JSON line per snapshot; closing stdin drains
and stops it, so it never outlives the gateway.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import structlog

from gateway.backends.triton import TritonBackend
from gateway.balancing.faults import FaultScope
from gateway.observability.metrics import LATENCY_BUCKETS, RequestMetrics
from gateway.routing.table import RouteTable
from gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

BINARY_NAME = "tgw-edge"
_CLIENT_GAVE_UP = frozenset({"CANCELLED", "DEADLINE_EXCEEDED"})
OutcomeListener = Callable[[str, str, int, int, FaultScope], None]
"""(backend, model, successes, faults, scope of the faults): feeds the pool's breakers."""


class EdgeError(RuntimeError):
    """tgw-edge could not be found or started."""


def find_edge_binary(configured: Path | None) -> Path | None:
    """The configured path, else the one installed beside this interpreter, else on PATH."""
    if configured is not None:
        return configured if configured.is_file() else None
    beside = Path(sys.executable).parent / BINARY_NAME
    if beside.is_file():
        return beside
    found = shutil.which(BINARY_NAME)
    return Path(found) if found else None


def route_snapshot(table: RouteTable[TritonBackend]) -> bytes:
    routes = [
        [name, version, [[backend.name, backend.address] for backend in backends]]
        for (name, version), backends in table.candidates.items()
    ]
    return json.dumps({"routes": routes}).encode() + b"\n"


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def edge_arguments(settings: GatewaySettings) -> list[str]:
    """tgw-edge's command-line options for these settings (``tgw-edge --help`` lists them)."""
    edge, shedding = settings.edge, settings.shedding
    arguments = [
        "--listen",
        f"{settings.server.host}:{settings.server.port}",
        "--threads",
        str(edge.threads),
        "--buckets",
        ",".join(repr(bound) for bound in LATENCY_BUCKETS),
        "--max-message-bytes",
        str(settings.server.max_message_bytes),
        "--latency-decay-ms",
        repr(settings.balancing.latency_decay_s * 1000),
        "--fault-penalty-ms",
        repr(settings.balancing.fault_penalty_s * 1000),
        "--max-connections",
        str(edge.max_connections),
        "--handshake-timeout-ms",
        _ms(edge.handshake_timeout_s),
        "--idle-timeout-ms",
        _ms(edge.idle_timeout_s),
        "--max-concurrent-streams",
        str(edge.max_concurrent_streams),
        "--max-header-list-bytes",
        str(edge.max_header_list_bytes),
        "--max-pending-accept-reset-streams",
        str(edge.max_pending_accept_reset_streams),
        "--max-local-error-reset-streams",
        str(edge.max_local_error_reset_streams),
        "--max-send-buffer-bytes",
        str(edge.max_send_buffer_bytes),
        "--keepalive-interval-ms",
        "0" if edge.keepalive_interval_s == 0 else _ms(edge.keepalive_interval_s),
        "--keepalive-timeout-ms",
        _ms(edge.keepalive_timeout_s),
        "--upstream-stream-window-bytes",
        str(edge.upstream_stream_window_bytes),
    ]
    if settings.retry.per_try_timeout_s is not None:
        arguments += ["--per-try-timeout-ms", _ms(settings.retry.per_try_timeout_s)]
    if shedding.max_in_flight is not None:
        arguments += ["--max-in-flight", str(shedding.max_in_flight)]
    if shedding.max_in_flight_per_model is not None:
        arguments += ["--max-in-flight-per-model", str(shedding.max_in_flight_per_model)]
    return arguments


class EdgeProcess:
    """The tgw-edge child process: started, fed route snapshots, stopped."""

    def __init__(
        self,
        binary: Path,
        arguments: list[str],
        metrics: RequestMetrics,
        on_outcomes: OutcomeListener,
        *,
        on_routed: Callable[[int], None] | None = None,
    ) -> None:
        self._binary = binary
        self._arguments = arguments
        self._metrics = metrics
        self._on_outcomes = on_outcomes
        self._on_routed = on_routed
        self._reports: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, gateway_socket: Path, table: RouteTable[TritonBackend]) -> int:
        """Start serving, handing calls over to ``gateway_socket``; returns the bound port."""
        self._process = await asyncio.create_subprocess_exec(
            str(self._binary),
            *self._arguments,
            "--gateway-socket",
            str(gateway_socket),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(route_snapshot(table))
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        if not line.startswith(b"listening "):
            code = await self._process.wait()
            raise EdgeError(f"{BINARY_NAME} did not start (exit code {code}); see its stderr")
        self.port = int(line.split()[1].rsplit(b":", 1)[1])
        self._reports = asyncio.create_task(self._read_reports(), name="edge-reports")
        log.info("edge_started", port=self.port, pid=self._process.pid)
        return self.port

    def publish(self, table: RouteTable[TritonBackend]) -> None:
        """Send a new route snapshot; tgw-edge swaps it in whole."""
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        process.stdin.write(route_snapshot(table))

    async def stop(self, grace_s: float) -> None:
        """Close stdin (tgw-edge drains in-flight calls and exits); kill after the grace."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), grace_s + 1.0)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reports is not None:
            # The last report is written as tgw-edge exits; read it before finishing.
            await self._reports
        log.info("edge_stopped", code=process.returncode)

    async def _read_reports(self) -> None:
        """Fold tgw-edge's periodic request reports into the gateway's metrics."""
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            try:
                report = json.loads(line)
                for row in report["requests"]:
                    method, model, version, backend, code, scope, count, seconds, buckets = row
                    key = ("edge", method, model, version, backend, code)
                    self._metrics.add_batch(key, count, seconds, buckets)
                    if backend and method == "ModelInfer" and self._on_routed is not None:
                        self._on_routed(count)
                    # tgw-edge marks backend faults with their scope ("" for any other
                    # outcome); a client's own deadline or cancellation counts for nothing.
                    if scope:
                        self._on_outcomes(backend, model, 0, count, FaultScope(scope))
                    elif code not in _CLIENT_GAVE_UP:
                        self._on_outcomes(backend, model, count, 0, FaultScope.BACKEND)
                self._metrics.set_in_flight("edge", int(report["in_flight"]))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("edge_report_unreadable", error=str(exc))
