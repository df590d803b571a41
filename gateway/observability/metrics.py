"""Prometheus metrics on an injected registry, fed by both data paths.

Request outcomes are aggregated here, not in prometheus_client metric objects, because two
producers feed them: the Python data plane observes each call, and tgw-edge reports batches of
pre-bucketed counts from its own process. One collector renders the sum, so a series never
depends on which path served it, and the ``path`` label tells them apart. Backend gauges are
read from the pool at scrape time, so no state is copied.

Adding a metric for a later capability (breakers, retries, fallback, variants) is one line in
``collect``, or one ``Counter`` on the registry.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

PREFIX = "triton_gateway"
# Seconds; from sub-millisecond proxying to multi-second GPU batches.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
UNKNOWN_MODEL = "_unknown"
"""Label value for model names (and versions) no backend or fallback has: client input must not
mint new series."""
ModelLabels = Callable[[str, str], tuple[str, str]]
"""(model, version) as the request named them -> the label values they may take."""

RequestKey = tuple[str, str, str, str, str, str]
"""(path, method, model, version, backend, code)."""


@dataclass(slots=True)
class _Totals:
    count: int = 0
    seconds: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))


@dataclass(frozen=True, slots=True)
class BackendGauge:
    """What the pool knows of one backend at scrape time."""

    name: str
    up: bool
    ready_versions: int
    breaker_open: bool = False
    drained: bool = False
    open_model_breakers: Mapping[str, bool] = field(default_factory=dict)
    """Model name → whether its breaker on this backend is open or half-open."""


class RequestMetrics(Collector):
    """Request counts and latency histograms by path, method, model, version, backend, code."""

    def __init__(
        self,
        registry: CollectorRegistry,
        backends: Callable[[], Iterable[BackendGauge]] = tuple,
        model_labels: ModelLabels | None = None,
    ) -> None:
        self._totals: dict[RequestKey, _Totals] = {}
        self._model_labels = model_labels
        self._in_flight: dict[str, int] = {"python": 0, "edge": 0}
        # Scrapes run on the exposition thread, observations on the event loop.
        self._lock = threading.Lock()
        self._backends = backends
        registry.register(self)
        self.retries = Counter(
            f"{PREFIX}_retries",
            "Calls sent again to another backend after a backend fault.",
            ["backend", "code"],
            registry=registry,
        )
        self.breaker_transitions = Counter(
            f"{PREFIX}_breaker_transitions",
            "Circuit breaker state changes, per backend and model ('' for the whole backend).",
            ["backend", "model", "state"],
            registry=registry,
        )
        self.retry_budget_exhausted = Counter(
            f"{PREFIX}_retry_budget_exhausted",
            "Backend faults not retried because the retry budget was spent.",
            registry=registry,
        )

    def observe(self, key: RequestKey, seconds: float) -> None:
        """One finished call of the Python data path."""
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        key = self._bounded(key)
        with self._lock:
            totals = self._totals.get(key)
            if totals is None:
                totals = self._totals[key] = _Totals()
            totals.count += 1
            totals.seconds += seconds
            totals.buckets[index] += 1

    def add_batch(
        self, key: RequestKey, count: int, seconds: float, buckets: Sequence[int]
    ) -> None:
        """Pre-bucketed counts from tgw-edge (same bucket bounds, one extra for +Inf)."""
        if len(buckets) != len(LATENCY_BUCKETS) + 1:
            raise ValueError("bucket counts do not match LATENCY_BUCKETS")
        key = self._bounded(key)
        with self._lock:
            totals = self._totals.get(key)
            if totals is None:
                totals = self._totals[key] = _Totals()
            totals.count += count
            totals.seconds += seconds
            for index, value in enumerate(buckets):
                totals.buckets[index] += value

    def _bounded(self, key: RequestKey) -> RequestKey:
        """The key with model and version as label values (both data paths pass here)."""
        if self._model_labels is None:
            return key
        path, method, model, version, backend, code = key
        model, version = self._model_labels(model, version)
        return (path, method, model, version, backend, code)

    def set_in_flight(self, path: str, value: int) -> None:
        self._in_flight[path] = value

    def add_in_flight(self, path: str, delta: int) -> None:
        self._in_flight[path] = self._in_flight.get(path, 0) + delta

    def collect(self) -> Iterator[Metric]:
        labels = ["path", "method", "model", "version", "backend", "code"]
        requests = CounterMetricFamily(
            f"{PREFIX}_requests", "Calls answered, by data path and outcome.", labels=labels
        )
        latency = HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "Time from receiving a call to its last byte, by data path and outcome.",
            labels=labels,
        )
        with self._lock:
            snapshot = [
                (key, t.count, t.seconds, list(t.buckets)) for key, t in self._totals.items()
            ]
            in_flight = dict(self._in_flight)
        for key, count, seconds, buckets in snapshot:
            requests.add_metric(list(key), count)
            cumulative = 0
            points: list[tuple[str, float]] = []
            for bound, value in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                cumulative += value
                points.append((_bound(bound), cumulative))
            latency.add_metric(list(key), points, seconds)
        yield requests
        yield latency
        flight = GaugeMetricFamily(
            f"{PREFIX}_in_flight_requests", "Calls being served now.", labels=["path"]
        )
        for path, value in sorted(in_flight.items()):
            flight.add_metric([path], value)
        yield flight
        up = GaugeMetricFamily(
            f"{PREFIX}_backend_up", "1 when the backend answers health polls.", labels=["backend"]
        )
        versions = GaugeMetricFamily(
            f"{PREFIX}_backend_ready_model_versions",
            "Model versions READY on the backend.",
            labels=["backend"],
        )
        breaker = GaugeMetricFamily(
            f"{PREFIX}_backend_breaker_open",
            "1 while the backend's circuit breaker is open or half-open.",
            labels=["backend"],
        )
        model_breaker = GaugeMetricFamily(
            f"{PREFIX}_model_breaker_open",
            "1 while the breaker of one model on the backend is open or half-open.",
            labels=["backend", "model"],
        )
        drained = GaugeMetricFamily(
            f"{PREFIX}_backend_drained", "1 while the backend is drained.", labels=["backend"]
        )
        for backend in self._backends():
            drained.add_metric([backend.name], 1.0 if backend.drained else 0.0)
            up.add_metric([backend.name], 1.0 if backend.up else 0.0)
            versions.add_metric([backend.name], backend.ready_versions)
            breaker.add_metric([backend.name], 1.0 if backend.breaker_open else 0.0)
            for model, is_open in sorted(backend.open_model_breakers.items()):
                model_breaker.add_metric([backend.name, model], 1.0 if is_open else 0.0)
        yield up
        yield versions
        yield breaker
        yield model_breaker
        yield drained


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
