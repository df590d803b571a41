"""Progressive delivery end to end: a version dropped into the repository of a routed model
goes from shadow to full traffic on its own under steady load, or is rolled back at the first
failed gate; operators pause, resume, promote and abort. Real servers of this module's own
(started empty, EXPLICIT model control), real drops, real load."""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.app import Gateway
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.repository.content import GOLDEN_INPUTS
from gateway.settings import BackendSettings, GatewaySettings
from tests.support.background import BackgroundGateway
from tests.support.drops import (
    ROLLOUT_WAIT_S,
    SteadyLoad,
    classify,
    drop,
    pushing_settings,
    ready_on,
    wait_idle,
)
from tests.support.metrics import wait_until
from tests.support.models import MODEL_REPOSITORY
from tests.support.traffic import AUTH, TOKEN, Routed, classifier_request

PLAN = {
    "steps": [0, 50, 100],
    "min_step_s": 0.5,
    "min_requests": 20,
    "settle_s": 0.5,
    "tick_s": 0.2,
    "max_p99_ratio": 3.0,
}
"""Short steps so a test takes seconds; the shipped plan holds each step a minute. The p99
gate's ratio is raised from the shipped 1.5: two copies of one version measured over a few
hundred calls on two busy CPUs have been seen at 1.47, and the slow version is 10 times
slower."""
STEPS_OF_WORK = 150
"""1024 x 1024 products the slow version adds per call."""


@pytest.fixture(scope="module")
def setup(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Routed, Path, GatewaySettings]]:
    repository = tmp_path_factory.mktemp("rollouts") / "model_repository"
    repository.mkdir()
    shutil.copytree(MODEL_REPOSITORY / "classifier", repository / "classifier")
    specs = [ServerSpec("roll-a", models=()), ServerSpec("roll-b", models=())]
    with LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path_factory.mktemp("fleet"), specs
    ) as fleet:
        settings = pushing_settings(
            {s.name: s.address for s in fleet.servers.values()},
            repository,
            {
                "admin": {
                    "port": 0,
                    "token": TOKEN,
                    "state_dir": str(tmp_path_factory.mktemp("state")),
                },
                "rollout": PLAN,
            },
            settle_s=0.3,
            rescan_interval_s=0.5,
            reconcile_interval_s=0.5,
            drain_s=0.3,
        )
        with BackgroundGateway(Gateway(settings), start_timeout_s=60) as running:
            wait_idle(running)
            client = Routed(running)
            try:
                yield client, repository, settings
            finally:
                client.close()


def rollout(routed: Routed) -> admin_pb2.Rollout:
    found: admin_pb2.Rollout = routed.admin.GetRollout(
        admin_pb2.RolloutRequest(route="classifier"), metadata=AUTH, timeout=10
    )
    return found


def finished(routed: Routed, candidate: str, since: int | None = None) -> admin_pb2.Rollout:
    """The rollout of ``candidate`` started from now (or ``since``, wall-clock ns), once it
    is over (promoted, rolled back or aborted); an earlier one of a number used before does
    not count."""
    since = time.time_ns() if since is None else since

    def over() -> bool:
        try:
            found = rollout(routed)
        except grpc.RpcError:
            return False  # none yet: the drop is still being rolled out to the fleet
        return (
            found.candidate.version == candidate
            and found.started.ToNanoseconds() >= since
            and found.status not in ("running", "paused")
        )

    assert wait_until(over, timeout_s=ROLLOUT_WAIT_S)
    return rollout(routed)


def start_rollout(routed: Routed, candidate: str, plan: admin_pb2.RolloutPlan) -> None:
    """StartRollout of ``candidate`` on the classifier route, with ``plan``."""
    request = admin_pb2.StartRolloutRequest(
        route="classifier", candidate=admin_pb2.Variant(version=candidate), plan=plan
    )
    routed.admin.StartRollout(request, metadata=AUTH, timeout=10)


def newest(repository: Path) -> int:
    return max(int(p.name) for p in (repository / "classifier").iterdir() if p.name.isdigit())


def withdraw(routed: Routed, repository: Path, version: str) -> None:
    """Remove a rolled-back version's directory, as its owner would, and wait until the
    fleet let it go (with ``latest {2}`` it would otherwise push out the baseline next)."""
    shutil.rmtree(repository / "classifier" / version)
    manager = routed.running.gateway.repository
    assert manager is not None

    def gone() -> bool:
        (status,) = [m for m in manager.status() if m.name == "classifier"]
        return version not in status.served_versions and not status.rolling_out

    assert wait_until(gone, timeout_s=ROLLOUT_WAIT_S)
    wait_idle(routed.running)


def backends(routed: Routed) -> list[BackendSettings]:
    return list(routed.running.gateway.settings.backends)


def serving(routed: Routed, repository: Path) -> str:
    """The version the route gives all its traffic (the newest, before any route): the
    baseline of the next rollout, never a candidate an earlier test rolled back."""
    route = routed.route("classifier")
    if route is None:
        return str(newest(repository))
    (weighted,) = [v for v in route.variants if v.weight > 0]
    return weighted.version


@dataclass
class Dropped:
    """A version dropped under steady load, and how its rollout ended."""

    current: str
    new: str
    done: admin_pb2.Rollout
    load: SteadyLoad
    seconds: float
    """From the rename to the end of the rollout."""


def drop_under_load(
    routed: Routed,
    repository: Path,
    source: Callable[[str], Path],
    *,
    varied: bool = False,
    before: Callable[[], None] = lambda: None,
) -> Dropped:
    """Route all traffic to the serving version, then drop ``source(current)`` as the next
    version under steady load (``varied`` inputs), ``before`` just ahead of the drop."""
    current = serving(routed, repository)
    routed.split("classifier", {current: 100})
    new = str(newest(repository) + 1)
    version = source(current)
    with SteadyLoad(routed.running.url, varied=varied) as load:
        assert wait_until(lambda: load.sent > 10, timeout_s=30)
        before()
        dropped = drop(version, repository / "classifier" / new)
        done = finished(routed, new)
        seconds = time.monotonic() - dropped
        sent = load.sent
        assert wait_until(lambda: load.sent > sent + 20, timeout_s=30)
    print(
        f"version {new}: drop -> {done.status} at step {done.step} in {seconds:.1f} s; "
        f"{[t.event for t in done.history]}; load {load.versions}"
    )
    return Dropped(current, new, done, load, seconds)


def test_a_good_version_dropped_under_load_reaches_all_traffic_with_no_failure(
    setup: tuple[Routed, Path, GatewaySettings],
) -> None:
    routed, repository, _ = setup
    dropped = drop_under_load(
        routed, repository, lambda current: repository / "classifier" / current
    )
    done, load, new = dropped.done, dropped.load, dropped.new
    events = [t.event for t in done.history]
    assert done.status == "promoted"
    assert events == ["started", "step", "step", "promoted"]
    assert load.failures == []
    # Every gate passed with its evidence; the shadow step compared the copies.
    shadow_step = done.history[1]
    assert {e.gate: e.outcome for e in shadow_step.evidence} == {
        "shadow_fault_rate": "pass",
        "agreement": "pass",
        "argmax_agreement": "pass",
        "non_finite": "pass",
    }
    # The live steps compared copies of the candidate's calls answered by the baseline.
    live_step = done.history[2]
    live = {e.gate: e for e in live_step.evidence}
    assert live["agreement"].outcome == "pass" and live["agreement"].candidate_calls >= 2
    route = routed.route("classifier")
    assert route is not None and [(v.version, v.weight) for v in route.variants] == [(new, 1)]
    assert classify(routed.running.url).get_response().model_version == new


def test_sticky_keys_only_move_forward_during_a_ramp(
    setup: tuple[Routed, Path, GatewaySettings],
) -> None:
    """Keyed calls watched through a five-step ramp between two versions with the same
    weights: a key that reached the candidate never goes back to the baseline."""
    routed, repository, _ = setup
    # Two loaded versions that agree: the serving one and a copy of it, dropped (and
    # promoted) first; the ramp goes back from the copy to the original.
    dropped = drop_under_load(
        routed, repository, lambda current: repository / "classifier" / current
    )
    assert dropped.done.status == "promoted"
    baseline, candidate = dropped.new, dropped.current
    ramp = admin_pb2.RolloutPlan(steps=[0, 10, 50, 90, 100], min_requests=20)
    ramp.min_step.FromMilliseconds(500)
    keys = [f"user-{i}" for i in range(300)]
    requests = [(classifier_request(key=key), ()) for key in keys]
    seen: dict[str, list[str]] = {key: [] for key in keys}
    asked = time.time_ns()
    start_rollout(routed, candidate, ramp)
    shares = []
    deadline = time.monotonic() + ROLLOUT_WAIT_S
    while rollout(routed).status == "running":
        assert time.monotonic() < deadline, "the ramp did not end"
        answered = routed.variants_of(requests)
        for key, variant in zip(keys, answered, strict=True):
            seen[key].append(variant)
        shares.append(answered.count(candidate) / len(keys))
    done = finished(routed, candidate, since=asked)
    assert done.status == "promoted"
    assert [t.event for t in done.history] == [
        "started",
        "step",
        "step",
        "step",
        "step",
        "promoted",
    ]
    went_back = [
        key
        for key, variants in seen.items()
        if any(
            earlier == candidate and later == baseline
            for earlier, later in itertools.pairwise(variants)
        )
    ]
    assert went_back == [], "keys moved back from the candidate to the baseline"
    levels = {round(share, 1) for share in shares if 0 < share < 1}
    assert len(levels) >= 2, f"the ramp was seen at intermediate shares: {sorted(levels)}"
    routed.split("classifier", {baseline: 100})  # as the tests after this one expect


def test_operators_pause_resume_promote_and_abort(
    setup: tuple[Routed, Path, GatewaySettings],
) -> None:
    routed, repository, _ = setup
    versions = sorted(
        int(p.name) for p in (repository / "classifier").iterdir() if p.name.isdigit()
    )
    baseline, candidate = str(versions[-2]), str(versions[-1])
    routed.split("classifier", {baseline: 50, candidate: 50})
    slow = admin_pb2.RolloutPlan(steps=[0, 100], min_requests=1_000_000)
    slow.min_step.FromSeconds(3600)
    start = admin_pb2.StartRolloutRequest(
        route="classifier", candidate=admin_pb2.Variant(version=candidate), plan=slow
    )
    with pytest.raises(Exception, match="splits between 2 variants"):
        routed.admin.StartRollout(start, metadata=AUTH, timeout=10)
    routed.split("classifier", {baseline: 100})
    with SteadyLoad(routed.running.url) as load:
        started = routed.admin.StartRollout(start, metadata=AUTH, timeout=10)
        assert (started.status, started.step) == ("running", 0)
        # Low traffic for this plan: the step waits for its calls, whatever the time.
        assert wait_until(lambda: bool(rollout(routed).current), timeout_s=10)
        sent = load.sent
        assert wait_until(lambda: load.sent > sent + 50, timeout_s=30)
    waiting = rollout(routed)
    assert (waiting.status, waiting.step) == ("running", 0)
    assert {e.outcome for e in waiting.current} == {"wait"}
    request = admin_pb2.RolloutRequest(route="classifier")
    assert routed.admin.PauseRollout(request, metadata=AUTH, timeout=10).status == "paused"
    assert routed.admin.ResumeRollout(request, metadata=AUTH, timeout=10).status == "running"
    promoted = routed.admin.PromoteRollout(request, metadata=AUTH, timeout=10)
    assert promoted.status == "promoted"
    route = routed.route("classifier")
    assert route is not None and [v.version for v in route.variants] == [candidate]
    # And back, by hand: the abort puts every call on the baseline at once.
    start.candidate.version = baseline
    routed.admin.StartRollout(start, metadata=AUTH, timeout=10)
    aborted = routed.admin.AbortRollout(request, metadata=AUTH, timeout=10)
    assert aborted.status == "aborted"
    assert [t.event for t in aborted.history][-1] == "aborted"
    route = routed.route("classifier")
    assert route is not None
    assert [(v.version, v.weight) for v in route.variants] == [(candidate, 1), (baseline, 0)]


def edited_version(
    source: Path,
    folder: Path,
    constants: dict[str, np.ndarray],
    nodes: Callable[[str], tuple[list[onnx.NodeProto], str]],
) -> Path:
    """``source``'s model with ``nodes`` (given the logits, returning the nodes and the logits
    they make) between its logits and its softmax; ``constants`` as initializers."""
    model = onnx.load(str(source / "model.onnx"))
    graph = model.graph
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in constants.items())
    softmax = next(node for node in graph.node if node.op_type == "Softmax")
    added, logits = nodes(softmax.input[0])
    softmax.input[0] = logits
    at = list(graph.node).index(softmax)
    for offset, node in enumerate(added):
        graph.node.insert(at + offset, node)
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def slow_version(source: Path, folder: Path) -> Path:
    """``source``'s model with matrix products on the side whose result is multiplied by zero:
    the same answers, tens of milliseconds slower per call (the baseline answers in about
    one)."""
    rng = np.random.default_rng(7)

    def nodes(logits: str) -> tuple[list[onnx.NodeProto], str]:
        added = [helper.make_node("MatMul", ["INPUT", "slow_in"], ["slow_0"])]
        for i in range(STEPS_OF_WORK):
            added.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_mm{i}"]))
            added.append(helper.make_node("Tanh", [f"slow_mm{i}"], [f"slow_{i + 1}"]))
        added += [
            helper.make_node("ReduceSum", [f"slow_{STEPS_OF_WORK}"], ["slow_sum"], keepdims=1),
            helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
            helper.make_node("Add", [logits, "slow_nothing"], ["slow_logits"]),
        ]
        return added, "slow_logits"

    constants = {
        "slow_in": (rng.standard_normal((8, 1024)) / 8).astype(np.float32),
        "slow_w": (rng.standard_normal((1024, 1024)) / 32).astype(np.float32),
        "slow_zero": np.zeros((), np.float32),
    }
    return edited_version(source, folder, constants, nodes)


def test_a_slower_version_is_rolled_back_at_the_first_step_its_p99_gate_sees(
    setup: tuple[Routed, Path, GatewaySettings], tmp_path: Path
) -> None:
    routed, repository, _ = setup
    dropped = drop_under_load(
        routed,
        repository,
        lambda current: slow_version(repository / "classifier" / current, tmp_path / "slow"),
    )
    done, load, current, new = dropped.done, dropped.load, dropped.current, dropped.new
    assert done.status == "rolled_back"
    assert done.step == 1, "it agreed in the shadow step and failed at the first live one"
    failed = {e.gate for e in done.history[-1].evidence if e.outcome == "fail"}
    assert failed == {"p99_ratio"}
    assert load.failures == []
    route = routed.route("classifier")
    assert route is not None
    assert [(v.version, v.weight) for v in route.variants] == [(current, 1), (new, 0)]
    withdraw(routed, repository, new)


def failing_version(source: Path, folder: Path) -> Path:
    """``source``'s model, failing every call whose inputs sum above zero (about half of
    random inputs; the same answers for the others): the logits of a batch of two are
    reshaped to a width of 5 instead of 3."""

    def nodes(logits: str) -> tuple[list[onnx.NodeProto], str]:
        return [
            helper.make_node("ReduceSum", ["INPUT"], ["fail_sum"], keepdims=0),
            helper.make_node("Greater", ["fail_sum", "fail_zero"], ["fail_positive"]),
            helper.make_node("Cast", ["fail_positive"], ["fail_k"], to=TensorProto.INT64),
            helper.make_node("Mul", ["fail_k", "fail_two"], ["fail_extra"]),
            helper.make_node("Add", ["fail_three", "fail_extra"], ["fail_width"]),
            helper.make_node("Unsqueeze", ["fail_width", "fail_axis"], ["fail_width_1d"]),
            helper.make_node("Concat", ["fail_rows", "fail_width_1d"], ["fail_shape"], axis=0),
            helper.make_node("Reshape", [logits, "fail_shape"], ["fail_logits"]),
        ], "fail_logits"

    constants = {
        "fail_zero": np.zeros((), np.float32),
        "fail_two": np.array(2, np.int64),
        "fail_three": np.array(3, np.int64),
        "fail_rows": np.array([-1], np.int64),
        "fail_axis": np.array([0], np.int64),
    }
    return edited_version(source, folder, constants, nodes)


def test_a_version_failing_for_some_inputs_is_rolled_back_before_any_client_meets_it(
    setup: tuple[Routed, Path, GatewaySettings], tmp_path: Path
) -> None:
    routed, repository, _ = setup
    # The fleet rollout's golden request must pass: an input it answers (sum below zero),
    # provided beside the model as the README says.
    golden = tmp_path / GOLDEN_INPUTS
    np.savez(golden, INPUT=np.full((1, 8), -0.5, np.float32))

    def provide_golden_inputs() -> None:
        golden.rename(repository / "classifier" / GOLDEN_INPUTS)

    dropped = drop_under_load(
        routed,
        repository,
        lambda current: failing_version(repository / "classifier" / current, tmp_path / "failing"),
        varied=True,
        before=provide_golden_inputs,
    )
    done, load, new = dropped.done, dropped.load, dropped.new
    assert done.status == "rolled_back"
    assert done.step == 0, "its copies failed at the shadow step"
    failed = {e.gate for e in done.history[-1].evidence if e.outcome == "fail"}
    assert "shadow_fault_rate" in failed
    assert load.failures == []
    assert new not in load.versions
    withdraw(routed, repository, new)


def test_a_version_whose_outputs_disagree_is_rolled_back_at_the_shadow_step(
    setup: tuple[Routed, Path, GatewaySettings],
) -> None:
    routed, repository, _ = setup
    # Version 1's weights under a new number: the same interface, other answers.
    dropped = drop_under_load(
        routed, repository, lambda current: MODEL_REPOSITORY / "classifier" / "1"
    )
    done, load, current, new = dropped.done, dropped.load, dropped.current, dropped.new
    assert done.status == "rolled_back"
    assert done.step == 0, "stopped at the shadow step"
    failed = {e.gate for e in done.history[-1].evidence if e.outcome == "fail"}
    assert "agreement" in failed
    assert load.failures == []
    assert new not in load.versions, "the candidate never answered a client"
    route = routed.route("classifier")
    assert route is not None
    assert [(v.version, v.weight) for v in route.variants] == [(current, 1), (new, 0)]
    assert not route.HasField("shadow")

    # Brought in again without a shadow step: the live comparison (copies of its calls
    # answered by the baseline) rolls it back, and the plan unloads it from the fleet.
    live_only = admin_pb2.RolloutPlan(steps=[50, 100], min_requests=20, unload_rolled_back=True)
    live_only.min_step.FromMilliseconds(500)
    with SteadyLoad(routed.running.url) as load:
        asked = time.time_ns()
        start_rollout(routed, new, live_only)
        done = finished(routed, new, since=asked)
    assert (done.status, done.step) == ("rolled_back", 0)
    failed = {e.gate for e in done.history[-1].evidence if e.outcome == "fail"}
    assert "agreement" in failed
    assert load.failures == []
    route = routed.route("classifier")
    assert route is not None and [(v.version, v.weight) for v in route.variants] == [(current, 1)]
    (model,) = routed.admin.ListModels(
        admin_pb2.ListModelsRequest(name="classifier"), metadata=AUTH, timeout=10
    ).models
    assert [w.version for w in model.withheld] == [new]
    assert wait_until(
        lambda: not any(ready_on(b.address, "classifier", new) for b in backends(routed)),
        timeout_s=ROLLOUT_WAIT_S,
    ), "withheld: unloaded from every backend"
    assert all(ready_on(b.address, "classifier", current) for b in backends(routed))


def nan_version(source: Path, folder: Path) -> Path:
    """``source``'s model answering NaN for every call whose inputs sum above zero (the
    same answers for the others): the square root of minus their positive part is added to
    the logits."""

    def nodes(logits: str) -> tuple[list[onnx.NodeProto], str]:
        return [
            helper.make_node("ReduceSum", ["INPUT"], ["nan_sum"], keepdims=0),
            helper.make_node("Relu", ["nan_sum"], ["nan_positive"]),
            helper.make_node("Neg", ["nan_positive"], ["nan_negative"]),
            helper.make_node("Sqrt", ["nan_negative"], ["nan_root"]),
            helper.make_node("Add", [logits, "nan_root"], ["nan_logits"]),
        ], "nan_logits"

    return edited_version(source, folder, {}, nodes)


def test_a_version_answering_nan_where_the_baseline_does_not_is_rolled_back(
    setup: tuple[Routed, Path, GatewaySettings], tmp_path: Path
) -> None:
    routed, repository, _ = setup
    assert (repository / "classifier" / GOLDEN_INPUTS).is_file(), "inputs summing below zero"
    dropped = drop_under_load(
        routed,
        repository,
        lambda current: nan_version(repository / "classifier" / current, tmp_path / "nan"),
        varied=True,
    )
    done, load, new = dropped.done, dropped.load, dropped.new
    assert (done.status, done.step) == ("rolled_back", 0)
    failed = {e.gate for e in done.history[-1].evidence if e.outcome == "fail"}
    assert "non_finite" in failed
    assert load.failures == []
    assert new not in load.versions
    withdraw(routed, repository, new)


def test_a_rollout_survives_a_gateway_restart_at_its_step(
    setup: tuple[Routed, Path, GatewaySettings], tmp_path: Path
) -> None:
    """A gateway of its own (its own state) over the same fleet, stopped with its rollout
    paused at the 50% step; the next gateway on that state shows it there and takes it on to
    its end under load."""
    routed, repository, settings = setup
    withdraw(routed, repository, str(newest(repository)))  # the disagreeing one
    baseline = serving(routed, repository)
    candidate = str(newest(repository) - 1)  # a copy of the baseline: agrees
    # Steps held long enough (settle_s) to pause at the 50% one without racing past it.
    own = settings.model_copy(
        update={
            "admin": settings.admin.model_copy(update={"state_dir": tmp_path}),
            "rollout": settings.rollout.model_copy(update={"settle_s": 2.0}),
        }
    )
    plan = admin_pb2.RolloutPlan(steps=[0, 50, 100], min_requests=20)
    plan.min_step.FromMilliseconds(500)
    request = admin_pb2.RolloutRequest(route="classifier")
    with BackgroundGateway(Gateway(own), start_timeout_s=60) as first:
        client = Routed(first)
        try:
            client.split("classifier", {baseline: 100})
            with SteadyLoad(first.url) as load:
                start_rollout(client, candidate, plan)
                assert wait_until(lambda: rollout(client).step == 1, timeout_s=ROLLOUT_WAIT_S)
                paused = client.admin.PauseRollout(request, metadata=AUTH, timeout=10)
            assert load.failures == []
        finally:
            client.close()
    assert (paused.status, paused.step) == ("paused", 1)
    with BackgroundGateway(Gateway(own), start_timeout_s=60) as second:
        client = Routed(second)
        try:
            kept = rollout(client)
            assert (kept.status, kept.step) == ("paused", 1)
            assert kept.history == paused.history
            route = client.route("classifier")
            assert route is not None
            assert [(v.version, v.weight) for v in route.variants] == [
                (baseline, 5_000),
                (candidate, 5_000),
            ]
            with SteadyLoad(second.url) as load:
                resumed = client.admin.ResumeRollout(request, metadata=AUTH, timeout=10)
                assert (resumed.status, resumed.step) == ("running", 1)
                done = finished(client, candidate, since=paused.started.ToNanoseconds())
            assert load.failures == []
            assert done.status == "promoted"
            assert [t.event for t in done.history] == [
                "started",
                "step",
                "paused",
                "resumed",
                "step",
                "promoted",
            ]
        finally:
            client.close()


def test_a_routed_version_stays_loaded_until_its_route_moves_on_then_goes_by_policy(
    setup: tuple[Routed, Path, GatewaySettings],
) -> None:
    """``version_policy: latest 2``: a third version dropped while the route serves the
    oldest of the two keeps that one loaded (the route names it) until the rollout moves
    the route on; then the policy unloads it. A plan's unload_replaced withholds a
    replaced version the policy would keep; RestoreVersion serves it again."""
    routed, repository, _ = setup
    present = sorted(int(p.name) for p in (repository / "classifier").iterdir() if p.name.isdigit())
    older, newer = str(present[-2]), str(present[-1])
    routed.split("classifier", {older: 100})
    new = str(present[-1] + 1)
    with SteadyLoad(routed.running.url) as load:
        # The route's version under a new number: it agrees, and is promoted.
        drop(repository / "classifier" / older, repository / "classifier" / new)
        done = finished(routed, new)
        assert done.status == "promoted"
        assert wait_until(
            lambda: not any(ready_on(b.address, "classifier", older) for b in backends(routed)),
            timeout_s=ROLLOUT_WAIT_S,
        ), "no route names it and the policy leaves it out: unloaded"
        assert all(ready_on(b.address, "classifier", newer) for b in backends(routed))

        # To `newer` by an operator's word, unloading the replaced one though the policy
        # would serve it.
        held = admin_pb2.RolloutPlan(steps=[0, 100], min_requests=1_000_000, unload_replaced=True)
        held.min_step.FromSeconds(3600)
        start_rollout(routed, newer, held)
        promoted = routed.admin.PromoteRollout(
            admin_pb2.RolloutRequest(route="classifier"), metadata=AUTH, timeout=10
        )
        assert promoted.status == "promoted"
        assert wait_until(
            lambda: not any(ready_on(b.address, "classifier", new) for b in backends(routed)),
            timeout_s=ROLLOUT_WAIT_S,
        ), "withheld by the plan"
        asked = time.time_ns()
        restored = routed.admin.RestoreVersion(
            admin_pb2.RestoreVersionRequest(model="classifier", version=new),
            metadata=AUTH,
            timeout=10,
        ).restored
        assert restored.reason == f"replaced by {newer}"
        assert wait_until(
            lambda: all(ready_on(b.address, "classifier", new) for b in backends(routed)),
            timeout_s=ROLLOUT_WAIT_S,
        ), "served again"
        # Being the newest, it is brought in by a rollout of its own (whatever its gates say).
        finished(routed, new, since=asked)
    assert load.failures == []
