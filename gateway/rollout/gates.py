"""The gates a candidate passes at each step of a progressive rollout, judged on the same
window as its baseline: fault rate, p99 latency (as a ratio to the baseline's), and, at the
shadow step, how often its outputs agree with the primary's.

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
    return max(0.0, centre - spread), min(1.0, centre + spread)


def judge_live(
    candidate: VariantTotals,
    baseline: VariantTotals,
    settings: GateSettings,
    enough: bool,
    baseline_enough: bool = True,
) -> Verdict:
    """A step with live traffic on the candidate: its faults and latency against the
    baseline's over the same window. ``baseline_enough``: the baseline took enough calls in
    the window for its p99 to mean something (not at a 100% step, where only stragglers
    reach it: there the p99 was judged at the steps before)."""
    baseline_rate = baseline.faults / baseline.calls if baseline.calls else 0.0
    threshold = baseline_rate + settings.max_fault_rate_increase
    low, _ = wilson(candidate.faults, candidate.calls, settings.z)
    observed = candidate.faults / candidate.calls if candidate.calls else None
    faults = _judge("fault_rate", observed, low, threshold, enough, bad_when_above=True)
    candidate_p99, baseline_p99 = candidate.quantile(0.99), baseline.quantile(0.99)
    if not baseline_enough or candidate_p99 is None or not baseline_p99:
        # Nothing to compare with at this step; the fault gate still holds the candidate.
        judged: Outcome = "pass" if enough and candidate.calls else "wait"
        latency = Evidence("p99_ratio", None, None, settings.max_p99_ratio, judged)
        return _verdict(faults, latency)
    if not enough:
        # No early verdict on a quantile: the order-statistic bound wants the step's calls.
        latency = Evidence(
            "p99_ratio", candidate_p99 / baseline_p99, None, settings.max_p99_ratio, "wait"
        )
        return _verdict(faults, latency)
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
    )
    return _verdict(faults, latency)


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
    )
    compared = sum(shadow.shadow_results.values())
    agreeing = shadow.shadow_results.get("agree", 0)
    _, high = wilson(agreeing, compared, settings.z)
    agreement = _judge(
        "agreement",
        agreeing / compared if compared else None,
        high,
        settings.min_agreement,
        enough,
        bad_when_above=False,
    )
    gates = [faults, agreement]
    if shadow.argmax_rows:
        _, high = wilson(shadow.argmax_agreeing, shadow.argmax_rows, settings.z)
        gates.append(
            _judge(
                "argmax_agreement",
                shadow.argmax_agreeing / shadow.argmax_rows,
                high,
                settings.min_argmax_agreement,
                enough,
                bad_when_above=False,
            )
        )
    return _verdict(*gates)


def _judge(
    gate: str,
    observed: float | None,
    favourable_bound: float,
    threshold: float,
    enough: bool,
    *,
    bad_when_above: bool,
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
    return Evidence(gate, observed, favourable_bound, threshold, outcome)


def _verdict(*evidence: Evidence) -> Verdict:
    outcomes = {e.outcome for e in evidence}
    outcome: Outcome = "fail" if "fail" in outcomes else "wait" if "wait" in outcomes else "pass"
    return Verdict(outcome, evidence)
