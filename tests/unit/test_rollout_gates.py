"""The gates of a progressive rollout: fail early on clear evidence, pass only with enough."""

from __future__ import annotations

import dataclasses
import math

import pytest

from gateway.rollout.gates import (
    Comparison,
    GateSettings,
    judge_live,
    judge_shadow,
    quantile_ranks,
    wilson,
)
from gateway.traffic.figures import VariantTotals

GATES = GateSettings()


def totals(
    calls: int = 0,
    faults: int = 0,
    slow: bool = False,
    agree: int = 0,
    disagree: int = 0,
    rows: int = 0,
    rows_agreeing: int = 0,
) -> VariantTotals:
    """``calls`` answered within 1 ms (within 10 ms when ``slow``), ``faults`` of them INTERNAL."""
    fast = 0 if slow else calls
    return VariantTotals(
        codes={"OK": calls - faults, "INTERNAL": faults},
        latency=((0.001, fast), (0.01, calls), (math.inf, calls)),
        shadow_results={"agree": agree, "disagree": disagree},
        argmax_rows=rows,
        argmax_agreeing=rows_agreeing,
        shadow_codes={"OK": agree + disagree},
        faults=faults,
    )


NOTHING = VariantTotals(codes={}, latency=(), shadow_results={}, argmax_rows=0, argmax_agreeing=0)


def test_the_wilson_interval() -> None:
    low, high = wilson(50, 100, 1.96)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    low, high = wilson(0, 100, 1.96)
    assert low == 0 and high == pytest.approx(0.0370, abs=1e-4)
    assert wilson(0, 0, 1.96) == (0.0, 1.0)


def test_a_healthy_candidate_waits_for_enough_then_passes() -> None:
    baseline = totals(calls=1000)
    assert judge_live(totals(calls=30), baseline, GATES, enough=False).outcome == "wait"
    verdict = judge_live(totals(calls=300), baseline, GATES, enough=True)
    assert verdict.outcome == "pass"
    assert {e.gate: e.outcome for e in verdict.evidence} == {
        "fault_rate": "pass",
        "p99_ratio": "pass",
    }


def test_clear_faults_fail_at_once_and_unclear_ones_wait() -> None:
    baseline = totals(calls=1000)
    early = judge_live(totals(calls=100, faults=30), baseline, GATES, enough=False)
    assert early.outcome == "fail"
    (faults, _) = early.evidence
    assert faults.observed == 0.3 and faults.bound is not None and faults.bound > 0.01
    # One fault in twenty: could be bad luck; the step waits for more calls.
    assert judge_live(totals(calls=20, faults=1), baseline, GATES, enough=False).outcome == "wait"
    # Past the threshold but not beyond doubt: more calls, not a verdict; then clear.
    assert judge_live(totals(calls=400, faults=8), baseline, GATES, enough=True).outcome == "wait"
    assert judge_live(totals(calls=4000, faults=80), baseline, GATES, enough=True).outcome == "fail"


def test_a_slower_candidate_fails_its_p99_gate_with_enough_calls() -> None:
    baseline = totals(calls=1000)
    slow = totals(calls=300, slow=True)
    assert judge_live(slow, baseline, GATES, enough=False).outcome == "wait"
    verdict = judge_live(slow, baseline, GATES, enough=True)
    assert verdict.outcome == "fail"
    latency = next(e for e in verdict.evidence if e.gate == "p99_ratio")
    assert latency.observed is not None and latency.observed > GATES.max_p99_ratio


def test_quantile_ranks_are_exact_binomial_bounds() -> None:
    def at_least(n: int, k: int) -> float:
        """P(Binomial(n, 0.99) >= k), summed term by term."""
        return sum(math.comb(n, j) * 0.99**j * 0.01 ** (n - j) for j in range(k, n + 1))

    tail = 0.5 * math.erfc(GATES.z / math.sqrt(2))
    assert quantile_ranks(1, 0.99, GATES.z) == (None, None), "one call bounds nothing"
    for n in (10, 26, 100, 527, 528, 1000):
        low, high = quantile_ranks(n, 0.99, GATES.z)
        assert low is not None and at_least(n, low) >= 1 - tail
        assert low == n or at_least(n, low + 1) < 1 - tail, "the largest such rank"
        if high is None:
            assert at_least(n, n) > tail, "even the largest call is no upper bound"
        else:
            assert at_least(n, high) <= tail and at_least(n, high - 1) > tail
    # Fewer than 528 calls: the largest is below the true p99 too often to bound it.
    assert quantile_ranks(527, 0.99, GATES.z)[1] is None
    assert quantile_ranks(528, 0.99, GATES.z)[1] == 528
    # Past the exact range, the normal approximation lands within a few ranks of it.
    low, high = quantile_ranks(100_001, 0.99, GATES.z)
    exact_low, exact_high = quantile_ranks(100_000, 0.99, GATES.z)
    assert low is not None and high is not None and exact_low is not None and exact_high
    assert abs(low - exact_low) <= 5 and abs(high - exact_high) <= 5


def test_a_p99_from_a_few_dozen_calls_waits_for_more_instead_of_failing() -> None:
    """Two slow calls in 26, against a baseline of 26: the observed ratio is far past the
    threshold, but the baseline's p99 has no upper bound yet; more calls, not a verdict."""
    noisy = VariantTotals(
        codes={"OK": 26},
        latency=((0.001, 24), (0.01, 26), (math.inf, 26)),
        shadow_results={},
        argmax_rows=0,
        argmax_agreeing=0,
    )
    verdict = judge_live(noisy, totals(calls=26), GATES, enough=True)
    latency = next(e for e in verdict.evidence if e.gate == "p99_ratio")
    assert latency.observed is not None and latency.observed > GATES.max_p99_ratio
    assert latency.bound is None and latency.outcome == "wait"
    # Slow throughout and a baseline with enough calls: beyond doubt.
    verdict = judge_live(totals(calls=26, slow=True), totals(calls=1000), GATES, enough=True)
    assert verdict.outcome == "fail"


def test_the_shadow_step_judges_agreement() -> None:
    assert judge_shadow(totals(disagree=50), NOTHING, GATES, enough=False).outcome == "fail"
    assert judge_shadow(totals(agree=50), NOTHING, GATES, enough=False).outcome == "wait"
    assert judge_shadow(totals(agree=500), NOTHING, GATES, enough=True).outcome == "pass"
    assert (
        judge_shadow(totals(agree=90, disagree=10), NOTHING, GATES, enough=True).outcome == "fail"
    )
    argmax = judge_shadow(
        totals(agree=500, rows=500, rows_agreeing=400), NOTHING, GATES, enough=True
    )
    assert {e.gate: e.outcome for e in argmax.evidence} == {
        "shadow_fault_rate": "pass",
        "agreement": "pass",
        "argmax_agreement": "fail",
        "non_finite": "pass",
    }
    # Copies the candidate fails count like live faults, before any client meets them.
    failing = dataclasses.replace(
        totals(agree=10), shadow_codes={"OK": 10, "INTERNAL": 10}, shadow_faults=10
    )
    verdict = judge_shadow(failing, NOTHING, GATES, enough=False)
    assert verdict.outcome == "fail"
    assert verdict.evidence[0].gate == "shadow_fault_rate"


def test_nan_or_inf_only_in_the_candidates_outputs_fails_at_once() -> None:
    overflowing = dataclasses.replace(totals(agree=50), shadow_only_non_finite=1)
    verdict = judge_shadow(overflowing, NOTHING, GATES, enough=False)
    assert {e.gate: e.outcome for e in verdict.evidence}["non_finite"] == "fail"
    # NaN in the baseline's own answers (the primary's side) is not the candidate's doing.
    inherited = dataclasses.replace(totals(agree=500), primary_only_non_finite=3)
    assert judge_shadow(inherited, NOTHING, GATES, enough=True).outcome == "pass"
    # At a live step the baseline answers the copies: the candidate is the primary side.
    live = Comparison.of_live(dataclasses.replace(totals(agree=30), primary_only_non_finite=1))
    verdict = judge_live(totals(calls=300), totals(calls=300), GATES, True, True, live, True)
    assert verdict.outcome == "fail"
    agreeing = Comparison.of_live(totals(agree=30))
    verdict = judge_live(totals(calls=300), totals(calls=300), GATES, True, True, agreeing, True)
    assert verdict.outcome == "pass"
    # Too few copies compared yet: the output gates wait, whatever the rest says.
    verdict = judge_live(totals(calls=300), totals(calls=300), GATES, True, True, agreeing, False)
    assert verdict.outcome == "wait"


def test_at_the_last_step_the_baseline_takes_no_calls_and_the_fault_gate_decides() -> None:
    nothing = totals()
    assert judge_live(totals(calls=300), nothing, GATES, enough=True).outcome == "pass"
    assert judge_live(totals(calls=300, faults=30), nothing, GATES, enough=True).outcome == "fail"
    # A few stragglers of the previous step say nothing about the baseline's p99.
    stragglers = totals(calls=2)
    slow = totals(calls=300, slow=True)
    assert judge_live(slow, stragglers, GATES, True, baseline_enough=False).outcome == "pass"
    # Even counted, two calls bound no p99: the step would wait for the baseline's.
    assert judge_live(slow, stragglers, GATES, True, baseline_enough=True).outcome == "wait"
