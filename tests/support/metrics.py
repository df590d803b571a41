"""Scrapes a gateway's /metrics over HTTP and reads single samples out of it."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Mapping

from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def exported_names(port: int) -> set[str]:
    """Every series name the gateway exports, also of families with no sample yet."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def value(port: int, name: str, labels: Mapping[str, str]) -> float:
    """The sample's value, 0 when the series does not exist yet."""
    return scrape(port).get((name, frozenset(labels.items())), 0.0)


def requests_total(port: int, **labels: str) -> float:
    """Sum of triton_gateway_requests_total over the series matching ``labels``."""
    wanted = set(labels.items())
    return sum(
        count
        for (name, series), count in scrape(port).items()
        if name == "triton_gateway_requests_total" and wanted <= series
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape_with_edge(port: int, timeout_s: float = 20.0) -> Samples:
    """One scrape that holds tgw-edge's series (a scrape leaves them out when the edge is slow
    to answer the gateway's metrics call, on a busy machine)."""
    scrapes: list[Samples] = []

    def with_edge() -> bool:
        scrapes.append(scrape(port))
        return any(name == "triton_gateway_edge_build_info" for name, _ in scrapes[-1])

    assert wait_until(with_edge, timeout_s=timeout_s)
    return scrapes[-1]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the ``name`` series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= series)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll until ``condition`` holds (tgw-edge reports once a second); its final value."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
