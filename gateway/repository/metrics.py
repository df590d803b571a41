"""Metrics of model drops and rollouts. Label values come from the repository and the fleet
(model directory names, backend names, a fixed set of reasons), never from clients."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.observability.metrics import PREFIX


class RepositoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter(
            f"{PREFIX}_model_drops_rejected",
            "Model directories refused before anything was loaded, by reason.",
            labelnames=["model", "reason"],
            registry=registry,
        )
        self.rollouts = Counter(
            f"{PREFIX}_model_rollouts",
            "Fleet rollouts of a model's content, by outcome (completed, rolled_back).",
            labelnames=["model", "outcome"],
            registry=registry,
        )
        self.content = Gauge(
            f"{PREFIX}_model_content_info",
            "1 for each backend serving a model version with traffic, with the sha256 of the "
            "model's pushed content.",
            labelnames=["model", "version", "backend", "sha256"],
            registry=registry,
        )
        self.rollout_seconds = Gauge(
            f"{PREFIX}_model_rollout_seconds",
            "Duration of the model's last rollout (from the drop being accepted to its end).",
            labelnames=["model"],
            registry=registry,
        )
