from gateway.balancing.breaker import BreakerPolicy, BreakerState, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(**policy: float) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(BreakerPolicy(**policy), clock), clock  # type: ignore[arg-type]


def test_breaker_opens_after_consecutive_failures() -> None:
    breaker, _ = _breaker(consecutive_failures=3)
    assert breaker.record(False) is BreakerState.CLOSED
    assert breaker.record(False) is BreakerState.CLOSED
    assert breaker.record(False) is BreakerState.OPEN
    assert not breaker.admits()


def test_a_success_resets_the_consecutive_count() -> None:
    breaker, _ = _breaker(consecutive_failures=3)
    for outcome in (False, False, True, False, False):
        breaker.record(outcome)
    assert breaker.state is BreakerState.CLOSED


def test_breaker_opens_on_failure_rate_over_the_window() -> None:
    breaker, clock = _breaker(consecutive_failures=100, failure_rate=0.5, min_requests=10)
    for index in range(10):
        clock.now += 0.1
        breaker.record(index % 2 == 0)  # every other call fails: 50 %
    assert breaker.state is BreakerState.OPEN


def test_old_outcomes_leave_the_window() -> None:
    breaker, clock = _breaker(
        consecutive_failures=100, failure_rate=0.5, min_requests=4, window_s=10
    )
    for _ in range(3):
        breaker.record(False)
    clock.now += 11  # those three failures are now outside the window
    for _ in range(3):
        breaker.record(True)
    assert breaker.record(False) is BreakerState.CLOSED


def test_open_turns_half_open_after_the_ejection_time_and_a_trial_closes_it() -> None:
    breaker, clock = _breaker(consecutive_failures=1, base_ejection_s=2, half_open_trials=1)
    breaker.record(False)
    clock.now += 1.9
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admits()
    breaker.on_request()
    assert not breaker.admits()  # the one trial is out
    assert breaker.record(True) is BreakerState.CLOSED
    assert breaker.admits()


def test_ejection_time_grows_on_repeated_failure_and_is_capped() -> None:
    breaker, clock = _breaker(consecutive_failures=1, base_ejection_s=1, max_ejection_s=3)
    breaker.record(False)
    for seconds in (1, 2, 3, 3):  # 1 s, then doubling, capped at 3 s
        clock.now += seconds - 0.01
        assert breaker.state is BreakerState.OPEN
        clock.now += 0.02
        assert breaker.state is BreakerState.HALF_OPEN
        breaker.on_request()
        assert breaker.record(False) is BreakerState.OPEN  # the trial fails


def test_late_answers_while_open_change_nothing() -> None:
    breaker, _ = _breaker(consecutive_failures=1)
    breaker.record(False)
    assert breaker.record(True) is BreakerState.OPEN


def test_an_abandoned_trial_is_given_back() -> None:
    breaker, clock = _breaker(consecutive_failures=1, base_ejection_s=1.0, half_open_trials=1)
    breaker.record(False)
    clock.now += 1.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.on_request()
    assert not breaker.admits()  # the one trial is out
    breaker.abandon()  # its client went away: no outcome will come
    assert breaker.admits()
    breaker.abandon()  # never more trials than the policy allows
    breaker.on_request()
    assert not breaker.admits()
