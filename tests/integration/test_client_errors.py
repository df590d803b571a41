"""Statuses the request itself causes are the client's: answered as Triton answers them, never
retried, never held against a backend, never answered by the fallback, and no state grows with
the names and versions clients invent."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.app import Gateway
from gateway.balancing.breaker import BreakerState
from gateway.devfleet import LocalFleet
from gateway.settings import load_settings
from tests.support.background import BackgroundGateway
from tests.support.metrics import requests_total, scrape
from tests.support.models import MODEL_REPOSITORY
from tests.support.settings import gateway_settings

SHM_NOT_FOUND = "Unable to find shared memory region: 'nosuch_region'"
FALLBACK = ("x-gateway-served-by", "fallback")


def _stub(address: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))


def _outcome(call: Any, request: Any) -> tuple[grpc.StatusCode, str, tuple[Any, ...]]:
    try:
        _, info = call.with_call(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", tuple(exc.trailing_metadata() or ())
    return grpc.StatusCode.OK, "", tuple(info.trailing_metadata() or ())


def _shm_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.parameters["shared_memory_region"].string_param = "nosuch_region"
        tensor.parameters["shared_memory_byte_size"].int64_param = 64
    return request


@pytest.mark.parametrize("edge", ["off", "on"], ids=["python", "edge"])
def test_an_unknown_shared_memory_region_is_the_clients_not_found(
    fleet: LocalFleet, edge: str
) -> None:
    settings = gateway_settings(
        fleet, edge={"mode": edge}, breaker={"consecutive_failures": 1, "base_ejection_s": 60}
    )
    with BackgroundGateway(Gateway(settings)) as gateway:
        port = gateway.gateway.metrics_port
        pool = gateway.gateway.pool
        infer = _stub(gateway.url).ModelInfer
        for _ in range(10):
            # Triton's status and message, unchanged; not an OK from the fallback.
            code, message, trailers = _outcome(infer, _shm_request())
            assert (code, message) == (grpc.StatusCode.NOT_FOUND, SHM_NOT_FOUND)
            assert FALLBACK not in trailers
        counted = {"triton_gateway_retries_total", "triton_gateway_retry_budget_exhausted_total"}
        assert sum(v for (name, _), v in scrape(port).items() if name in counted) == 0
        assert requests_total(port, path="fallback") == 0
        # No breaker moved: with one fault enough to open one, both backends still serve it.
        assert {b.name for b in pool.table.candidates[("simple", "")]} == {"triton-a", "triton-b"}
        for backend in pool.backends:
            assert backend.breaker.state is BreakerState.CLOSED
            assert all(b.state is BreakerState.CLOSED for b in backend.model_breakers.values())


LONG = "a" * 300
# (model, version): an unknown model of a file-name-breaking length, with and without a
# version; versions Triton cannot parse; a version the model does not have.
ODD_KEYS = [
    (LONG, ""),
    (LONG, "1"),
    (LONG, "x" * 300),
    ("classifier", "x" * 300),
    ("classifier", "1" * 300),
    ("classifier", "-1"),
    ("classifier", "9"),
    ("nosuch", "x"),
    ("", ""),
    ("classifier", "01"),
    ("classifier", "\u0661"),
]


@pytest.mark.parametrize(("name", "version"), ODD_KEYS, ids=[str(i) for i in range(len(ODD_KEYS))])
@pytest.mark.parametrize("method", ["ModelInfer", "ModelReady"])
def test_odd_names_and_versions_get_tritons_own_answer(
    gateway_url: str, fleet: LocalFleet, name: str, version: str, method: str
) -> None:
    if method == "ModelInfer":
        request: Any = service_pb2.ModelInferRequest(model_name=name, model_version=version)
    else:
        request = service_pb2.ModelReadyRequest(name=name, version=version)
    direct = getattr(_stub(fleet.servers["triton-a"].address), method)
    via_gateway = getattr(_stub(gateway_url), method)
    assert _outcome(via_gateway, request)[:2] == _outcome(direct, request)[:2]


def _one_backend(fleet: LocalFleet, server: str, **fallback: Any) -> Any:
    return load_settings(
        server={"host": "127.0.0.1", "port": 0},
        metrics={"host": "127.0.0.1", "port": 0},
        edge={"mode": "off"},
        backends=[{"name": server, "address": fleet.servers[server].address}],
        fallback={"repository": str(MODEL_REPOSITORY), **fallback},
    )


def test_invented_names_and_versions_leave_no_state_behind(fleet: LocalFleet) -> None:
    # One backend, so which backend answers cannot add series of its own.
    with BackgroundGateway(Gateway(_one_backend(fleet, "triton-a"))) as gateway:
        stub = _stub(gateway.url)
        app = gateway.gateway
        dataplane = app.dataplane

        def sizes() -> dict[str, int]:
            balancer = dataplane._balancer
            families: dict[str, int] = {}
            for name, _ in scrape(app.metrics_port):
                families[name] = families.get(name, 0) + 1
            return {
                "metric_series": len(app.metrics._totals),
                "latency_keys": sum(len(load.latency) for load in balancer._loads.values()),
                "model_breakers": sum(len(b.model_breakers) for b in app.pool.backends),
                "fallback_sessions": len(app.fallback._sessions),
                **{f"family:{name}": count for name, count in families.items()},
            }

        def invented(i: int) -> list[Any]:
            return [
                (stub.ModelInfer, service_pb2.ModelInferRequest(model_name=f"invented-{i}")),
                (
                    stub.ModelInfer,
                    service_pb2.ModelInferRequest(model_name="classifier", model_version=f"{i}9"),
                ),
                (
                    stub.ModelInfer,
                    service_pb2.ModelInferRequest(
                        model_name="simple", model_version="0" * (i % 64) + "1"
                    ),
                ),
                (
                    stub.ModelInfer,
                    service_pb2.ModelInferRequest(model_name="simple", model_version=f"v{i}"),
                ),
                (stub.ModelReady, service_pb2.ModelReadyRequest(name=f"r-{i}", version=str(i))),
                (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name=f"m-{i}")),
                (stub.ModelConfig, service_pb2.ModelConfigRequest(name="simple", version=f"{i}9")),
                (
                    stub.ModelStatistics,
                    service_pb2.ModelStatisticsRequest(name=f"s-{i}", version=str(i)),
                ),
            ]

        def send(calls: list[Any]) -> None:
            futures = [call.future(request, timeout=30) for call, request in calls]
            for future in futures:
                try:
                    future.result()
                except grpc.RpcError as exc:
                    assert exc.code() in {
                        grpc.StatusCode.NOT_FOUND,
                        grpc.StatusCode.INVALID_ARGUMENT,
                    }, exc.details()

        # Once each, so every kind of answer has its series; then many more invented keys.
        send(invented(0) + invented(1))
        before = sizes()
        batch: list[Any] = []
        for i in range(2, 627):  # 8 kinds x 625 = 5,000 requests
            batch += invented(i)
            if len(batch) >= 200:
                send(batch)
                batch = []
        send(batch)
        assert sizes() == before


def test_typed_contents_over_the_fallback_budget_are_resource_exhausted(fleet: LocalFleet) -> None:
    # triton-b has no `identity`: every identity request is the fallback's.
    settings = _one_backend(fleet, "triton-b", max_request_bytes=4 * 1024 * 1024)
    with BackgroundGateway(Gateway(settings)) as gateway:
        infer = _stub(gateway.url).ModelInfer

        def typed(elements: int) -> service_pb2.ModelInferRequest:
            request = service_pb2.ModelInferRequest(model_name="identity")
            tensor = request.inputs.add(name="INPUT", datatype="FP32", shape=[elements])
            tensor.contents.fp32_contents.extend(np.ones(elements, dtype=np.float32))
            return request

        code, _, trailers = _outcome(infer, typed(1024))
        assert code is grpc.StatusCode.OK and FALLBACK in trailers
        code, message, _ = _outcome(infer, typed(2 * 1024 * 1024))  # 8 MiB of fp32
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "fallback.max_request_bytes" in message
