from load_tests.scenarios import ab_deviation, ramp, spike


def test_ramp_sends_faster_towards_the_end() -> None:
    offsets = ramp(10, 100, 10.0)
    assert offsets == sorted(offsets)
    assert offsets[-1] < 10.0
    first_second = sum(1 for t in offsets if t < 1.0)
    last_second = sum(1 for t in offsets if t >= 9.0)
    assert 10 <= first_second <= 20
    assert 85 <= last_second <= 100
    # The area under the rate line: (10 + 100) / 2 * 10 s.
    assert abs(len(offsets) - 550) < 15


def test_spike_is_in_the_middle_fifth() -> None:
    offsets = spike(10, 200, 10.0)
    during = sum(1 for t in offsets if 4.0 <= t < 6.0)
    outside = len(offsets) - during
    assert abs(during - 400) <= 2
    assert abs(outside - 80) <= 2


def test_ab_deviation_is_observed_minus_expected_share() -> None:
    deviation = ab_deviation({"1": 75, "2": 25}, {"1": 0.5, "2": 0.5})
    assert deviation == {"1": 0.25, "2": -0.25}
    assert ab_deviation({}, {"1": 1.0}) == {"1": -1.0}
