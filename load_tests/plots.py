"""PNG plots of a load run: latency over time, and the percentile curve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from load_tests.loadgen import LoadResult


def write_plots(result: LoadResult, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    over_time = folder / "latency_over_time.png"
    figure, axes = plt.subplots(figsize=(9, 4))
    if result.timeline:
        seconds, latency = zip(*result.timeline, strict=True)
        axes.scatter(seconds, [v / 1000 for v in latency], s=2, alpha=0.4)
    axes.set_xlabel("seconds since start (intended send time)")
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    axes.set_title(f"{result.spec.model} via {result.spec.target} ({result.spec.mode} loop)")
    figure.tight_layout()
    figure.savefig(over_time, dpi=100)
    plt.close(figure)

    curve = folder / "percentiles.png"
    figure, axes = plt.subplots(figsize=(9, 4))
    percentiles = [50, 75, 90, 95, 99, 99.5, 99.9, 99.99]
    if result.latency.get_total_count():
        values = [result.latency.get_value_at_percentile(p) / 1000 for p in percentiles]
        positions = [1 / (1 - p / 100) if p < 100 else 1e5 for p in percentiles]
        axes.plot(positions, values, marker="o")
        axes.set_xscale("log")
        axes.set_xticks(positions, [f"p{p:g}" for p in percentiles], rotation=45)
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    axes.set_title("latency by percentile")
    figure.tight_layout()
    figure.savefig(curve, dpi=100)
    plt.close(figure)
    return [over_time, curve, _throughput_and_errors(result, folder)]


def _throughput_and_errors(result: LoadResult, folder: Path) -> Path:
    """Answers and failures per second of the run (by intended send time): a dip, a burst of
    errors, and when they happened."""
    path = folder / "throughput_and_errors.png"
    length = max(1, math.ceil(max([t for t, _ in result.timeline + result.failures], default=0)))
    answered = [0] * (length + 1)
    failed = [0] * (length + 1)
    for offset, _ in result.timeline:
        answered[int(offset)] += 1
    for offset, _ in result.failures:
        failed[int(offset)] += 1
    figure, axes = plt.subplots(figsize=(9, 4))
    seconds = list(range(length + 1))
    axes.plot(seconds, answered, label="answered / s", drawstyle="steps-post")
    axes.plot(seconds, failed, label="failed / s", color="tab:red", drawstyle="steps-post")
    axes.set_xlabel("seconds since start (intended send time)")
    axes.set_ylabel("calls per second")
    axes.legend()
    axes.set_title(f"throughput and errors: {result.failed} of {result.sent} failed")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
