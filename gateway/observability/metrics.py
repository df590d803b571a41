"""Prometheus metrics of both processes on the gateway's one metrics port.

tgw-edge counts its own calls as they end and is asked for its exposition at scrape time (no
reporting lag); its families are merged here with the gateway's own under the same names, the
``path`` label telling who answered (``edge``; ``python`` or ``fallback`` for calls handed
over). Backend gauges are read from the pool at scrape time, so no state is copied.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway import __version__

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
    drained: bool = False


class RequestMetrics(Collector):
    """Request counts and latency histograms by path, method, model, version, backend, code."""

    def __init__(
        self,
        registry: CollectorRegistry,
        backends: Callable[[], Iterable[BackendGauge]] = tuple,
        model_labels: ModelLabels | None = None,
        edge_text: Callable[[], str] = str,
    ) -> None:
        self._totals: dict[RequestKey, _Totals] = {}
        self._model_labels = model_labels
        self._edge_text = edge_text
        self._in_flight: dict[str, int] = {"python": 0}
        # Scrapes run on the exposition thread, observations on the event loop.
        self._lock = threading.Lock()
        self._backends = backends
        registry.register(self)
        self.edge_up = Gauge(
            f"{PREFIX}_edge_up",
            "1 while tgw-edge, the data plane, runs and answers the control plane.",
            registry=registry,
        )
        build = Gauge(
            f"{PREFIX}_build_info",
            "The control plane's version; always 1 (tgw-edge's: triton_gateway_edge_build_info).",
            labelnames=["version"],
            registry=registry,
        )
        build.labels(version=__version__).set(1)
        self.edge_restarts = Counter(
            f"{PREFIX}_edge_restarts",
            "Times tgw-edge was found dead or unresponsive and restarted.",
            registry=registry,
        )
        self.state_store_reachable = Gauge(
            f"{PREFIX}_state_store_reachable",
            "1 while the store of the traffic state (file, or Consul shared by the replicas) "
            "answers; 0: serving the last state, admin changes refused.",
            registry=registry,
        )
        self.state_store_reachable.set(1)

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

    def _bounded(self, key: RequestKey) -> RequestKey:
        """The key with model and version as label values (both data paths pass here)."""
        if self._model_labels is None:
            return key
        path, method, model, version, backend, code = key
        model, version = self._model_labels(model, version)
        return (path, method, model, version, backend, code)

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
        edge = self._edge_families()
        for key, count, seconds, buckets in snapshot:
            requests.add_metric(list(key), count)
            cumulative = 0
            points: list[tuple[str, float]] = []
            for bound, value in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                cumulative += value
                points.append((_bound(bound), cumulative))
            latency.add_metric(list(key), points, seconds)
        flight = GaugeMetricFamily(
            f"{PREFIX}_in_flight_requests", "Calls being served now.", labels=["path"]
        )
        for path, value in sorted(in_flight.items()):
            flight.add_metric([path], value)
        for family in (requests, latency, flight):
            merged = edge.pop(family.name, None)
            if merged is not None:
                family.samples.extend(merged.samples)
            yield family
        yield from edge.values()
        up = GaugeMetricFamily(
            f"{PREFIX}_backend_up", "1 when the backend answers health polls.", labels=["backend"]
        )
        versions = GaugeMetricFamily(
            f"{PREFIX}_backend_ready_model_versions",
            "Model versions READY on the backend.",
            labels=["backend"],
        )
        drained = GaugeMetricFamily(
            f"{PREFIX}_backend_drained", "1 while the backend is drained.", labels=["backend"]
        )
        for backend in self._backends():
            drained.add_metric([backend.name], 1.0 if backend.drained else 0.0)
            up.add_metric([backend.name], 1.0 if backend.up else 0.0)
            versions.add_metric([backend.name], backend.ready_versions)
        yield up
        yield versions
        yield drained

    def _edge_families(self) -> dict[str, Metric]:
        """tgw-edge's families by name ({} while it does not answer)."""
        text = self._edge_text()
        if not text:
            return {}
        return {family.name: family for family in text_string_to_metric_families(text)}


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
