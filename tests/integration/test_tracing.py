"""With tracing on, each call through the Python data path is a span in the caller's trace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from gateway.settings import load_settings
from tests.support.background import BackgroundGateway
from tests.support.models import simple_arrays, simple_inputs

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def traced(fleet: LocalFleet) -> Iterator[tuple[BackgroundGateway, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = load_settings(
        server={"host": "127.0.0.1", "port": 0},
        edge={"mode": "off"},
        metrics={"enabled": False},
        backends=[{"name": s.name, "address": s.address} for s in fleet.servers.values()],
    )
    with BackgroundGateway(Gateway(settings, tracer_provider=provider)) as gateway:
        yield gateway, exporter


def test_a_call_is_a_child_span_of_the_callers_trace(
    traced: tuple[BackgroundGateway, InMemorySpanExporter],
) -> None:
    gateway, exporter = traced
    exporter.clear()
    a, b = simple_arrays()
    client = grpcclient.InferenceServerClient(gateway.url)
    client.infer("simple", simple_inputs(a, b), headers={"traceparent": TRACEPARENT})
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert span.name == "inference.GRPCInferenceService/ModelInfer"
    assert span.attributes is not None
    assert span.attributes["triton.model.name"] == "simple"
    assert span.attributes["triton_gateway.backend"] in {"triton-a", "triton-b"}
    assert span.attributes["rpc.grpc.status_code"] == "OK"


def test_an_upstream_error_marks_the_span(
    traced: tuple[BackgroundGateway, InMemorySpanExporter],
) -> None:
    gateway, exporter = traced
    exporter.clear()
    a, b = simple_arrays()
    client = grpcclient.InferenceServerClient(gateway.url)
    with pytest.raises(InferenceServerException):
        client.infer("simple", simple_inputs(a[:, :8], b[:, :8]))
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == "INVALID_ARGUMENT"
