from collections.abc import Sequence

from gateway.observability.tracing import forwarded_metadata


class _Context:
    def __init__(self, metadata: Sequence[tuple[str, str]] | None) -> None:
        self._metadata = metadata

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> Sequence[tuple[str, str]] | None:
        return self._metadata


def test_trace_context_and_request_id_are_forwarded() -> None:
    metadata = [
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("tracestate", "vendor=1"),
        ("x-request-id", "req-1"),
        ("authorization", "Bearer secret"),
        ("user-agent", "grpc-python"),
    ]
    assert forwarded_metadata(_Context(metadata)) == (
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("tracestate", "vendor=1"),
        ("x-request-id", "req-1"),
    )


def test_nothing_to_forward_is_none() -> None:
    assert forwarded_metadata(_Context(None)) is None
    assert forwarded_metadata(_Context([("user-agent", "x")])) is None
