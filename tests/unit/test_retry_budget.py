from gateway.balancing.retry_budget import RetryBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_retries_are_capped_at_a_share_of_requests() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock, ratio=0.2, min_per_second=0, window_s=10)
    for _ in range(100):
        budget.on_request()
    granted = sum(budget.try_retry() for _ in range(50))
    assert granted == 20


def test_the_floor_allows_retries_on_a_quiet_gateway() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock, ratio=0.2, min_per_second=1, window_s=10)
    budget.on_request()
    assert sum(budget.try_retry() for _ in range(50)) == 10


def test_the_budget_refills_as_the_window_moves() -> None:
    clock = FakeClock()
    budget = RetryBudget(clock, ratio=0.5, min_per_second=0, window_s=2)
    for _ in range(10):
        budget.on_request()
    assert sum(budget.try_retry() for _ in range(10)) == 5
    clock.now += 3  # the old requests and retries leave the window
    for _ in range(4):
        budget.on_request()
    assert sum(budget.try_retry() for _ in range(10)) == 2
