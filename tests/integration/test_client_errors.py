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
from gateway.devfleet import LocalFleet
from gateway.settings import load_settings
from tests.support.background import BackgroundGateway
from tests.support.metrics import scrape_with_edge, total
from tests.support.models import MODEL_REPOSITORY, simple_arrays
from tests.support.settings import gateway_settings

SHM_NOT_FOUND = "Unable to find shared memory region: 'nosuch_region'"
FALLBACK = ("x-gateway-served-by", "fallback")
TRANSITIONS = "triton_gateway_breaker_transitions_total"
BACKEND_OPEN = "triton_gateway_backend_breaker_open"
MODEL_OPEN = "triton_gateway_model_breaker_open"
REQUESTS = "triton_gateway_requests_total"


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


def test_an_unknown_shared_memory_region_is_the_clients_not_found(fleet: LocalFleet) -> None:
    settings = gateway_settings(
        fleet, breaker={"consecutive_failures": 1, "base_ejection_s": 60, "max_ejection_s": 60}
    )
    with BackgroundGateway(Gateway(settings)) as gateway:
        port = gateway.gateway.metrics_port
        infer = _stub(gateway.url).ModelInfer
        for _ in range(10):
            # Triton's status and message, unchanged; not an OK from the fallback.
            code, message, trailers = _outcome(infer, _shm_request())
            assert (code, message) == (grpc.StatusCode.NOT_FOUND, SHM_NOT_FOUND)
            assert FALLBACK not in trailers
        samples = scrape_with_edge(port)
        # The regions are the gateway's (a client on its host registers them there): it
        # answers in Triton's words (a backend only tells it whether Triton would refuse the
        # call earlier, before reading tensors), tries none again, asks no fallback...
        counted = {
            "triton_gateway_retries_total",
            "triton_gateway_hedges_total",
            "triton_gateway_retry_budget_exhausted_total",
        }
        assert sum(v for (name, _), v in samples.items() if name in counted) == 0
        assert total(samples, REQUESTS, path="fallback") == 0
        # ...and no breaker moved, though one fault is enough to open one.
        assert not [k for k, v in samples.items() if k[0] == TRANSITIONS and v > 0]
        for backend in ("triton-a", "triton-b"):
            assert samples[(BACKEND_OPEN, frozenset({("backend", backend)}))] == 0
            model = frozenset({("backend", backend), ("model", "simple")})
            assert samples[(MODEL_OPEN, model)] == 0


LONG = "a" * 300
# (model, version): an unknown model of a file-name-breaking length, with and without a
# version; versions Triton cannot parse; a version the model does not have; spellings Triton
# reads as a version the model has (C++ std::stol: "01", " 2", "2x", "+1" are versions 1 and 2);
# names with a NUL (Triton's core gets the name as a C string: it ends at the NUL).
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
    ("classifier", " 2"),
    ("classifier", "2x"),
    ("classifier", "+1"),
    ("classifier", "\u0661"),
    ("classifier\x00junk", ""),
    ("classifier\x00", "1"),
    ("\x00classifier", ""),
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
    # The status and message, or the answer itself (ModelReady's ready flag).
    assert _answer(via_gateway, request) == _answer(direct, request)


def _answer(call: Any, request: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, call(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def _one_backend(fleet: LocalFleet, server: str, **fallback: Any) -> Any:
    return load_settings(
        server={"host": "127.0.0.1", "port": 0},
        metrics={"host": "127.0.0.1", "port": 0},
        backends=[{"name": server, "address": fleet.servers[server].address}],
        repository={"path": str(MODEL_REPOSITORY)},
        fallback=fallback,
    )


def test_invented_names_and_versions_leave_no_state_behind(fleet: LocalFleet) -> None:
    # One backend, so which backend answers cannot add series of its own.
    with BackgroundGateway(Gateway(_one_backend(fleet, "triton-a"))) as gateway:
        stub = _stub(gateway.url)
        app = gateway.gateway

        def sizes() -> dict[str, int]:
            # tgw-edge's state (breakers, latency estimates, outcome counts) is keyed like its
            # series, which the gateway's metrics port merges in.
            families: dict[str, int] = {}
            for name, _ in scrape_with_edge(app.metrics_port):
                families[name] = families.get(name, 0) + 1
            assert app.fallback is not None
            return {
                "metric_series": len(app.metrics._totals),
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
        # The edge's series are in: one model breaker per model the backend holds.
        assert before["family:triton_gateway_model_breaker_open"] >= 1
        assert before["family:triton_gateway_edge_build_info"] == 1
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


# Below gRPC's soft limit (8 KiB) all pass; past the hard one (16 KiB) all are refused; between
# them Triton refuses at random, as gRPC servers do.
@pytest.mark.parametrize("header_bytes", [4_000, 17_000, 40_000])
def test_metadata_past_tritons_limit_is_refused_every_time_as_triton_refuses_it(
    gateway_url: str, fleet: LocalFleet, header_bytes: int
) -> None:
    """Triton refuses more than 16 KiB of metadata (RESOURCE_EXHAUSTED, counted as gRPC counts
    it); forwarded, such calls were refused or served by turns over one connection."""
    a, b = simple_arrays()
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(values.tobytes())
    metadata = [("x-big", "a" * header_bytes)]

    def outcomes(address: str) -> list[tuple[grpc.StatusCode, str]]:
        infer = _stub(address).ModelInfer
        answers = []
        for _ in range(4):
            try:
                infer(request, metadata=metadata, timeout=10)
                answers.append((grpc.StatusCode.OK, ""))
            except grpc.RpcError as exc:
                # The size in parentheses counts each address's own length: not compared
                # (nor the headers Triton's message goes on to list).
                answers.append((exc.code(), (exc.details() or "").split(" (")[0]))
        return answers

    direct = outcomes(fleet.servers["triton-a"].address)
    assert len(set(direct)) == 1
    assert outcomes(gateway_url) == direct
