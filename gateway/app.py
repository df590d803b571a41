"""Composition root: builds every component from settings, owns start and stop order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server
from watchfiles import awatch

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

from gateway.backends.fallback import OnnxFallback
from gateway.backends.pool import BackendPool
from gateway.backends.triton import TritonBackend
from gateway.balancing.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from gateway.balancing.p2c import LoadPolicy, PowerOfTwoChoices
from gateway.balancing.retry_budget import RetryBudget
from gateway.balancing.shedding import LoadShedder
from gateway.dataplane import DataPlane
from gateway.discovery.base import Discovery, Endpoint
from gateway.discovery.static import StaticDiscovery
from gateway.observability.metrics import BackendGauge, RequestMetrics
from gateway.observability.tracing import OpenTelemetryTracer, PassThroughTracer, Tracer
from gateway.routing.table import RouteTable
from gateway.server.drain import DrainGate
from gateway.server.edge import EdgeError, EdgeProcess, edge_arguments, find_edge_binary
from gateway.server.inference import SERVICE_NAME, InferenceServicer, inference_handler
from gateway.server.interceptor import ErrorMappingInterceptor, counter_request_ids
from gateway.settings import GatewaySettings, load_settings

log = structlog.get_logger(__name__)


def _fallback(settings: GatewaySettings) -> OnnxFallback | None:
    config = settings.fallback
    if not config.enabled:
        return None
    if not config.repository.is_dir():
        log.warning("fallback_disabled", reason="no model repository", path=str(config.repository))
        return None
    fallback = OnnxFallback(
        config.repository,
        models=config.models,
        threads=config.threads,
        max_concurrency=config.max_concurrency,
        max_queue=config.max_queue,
        max_request_bytes=config.max_request_bytes,
        max_total_bytes=config.max_total_bytes,
        providers=config.providers,
    )
    if config.preload:
        fallback.preload()
    return fallback


def _tracer(settings: GatewaySettings, provider: TracerProvider | None) -> Tracer:
    """OpenTelemetry spans when configured (or a provider is given), else pass-through."""
    if provider is None and not settings.tracing.enabled:
        return PassThroughTracer()
    from gateway.observability.otel import build_provider  # noqa: PLC0415 (optional extra)

    return OpenTelemetryTracer(provider or build_provider(settings.tracing))


class Gateway:
    """One gateway process: gRPC server, backend pool and data plane, wired together."""

    def __init__(
        self,
        settings: GatewaySettings,
        discovery: Discovery | None = None,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
        config_path: Path | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        max_bytes = settings.server.max_message_bytes
        self._discovery = discovery or StaticDiscovery(
            Endpoint(name=b.name, address=b.address) for b in settings.backends
        )
        breaker = settings.breaker
        backend_metadata = settings.security.backend_metadata()
        policy = BreakerPolicy(
            consecutive_failures=breaker.consecutive_failures,
            failure_rate=breaker.failure_rate,
            min_requests=breaker.min_requests,
            window_s=breaker.window_s,
            base_ejection_s=breaker.base_ejection_s,
            max_ejection_s=breaker.max_ejection_s,
            half_open_trials=breaker.half_open_trials,
        )
        self.pool = BackendPool(
            lambda endpoint: TritonBackend(
                endpoint.name,
                endpoint.address,
                max_message_bytes=max_bytes,
                new_breaker=lambda: CircuitBreaker(policy, clock),
                control_metadata=backend_metadata,
            ),
            poll_interval_s=settings.health.poll_interval_s,
            poll_timeout_s=settings.health.poll_timeout_s,
            max_ejected_fraction=breaker.max_ejected_fraction,
            on_breaker_change=self._count_breaker_change,
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = RequestMetrics(
            self.registry, backends=self._backend_gauges, model_labels=self._metric_labels
        )
        self.fallback = _fallback(settings)
        retry_budget = RetryBudget(
            clock,
            ratio=settings.retry.budget_ratio,
            min_per_second=settings.retry.min_per_second,
            window_s=settings.retry.window_s,
        )
        self._edge = self._edge_process(settings, self.metrics, self.pool, retry_budget)
        self.dataplane = DataPlane(
            self.pool,
            PowerOfTwoChoices(
                clock,
                rng or random.Random(),
                LoadPolicy(
                    decay_s=settings.balancing.latency_decay_s,
                    fault_penalty_s=settings.balancing.fault_penalty_s,
                ),
            ),
            self.metrics,
            tracer=_tracer(settings, tracer_provider),
            fallback=self.fallback,
            retry_budget=retry_budget,
            # tgw-edge strips the header from clients; without it, clients could set it.
            honour_tried_header=self._edge is not None,
            per_try_timeout_s=settings.retry.per_try_timeout_s,
            shedder=LoadShedder(
                settings.shedding.max_in_flight, settings.shedding.max_in_flight_per_model
            ),
            model_repository_key=settings.security.client_key(),
        )
        self._health: health_aio.HealthServicer | None = None
        self._server: grpc.aio.Server | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._health_updates: set[asyncio.Task[None]] = set()
        self._gate = DrainGate()
        self._config_path = config_path
        self._config_watch: asyncio.Task[None] | None = None
        self._metrics_server: WSGIServer | None = None
        self.metrics_port = 0
        self.port = 0
        """The public port: tgw-edge's when it fronts the gateway, else the gRPC server's."""
        self.private_address = ""
        """Where the Python gRPC server listens: a private Unix socket behind tgw-edge, else
        the public address."""
        self._private_dir: Path | None = None

    async def start(self) -> int:
        """Bind, learn the fleet, start serving; returns the bound port."""
        # grpc.aio objects bind to the running loop, so they are built here, not in __init__.
        self._health = health_aio.HealthServicer()
        self._server = self._build_server()
        public = f"{self.settings.server.host}:{self.settings.server.port}"
        # With tgw-edge in front, the gRPC server listens only on a Unix socket in a folder
        # only this user can open: no other local process can skip the edge's checks (or
        # forge the header with which the edge hands over a failed call).
        if self._edge is not None:
            self._private_dir = Path(tempfile.mkdtemp(prefix="triton-gateway-"))
            self.private_address = f"unix:{self._private_dir / 'gateway.sock'}"
        else:
            self.private_address = public
        bound = self._server.add_insecure_port(self.private_address)
        if bound == 0:
            raise OSError(f"cannot listen on {self.private_address}")
        if self._edge is None:
            self.private_address = f"{self.settings.server.host}:{bound}"
        self.port = bound
        self.pool.on_change(self._report_readiness)
        if self.settings.metrics.enabled:
            server, _ = start_http_server(
                self.settings.metrics.port, self.settings.metrics.host, registry=self.registry
            )
            self._metrics_server = server
            self.metrics_port = server.server_port
        self._follow_task = asyncio.create_task(self.pool.follow(self._discovery), name="discovery")
        self.pool.set_drained(frozenset(b.name for b in self.settings.backends if b.drained))
        await self.pool.wait_discovered(self.settings.health.startup_wait_s)
        if self._config_path is not None:
            self._config_watch = asyncio.create_task(self._watch_config(self._config_path))
        await self._set_serving(self.dataplane.is_ready())
        await self._server.start()
        if self._private_dir is not None:
            # The folder is already owner-only (0700); the socket is too, in case it is moved.
            (self._private_dir / "gateway.sock").chmod(0o600)
        if self._edge is not None:
            self.pool.on_change(self._edge.publish)
            assert self._private_dir is not None
            self.port = await self._edge.start(self._private_dir / "gateway.sock", self.pool.table)
        log.info(
            "gateway_started",
            address=public,
            edge=self._edge is not None,
            port=self.port,
            backends=[b.name for b in self.pool.backends],
            ready=[b.name for b in self.pool.ready_backends],
        )
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish within the grace, then close."""
        grace = self.settings.server.shutdown_grace_s if grace_s is None else grace_s
        if self._config_watch is not None:
            self._config_watch.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._edge is not None:
            await self._edge.stop(grace)
        log.info("draining_calls", in_flight=self._gate.in_flight, grace_s=grace)
        await self._gate.drain(grace)
        if self._server is not None:
            # Nothing is in flight any more (or the grace is spent); the short grace lets the
            # refusals of calls that raced the drain reach their clients.
            await self._server.stop(1.0)
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        await self.pool.close()
        if self.fallback is not None:
            self.fallback.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
        log.info("gateway_stopped")

    async def run_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("gateway_draining", grace_s=self.settings.server.shutdown_grace_s)
        await self.stop()

    async def _watch_config(self, path: Path) -> None:
        """Apply backend drains from the config file whenever it is saved."""
        async for _ in awatch(path, debounce=200, step=50):
            try:
                settings = load_settings(path)
            except (OSError, ValueError) as exc:
                log.warning("config_reload_rejected", path=str(path), error=str(exc))
                continue
            self.pool.set_drained(frozenset(b.name for b in settings.backends if b.drained))
            log.info("config_reloaded", path=str(path))

    @staticmethod
    def _edge_process(
        settings: GatewaySettings,
        metrics: RequestMetrics,
        pool: BackendPool,
        retry_budget: RetryBudget,
    ) -> EdgeProcess | None:
        edge = settings.edge
        if edge.mode == "off":
            return None
        binary = find_edge_binary(edge.binary)
        if binary is None:
            if edge.mode == "on":
                raise EdgeError(
                    "edge.mode is 'on' but tgw-edge was not found: run 'make install' or set "
                    "edge.binary"
                )
            log.info("edge_not_installed", fallback="python data plane only")
            return None
        return EdgeProcess(
            binary,
            edge_arguments(settings),
            metrics,
            pool.record_outcomes,
            # Calls tgw-edge routes count toward the budget its hand-overs spend.
            on_routed=retry_budget.on_request,
        )

    def _build_server(self) -> grpc.aio.Server:
        max_bytes = self.settings.server.max_message_bytes
        server = grpc.aio.server(
            interceptors=[
                ErrorMappingInterceptor(counter_request_ids(f"tgw{os.getpid()}"), self._gate)
            ],
            options=[
                ("grpc.max_send_message_length", max_bytes),
                ("grpc.max_receive_message_length", max_bytes),
                # Without this a second process could bind the same port and split traffic.
                ("grpc.so_reuseport", 0),
            ],
        )
        server.add_generic_rpc_handlers((inference_handler(InferenceServicer(self.dataplane)),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        return server

    def _count_breaker_change(self, backend: str, model: str, state: BreakerState) -> None:
        self.metrics.breaker_transitions.labels(
            backend=backend, model=model, state=state.value
        ).inc()

    def _metric_labels(self, model: str, version: str) -> tuple[str, str]:
        return self.dataplane.metric_labels(model, version)

    def _backend_gauges(self) -> list[BackendGauge]:
        return [
            BackendGauge(
                name=b.name,
                up=b.health.ready,
                ready_versions=len(b.health.models),
                breaker_open=b.breaker.state is not BreakerState.CLOSED,
                drained=self.pool.is_drained(b.name),
                open_model_breakers={
                    model: breaker.state is not BreakerState.CLOSED
                    for model, breaker in b.model_breakers.items()
                },
            )
            for b in self.pool.backends
        ]

    def _report_readiness(self, table: RouteTable[TritonBackend]) -> None:
        task = asyncio.create_task(self._set_serving(self.dataplane.is_ready()))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _set_serving(self, serving: bool) -> None:
        if self._health is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)
