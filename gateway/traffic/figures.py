"""How each variant of a traffic route is doing, from tgw-edge's cumulative reports: calls,
faults, latency quantiles, shadow agreement — what an operator watches during a split.

The edge counts (one count per call, as it ends); this module only reads its reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway._protos.tgw.control.v1 import control_pb2


@dataclass(frozen=True, slots=True)
class VariantTotals:
    """Cumulative figures of one (route, variant)."""

    codes: Mapping[str, int]
    latency: tuple[tuple[float, int], ...]
    """(upper bound in seconds, calls at most that long), ascending; the last bound is inf."""
    shadow_results: Mapping[str, int]
    argmax_rows: int
    argmax_agreeing: int
    shadow_codes: Mapping[str, int] = field(default_factory=dict)
    """Shadow copies sent to the variant, by the status they got."""
    faults: int = 0
    """Calls the variant failed, as tgw-edge judges outcomes for its breakers (a backend or
    model fault; not a client's error or a client that gave up)."""
    shadow_faults: int = 0
    """Shadow copies it failed alike (or that passed their time)."""
    shadow_only_non_finite: int = 0
    """Compared outputs with NaN/Inf in this variant's shadow answer but not the primary's."""
    primary_only_non_finite: int = 0
    """Compared outputs with NaN/Inf in the primary's answer but not this variant's copy."""
    shadow_compared: int = 0
    """Shadow answers compared with their primary's: calls, not outputs."""

    @classmethod
    def from_report(cls, report: control_pb2.VariantReport) -> VariantTotals:
        return cls(
            codes=dict(report.codes),
            latency=tuple(zip(report.latency_bounds, report.latency_counts, strict=True)),
            shadow_results=dict(report.shadow_results),
            argmax_rows=report.argmax_rows,
            argmax_agreeing=report.argmax_agreeing,
            shadow_codes=dict(report.shadow_codes),
            faults=report.faults,
            shadow_faults=report.shadow_faults,
            shadow_only_non_finite=report.shadow_only_non_finite,
            primary_only_non_finite=report.primary_only_non_finite,
            shadow_compared=report.shadow_compared,
        )

    def minus(self, earlier: VariantTotals) -> VariantTotals:
        """The figures of the window since ``earlier``. Counters only grow while one edge
        runs; when one fell, the edge restarted and counts from zero: its totals are the
        window."""
        fell = (
            any(self.codes.get(k, 0) < v for k, v in earlier.codes.items())
            or any(self.shadow_results.get(k, 0) < v for k, v in earlier.shadow_results.items())
            or self.shadow_compared < earlier.shadow_compared
        )
        if fell:
            return self
        return self._combined(earlier, -1)

    def plus(self, other: VariantTotals) -> VariantTotals:
        """The figures of both (two replicas' edges, say): every count added."""
        return self._combined(other, 1)

    def _combined(self, other: VariantTotals, sign: int) -> VariantTotals:
        def each(mine: Mapping[str, int], theirs: Mapping[str, int]) -> dict[str, int]:
            return {k: mine.get(k, 0) + sign * theirs.get(k, 0) for k in {**mine, **theirs}}

        # Every edge of one build has the same latency bounds; a side with no calls has none.
        bounds = self.latency or tuple((bound, 0) for bound, _ in other.latency)
        theirs = dict(other.latency)
        return VariantTotals(
            codes=each(self.codes, other.codes),
            latency=tuple((bound, count + sign * theirs.get(bound, 0)) for bound, count in bounds),
            shadow_results=each(self.shadow_results, other.shadow_results),
            argmax_rows=self.argmax_rows + sign * other.argmax_rows,
            argmax_agreeing=self.argmax_agreeing + sign * other.argmax_agreeing,
            shadow_codes=each(self.shadow_codes, other.shadow_codes),
            faults=self.faults + sign * other.faults,
            shadow_faults=self.shadow_faults + sign * other.shadow_faults,
            shadow_only_non_finite=self.shadow_only_non_finite
            + sign * other.shadow_only_non_finite,
            primary_only_non_finite=self.primary_only_non_finite
            + sign * other.primary_only_non_finite,
            shadow_compared=self.shadow_compared + sign * other.shadow_compared,
        )

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    @property
    def compared(self) -> int:
        """Outputs of shadow copies compared with their primary's."""
        return sum(self.shadow_results.values())

    @property
    def shadow_calls(self) -> int:
        return sum(self.shadow_codes.values())

    def quantile(self, q: float) -> float | None:
        """The q-quantile of latency in seconds, interpolated within its bucket as Prometheus'
        histogram_quantile does; None without calls. Past the last finite bound: that bound."""
        total = self.latency[-1][1] if self.latency else 0
        if total == 0:
            return None
        rank = q * total
        lower_bound, lower_count = 0.0, 0
        for bound, count in self.latency:
            if count >= rank:
                if math.isinf(bound):
                    return lower_bound
                if count == lower_count:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                    count - lower_count
                )
            lower_bound, lower_count = bound, count
        return lower_bound


NONE = VariantTotals(codes={}, latency=(), shadow_results={}, argmax_rows=0, argmax_agreeing=0)
"""A variant the edge has not reported yet."""


def figures(variant: str, totals: VariantTotals) -> admin_pb2.VariantFigures:
    shown = admin_pb2.VariantFigures(
        variant=variant,
        calls=totals.calls,
        errors=totals.faults,
        shadow_compared=sum(totals.shadow_results.values()),
        shadow_agreeing=totals.shadow_results.get("agree", 0),
        argmax_rows=totals.argmax_rows,
        argmax_agreeing=totals.argmax_agreeing,
    )
    for quantile_field, q in (("p50", 0.5), ("p99", 0.99)):
        seconds = totals.quantile(q)
        if seconds is not None:
            getattr(shown, quantile_field).FromNanoseconds(round(seconds * 1e9))
    return shown
