from gateway.balancing.shedding import LoadShedder


def test_gateway_cap_refuses_past_the_limit_and_frees_on_leave() -> None:
    shedder = LoadShedder(max_in_flight=2, max_in_flight_per_model=None)
    assert shedder.try_enter("a")
    assert shedder.try_enter("b")
    assert not shedder.try_enter("c")
    shedder.leave("a")
    assert shedder.try_enter("c")


def test_per_model_cap_is_independent_per_model() -> None:
    shedder = LoadShedder(max_in_flight=None, max_in_flight_per_model=1)
    assert shedder.try_enter("a")
    assert not shedder.try_enter("a")
    assert shedder.try_enter("b")
    shedder.leave("a")
    assert shedder.try_enter("a")


def test_no_caps_admit_everything() -> None:
    shedder = LoadShedder(max_in_flight=None, max_in_flight_per_model=None)
    assert all(shedder.try_enter(str(i % 3)) for i in range(1000))
