"""Composition root: builds every component from settings, owns start and stop order."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import shutil
import signal
import socket
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

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

from gateway._protos.tgw.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway._protos.tgw.control.v1 import control_pb2
from gateway.admin.auth import TokenInterceptor, admin_token
from gateway.admin.fleet import AdminFleet
from gateway.admin.service import AdminMetrics, AdminServicer
from gateway.backends.fallback import OnnxFallback
from gateway.backends.pool import BackendPool
from gateway.backends.triton import TritonBackend
from gateway.config_errors import ConfigError, load_checked
from gateway.config_watch import content_changes, content_digest
from gateway.consul_agent import ConsulAgent
from gateway.control import snapshot
from gateway.control.arguments import edge_arguments, find_edge_binary
from gateway.control.errors import ControlError
from gateway.control.listener import bind_public
from gateway.control.ports import taken
from gateway.control.runtime import RuntimeLock, default_runtime_dir, prepare_runtime_dir
from gateway.control.supervisor import EdgeError, EdgeSupervisor
from gateway.dataplane import DataPlane
from gateway.discovery.base import Discovery, Endpoint
from gateway.discovery.consul import ConsulDiscovery, health_query
from gateway.discovery.dns import DnsDiscovery
from gateway.discovery.static import StaticDiscovery
from gateway.observability.metrics import BackendGauge, RequestMetrics
from gateway.observability.tracing import OpenTelemetryTracer, PassThroughTracer, Tracer
from gateway.repository.content import ModelContent, VersionPins
from gateway.repository.golden import Tolerance
from gateway.repository.manager import ManagerSettings, RepositoryManager
from gateway.repository.metrics import RepositoryMetrics
from gateway.repository.push import PushSettings
from gateway.repository.scanner import RepositoryScanner
from gateway.repository.store import ContentStore
from gateway.repository.validation import Limits
from gateway.rollout.controller import RolloutController, RolloutMetrics
from gateway.rollout.fleet_figures import FleetFigures
from gateway.rollout.leadership import ConsulLeadership, Leadership, SoleLeader
from gateway.routing.table import RouteTable
from gateway.server.drain import DrainGate
from gateway.server.inference import SERVICE_NAME, InferenceServicer, inference_handler
from gateway.server.interceptor import ErrorMappingInterceptor, counter_request_ids
from gateway.settings import GatewaySettings
from gateway.settings_diff import changed_keys, is_drain
from gateway.shm.calls import SharedMemoryCalls
from gateway.shm.regions import SharedMemoryRegions
from gateway.traffic.consul_store import ConsulRouteStore
from gateway.traffic.figures import VariantTotals, figures
from gateway.traffic.routes import edge_route
from gateway.traffic.state import TrafficState
from gateway.traffic.store import FileRouteStore, RouteStore

log = structlog.get_logger(__name__)

LIVENESS_SERVICE = "triton-gateway.live"
"""grpc.health.v1 service SERVING while the gateway runs: a liveness probe that a fleet
with no ready backend does not fail (readiness, the service "", does)."""
ADMIN_SERVICE = "tgw.admin.v1.GatewayAdmin"
"""The admin service's name in grpc.health.v1 (NOT_SERVING while the shared state's store
cannot be reached)."""

_EDGE_METRICS_TIMEOUT_S = 5.0
"""How long a scrape waits for tgw-edge's counters (Prometheus' own scrape timeout is 10 s):
a busy machine must not make the edge's series vanish from a scrape."""

POLICY_SECTIONS = ("breaker", "balancing", "retry", "timeouts", "hedging", "shedding")
"""Settings sections tgw-edge applies per request: a saved config file changes them live."""


def _fallback(settings: GatewaySettings) -> OnnxFallback | None:
    config = settings.fallback
    if not config.enabled:
        return None
    if not settings.repository.path.is_dir():
        log.warning(
            "fallback_disabled", reason="no model repository", path=str(settings.repository.path)
        )
        return None
    # Its models come from the repository manager's first scan (``follow``), validated.
    return OnnxFallback(
        models=config.models,
        threads=config.threads,
        max_concurrency=config.max_concurrency,
        max_queue=config.max_queue,
        max_request_bytes=config.max_request_bytes,
        max_total_bytes=config.max_total_bytes,
        providers=config.providers,
    )


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
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._loaded_settings = settings
        """The settings file's content when last read (a reload reports what changed)."""
        max_bytes = settings.server.max_message_bytes
        uses_consul = (
            settings.discovery.source == "consul" or settings.admin.state_store == "consul"
        )
        self._consul = ConsulAgent(settings.consul) if uses_consul else None
        self._discovery = discovery or discovery_source(settings, self._consul)
        self.shared_memory = SharedMemoryCalls(SharedMemoryRegions(), self._loopback_address)
        """System shared-memory regions of clients on this host, and their calls."""
        # With replicas (the traffic state in Consul): one judges the rollouts, on every
        # replica's figures.
        self._leadership, self._fleet_figures = self._replica_roles(clock, wall_clock)
        backend_metadata = settings.security.backend_metadata()
        backend_credentials = settings.backend_tls.channel_credentials()
        self.pool = BackendPool(
            lambda endpoint: TritonBackend(
                endpoint.name,
                endpoint.address,
                max_message_bytes=max_bytes,
                control_metadata=backend_metadata,
                credentials=backend_credentials,
            ),
            poll_interval_s=settings.health.poll_interval_s,
            poll_timeout_s=settings.health.poll_timeout_s,
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = RequestMetrics(
            self.registry,
            backends=self._backend_gauges,
            model_labels=self._metric_labels,
            edge_text=self._edge_metrics,
        )
        self.fallback = _fallback(settings)
        self._clock = clock
        self.dataplane = DataPlane(
            self.pool,
            self.metrics,
            tracer=_tracer(settings, tracer_provider),
            fallback=self.fallback,
            model_repository_key=settings.security.client_key(),
        )
        self.repository: RepositoryManager | None = None
        """Follows model drops (set at start; None without a repository)."""
        self.edge: EdgeSupervisor | None = None
        """Runs tgw-edge, the data plane (set at start)."""
        self._fault_counts: dict[str, int] = {}
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
        """The public port, served by tgw-edge."""
        self.private_address = ""
        """Where the Python gRPC server listens: a Unix socket only tgw-edge talks to."""
        # The runtime folder, once this process holds it.
        self._runtime: RuntimeLock | None = None
        self._fresh_runtime = False
        self._edge_breakers: dict[str, control_pb2.BackendView] = {}
        self._variant_totals: dict[tuple[str, str], VariantTotals] = {}
        """(traffic route, variant) -> the edge's cumulative figures (its last report)."""
        self._wall_clock = wall_clock
        self.traffic: TrafficState | None = None
        """Routes and drains set through the admin service (set at start)."""
        self.rollouts: RolloutController | None = None
        """Progressive rollouts (set at start)."""
        self._admin_server: grpc.aio.Server | None = None
        self.admin_port = 0
        self._contents: dict[str, ModelContent] = {}
        self._config_drained = frozenset(b.name for b in settings.backends if b.drained)

    async def start(self) -> int:
        """Bind, learn the fleet, start serving; returns the bound port."""
        # What the settings were read from: a save that changes nothing is no reload.
        config_digest = content_digest(self._config_path) if self._config_path else None
        # grpc.aio objects bind to the running loop, so they are built here, not in __init__.
        self._health = health_aio.HealthServicer()
        # Liveness: SERVING while the process runs (readiness, "", follows the backends).
        await self._health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._server = self._build_server()
        binary = self._edge_binary()
        configured = self.settings.edge.runtime_dir or default_runtime_dir(
            self.settings.server.port
        )
        runtime, fresh = prepare_runtime_dir(configured)
        # Before anything in the folder is touched: a live gateway that holds it keeps its
        # sockets (its edge hands calls over through them), its state and its edge.
        self._runtime = RuntimeLock.acquire(runtime)
        self._fresh_runtime = fresh
        state_dir = self.settings.admin.state_dir or runtime
        self.traffic = TrafficState(
            self._route_store(state_dir),
            self.settings.traffic,
            self._servable,
            self._traffic_changed,
            clock=self._wall_clock,
        )
        fleet_figures = self._fleet_figures
        self.rollouts = RolloutController(
            self.traffic,
            fleet_figures.totals if fleet_figures is not None else lambda: self._variant_totals,
            self.settings.rollout,
            RolloutMetrics(self.registry),
            clock=self._clock,
            wall_clock=self._wall_clock,
            version_digest=self._version_digest,
            leads=self._leadership.leads,
        )
        # Every port this process serves besides the public one is bound before the edge
        # starts: a port in use ends the start with nothing left running.
        self._serve_metrics()
        if self.settings.admin.enabled:
            self._admin_server = self._bind_admin(state_dir)
        await self.traffic.start()
        self._leadership.start()
        if self._fleet_figures is not None:
            self._fleet_figures.start()
        self.repository = self._repository_manager(runtime / "store")
        if self.repository is not None:
            await self.repository.start(self.settings.health.startup_wait_s)
        # The gRPC server listens only on a Unix socket in a folder only this user can open:
        # no other local process can skip the edge's checks (or forge its hand-over header).
        socket = runtime / "gateway.sock"
        socket.unlink(missing_ok=True)  # left by a gateway that died
        self.private_address = f"unix:{socket}"
        if self._server.add_insecure_port(self.private_address) == 0:
            raise OSError(f"cannot listen on {self.private_address}")
        self.pool.on_change(self._report_readiness)
        # A backend found down may have been replaced: its source looks again soon, not only
        # when the records' TTL runs out.
        self.pool.on_unreachable(lambda name: self._discovery.refresh_soon())
        self._follow_task = asyncio.create_task(self.pool.follow(self._discovery), name="discovery")
        self._apply_drains()
        await self.pool.wait_discovered(self.settings.health.startup_wait_s)
        if self._config_path is not None:
            self._config_watch = asyncio.create_task(
                self._watch_config(self._config_path, config_digest), name="config-watch"
            )
        await self._set_serving(self.dataplane.is_ready())
        await self._server.start()
        # The folder is already owner-only (0700); the socket is too, in case it is moved.
        socket.chmod(0o600)
        edge = self.settings.edge
        self.edge = EdgeSupervisor(
            binary,
            edge_arguments(self.settings),
            runtime,
            self._snapshot,
            lambda: bind_public(self.settings.server.host, self.settings.server.port),
            on_report=self._edge_report,
            on_up=self._edge_up,
            on_restart=self.metrics.edge_restarts.inc,
            clock=self._clock,
            hang_timeout_s=edge.hang_timeout_s,
            max_restarts=edge.max_restarts,
            restart_window_s=edge.restart_window_s,
        )
        self.port = await self.edge.start()
        self.pool.on_change(lambda table: self.edge.publish() if self.edge else None)
        if self.repository is not None and self.settings.repository.push:
            self.repository.start_reconciling()
        self.rollouts.start()
        if self._admin_server is not None:
            await self._admin_server.start()
        log.info(
            "gateway_started",
            port=self.port,
            admin_port=self.admin_port,
            edge_pid=self.edge.pid,
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
        if self._admin_server is not None:
            await self._admin_server.stop(1.0)
        if self.rollouts is not None:
            await self.rollouts.close()
        await self._leadership.close()
        if self._fleet_figures is not None:
            await self._fleet_figures.close()
        if self.traffic is not None:
            await self.traffic.close()
        if self.edge is not None:
            await self.edge.stop(grace)
        log.info("draining_calls", in_flight=self._gate.in_flight, grace_s=grace)
        await self._gate.drain(grace)
        if self._server is not None:
            # Nothing is in flight any more (or the grace is spent); the short grace lets the
            # refusals of calls that raced the drain reach their clients.
            await self._server.stop(1.0)
        if self.repository is not None:
            await self.repository.close()
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        await self._close_resources()
        log.info("gateway_stopped")

    async def _close_resources(self) -> None:
        """What stays open once no call is in flight: backends, Consul, the fallback."""
        await self.shared_memory.close()
        self.shared_memory.regions.close()
        await self.pool.close()
        if self._consul is not None:
            await self._consul.close()
        if self.fallback is not None:
            self.fallback.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self._runtime is not None:
            (self._runtime.folder / "gateway.sock").unlink(missing_ok=True)
            if self._fresh_runtime:
                shutil.rmtree(self._runtime.folder, ignore_errors=True)
            self._runtime.release()  # last: the folder may be another gateway's from now on

    async def run_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
        except Exception:
            # Whatever did start stops (an edge above all: it would keep the public port).
            try:
                await self.stop(0)
            except Exception as cleanup:  # the start's own error is the one to tell
                log.warning("stop_after_failed_start_failed", error=str(cleanup))
            raise
        assert self.edge is not None
        stopped: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
        failed: asyncio.Future[object] = self.edge.failed  # type: ignore[assignment]
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        if self.edge.failed.done():
            # No data plane can be kept running: exit non-zero rather than look served.
            stopped.cancel()
            await self.stop()
            raise EdgeError(self.edge.failed.result())
        log.info("gateway_draining", grace_s=self.settings.server.shutdown_grace_s)
        await self.stop()

    async def _watch_config(self, path: Path, since: bytes | None) -> None:
        """Apply backend drains and the per-request policy from the config file whenever it
        is saved: tgw-edge takes both in its next snapshot, without a restart. Other sections
        (ports, edge limits, discovery) take effect at the next start."""
        try:
            async for _ in content_changes(path, since):
                self._reload_config(path)
        except Exception as exc:
            # Never silently: saves are not applied from now on.
            log.error("config_watch_failed", path=str(path), error=str(exc))
            raise

    def _reload_config(self, path: Path) -> None:
        try:
            settings = load_checked(path)
        except ConfigError as exc:
            log.warning("config_reload_rejected", path=str(path), error=str(exc))
            return
        changed = sorted(
            name
            for name in POLICY_SECTIONS
            if getattr(settings, name) != getattr(self.settings, name)
        )
        if changed:
            self.settings = self.settings.model_copy(
                update={name: getattr(settings, name) for name in changed}
            )
            if self.edge is not None:
                self.edge.publish()
        self._config_drained = frozenset(b.name for b in settings.backends if b.drained)
        self._apply_drains()
        keys = changed_keys(self._loaded_settings.model_dump(), settings.model_dump())
        self._loaded_settings = settings
        applied = [k for k in keys if k.split(".")[0] in POLICY_SECTIONS or is_drain(k)]
        restart = [k for k in keys if k not in applied]
        log.info("config_reloaded", path=str(path), applied=applied, needs_restart=restart)
        if restart:
            log.warning(
                "config_needs_restart",
                path=str(path),
                keys=restart,
                hint="these take effect when the gateway restarts",
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
        servicer = InferenceServicer(self.dataplane, self.shared_memory)
        server.add_generic_rpc_handlers((inference_handler(servicer),))
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

    def _edge_binary(self) -> Path:
        configured = self.settings.edge.binary
        binary = find_edge_binary(configured)
        if binary is not None:
            return binary
        if configured is not None:
            raise EdgeError(
                f"edge.binary {configured} is not a file: give the path of tgw-edge, or unset "
                "edge.binary (GATEWAY_EDGE__BINARY) to use the one 'make install' installs"
            )
        raise EdgeError(
            "tgw-edge was not found: run 'make install' or set edge.binary (GATEWAY_EDGE__BINARY)"
        )

    def _serve_metrics(self) -> None:
        metrics = self.settings.metrics
        if not metrics.enabled:
            return
        try:
            server, _ = start_http_server(metrics.port, metrics.host, registry=self.registry)
        except OSError as exc:
            raise ControlError(
                taken("metrics", metrics.host, metrics.port, exc, "metrics.port")
            ) from exc
        self._metrics_server = server
        self.metrics_port = server.server_port

    def _bind_admin(self, state_dir: Path) -> grpc.aio.Server:
        """The admin service on its own port (localhost by default), every call
        token-checked: bound here, serving once started."""
        admin = self.settings.admin
        server = grpc.aio.server(
            interceptors=[TokenInterceptor(admin_token(admin, state_dir))],
            options=[("grpc.so_reuseport", 0)],
        )
        assert self.traffic is not None
        fleet = AdminFleet(
            self.pool,
            self.dataplane,
            lambda: self._edge_breakers,
            self._is_managed,
            lambda: self.repository.status() if self.repository is not None else [],
        )
        assert self.rollouts is not None
        servicer = AdminServicer(
            self.traffic, fleet, AdminMetrics(self.registry), self._route_figures, self.rollouts
        )
        admin_pb2_grpc.add_GatewayAdminServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        wanted = admin.listen_port(self.settings.server.port)
        address = f"{admin.host}:{wanted}"
        try:
            port = (
                server.add_secure_port(address, admin.tls.server_credentials())
                if admin.tls.enabled
                else server.add_insecure_port(address)
            )
        except RuntimeError:
            port = 0  # grpcio raises "Failed to bind" where older versions returned 0
        if port == 0:
            in_use = OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
            raise ControlError(taken("the admin service", admin.host, wanted, in_use, "admin.port"))
        self.admin_port = port
        return server

    def _model_rolled_out(self, content: ModelContent) -> None:
        if self.rollouts is not None:
            self.rollouts.on_rolled_out(content.name, content.served_versions)

    def _route_figures(self, route: str) -> list[admin_pb2.VariantFigures]:
        return [
            figures(variant, totals)
            for (name, variant), totals in sorted(self._variant_totals.items())
            if name == route
        ]

    def _is_managed(self, model: str) -> bool:
        return self.settings.repository.push and model in self._contents

    def _servable(self, model: str, version: str) -> bool:
        if (model, version) in self.pool.table.candidates:
            return True
        if self.fallback is None or model not in self.fallback.models():
            return False
        content = self._contents.get(model)
        return not version or (content is not None and version in content.served_versions)

    def _apply_drains(self) -> None:
        drained = self.traffic.drained() if self.traffic is not None else frozenset()
        self.pool.set_drained(self._config_drained | drained)

    def _loopback_address(self) -> str | None:
        """Where this host reaches the public port (None before it serves, or with TLS: the
        shared-memory calls' loopback is plaintext)."""
        server = self.settings.server
        if not self.port or server.tls.enabled:
            return None
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(
            server.host, server.host
        )
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def _replica_roles(
        self, clock: Callable[[], float], wall_clock: Callable[[], float]
    ) -> tuple[Leadership, FleetFigures | None]:
        settings = self.settings
        if self._consul is None or settings.admin.state_store != "consul":
            return SoleLeader(), None
        replica = f"{socket.gethostname()}:{os.getpid()}"
        leadership = ConsulLeadership(
            self._consul,
            f"{settings.admin.state_key}/rollout-leader",
            replica=replica,
            clock=clock,
        )
        figures = FleetFigures(
            self._consul,
            f"{settings.admin.state_key}/figures",
            replica,
            lambda: self._variant_totals,
            leadership.leads,
            lambda: (
                self.traffic is not None
                and any(r.status == "running" for r in self.traffic.rollouts())
            ),
            interval_s=settings.rollout.tick_s,
            wall_clock=wall_clock,
        )
        return leadership, figures

    def leads_rollouts(self) -> bool:
        """Whether this replica judges the progressive rollouts (always, alone)."""
        return self._leadership.leads()

    def _route_store(self, state_dir: Path) -> RouteStore:
        admin = self.settings.admin
        if admin.state_store == "consul" and self._consul is not None:
            return ConsulRouteStore(
                self._consul, admin.state_key, on_reachable=self._state_store_reachable
            )
        return FileRouteStore(state_dir / "traffic.json")

    def _state_store_reachable(self, reachable: bool) -> None:
        """The shared state's store: unreachable, this replica serves its last state and
        takes no admin change; its admin service reports NOT_SERVING meanwhile."""
        self.metrics.state_store_reachable.set(1 if reachable else 0)
        task = asyncio.create_task(self._set_health(reachable, (ADMIN_SERVICE,)))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    def _traffic_changed(self) -> None:
        self._apply_drains()
        if self.edge is not None:
            self.edge.publish()
        if self.repository is not None:
            self.repository.rescan()  # the versions routes name or withhold may have changed

    def _version_pins(self, model: str) -> VersionPins:
        return self.traffic.pins(model) if self.traffic is not None else VersionPins()

    def _version_digest(self, model: str, version: str) -> str | None:
        return self.repository.version_digest(model, version) if self.repository else None

    def _model_sha256(self, model: str, version: str) -> str:
        content = self._contents.get(model)
        return content.model_file_sha256(version) if content is not None and version else ""

    def _repository_manager(self, store_dir: Path) -> RepositoryManager | None:
        config = self.settings.repository
        if not config.path.is_dir():
            log.warning("model_repository_missing", path=str(config.path))
            return None
        store = ContentStore(store_dir)
        metrics = RepositoryMetrics(self.registry)
        scanner = RepositoryScanner(
            config.path,
            store,
            Limits(max_model_bytes=config.max_model_bytes),
            config.settle_s,
            metrics,
            self._clock,
        )
        manager = RepositoryManager(
            scanner,
            store,
            self.pool,
            ManagerSettings(
                rescan_interval_s=config.rescan_interval_s,
                reconcile_interval_s=config.reconcile_interval_s,
                parallelism=config.parallelism,
                drain_s=config.drain_s,
                push=PushSettings(
                    cpu_only=config.cpu_only_backends,
                    load_timeout_s=config.load_timeout_s,
                    call_timeout_s=config.call_timeout_s,
                    tolerance=Tolerance(atol=config.golden_atol, rtol=config.golden_rtol),
                ),
            ),
            metrics,
            edge_sync=self._edge_sync,
            on_contents=self._repository_contents,
            on_rolled_out=self._model_rolled_out,
            pins=self._version_pins,
            clock=self._clock,
            wall_clock=self._wall_clock,
        )
        if config.push:
            self.pool.manage_models(
                manager.gate,
                manager.expected,
                manager.backend_restarted,
                manager.pinned_latest,
                manager.incoming,
            )
        return manager

    async def _edge_sync(self, timeout_s: float) -> bool:
        return await self.edge.sync(timeout_s) if self.edge is not None else True

    def _repository_contents(self, contents: dict[str, ModelContent]) -> None:
        self._contents = contents
        if self.fallback is not None:
            self.fallback.follow(contents)
            if self.settings.fallback.preload:
                self.fallback.preload()
        if self.edge is not None:
            self.edge.publish()  # the fallback's model list is in the snapshot

    def _snapshot(self) -> control_pb2.Snapshot:
        served = self.fallback.models() if self.fallback is not None else ()
        routes = self.traffic.routes() if self.traffic is not None else []
        return snapshot.build(
            self.settings,
            self.pool,
            served,
            [edge_route(route, self.settings.traffic) for route in routes],
            self._model_sha256,
        )

    def _edge_report(self, report: control_pb2.EdgeReport) -> None:
        """A backend whose faults grew since the last report is polled now: a dead server or
        a model gone leaves the routes at once."""
        faults: dict[str, int] = {}
        for row in report.outcomes:
            faults[row.backend] = faults.get(row.backend, 0) + row.backend_faults + row.model_faults
        for backend, count in faults.items():
            if count > self._fault_counts.get(backend, 0):
                self.pool.poll_soon(backend)
        self._fault_counts = faults
        self._edge_breakers = {view.name: view for view in report.backends}
        self._variant_totals = {
            (row.route, row.variant): VariantTotals.from_report(row) for row in report.variants
        }

    def _edge_up(self, up: bool) -> None:
        self.metrics.edge_up.set(1 if up else 0)
        task = asyncio.create_task(self._set_serving(self._serving()))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    def _edge_metrics(self) -> str:
        edge = self.edge
        if edge is None or not edge.up:
            return ""
        try:
            return edge.client.metrics_text(_EDGE_METRICS_TIMEOUT_S)
        except grpc.RpcError:
            return ""

    def _metric_labels(self, model: str, version: str) -> tuple[str, str]:
        return self.dataplane.metric_labels(model, version)

    def _backend_gauges(self) -> list[BackendGauge]:
        return [
            BackendGauge(
                name=b.name,
                up=b.health.ready,
                ready_versions=len(b.health.models),
                drained=self.pool.is_drained(b.name),
            )
            for b in self.pool.backends
        ]

    def _serving(self) -> bool:
        """SERVING while an edge serves the public port and something can answer."""
        return self.edge is not None and self.edge.up and self.dataplane.is_ready()

    def _report_readiness(self, table: RouteTable[TritonBackend]) -> None:
        task = asyncio.create_task(self._set_serving(self._serving()))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _set_serving(self, serving: bool) -> None:
        await self._set_health(serving, ("", SERVICE_NAME))

    async def _set_health(self, serving: bool, services: tuple[str, ...]) -> None:
        if self._health is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in services:
            await self._health.set(service, status)


def discovery_source(settings: GatewaySettings, consul: ConsulAgent | None) -> Discovery:
    """The backends' source the settings choose (``discovery.source``)."""
    config = settings.discovery
    if config.source == "dns" and config.dns is not None:
        return DnsDiscovery(config.dns)
    if config.source == "consul" and config.consul is not None and consul is not None:
        return ConsulDiscovery(health_query(consul, config.consul), config.consul)
    return StaticDiscovery(Endpoint(name=b.name, address=b.address) for b in settings.backends)
