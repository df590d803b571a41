"""The rollout controller on a real route store, fed figures as tgw-edge reports them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.rollout import controller as controller_module
from gateway.rollout.controller import RolloutController, RolloutMetrics
from gateway.settings import RolloutSettings, TrafficSettings
from gateway.traffic.figures import VariantTotals
from gateway.traffic.routes import AdminError
from gateway.traffic.state import TrafficState
from gateway.traffic.store import FileRouteStore

SETTINGS = RolloutSettings(steps=[0, 50, 100], min_step_s=10, min_requests=20, settle_s=1)


class Fleet:
    """What the edge would report, cumulative, per (route, variant)."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], VariantTotals] = {}
        self.now = 0.0

    def serve(
        self,
        variant: str,
        calls: int = 0,
        agree: int = 0,
        disagree: int = 0,
        *,
        shadow_only_non_finite: int = 0,
        primary_only_non_finite: int = 0,
        outputs: int = 1,
    ) -> None:
        """``calls`` answered by ``variant``; ``agree``/``disagree``: copies it answered
        (as the shadow), compared with their primary's answer, each of ``outputs`` outputs
        (counted per output, as the edge counts them)."""
        before = self.totals.get(("classifier", variant))
        ok = (before.codes.get("OK", 0) if before else 0) + calls
        agreed = (before.shadow_results.get("agree", 0) if before else 0) + agree * outputs
        disagreed = (before.shadow_results.get("disagree", 0) if before else 0) + (
            disagree * outputs
        )
        copies = (before.shadow_codes.get("OK", 0) if before else 0) + agree + disagree
        self.totals[("classifier", variant)] = VariantTotals(
            codes={"OK": ok},
            latency=((0.001, ok), (math.inf, ok)),
            shadow_results={"agree": agreed, "disagree": disagreed},
            argmax_rows=0,
            argmax_agreeing=0,
            shadow_codes={"OK": copies},
            shadow_only_non_finite=(before.shadow_only_non_finite if before else 0)
            + shadow_only_non_finite,
            primary_only_non_finite=(before.primary_only_non_finite if before else 0)
            + primary_only_non_finite,
            # Calls, whatever their number of outputs.
            shadow_compared=(before.shadow_compared if before else 0) + agree + disagree,
        )


async def controller(
    path: Path,
    fleet: Fleet,
    settings: RolloutSettings = SETTINGS,
    *,
    registry: CollectorRegistry | None = None,
    servable: Callable[[str, str], bool] = lambda model, version: True,
) -> tuple[TrafficState, RolloutController]:
    state = TrafficState(
        FileRouteStore(path), TrafficSettings(), servable, lambda: None, clock=lambda: 0.0
    )
    await state.start()
    rollouts = RolloutController(
        state,
        lambda: fleet.totals,
        settings,
        RolloutMetrics(registry or CollectorRegistry()),
        clock=lambda: fleet.now,
        wall_clock=lambda: 1_700_000_000.0,
        version_digest=lambda model, version: f"digest of {model} {version}",
    )
    return state, rollouts


def another_controller(
    state: TrafficState,
    fleet: Fleet,
    settings: RolloutSettings = SETTINGS,
    wall_clock: float = 1_700_000_000.0,
) -> RolloutController:
    """A second controller on the same state (another replica's, or other settings)."""
    return RolloutController(
        state,
        lambda: fleet.totals,
        settings,
        RolloutMetrics(CollectorRegistry()),
        clock=lambda: fleet.now,
        wall_clock=lambda: wall_clock,
    )


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
        state, rollouts = await controller(tmp_path / "traffic.json", fleet)
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
        # Live comparison: copies of a share of the candidate's calls go to the baseline.
        compared = state.route("classifier")
        assert compared is not None
        assert (compared.shadow.target.name, compared.shadow.percent) == ("1", 10)

        # The gateway restarts: the same store, a new controller; the step goes on with a
        # fresh window (evidence is gathered again).
        state, rollouts = await controller(tmp_path / "traffic.json", fleet)
        resumed = rollouts.rollout("classifier")
        assert (resumed.status, resumed.step) == ("running", 1)
        await rollouts.tick()  # opens the window
        fleet.serve("1", calls=100)
        fleet.serve("2", calls=100)
        fleet.now = 30
        await rollouts.tick()
        waiting = rollouts.rollout("classifier")
        assert waiting.step == 1, "no live comparison yet: the agreement gate waits"
        assert {e.gate: e.outcome for e in waiting.current}["agreement"] == "wait"
        fleet.serve("1", agree=2)  # 10% of the step's 20 required calls
        await rollouts.tick()
        assert rollouts.rollout("classifier").step == 2
        fleet.now = 32
        await rollouts.tick()  # the last step's window opens
        fleet.serve("2", calls=100)
        fleet.serve("1", agree=10)
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
        state, rollouts = await controller(tmp_path / "traffic.json", fleet)
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
        state, rollouts = await controller(tmp_path / "traffic.json", fleet)
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
        state, _ = await controller(tmp_path / "traffic.json", fleet)
        own = RolloutSettings(plans={"classifier": {"steps": [0, 10, 100], "min_requests": 5}})
        rollouts = another_controller(state, fleet, own, wall_clock=0.0)
        await with_route(state)
        started = await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        assert list(started.plan.steps) == [0, 10, 100]
        assert started.plan.min_requests == 5
        assert started.plan.min_step.ToSeconds() == own.min_step_s

    asyncio.run(scenario())


def test_live_disagreement_and_one_sided_nan_roll_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        state, rollouts = await controller(tmp_path / "live.json", fleet)
        await with_route(state)
        await rollouts.begin(
            "classifier",
            admin_pb2.Variant(version="2"),
            admin_pb2.RolloutPlan(steps=[50, 100], min_requests=20),
        )
        fleet.now = 1
        await rollouts.tick()  # the window opens
        fleet.serve("2", calls=40)
        fleet.serve("1", calls=40, agree=2, disagree=30)  # the baseline's copies disagree
        fleet.now = 2
        await rollouts.tick()
        live = rollouts.rollout("classifier")
        assert live.status == "rolled_back", "clear live disagreement needs no full step"
        assert "agreement" in live.history[-1].reason

        # A candidate producing NaN where the baseline does not: one such output suffices.
        fleet = Fleet()
        state, rollouts = await controller(tmp_path / "nan.json", fleet)
        await with_route(state)
        await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        fleet.now = 1
        await rollouts.tick()
        fleet.serve("2", agree=5, shadow_only_non_finite=1)
        fleet.now = 2
        await rollouts.tick()
        nan = rollouts.rollout("classifier")
        assert nan.status == "rolled_back"
        assert "non_finite" in nan.history[-1].reason

    asyncio.run(scenario())


def test_the_plan_says_whether_replaced_and_rolled_back_versions_are_unloaded(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        unloading = RolloutSettings(
            steps=[100], min_step_s=0, min_requests=1, unload_replaced=True, settle_s=0
        )
        fleet = Fleet()
        state, rollouts = await controller(tmp_path / "a.json", fleet, unloading)
        await with_route(state)
        assert state.pins("classifier").kept == {"1"}
        await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        await rollouts.tick()
        fleet.serve("2", calls=5)
        fleet.serve("1", agree=1)
        await rollouts.tick()
        assert rollouts.rollout("classifier").status == "promoted"
        assert weights(state) == [("2", 1)]
        pins = state.pins("classifier")
        assert pins.kept == {"2"}
        assert pins.withheld == {("1", "digest of classifier 1")}
        restored = await state.restore("classifier", "1")
        assert restored.reason == "replaced by 2"
        assert state.pins("classifier").withheld == frozenset()

        # Rolled back with unload_rolled_back (asked in the plan): the candidate leaves the
        # route and is withheld; without it, it stays at weight 0.
        state, rollouts = await controller(tmp_path / "b.json", fleet)
        await with_route(state)
        plan = admin_pb2.RolloutPlan(unload_rolled_back=True)
        await rollouts.begin("classifier", admin_pb2.Variant(version="3"), plan)
        await rollouts.abort("classifier")
        assert weights(state) == [("1", 1)]
        assert state.pins("classifier").withheld == {("3", "digest of classifier 3")}
        assert rollouts.rollout("classifier").plan.unload_replaced is False

    asyncio.run(scenario())


def test_a_step_waits_for_its_calls_once_its_time_is_up(tmp_path: Path) -> None:
    """A quiet route: the step's time passes long before its minimum of compared calls,
    which counts calls, not their outputs."""

    async def scenario() -> None:
        fleet = Fleet()
        state, rollouts = await controller(tmp_path / "traffic.json", fleet)
        await with_route(state)
        await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        fleet.now = 1
        await rollouts.tick()  # the window opens
        fleet.serve("2", agree=10, outputs=3)  # 30 outputs compared, 10 calls of 20
        fleet.now = 100
        await rollouts.tick()
        waiting = rollouts.rollout("classifier")
        assert waiting.step == 0, "10 compared calls of the 20 a step needs"
        assert {e.gate: e.outcome for e in waiting.current}["agreement"] == "wait"
        fleet.serve("2", agree=10, outputs=3)
        await rollouts.tick()
        assert rollouts.rollout("classifier").step == 1

    asyncio.run(scenario())


def test_a_rollout_begun_again_elsewhere_is_judged_on_a_window_of_its_own(
    tmp_path: Path,
) -> None:
    """Another replica aborts the rollout and begins a new one on the same route: the leader's
    window of the old one (its time long up, its calls counted) is not the new one's."""

    async def scenario() -> None:
        fleet = Fleet()
        state, leader = await controller(tmp_path / "traffic.json", fleet)
        other = another_controller(state, fleet, wall_clock=1_700_000_100.0)
        await with_route(state)
        await leader.begin("classifier", admin_pb2.Variant(version="2"))
        fleet.now = 1
        await leader.tick()  # the window opens
        fleet.serve("2", agree=5)
        fleet.now = 50
        await leader.tick()
        assert leader.rollout("classifier").step == 0, "5 compared calls of 20"
        await other.abort("classifier")
        back = admin_pb2.Route(
            name="classifier", variants=[admin_pb2.Variant(version="1", weight=1)]
        )
        route = state.route("classifier")
        assert route is not None
        await state.set_route(back, route.revision)
        await other.begin("classifier", admin_pb2.Variant(version="2"))
        fleet.serve("2", agree=20)
        await leader.tick()  # a fresh window for the new rollout: nothing judged yet
        await leader.tick()
        assert leader.rollout("classifier").step == 0, "the new rollout's time is not up"
        fleet.serve("2", agree=20)
        fleet.now = 61
        await leader.tick()
        assert leader.rollout("classifier").step == 1

    asyncio.run(scenario())


def test_the_gauges_show_the_current_step_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        registry = CollectorRegistry()
        state, rollouts = await controller(tmp_path / "traffic.json", fleet, registry=registry)
        await with_route(state)
        await rollouts.begin("classifier", admin_pb2.Variant(version="2"))

        def gauge(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(
                f"triton_gateway_rollout_{name}", {"route": "classifier", **labels}
            )

        assert gauge("candidate_percent") == 0
        fleet.now = 1
        await rollouts.tick()
        fleet.serve("2", agree=5)
        fleet.now = 2
        await rollouts.tick()
        assert gauge("gate", gate="agreement", figure="observed") == 1.0
        fleet.serve("2", agree=20)
        fleet.now = 20
        await rollouts.tick()
        assert rollouts.rollout("classifier").step == 1
        assert gauge("candidate_percent") == 50
        assert gauge("gate", gate="agreement", figure="observed") is None, "the last step's"

        # After a restart the step is shown before anything changes.
        registry = CollectorRegistry()
        state, rollouts = await controller(tmp_path / "traffic.json", fleet, registry=registry)
        await rollouts.tick()
        assert gauge("candidate_percent") == 50
        await rollouts.abort("classifier")
        assert gauge("candidate_percent") == 0

    asyncio.run(scenario())


class LogLines:
    """Takes the controller's log lines (its module logger, replaced for the test: the
    process's structlog configuration may cache loggers, which capture_logs cannot reach)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def _line(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})

    info = warning = error = exception = _line


def test_a_transition_that_could_not_be_kept_is_not_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = LogLines()
    monkeypatch.setattr(controller_module, "log", logs)

    async def scenario() -> None:
        fleet = Fleet()
        registry = CollectorRegistry()
        state, rollouts = await controller(
            tmp_path / "traffic.json",
            fleet,
            registry=registry,
            servable=lambda model, version: version != "9",
        )
        await with_route(state)
        with pytest.raises(AdminError):
            await rollouts.begin("classifier", admin_pb2.Variant(version="9"))
        started = {"route": "classifier", "event": "started"}
        assert (
            registry.get_sample_value("triton_gateway_rollout_transitions_total", started) is None
        )
        assert [e for e in logs.lines if e["event"].startswith("rollout_")] == []
        assert state.rollout("classifier") is None
        await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        assert registry.get_sample_value("triton_gateway_rollout_transitions_total", started) == 1
        (line,) = [e for e in logs.lines if e["event"] == "rollout_started"]
        assert (line["candidate"], line["baseline"], line["step"]) == ("2", "1", 0)

    asyncio.run(scenario())


def test_the_routes_own_shadow_sets_the_tolerances_and_comes_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        fleet = Fleet()
        state, rollouts = await controller(tmp_path / "traffic.json", fleet)
        own = admin_pb2.Shadow(
            target=admin_pb2.Variant(version="3"), percent=20, atol=0.5, rtol=0.25
        )
        route = admin_pb2.Route(
            name="classifier", variants=[admin_pb2.Variant(version="1", weight=1)], shadow=own
        )
        await state.set_route(route, 0)
        await rollouts.begin("classifier", admin_pb2.Variant(version="2"))
        shadowed = state.route("classifier")
        assert shadowed is not None
        assert (shadowed.shadow.target.name, shadowed.shadow.atol, shadowed.shadow.rtol) == (
            "2",
            0.5,
            0.25,
        )
        await rollouts.abort("classifier")
        after = state.route("classifier")
        assert after is not None
        assert (after.shadow.target.name, after.shadow.percent) == ("3", 20)

    asyncio.run(scenario())
