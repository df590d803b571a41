"""With tracing on, each call the Python gateway makes to a backend for a client is a span in
the caller's trace.

tgw-edge serves the routed calls (streams included) itself and passes the caller's headers on
unchanged, so Triton's own tracing sees the caller's context; the Python gateway answers what
the edge hands over. Its spans are of those calls: an answer of the local fallback, and a
model-scoped call no route covers that it asks a backend about. The caller's trace context
reaches it through the edge.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tritonclient.grpc import service_pb2

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from gateway.settings import load_settings
from tests.support.background import BackgroundGateway
from tests.support.metrics import wait_until
from tests.support.models import MODEL_REPOSITORY, classifier_features

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
SERVICE = "/inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def traced(fleet: LocalFleet) -> Iterator[tuple[BackgroundGateway, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = load_settings(
        server={"host": "127.0.0.1", "port": 0},
        metrics={"enabled": False},
        backends=[{"name": s.name, "address": s.address} for s in fleet.servers.values()],
    )
    with BackgroundGateway(Gateway(settings, tracer_provider=provider)) as gateway:
        yield gateway, exporter


def _only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one span finished for the call (a stream's ends just after its last answer)."""
    assert wait_until(lambda: len(exporter.get_finished_spans()) > 0)
    (span,) = exporter.get_finished_spans()
    return span


def _assert_in_callers_trace(span: ReadableSpan) -> None:
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID


def test_a_fallback_answer_is_a_child_span_of_the_callers_trace(
    fleet: LocalFleet,
) -> None:
    """No backend of this gateway has classifier (triton-b serves only simple): the edge
    hands the call over with the caller's headers, and the local fallback's answer is a span
    in the caller's trace."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = load_settings(
        server={"host": "127.0.0.1", "port": 0},
        metrics={"enabled": False},
        repository={"path": str(MODEL_REPOSITORY)},
        backends=[{"name": "triton-b", "address": fleet.servers["triton-b"].address}],
    )
    x = classifier_features(batch=1)
    request = service_pb2.ModelInferRequest(model_name="classifier", id="traced")
    request.inputs.add(name="INPUT", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    with (
        BackgroundGateway(Gateway(settings, tracer_provider=provider)) as gateway,
        grpc.insecure_channel(gateway.url) as channel,
    ):
        infer = channel.unary_unary(
            f"{SERVICE}/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        answer, call = infer.with_call(
            request, metadata=(("traceparent", TRACEPARENT),), timeout=10
        )
    assert answer.id == "traced"
    assert ("x-gateway-served-by", "fallback") in (call.trailing_metadata() or ())
    span = _only_span(exporter)
    _assert_in_callers_trace(span)
    assert span.name == "inference.GRPCInferenceService/ModelInfer"
    assert span.attributes is not None
    assert span.attributes["triton.model.name"] == "classifier"
    assert span.attributes["triton_gateway.backend"] == "local"
    assert span.attributes["rpc.grpc.status_code"] == "OK"


def test_an_upstream_error_marks_the_span(
    traced: tuple[BackgroundGateway, InMemorySpanExporter],
) -> None:
    gateway, exporter = traced
    exporter.clear()
    # No route covers the model: tgw-edge hands the call over and the Python gateway asks a
    # backend, whose NOT_FOUND the client gets.
    with grpc.insecure_channel(gateway.url) as channel:
        metadata = channel.unary_unary(
            f"{SERVICE}/ModelMetadata",
            request_serializer=service_pb2.ModelMetadataRequest.SerializeToString,
            response_deserializer=service_pb2.ModelMetadataResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            metadata(
                service_pb2.ModelMetadataRequest(name="no_such_model"),
                metadata=(("traceparent", TRACEPARENT),),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    span = _only_span(exporter)
    _assert_in_callers_trace(span)
    assert span.name == "inference.GRPCInferenceService/ModelMetadata"
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["triton.model.name"] == "no_such_model"
    assert span.attributes["triton_gateway.backend"] in {"triton-a", "triton-b"}
    assert span.attributes["rpc.grpc.status_code"] == "NOT_FOUND"
