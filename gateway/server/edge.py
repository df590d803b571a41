"""Runs ``tgw-edge``, the compiled HTTP/2 fast path, and keeps its routes current.

The Python gateway stays the authority: tgw-edge forwards the model-scoped unary calls it has a
route for straight to Triton and hands every other call to this process unchanged. Routes go to
its stdin as one JSON line per snapshot; closing stdin drains and stops it, so it never outlives
the gateway.
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


def route_snapshot(gateway_address: str, table: RouteTable[TritonBackend]) -> bytes:
    routes = [
        [name, version, [[backend.name, backend.address] for backend in backends]]
        for (name, version), backends in table.candidates.items()
    ]
    return json.dumps({"gateway": gateway_address, "routes": routes}).encode() + b"\n"


class EdgeProcess:
    """The tgw-edge child process: started, fed route snapshots, stopped."""

    def __init__(
        self,
        binary: Path,
        listen: str,
        threads: int,
        metrics: RequestMetrics,
        on_outcomes: OutcomeListener,
        *,
        on_routed: Callable[[int], None] | None = None,
        per_try_timeout_s: float | None = None,
        max_in_flight: int | None = None,
        max_in_flight_per_model: int | None = None,
        latency_decay_s: float = 5.0,
        fault_penalty_s: float = 0.25,
        max_message_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._binary = binary
        self._listen = listen
        self._threads = threads
        self._metrics = metrics
        self._on_outcomes = on_outcomes
        self._on_routed = on_routed
        self._per_try_timeout_s = per_try_timeout_s
        self._limits: list[str] = [
            "--max-message-bytes",
            str(max_message_bytes),
            "--latency-decay-ms",
            repr(latency_decay_s * 1000),
            "--fault-penalty-ms",
            repr(fault_penalty_s * 1000),
        ]
        if max_in_flight is not None:
            self._limits += ["--max-in-flight", str(max_in_flight)]
        if max_in_flight_per_model is not None:
            self._limits += ["--max-in-flight-per-model", str(max_in_flight_per_model)]
        self._reports: asyncio.Task[None] | None = None
        self._gateway_address = ""
        self._process: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self, gateway_address: str, table: RouteTable[TritonBackend]) -> int:
        """Start serving on the listen address; returns the bound port."""
        self._gateway_address = gateway_address
        per_try = []
        if self._per_try_timeout_s is not None:
            per_try = ["--per-try-timeout-ms", str(max(1, round(self._per_try_timeout_s * 1000)))]
        self._process = await asyncio.create_subprocess_exec(
            str(self._binary),
            "--listen",
            self._listen,
            "--threads",
            str(self._threads),
            "--buckets",
            ",".join(repr(bound) for bound in LATENCY_BUCKETS),
            *per_try,
            *self._limits,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(route_snapshot(gateway_address, table))
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        if not line.startswith(b"listening "):
            code = await self._process.wait()
            raise EdgeError(f"{BINARY_NAME} did not start on {self._listen} (exit code {code})")
        self.port = int(line.split()[1].rsplit(b":", 1)[1])
        self._reports = asyncio.create_task(self._read_reports(), name="edge-reports")
        log.info("edge_started", listen=self._listen, port=self.port, pid=self._process.pid)
        return self.port

    def publish(self, table: RouteTable[TritonBackend]) -> None:
        """Send a new route snapshot; tgw-edge swaps it in whole."""
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        process.stdin.write(route_snapshot(self._gateway_address, table))

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
