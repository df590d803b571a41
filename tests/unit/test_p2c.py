import random
from collections import Counter
from dataclasses import dataclass

from gateway.balancing.p2c import LoadPolicy, PowerOfTwoChoices

KEY = ("m", "1")
OTHER = ("n", "1")


@dataclass(frozen=True)
class Backend:
    name: str


A, B, C = Backend("a"), Backend("b"), Backend("c")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def balancer(clock: FakeClock, seed: int = 7) -> PowerOfTwoChoices:
    policy = LoadPolicy(decay_s=5.0, fault_penalty_s=0.25)
    return PowerOfTwoChoices(clock, random.Random(seed), policy)


def answer(
    p2c: PowerOfTwoChoices, backend: Backend, latency_s: float, key: tuple[str, str] = KEY
) -> None:
    p2c.started(backend.name)
    p2c.finished(backend.name, key, latency_s, fault=False)


def test_single_candidate_needs_no_draw() -> None:
    assert balancer(FakeClock()).choose(KEY, (A,)) is A


def test_equal_backends_share_the_traffic() -> None:
    p2c = balancer(FakeClock())
    picks = Counter(p2c.choose(KEY, (A, B, C)).name for _ in range(3000))
    assert set(picks) == {"a", "b", "c"}
    assert all(800 < count < 1200 for count in picks.values()), picks


def test_fewer_calls_in_flight_wins_at_equal_latency() -> None:
    clock = FakeClock()
    p2c = balancer(clock)
    answer(p2c, A, 0.002)
    answer(p2c, B, 0.002)
    for _ in range(3):
        p2c.started("a")
    assert all(p2c.choose(KEY, (A, B)) is B for _ in range(50))


def test_lower_latency_wins_when_idle() -> None:
    clock = FakeClock()
    p2c = balancer(clock)
    answer(p2c, A, 0.010)
    answer(p2c, B, 0.001)
    assert all(p2c.choose(KEY, (A, B)) is B for _ in range(50))


def test_load_outweighs_latency_once_the_fast_backend_queues() -> None:
    clock = FakeClock()
    p2c = balancer(clock)
    answer(p2c, A, 0.004)
    answer(p2c, B, 0.001)
    for _ in range(4):  # B: (4 + 1) x 1 ms = 5 ms > A: 1 x 4 ms
        p2c.started("b")
    assert p2c.choose(KEY, (A, B)) is A


def test_a_slow_answer_counts_at_once_a_fast_one_is_forgiven_over_time() -> None:
    clock = FakeClock()
    p2c = balancer(clock)
    answer(p2c, A, 0.001)
    answer(p2c, A, 0.050)  # peak: replaces the estimate
    assert p2c.cost("a", KEY) == 0.050
    clock.now += 0.001
    answer(p2c, A, 0.001)  # right after: barely blended in
    cost = p2c.cost("a", KEY)
    assert cost is not None and cost > 0.049
    clock.now += 5.0
    answer(p2c, A, 0.001)  # one time constant later: mostly forgiven
    cost = p2c.cost("a", KEY)
    assert cost is not None and cost < 0.050 * 0.4


def test_a_starved_backend_is_tried_again_as_its_estimate_decays() -> None:
    clock = FakeClock()
    p2c = balancer(clock)
    answer(p2c, A, 0.100)
    answer(p2c, B, 0.001)
    assert p2c.choose(KEY, (A, B)) is B
    clock.now += 30.0  # A left alone: 100 ms x e^-6 ≈ 0.25 ms
    answer(p2c, B, 0.001)  # B answered just now: 1 ms
    assert p2c.choose(KEY, (A, B)) is A


def test_a_fast_fault_counts_as_the_penalty() -> None:
    clock = FakeClock()
    p2c = balancer(clock)
    p2c.started("a")
    p2c.finished("a", KEY, 0.0002, fault=True)
    assert p2c.cost("a", KEY) == 0.25


def test_unknown_estimate_is_taken_as_the_peers_so_calls_in_flight_decide() -> None:
    clock = FakeClock()
    p2c = balancer(clock)
    answer(p2c, A, 0.001)
    p2c.started("a")  # A: 2 x 1 ms; B (new): 1 x 1 ms
    assert all(p2c.choose(KEY, (A, B)) is B for _ in range(20))


def test_a_client_that_gave_up_teaches_nothing_about_latency() -> None:
    clock = FakeClock()
    p2c = balancer(clock)
    answer(p2c, A, 0.001)
    p2c.started("a")
    assert p2c.in_flight("a") == 1
    p2c.finished("a", KEY, None, fault=False)
    assert p2c.in_flight("a") == 0
    assert p2c.cost("a", KEY) == 0.001


def test_latency_is_per_model() -> None:
    clock = FakeClock()
    p2c = balancer(clock)
    answer(p2c, A, 0.100, key=KEY)
    answer(p2c, B, 0.001, key=KEY)
    answer(p2c, A, 0.001, key=OTHER)
    answer(p2c, B, 0.010, key=OTHER)
    assert p2c.choose(KEY, (A, B)) is B
    assert p2c.choose(OTHER, (A, B)) is A


def test_same_seed_same_choices() -> None:
    p2c_1, p2c_2 = balancer(FakeClock(), seed=3), balancer(FakeClock(), seed=3)
    first = [p2c_1.choose(KEY, (A, B, C)).name for _ in range(50)]
    second = [p2c_2.choose(KEY, (A, B, C)).name for _ in range(50)]
    assert first == second
