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
  The p99 ratio is judged alike, on its most favourable plausible value: the low end of the
  candidate's p99 over the high end of the baseline's, each an exact order-statistic bound
  (a p99 over a few dozen calls has no upper bound at all: its largest call is below the
  true p99 more often than not, so the step waits rather than fail on noise).
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
    calls: int
    """Calls whose answers were compared (``compared`` counts their outputs)."""

    @classmethod
    def of_shadow(cls, candidate: VariantTotals) -> Comparison:
        """The shadow step: the candidate answers copies of the baseline's calls."""
        return cls(
            candidate.compared,
            candidate.shadow_results.get("agree", 0),
            candidate.argmax_rows,
            candidate.argmax_agreeing,
            candidate.shadow_only_non_finite,
            candidate.shadow_compared,
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
            baseline.shadow_compared,
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
    # Judged by the candidate's p99 at its lowest plausible over the baseline's at its highest:
    # two samples, each a few dozen calls at a low-traffic step, both noisy.
    candidate_rank, _ = quantile_ranks(candidate.calls, 0.99, settings.z)
    _, baseline_rank = quantile_ranks(baseline.calls, 0.99, settings.z)
    favourable = None
    if candidate_rank is not None and baseline_rank is not None:
        candidate_low = candidate.quantile(candidate_rank / candidate.calls) or 0.0
        baseline_high = baseline.quantile(baseline_rank / baseline.calls) or baseline_p99
        favourable = candidate_low / baseline_high
    latency = _judge(
        "p99_ratio",
        candidate_p99 / baseline_p99,
        favourable,
        settings.max_p99_ratio,
        enough,
        bad_when_above=True,
        samples=candidate.calls,
    )
    return _verdict(faults, latency, *compared)


EXACT_RANKS_UP_TO = 100_000
"""Calls up to which order-statistic ranks are summed exactly from the binomial; above, the
normal approximation (within a rank in a thousand there) keeps a tick cheap."""


def quantile_ranks(n: int, q: float, z: float) -> tuple[int | None, int | None]:
    """Confidence bounds of the q-quantile of ``n`` calls as 1-based ranks ``(low, high)``:
    the low-th smallest call is below the true quantile, the high-th above it, each wrong
    with probability at most ``tail``, the upper tail of ``z`` standard scores. None where
    ``n`` calls are too few for that bound.

    The k-th smallest is below the quantile when at least k calls are, so with
    ``S(k) = P(Binomial(n, q) >= k)``: low is the largest k with ``S(k) >= 1 - tail``, high
    the smallest with ``S(k) <= tail``."""
    if n <= 0:
        return None, None
    if n > EXACT_RANKS_UP_TO:
        spread = z * math.sqrt(n * q * (1 - q))
        low_rank, high_rank = math.floor(n * q - spread), math.ceil(n * q + spread)
        return (low_rank if low_rank >= 1 else None), (high_rank if high_rank <= n else None)
    tail = 0.5 * math.erfc(z / math.sqrt(2))
    log_q, log_rest = math.log(q), math.log1p(-q)
    log_pmf = n * log_q  # P(Binomial = n)
    at_least = 0.0
    high: int | None = None
    for k in range(n, 0, -1):
        at_least += math.exp(log_pmf)  # S(k)
        if at_least <= tail:
            high = k
        if at_least >= 1 - tail:
            return k, high
        # P(Binomial = k - 1) from P(Binomial = k).
        log_pmf += math.log(k) - math.log(n - k + 1) + log_rest - log_q
    return None, high


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
    favourable_bound: float | None,
    threshold: float,
    enough: bool,
    *,
    bad_when_above: bool,
    samples: int,
) -> Evidence:
    def bad(value: float) -> bool:
        return value > threshold if bad_when_above else value < threshold

    if observed is not None and favourable_bound is not None and bad(favourable_bound):
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
