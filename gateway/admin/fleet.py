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
from gateway.repository.manager import ModelStatus

_LOAD_TIMEOUT_S = 600.0
"""A fleet load waits this long per backend (large models on a busy server take minutes)."""


class AdminFleet:
    def __init__(
        self,
        pool: BackendPool,
        dataplane: DataPlane,
        edge_views: Callable[[], Mapping[str, control_pb2.BackendView]],
        is_managed: Callable[[str], bool],
        published: Callable[[], list[ModelStatus]],
    ) -> None:
        self._pool = pool
        self._dataplane = dataplane
        self._edge_views = edge_views
        self.is_managed = is_managed
        self._published = published

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

    def models(self, name: str) -> list[admin_pb2.PublishedModel]:
        return [_published(s) for s in self._published() if not name or s.name == name]

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


def _published(status: ModelStatus) -> admin_pb2.PublishedModel:
    if not status.sha256:
        state = "removed"
    elif status.rolling_out:
        state = "rolling_out"
    elif status.failed:
        state = "failed"
    else:
        state = "serving"
    model = admin_pb2.PublishedModel(
        name=status.name,
        sha256=status.sha256,
        serving_sha256=status.serving_sha256,
        served_versions=status.served_versions,
        state=state,
        backends=[
            admin_pb2.BackendContent(backend=b.backend, versions=b.versions, sha256=b.sha256)
            for b in status.backends
        ],
    )
    for event in status.history:
        entry = model.history.add(
            event=event.event, sha256=event.sha256, backends=event.backends, detail=event.detail
        )
        entry.at.FromNanoseconds(int(event.at * 1e9))
        if event.seconds is not None:
            entry.duration.FromNanoseconds(int(event.seconds * 1e9))
    return model
