"""The rollouts' figures summed over replicas: each replica's cumulative counters, published
as documents, kept in a sum that only grows across reads, restarts and replicas coming."""

from __future__ import annotations

import math

from gateway.rollout.fleet_figures import FiguresSum, document, parsed
from gateway.traffic.figures import VariantTotals

KEY = ("classifier", "2")


def served(ok: int, faults: int = 0, agree: int = 0) -> VariantTotals:
    calls = ok + faults
    return VariantTotals(
        codes={"OK": ok, "INTERNAL": faults} if faults else {"OK": ok},
        latency=((0.001, ok), (0.01, calls), (math.inf, calls)),
        shadow_results={"agree": agree},
        argmax_rows=0,
        argmax_agreeing=0,
        faults=faults,
        shadow_compared=agree,
    )


def test_a_published_document_reads_back_the_same_figures() -> None:
    figures = {KEY: served(7, faults=2, agree=3), ("classifier", "1"): served(40)}
    at, read = parsed(document(12.5, figures))
    assert at == 12.5
    assert read == figures
    assert read[KEY].latency[-1][0] == math.inf


def test_the_sum_grows_by_what_each_replica_grew_by_since_first_read() -> None:
    total = FiguresSum()
    total.add("a", {KEY: served(10)})
    total.add("b", {KEY: served(5, faults=1)})
    assert KEY not in total.totals(), "first reads set where each replica starts"
    total.add("a", {KEY: served(12)})  # two more through a
    total.add("b", {KEY: served(5, faults=1)})  # nothing new through b
    assert (total.totals()[KEY].calls, total.totals()[KEY].faults) == (2, 0)
    total.add("b", {KEY: served(8, faults=2)})
    assert (total.totals()[KEY].calls, total.totals()[KEY].faults) == (6, 1)
    # b's edge restarted under the same gateway: its counters fell, all of them are new.
    total.add("b", {KEY: served(2)})
    assert total.totals()[KEY].calls == 8
    # A replica that comes later (a new pod, a restarted gateway) counts from its first read.
    total.add("c", {KEY: served(500)})
    total.add("c", {KEY: served(503)})
    assert total.totals()[KEY].calls == 11
    # Latency counts add per bound; the sum never went down.
    assert dict(total.totals()[KEY].latency)[0.01] == 11


def test_a_window_on_the_sum_counts_every_replica_in_it() -> None:
    total = FiguresSum()
    total.add("a", {KEY: served(100, agree=50)})
    total.add("b", {KEY: served(80, agree=40)})
    total.add("a", {KEY: served(101, agree=50)})
    total.add("b", {KEY: served(81, agree=40)})
    opened = total.totals()[KEY]
    total.add("a", {KEY: served(111, agree=55)})
    total.add("b", {KEY: served(101, faults=4, agree=60)})
    window = total.totals()[KEY].minus(opened)
    assert (window.calls, window.faults, window.shadow_compared) == (34, 4, 25)
