"""tgw.admin.v1.GatewayAdmin: routes, backends and drains, fleet-wide loads. Each method
delegates: routes to ``TrafficState``, the fleet to ``AdminFleet``; refusals are answered with
their status and one line that says what to do."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter

from gateway._protos.tgw.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway.admin.fleet import AdminFleet
from gateway.errors import FleetChangeError
from gateway.rollout.controller import RolloutController
from gateway.traffic.routes import AdminError
from gateway.traffic.state import TrafficState

log = structlog.get_logger(__name__)
T = TypeVar("T")


class AdminMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.changes = Counter(
            "triton_gateway_admin_changes_total",
            "Admin changes asked for, by action and outcome (ok or the status refused with).",
            ["action", "outcome"],
            registry=registry,
        )


class AdminServicer(admin_pb2_grpc.GatewayAdminServicer):
    def __init__(
        self,
        traffic: TrafficState,
        fleet: AdminFleet,
        metrics: AdminMetrics,
        route_figures: Callable[[str], list[admin_pb2.VariantFigures]],
        rollouts: RolloutController,
    ) -> None:
        self._traffic = traffic
        self._fleet = fleet
        self._metrics = metrics
        self._route_figures = route_figures
        self._rollouts = rollouts

    async def ListRoutes(
        self, request: admin_pb2.ListRoutesRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListRoutesResponse:
        return admin_pb2.ListRoutesResponse(routes=[self._shown(r) for r in self._traffic.routes()])

    async def GetRoute(
        self, request: admin_pb2.GetRouteRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Route:
        route = self._traffic.route(request.name)
        if route is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.name}' has no route")
            raise AssertionError("abort raises")
        return self._shown(route)

    async def SetRoute(
        self, request: admin_pb2.SetRouteRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Route:
        return await self._change(
            "set_route",
            context,
            lambda: self._traffic.set_route(request.route, request.expected_revision),
        )

    async def DeleteRoute(
        self, request: admin_pb2.DeleteRouteRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.DeleteRouteResponse:
        await self._change(
            "delete_route",
            context,
            lambda: self._traffic.delete_route(request.name, request.expected_revision),
        )
        return admin_pb2.DeleteRouteResponse()

    async def ListBackends(
        self, request: admin_pb2.ListBackendsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListBackendsResponse:
        return admin_pb2.ListBackendsResponse(backends=self._fleet.backends())

    async def DrainBackend(
        self, request: admin_pb2.BackendRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Backend:
        return await self._change("drain", context, lambda: self._drain(request.name, True))

    async def UndrainBackend(
        self, request: admin_pb2.BackendRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Backend:
        return await self._change("undrain", context, lambda: self._drain(request.name, False))

    async def LoadModel(
        self, request: admin_pb2.FleetModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.FleetModelResult:
        return await self._change("load", context, lambda: self._fleet_change(request.name, True))

    async def UnloadModel(
        self, request: admin_pb2.FleetModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.FleetModelResult:
        return await self._change(
            "unload", context, lambda: self._fleet_change(request.name, False)
        )

    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListModelsResponse:
        models = self._fleet.models(request.name)
        if request.name and not models:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model '{request.name}' is not published from the gateway's repository",
            )
        for model in models:
            model.withheld.extend(self._traffic.withheld(model.name))
        return admin_pb2.ListModelsResponse(models=models)

    async def RestoreVersion(
        self, request: admin_pb2.RestoreVersionRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.RestoreVersionResponse:
        async def restore() -> admin_pb2.RestoreVersionResponse:
            restored = await self._traffic.restore(request.model, request.version)
            return admin_pb2.RestoreVersionResponse(restored=restored)

        return await self._change("restore_version", context, restore)

    async def StartRollout(
        self, request: admin_pb2.StartRolloutRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Rollout:
        plan = request.plan if request.HasField("plan") else None
        return await self._change(
            "start_rollout",
            context,
            lambda: self._rollouts.begin(request.route, request.candidate, plan),
        )

    async def GetRollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Rollout:
        try:
            return self._rollouts.rollout(request.route)
        except AdminError as exc:
            await context.abort(exc.code, exc.message)
            raise AssertionError("abort raises") from exc

    async def ListRollouts(
        self, request: admin_pb2.ListRolloutsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListRolloutsResponse:
        return admin_pb2.ListRolloutsResponse(rollouts=self._rollouts.rollouts())

    async def PauseRollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Rollout:
        return await self._change(
            "pause_rollout", context, lambda: self._rollouts.pause(request.route)
        )

    async def ResumeRollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Rollout:
        return await self._change(
            "resume_rollout", context, lambda: self._rollouts.resume(request.route)
        )

    async def PromoteRollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Rollout:
        return await self._change(
            "promote_rollout", context, lambda: self._rollouts.promote(request.route)
        )

    async def AbortRollout(
        self, request: admin_pb2.RolloutRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Rollout:
        return await self._change(
            "abort_rollout", context, lambda: self._rollouts.abort(request.route)
        )

    def _shown(self, route: admin_pb2.Route) -> admin_pb2.Route:
        shown = admin_pb2.Route()
        shown.CopyFrom(route)
        shown.figures.extend(self._route_figures(route.name))
        return shown

    async def _drain(self, name: str, drained: bool) -> admin_pb2.Backend:
        if not self._fleet.has_backend(name):
            known = ", ".join(b.name for b in self._fleet.backends()) or "none"
            raise AdminError(
                grpc.StatusCode.NOT_FOUND, f"no backend is named '{name}' (backends: {known})"
            )
        await self._traffic.set_drained(name, drained)
        return next(b for b in self._fleet.backends() if b.name == name)

    async def _fleet_change(self, name: str, load: bool) -> admin_pb2.FleetModelResult:
        if not name:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "name the model to load or unload")
        if self._fleet.is_managed(name):
            raise AdminError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model '{name}' is published from the gateway's model repository: drop a new "
                "version there, or remove its directory, instead",
            )
        try:
            changed = await (self._fleet.load(name) if load else self._fleet.unload(name))
        except FleetChangeError as exc:
            results = [admin_pb2.BackendResult(backend=b, ok=True) for b in exc.changed]
            results.append(
                admin_pb2.BackendResult(backend=exc.backend, ok=False, message=exc.message)
            )
            return admin_pb2.FleetModelResult(completed=False, results=results)
        return admin_pb2.FleetModelResult(
            completed=True, results=[admin_pb2.BackendResult(backend=b, ok=True) for b in changed]
        )

    async def _change(
        self,
        action: str,
        context: grpc.aio.ServicerContext,
        change: Callable[[], Awaitable[T]],
    ) -> T:
        try:
            result = await change()
        except AdminError as exc:
            self._metrics.changes.labels(action, exc.code.name).inc()
            log.warning(
                "admin_change_refused", action=action, code=exc.code.name, reason=exc.message
            )
            await context.abort(exc.code, exc.message)
            raise AssertionError("abort raises") from exc
        self._metrics.changes.labels(action, "ok").inc()
        return result
