"""Request tracing for the Python data path; OpenTelemetry only when configured.

Without tracing, the caller's W3C trace context (and ``x-request-id``) is passed to Triton as
it came, so Triton's spans join the caller's trace. With tracing on, the gateway opens a span
per call as a child of the caller's context and passes *its own* context on, so the trace
shows caller → gateway → Triton. tgw-edge forwards the caller's headers unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

Metadata = tuple[tuple[str, str | bytes], ...]

# Request metadata passed on to Triton: W3C trace context and the request id that also
# labels the gateway's log lines.
FORWARDED_METADATA = frozenset({"traceparent", "tracestate", "x-request-id"})


class CallMetadata(Protocol):
    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...


def forwarded_metadata(context: CallMetadata) -> Metadata | None:
    metadata = context.invocation_metadata()
    if not metadata:
        return None
    kept = tuple(item for item in metadata if item[0] in FORWARDED_METADATA)
    return kept or None


class Tracer(Protocol):
    """Opens a span around one upstream call; yields the metadata to send upstream."""

    def upstream_call(
        self, method: str, model: str, version: str, backend: str, context: CallMetadata
    ) -> AbstractContextManager[Metadata | None]: ...


class PassThroughTracer:
    """No spans: the caller's trace context goes to Triton untouched."""

    @contextmanager
    def upstream_call(
        self, method: str, model: str, version: str, backend: str, context: CallMetadata
    ) -> Iterator[Metadata | None]:
        yield forwarded_metadata(context)


class OpenTelemetryTracer:
    """A span per upstream call, parented on the caller's W3C context."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.propagate import get_global_textmap  # noqa: PLC0415 (optional)
        from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: PLC0415

        self._tracer = provider.get_tracer("triton-gateway")
        self._propagator = get_global_textmap()
        self._kind = SpanKind.SERVER
        self._status = Status
        self._error = StatusCode.ERROR

    @contextmanager
    def upstream_call(
        self, method: str, model: str, version: str, backend: str, context: CallMetadata
    ) -> Iterator[Metadata | None]:
        incoming = {
            key: value if isinstance(value, str) else value.decode(errors="replace")
            for key, value in (context.invocation_metadata() or ())
        }
        parent = self._propagator.extract(incoming)
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": "inference.GRPCInferenceService",
            "rpc.method": method,
            "triton.model.name": model,
            "triton.model.version": version,
            "triton_gateway.backend": backend,
        }
        with self._tracer.start_as_current_span(
            f"inference.GRPCInferenceService/{method}",
            context=parent,
            kind=self._kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)
            request_id = incoming.get("x-request-id")
            if request_id is not None:
                carrier["x-request-id"] = request_id
            try:
                yield tuple(carrier.items())
            except Exception as exc:
                code = getattr(exc, "code", None)
                name = code().name if callable(code) else type(exc).__name__
                span.set_attribute("rpc.grpc.status_code", name)
                span.set_status(self._status(self._error, name))
                raise
            span.set_attribute("rpc.grpc.status_code", "OK")
