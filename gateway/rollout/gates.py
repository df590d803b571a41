"""The gates a candidate passes at each step of a progressive rollout, judged on the same
window as its baseline: fault rate, p99 latency (as a ratio to the baseline's), and how often
its outputs agree with the baseline's (within atol/rtol, same argmax, no NaN/Inf the baseline
does not have) — from shadow copies at the shadow step, from copies of its live calls sent to
the baseline at the steps after.

A sequential rule, so a low-traffic route waits for evidence instead of passing on none, and a
bad candidate is stopped as soon as the evidence against it is clear:
- a gate fails at once when the confidence bound on the good side is already past its
  threshold (the Wilson score interval of a rate: even the most favourable plausible value is
  too bad);
- a gate passes only once the step has its minimum time and calls (``enough``) and the
  observed value is within the threshold;
- otherwise the step waits for more calls (a value past its threshold that is not beyond
  doubt yet, as a p99 from a few dozen calls often is, gets more evidence, not a verdict).
  The p99 is judged alike, by the low end of the order-statistic interval of the
  candidate's 99th percentile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from gateway.traffic.figures import VariantTotals

Outcome = Literal["pass", "fail", "wait"]


@dataclass(frozen=True, slots=True)
class GateSettings:
    max_fault_rate_increase: float = 0.01
    """Candidate fault rate minus the baseline's, at most."""
    max_p99_ratio: float = 1.5
    """Candidate p99 over the baseline's, at most (judged with enough calls only)."""
    min_agreement: float = 0.99
    """Shadow outputs agreeing with the primary's (within atol/rtol), at least."""
    min_argmax_agreement: float = 0.99
    """Rows whose argmax agrees (classifiers), at least."""
    max_non_finite_rate: float = 0.0
    """Compared outputs with NaN/Inf in the candidate's answer and none in the baseline's, at
    most (0: a single one fails the step)."""
    z: float = 2.576
    """Width of the confidence bounds: 2.576 standard scores, 99% two-sided."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """One gate's figures: what was observed, the bound judged by, and the threshold."""

    gate: str
    observed: float | None
    bound: float | None
    threshold: float
    outcome: Outcome
    samples: int = 0
    """Calls (or compared outputs) the observed value is over."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """The candidate's outputs against the baseline's over a window: compared outputs, those
    within atol/rtol, argmax rows and those agreeing, and outputs where only the candidate
    has NaN/Inf elements."""

    compared: int
    agreeing: int
    argmax_rows: int
    argmax_agreeing: int
    candidate_only_non_finite: int

    @classmethod
    def of_shadow(cls, candidate: VariantTotals) -> Comparison:
        """The shadow step: the candidate answers copies of the baseline's calls."""
        return cls(
            candidate.compared,
            candidate.shadow_results.get("agree", 0),
            candidate.argmax_rows,
            candidate.argmax_agreeing,
            candidate.shadow_only_non_finite,
        )

    @classmethod
    def of_live(cls, baseline: VariantTotals) -> Comparison:
        """A live step: the baseline answers copies of the candidate's calls (the figures are
        the baseline's as a shadow; the candidate is the primary side)."""
        return cls(
            baseline.compared,
            baseline.shadow_results.get("agree", 0),
            baseline.argmax_rows,
            baseline.argmax_agreeing,
            baseline.primary_only_non_finite,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    evidence: tuple[Evidence, ...]


def wilson(successes: int, trials: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a rate; (0, 1) with no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # At the ends the bound is exact (floating point leaves a crumb that would fail a zero
    # threshold on no evidence at all).
    low = 0.0 if successes == 0 else max(0.0, centre - spread)
    high = 1.0 if successes >= trials else min(1.0, centre + spread)
    return low, high


def judge_live(
    candidate: VariantTotals,
    baseline: VariantTotals,
    settings: GateSettings,
    enough: bool,
    baseline_enough: bool = True,
    comparison: Comparison | None = None,
    compared_enough: bool = False,
) -> Verdict:
    """A step with live traffic on the candidate: its faults and latency against the
    baseline's over the same window. ``baseline_enough``: the baseline took enough calls in
    the window for its p99 to mean something (not at a 100% step, where only stragglers
    reach it: there the p99 was judged at the steps before). ``comparison``: the
    candidate's outputs against the baseline's copies, judged once ``compared_enough``
    (None: not compared at this step)."""
    compared = (
        judge_comparison(comparison, settings, enough and compared_enough)
        if comparison is not None
        else ()
    )
    baseline_rate = baseline.faults / baseline.calls if baseline.calls else 0.0
    threshold = baseline_rate + settings.max_fault_rate_increase
    low, _ = wilson(candidate.faults, candidate.calls, settings.z)
    observed = candidate.faults / candidate.calls if candidate.calls else None
    faults = _judge(
        "fault_rate", observed, low, threshold, enough, bad_when_above=True, samples=candidate.calls
    )
    candidate_p99, baseline_p99 = candidate.quantile(0.99), baseline.quantile(0.99)
    if not baseline_enough or candidate_p99 is None or not baseline_p99:
        # Nothing to compare with at this step; the fault gate still holds the candidate.
        judged: Outcome = "pass" if enough and candidate.calls else "wait"
        latency = Evidence("p99_ratio", None, None, settings.max_p99_ratio, judged, candidate.calls)
        return _verdict(faults, latency, *compared)
    if not enough:
        # No early verdict on a quantile: the order-statistic bound wants the step's calls.
        latency = Evidence(
            "p99_ratio",
            candidate_p99 / baseline_p99,
            None,
            settings.max_p99_ratio,
            "wait",
            candidate.calls,
        )
        return _verdict(faults, latency, *compared)
    # The candidate's p99 is judged by the low end of its confidence interval (an order
    # statistic a few ranks down): with few calls the highest ones say little.
    n = candidate.calls
    low_rank = max(0.0, 0.99 - settings.z * math.sqrt(0.99 * 0.01 / n))
    candidate_low = candidate.quantile(low_rank) or 0.0
    latency = _judge(
        "p99_ratio",
        candidate_p99 / baseline_p99,
        candidate_low / baseline_p99,
        settings.max_p99_ratio,
        enough,
        bad_when_above=True,
        samples=candidate.calls,
    )
    return _verdict(faults, latency, *compared)


def judge_shadow(
    shadow: VariantTotals, baseline: VariantTotals, settings: GateSettings, enough: bool
) -> Verdict:
    """The shadow step: the candidate's faults on its copies against the baseline's on the
    primaries, and its outputs against the primary's."""
    baseline_rate = baseline.faults / baseline.calls if baseline.calls else 0.0
    low, _ = wilson(shadow.shadow_faults, shadow.shadow_calls, settings.z)
    faults = _judge(
        "shadow_fault_rate",
        shadow.shadow_faults / shadow.shadow_calls if shadow.shadow_calls else None,
        low,
        baseline_rate + settings.max_fault_rate_increase,
        enough,
        bad_when_above=True,
        samples=shadow.shadow_calls,
    )
    return _verdict(faults, *judge_comparison(Comparison.of_shadow(shadow), settings, enough))


def judge_comparison(
    comparison: Comparison, settings: GateSettings, enough: bool
) -> tuple[Evidence, ...]:
    """Agreement within atol/rtol, argmax agreement (outputs with rows), and NaN/Inf the
    baseline does not have."""
    compared = comparison.compared
    _, high = wilson(comparison.agreeing, compared, settings.z)
    gates = [
        _judge(
            "agreement",
            comparison.agreeing / compared if compared else None,
            high,
            settings.min_agreement,
            enough,
            bad_when_above=False,
            samples=compared,
        )
    ]
    if comparison.argmax_rows:
        _, high = wilson(comparison.argmax_agreeing, comparison.argmax_rows, settings.z)
        gates.append(
            _judge(
                "argmax_agreement",
                comparison.argmax_agreeing / comparison.argmax_rows,
                high,
                settings.min_argmax_agreement,
                enough,
                bad_when_above=False,
                samples=comparison.argmax_rows,
            )
        )
    low, _ = wilson(comparison.candidate_only_non_finite, compared, settings.z)
    gates.append(
        _judge(
            "non_finite",
            comparison.candidate_only_non_finite / compared if compared else None,
            low,
            settings.max_non_finite_rate,
            enough,
            bad_when_above=True,
            samples=compared,
        )
    )
    return tuple(gates)


def _judge(
    gate: str,
    observed: float | None,
    favourable_bound: float,
    threshold: float,
    enough: bool,
    *,
    bad_when_above: bool,
    samples: int,
) -> Evidence:
    def bad(value: float) -> bool:
        return value > threshold if bad_when_above else value < threshold

    if observed is not None and bad(favourable_bound):
        outcome: Outcome = "fail"  # even the most favourable plausible value is too bad
    elif enough and observed is not None and not bad(observed):
        outcome = "pass"
    else:
        # Too few calls, or a bad look not yet beyond doubt: more calls, not a verdict.
        outcome = "wait"
    return Evidence(gate, observed, favourable_bound, threshold, outcome, samples)


def _verdict(*evidence: Evidence) -> Verdict:
    outcomes = {e.outcome for e in evidence}
    outcome: Outcome = "fail" if "fail" in outcomes else "wait" if "wait" in outcomes else "pass"
    return Verdict(outcome, evidence)
