"""What the admin service sees of the fleet: backends as the health polls and tgw-edge's
reports show them, and the fleet-wide load/unload of the data plane."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from google.protobuf import duration_pb2
from tritonclient.grpc import service_pb2

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway._protos.tgw.control.v1 import control_pb2
from gateway.backends.pool import BackendPool
from gateway.dataplane import DataPlane

_LOAD_TIMEOUT_S = 600.0
"""A fleet load waits this long per backend (large models on a busy server take minutes)."""


class AdminFleet:
    def __init__(
        self,
        pool: BackendPool,
        dataplane: DataPlane,
        edge_views: Callable[[], Mapping[str, control_pb2.BackendView]],
        is_managed: Callable[[str], bool],
    ) -> None:
        self._pool = pool
        self._dataplane = dataplane
        self._edge_views = edge_views
        self.is_managed = is_managed

    def has_backend(self, name: str) -> bool:
        return any(b.name == name for b in self._pool.backends)

    def backends(self) -> list[admin_pb2.Backend]:
        views = self._edge_views()
        found = []
        for backend in self._pool.backends:
            view = views.get(backend.name)
            entry = admin_pb2.Backend(
                name=backend.name,
                address=backend.address,
                ready=backend.health.ready,
                drained=self._pool.is_drained(backend.name),
                breaker=admin_pb2.BREAKER_STATE_CLOSED,
                ready_models=[
                    admin_pb2.ModelVersion(model=m, version=v)
                    for m, v in sorted(backend.health.models)
                ],
            )
            if view is not None:
                entry.breaker = _state(view.breaker or control_pb2.BREAKER_STATE_CLOSED)
                entry.in_flight = view.in_flight
                entry.model_breakers.extend(
                    admin_pb2.ModelBreaker(
                        model=b.model,
                        state=_state(b.state),
                    )
                    for b in view.model_breakers
                )
                slowest = max(
                    (latency.latency for latency in view.latencies),
                    key=lambda d: d.ToNanoseconds(),
                    default=duration_pb2.Duration(),
                )
                entry.latency.CopyFrom(slowest)
            found.append(entry)
        return found

    async def load(self, name: str) -> list[str]:
        request = service_pb2.RepositoryModelLoadRequest(model_name=name)
        return await self._dataplane.load_everywhere(request, _LOAD_TIMEOUT_S)

    async def unload(self, name: str) -> list[str]:
        request = service_pb2.RepositoryModelUnloadRequest(model_name=name)
        return await self._dataplane.unload_everywhere(request, _LOAD_TIMEOUT_S)


def _state(state: int) -> admin_pb2.BreakerState:
    # The control and admin packages name breaker states alike (their numbers may not be).
    return cast(
        admin_pb2.BreakerState, admin_pb2.BreakerState.Value(control_pb2.BreakerState.Name(state))
    )
