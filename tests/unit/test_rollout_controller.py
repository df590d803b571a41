"""The rollout controller on a real route store, fed figures as tgw-edge reports them."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.rollout.controller import RolloutController, RolloutMetrics
from gateway.settings import RolloutSettings, TrafficSettings
from gateway.traffic.figures import VariantTotals
from gateway.traffic.state import TrafficState
from gateway.traffic.store import FileRouteStore

SETTINGS = RolloutSettings(steps=[0, 50, 100], min_step_s=10, min_requests=20, settle_s=1)


class Fleet:
    """What the edge would report, cumulative, per (route, variant)."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], VariantTotals] = {}
        self.now = 0.0

    def serve(self, variant: str, calls: int = 0, agree: int = 0, disagree: int = 0) -> None:
        before = self.totals.get(("classifier", variant))
        ok = (before.codes.get("OK", 0) if before else 0) + calls
        agreed = (before.shadow_results.get("agree", 0) if before else 0) + agree
        disagreed = (before.shadow_results.get("disagree", 0) if before else 0) + disagree
        copies = (before.shadow_codes.get("OK", 0) if before else 0) + agree + disagree
        self.totals[("classifier", variant)] = VariantTotals(
            codes={"OK": ok},
            latency=((0.001, ok), (math.inf, ok)),
            shadow_results={"agree": agreed, "disagree": disagreed},
            argmax_rows=0,
            argmax_agreeing=0,
            shadow_codes={"OK": copies},
        )


def controller(path: Path, fleet: Fleet) -> tuple[TrafficState, RolloutController]:
    state = TrafficState(
        FileRouteStore(path), TrafficSettings(), lambda m, v: True, lambda: None, clock=lambda: 0.0
    )
    rollouts = RolloutController(
        state,
        lambda: fleet.totals,
        SETTINGS,
        RolloutMetrics(CollectorRegistry()),
        clock=lambda: fleet.now,
        wall_clock=lambda: 1_700_000_000.0,
    )
    return state, rollouts


async def with_route(state: TrafficState) -> None:
    """Route ``classifier`` all to version 1: the baseline."""
    route = admin_pb2.Route(name="classifier", variants=[admin_pb2.Variant(version="1", weight=1)])
    await state.set_route(route, 0)


def weights(state: TrafficState) -> list[tuple[str, int]]:
    route = state.route("classifier")
    assert route is not None
    return [(v.name, v.weight) for v in route.variants]


def test_steps_survive_a_restart_and_end_promoted(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        state, rollouts = controller(tmp_path / "traffic.json", fleet)
        await with_route(state)
        started = await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        assert (started.status, started.step) == ("running", 0)
        shadowed = state.route("classifier")
        assert shadowed is not None and shadowed.shadow.target.name == "2"
        assert weights(state) == [("1", 10_000), ("2", 0)]
        fleet.serve("2", agree=30)  # still settling: these do not count
        fleet.now = 1
        await rollouts.tick()  # the window opens
        fleet.serve("2", agree=30)
        fleet.now = 6
        await rollouts.tick()
        assert rollouts.rollout("classifier").step == 0, "the step's time is not up"
        fleet.now = 12
        await rollouts.tick()
        assert rollouts.rollout("classifier").step == 1
        assert weights(state) == [("1", 5_000), ("2", 5_000)]

        # The gateway restarts: the same store, a new controller; the step goes on with a
        # fresh window (evidence is gathered again).
        state, rollouts = controller(tmp_path / "traffic.json", fleet)
        resumed = rollouts.rollout("classifier")
        assert (resumed.status, resumed.step) == ("running", 1)
        await rollouts.tick()  # opens the window
        fleet.serve("1", calls=100)
        fleet.serve("2", calls=100)
        fleet.now = 30
        await rollouts.tick()
        assert rollouts.rollout("classifier").step == 2
        fleet.now = 32
        await rollouts.tick()  # the last step's window opens
        fleet.serve("2", calls=100)
        fleet.now = 50
        await rollouts.tick()
        done = rollouts.rollout("classifier")
        assert done.status == "promoted"
        assert [t.event for t in done.history] == ["started", "step", "step", "promoted"]
        assert weights(state) == [("2", 1)]

    asyncio.run(scenario())


def test_a_route_changed_by_someone_else_pauses_the_rollout(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        state, rollouts = controller(tmp_path / "traffic.json", fleet)
        await with_route(state)
        started = await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        # An operator sets the split back by hand.
        back = admin_pb2.Route(
            name="classifier", variants=[admin_pb2.Variant(version="1", weight=1)]
        )
        await state.set_route(back, started.route_revision)
        await rollouts.tick()
        paused = rollouts.rollout("classifier")
        assert paused.status == "paused"
        assert "someone else" in paused.history[-1].reason
        assert weights(state) == [("1", 1)], "the operator's change stands"

    asyncio.run(scenario())


def test_disagreement_rolls_back_before_the_step_is_up(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        state, rollouts = controller(tmp_path / "traffic.json", fleet)
        await with_route(state)
        await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        fleet.now = 1
        await rollouts.tick()  # the window opens
        fleet.serve("2", disagree=10)
        fleet.now = 2
        await rollouts.tick()
        done = rollouts.rollout("classifier")
        assert done.status == "rolled_back"
        assert weights(state) == [("1", 1), ("2", 0)]
        assert not state.route("classifier").HasField("shadow")  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_a_route_may_have_its_own_plan(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        state, _ = controller(tmp_path / "traffic.json", fleet)
        own = RolloutSettings(plans={"classifier": {"steps": [0, 10, 100], "min_requests": 5}})
        rollouts = RolloutController(
            state,
            lambda: fleet.totals,
            own,
            RolloutMetrics(CollectorRegistry()),
            clock=lambda: fleet.now,
            wall_clock=lambda: 0.0,
        )
        await with_route(state)
        started = await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        assert list(started.plan.steps) == [0, 10, 100]
        assert started.plan.min_requests == 5
        assert started.plan.min_step.ToSeconds() == own.min_step_s

    asyncio.run(scenario())
