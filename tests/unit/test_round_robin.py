from collections import Counter

from gateway.balancing.round_robin import RoundRobinBalancer


def test_spreads_evenly_over_candidates() -> None:
    balancer = RoundRobinBalancer()
    picks = Counter(balancer.choose(("m", ""), ("a", "b", "c")) for _ in range(30))
    assert picks == {"a": 10, "b": 10, "c": 10}


def test_keys_rotate_independently() -> None:
    balancer = RoundRobinBalancer()
    assert balancer.choose(("m", ""), ("a", "b")) == "a"
    assert balancer.choose(("n", ""), ("a", "b")) == "a"
    assert balancer.choose(("m", ""), ("a", "b")) == "b"


def test_shrinking_candidate_list_stays_in_range() -> None:
    balancer = RoundRobinBalancer()
    for _ in range(5):
        balancer.choose(("m", ""), ("a", "b", "c"))
    assert balancer.choose(("m", ""), ("x",)) == "x"
