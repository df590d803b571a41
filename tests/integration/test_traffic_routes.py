"""Traffic routes end to end: splits set through the admin service, chosen by tgw-edge, answered
by the real fleet (``classifier`` v1 and v2 on triton-a), every answer stamped."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.app import Gateway
from gateway.cli import main
from gateway.devfleet import LocalFleet
from gateway.traffic.store import RouteStoreError
from tests.support.background import BackgroundGateway
from tests.support.metrics import scrape, scrape_with_edge, total
from tests.support.models import MODEL_REPOSITORY
from tests.support.traffic import (
    AUTH,
    TOKEN,
    Routed,
    bucket,
    classifier_request,
    routed_gateway,
    routed_settings,
)


@pytest.fixture(scope="module")
def routed(fleet: LocalFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    with routed_gateway(fleet, tmp_path_factory.mktemp("traffic-state")) as client:
        yield client


@pytest.fixture(autouse=True)
def _no_routes_left(routed: Routed) -> Iterator[None]:
    yield
    for name in ("classifier", "classifier-prod"):
        routed.unroute(name)


def _route_calls(routed: Routed, variant: str) -> float:
    samples = scrape_with_edge(routed.running.gateway.metrics_port)
    name = "triton_gateway_route_requests_total"
    return total(samples, name, route="classifier", variant=variant, code="OK")


def test_unkeyed_requests_follow_the_weights(routed: Routed) -> None:
    routed.split("classifier", {"1": 90, "2": 10})
    body = classifier_request()
    before = {v: _route_calls(routed, v) for v in ("1", "2")}
    counts = Counter(routed.variants_of([(body, ())] * 10_000))
    # Counted per route and variant as each call ends.
    assert {v: _route_calls(routed, v) - before[v] for v in ("1", "2")} == {
        v: float(counts[v]) for v in ("1", "2")
    }
    share = counts["2"] / 10_000
    print(f"90/10 over 10,000 unkeyed requests: {dict(counts)}; treatment share {share:.4f}")
    # Binomial 3 sigma at p = 0.1, n = 10,000 is 0.9 points: within one point.
    assert set(counts) == {"1", "2"}
    assert abs(share - 0.10) <= 0.01


def test_keyed_requests_stick_and_a_ramp_moves_only_the_moved_buckets(routed: Routed) -> None:
    routed.split("classifier", {"1": 90, "2": 10})
    keys = [f"user-{i}" for i in range(1_500)]
    # Half by header, half by request parameter: the same key means the same bucket.
    requests = [
        (classifier_request(), (("x-gateway-routing-key", key),))
        if i % 2
        else (classifier_request(key=key), ())
        for i, key in enumerate(keys)
    ]
    before = routed.variants_of(requests)
    assert routed.variants_of(requests) == before, "a key always gets the same variant"
    buckets = [bucket("classifier", key) for key in keys]
    assert before == ["1" if b < 9_000 else "2" for b in buckets]
    routed.split("classifier", {"1": 80, "2": 20})
    after = routed.variants_of(requests)
    moved = {key for key, was, now in zip(keys, before, after, strict=True) if was != now}
    expected = {key for key, b in zip(keys, buckets, strict=True) if 8_000 <= b < 9_000}
    assert moved == expected and moved
    assert all(
        (was, now) == ("1", "2") for was, now in zip(before, after, strict=True) if was != now
    )


def test_two_gateways_pick_the_same_variant_per_key(
    routed: Routed, fleet: LocalFleet, tmp_path: Path
) -> None:
    routed.split("classifier", {"1": 50, "2": 50})
    requests = [(classifier_request(), (("x-gateway-routing-key", f"k{i}"),)) for i in range(400)]
    with BackgroundGateway(Gateway(routed_settings(fleet, tmp_path))) as second:
        other = Routed(second)
        try:
            other.split("classifier", {"1": 50, "2": 50})
            theirs = other.variants_of(requests)
        finally:
            other.close()
    ours = routed.variants_of(requests)
    assert ours == theirs
    assert set(ours) == {"1", "2"}


def test_versions_forcing_and_stamps(routed: Routed) -> None:
    route = routed.split("classifier", {"1": 100, "2": 0})
    answer, stamps = routed.stamps(classifier_request())
    sha_v1 = hashlib.sha256((MODEL_REPOSITORY / "classifier/1/model.onnx").read_bytes()).hexdigest()
    assert answer.model_version == "1"
    assert stamps == {
        "x-gateway-variant": "1",
        "x-gateway-model-version": "1",
        "x-gateway-model-sha256": sha_v1,
        "x-gateway-route-revision": str(route.revision),
    }
    # A request naming a version gets it, whatever the split.
    answer, stamps = routed.stamps(classifier_request(version="2"))
    assert answer.model_version == "2" and stamps["x-gateway-model-version"] == "2"
    # Forcing a variant by header and by request parameter, for tests and debugging.
    answer, stamps = routed.stamps(classifier_request(), (("x-gateway-variant", "2"),))
    sha_v2 = hashlib.sha256((MODEL_REPOSITORY / "classifier/2/model.onnx").read_bytes()).hexdigest()
    assert answer.model_version == "2" and stamps["x-gateway-model-sha256"] == sha_v2
    forced = service_pb2.ModelInferRequest.FromString(classifier_request())
    forced.parameters["gateway_variant"].string_param = "2"
    answer, _ = routed.stamps(forced.SerializeToString())
    assert answer.model_version == "2"
    with pytest.raises(grpc.RpcError) as refused:
        routed.stamps(classifier_request(), (("x-gateway-variant", "9"),))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no variant '9'" in (refused.value.details() or "")


def test_an_alias_route_serves_another_model(routed: Routed) -> None:
    alias = admin_pb2.Route(
        name="classifier-prod",
        variants=[admin_pb2.Variant(model="classifier", version="2", weight=1)],
    )
    created = routed.admin.SetRoute(
        admin_pb2.SetRouteRequest(route=alias), metadata=AUTH, timeout=10
    )
    assert created.variants[0].name == "classifier:2"
    routed.running.run(routed.running.gateway.edge.sync(5.0))  # type: ignore[union-attr]
    answer, stamps = routed.stamps(classifier_request(model="classifier-prod"))
    assert (answer.model_name, answer.model_version) == ("classifier", "2")
    assert stamps["x-gateway-variant"] == "classifier:2"
    answer, _ = routed.stamps(classifier_request(model="classifier-prod", version="1"))
    assert (answer.model_name, answer.model_version) == ("classifier", "1")


def test_admin_calls_need_the_token(routed: Routed) -> None:
    calls = [
        ("ListRoutes", admin_pb2.ListRoutesRequest()),
        ("GetRoute", admin_pb2.GetRouteRequest(name="classifier")),
        ("SetRoute", admin_pb2.SetRouteRequest()),
        ("DeleteRoute", admin_pb2.DeleteRouteRequest(name="classifier")),
        ("ListBackends", admin_pb2.ListBackendsRequest()),
        ("DrainBackend", admin_pb2.BackendRequest(name="triton-a")),
        ("UndrainBackend", admin_pb2.BackendRequest(name="triton-a")),
        ("LoadModel", admin_pb2.FleetModelRequest(name="simple")),
        ("UnloadModel", admin_pb2.FleetModelRequest(name="simple")),
        ("ListModels", admin_pb2.ListModelsRequest()),
        ("RestoreVersion", admin_pb2.RestoreVersionRequest(model="classifier", version="1")),
        ("StartRollout", admin_pb2.StartRolloutRequest(route="classifier")),
        ("GetRollout", admin_pb2.RolloutRequest(route="classifier")),
        ("ListRollouts", admin_pb2.ListRolloutsRequest()),
        ("PauseRollout", admin_pb2.RolloutRequest(route="classifier")),
        ("ResumeRollout", admin_pb2.RolloutRequest(route="classifier")),
        ("PromoteRollout", admin_pb2.RolloutRequest(route="classifier")),
        ("AbortRollout", admin_pb2.RolloutRequest(route="classifier")),
    ]
    assert len(calls) == len(admin_pb2.DESCRIPTOR.services_by_name["GatewayAdmin"].methods)
    for method, request in calls:
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer wrong"),), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.RpcError) as denied:
                getattr(routed.admin, method)(request, metadata=metadata, timeout=10)
            assert denied.value.code() == code, method
    assert not routed.running.gateway.pool.is_drained("triton-a")


def test_admin_refuses_bad_changes_with_the_right_codes(routed: Routed) -> None:
    def refused(route: admin_pb2.Route, revision: int = 0) -> grpc.StatusCode:
        request = admin_pb2.SetRouteRequest(route=route, expected_revision=revision)
        with pytest.raises(grpc.RpcError) as error:
            routed.admin.SetRoute(request, metadata=AUTH, timeout=10)
        code: grpc.StatusCode = error.value.code()
        return code

    zero = admin_pb2.Route(name="classifier", variants=[admin_pb2.Variant(version="1")])
    assert refused(zero) == grpc.StatusCode.INVALID_ARGUMENT
    unknown = admin_pb2.Route(
        name="classifier", variants=[admin_pb2.Variant(version="7", weight=1)]
    )
    assert refused(unknown) == grpc.StatusCode.FAILED_PRECONDITION
    created = routed.split("classifier", {"1": 1})
    again = admin_pb2.Route(name="classifier", variants=[admin_pb2.Variant(version="2", weight=1)])
    assert refused(again, revision=0) == grpc.StatusCode.ABORTED
    assert refused(again, revision=created.revision + 5) == grpc.StatusCode.ABORTED
    current = routed.route("classifier")
    assert current is not None and current.revision == created.revision


def test_backends_drains_and_fleet_loads(routed: Routed) -> None:
    listed = routed.admin.ListBackends(admin_pb2.ListBackendsRequest(), metadata=AUTH, timeout=10)
    by_name = {b.name: b for b in listed.backends}
    assert set(by_name) == {"triton-a", "triton-b"}
    assert by_name["triton-a"].ready
    assert (
        admin_pb2.ModelVersion(model="classifier", version="2") in by_name["triton-a"].ready_models
    )
    drained = routed.admin.DrainBackend(
        admin_pb2.BackendRequest(name="triton-b"), metadata=AUTH, timeout=10
    )
    try:
        assert drained.drained and routed.running.gateway.pool.is_drained("triton-b")
    finally:
        undrained = routed.admin.UndrainBackend(
            admin_pb2.BackendRequest(name="triton-b"), metadata=AUTH, timeout=10
        )
    assert not undrained.drained
    with pytest.raises(grpc.RpcError) as unknown:
        routed.admin.DrainBackend(admin_pb2.BackendRequest(name="nope"), metadata=AUTH, timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    # Reloading a model every backend has: one first, then the other.
    loaded = routed.admin.LoadModel(
        admin_pb2.FleetModelRequest(name="simple"), metadata=AUTH, timeout=60
    )
    assert loaded.completed and [r.ok for r in loaded.results] == [True, True]
    missing = routed.admin.LoadModel(
        admin_pb2.FleetModelRequest(name="no-such-model"), metadata=AUTH, timeout=60
    )
    assert not missing.completed
    assert len(missing.results) == 1 and not missing.results[0].ok


def test_ctl_sets_and_shows_splits(routed: Routed, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{routed.running.gateway.admin_port}"
    base = ["ctl", "--address", address, "--token", TOKEN]
    assert main([*base, "split", "classifier", "1=90", "2=10"]) == 0
    shown = capsys.readouterr().out
    assert "route classifier" in shown and "90.0%" in shown and "10.0%" in shown
    assert main([*base, "--json", "routes"]) == 0
    assert '"weight": 90' in capsys.readouterr().out
    assert main([*base, "routes"]) == 0
    assert "1=90% 2=10%" in capsys.readouterr().out
    assert main([*base, "shadow", "classifier", "--to", "2", "--percent", "50"]) == 0
    assert "shadow: 50% to 2" in capsys.readouterr().out
    assert main([*base, "shadow", "classifier", "--off"]) == 0
    assert "shadow: off" in capsys.readouterr().out
    assert main([*base, "key", "classifier", "--header", "x-user"]) == 0
    assert "header x-user" in capsys.readouterr().out
    assert main([*base, "split", "classifier", "1=-1"]) == 2
    assert "negative" in capsys.readouterr().err
    samples = scrape(routed.running.gateway.metrics_port)
    refusals = total(samples, "triton_gateway_admin_changes_total", outcome="FAILED_PRECONDITION")
    assert main([*base, "split", "classifier", "9=1"]) == 2
    samples = scrape(routed.running.gateway.metrics_port)
    assert (
        total(samples, "triton_gateway_admin_changes_total", outcome="FAILED_PRECONDITION")
        == refusals + 1
    )
    error = capsys.readouterr().err
    assert error.startswith("triton-gateway: FAILED_PRECONDITION") and error.count("\n") == 1
    assert main(["ctl", "--address", address, "--token", "wrong", "routes"]) == 2
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert main([*base, "backends"]) == 0
    assert "triton-a" in capsys.readouterr().out
    assert main([*base, "models"]) == 0
    assert "classifier" in capsys.readouterr().out
    assert main([*base, "models", "no-such-model"]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err


def test_a_restart_keeps_the_splits_and_a_corrupt_state_keeps_the_last_good(
    fleet: LocalFleet, tmp_path: Path
) -> None:
    def start() -> BackgroundGateway:
        return BackgroundGateway(Gateway(routed_settings(fleet, tmp_path)))

    with start() as running:
        client = Routed(running)
        set_route = client.split("classifier", {"1": 70, "2": 30})
        client.close()
    with start() as running:
        client = Routed(running)
        kept = client.route("classifier")
        client.close()
    assert kept is not None and kept.revision == set_route.revision
    assert [(v.name, v.weight) for v in kept.variants] == [("1", 70), ("2", 30)]
    (tmp_path / "traffic.json").write_text("{ not json")
    with start() as running:
        client = Routed(running)
        recovered = client.route("classifier")
        client.close()
    assert recovered == kept
    assert list(tmp_path.glob("traffic.json.corrupt-*")), "the unreadable file is kept aside"
    for name in ("traffic.json", "traffic.json.bak"):
        (tmp_path / name).write_text("garbage")
    with pytest.raises(RouteStoreError, match="cannot be read"):
        start().__enter__()


def test_stream_messages_follow_the_split_and_carry_the_stamp(routed: Routed) -> None:
    route = routed.split("classifier", {"1": 0, "2": 100})
    stream = routed.channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    requests = []
    for i in range(4):
        request = service_pb2.ModelInferRequest.FromString(classifier_request())
        request.id = f"r{i}"
        if i == 3:
            request.model_version = "1"  # naming a version bypasses the split
        requests.append(request.SerializeToString())
    answers = [
        service_pb2.ModelStreamInferResponse.FromString(raw)
        for raw in stream(iter(requests), timeout=30)
    ]
    assert [a.error_message for a in answers] == [""] * 4
    by_id = {a.infer_response.id: a.infer_response for a in answers}
    for i in range(3):
        answer = by_id[f"r{i}"]
        assert answer.model_version == "2"
        stamps = {k: v.string_param for k, v in answer.parameters.items()}
        assert stamps["x-gateway-variant"] == "2"
        assert stamps["x-gateway-route-revision"] == str(route.revision)
    assert by_id["r3"].model_version == "1"


def _sequence_request(
    sequence: int, value: int, *, start: bool = False, end: bool = False
) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="accumulator")
    request.inputs.add(name="INPUT", datatype="INT32", shape=[1, 1])
    request.raw_input_contents.append(np.array([[value]], np.int32).tobytes())
    request.parameters["sequence_id"].int64_param = sequence
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    return request.SerializeToString()


def test_a_sequence_stays_on_the_variant_it_started_on_when_the_split_moves(
    routed: Routed,
) -> None:
    """A sequence's state lives on the variant it started on: a split moved mid-sequence
    (a rollout's next step) moves only the sequences that start afterwards."""
    routed.split("accumulator", {"1": 100, "": 0})
    try:
        sequence = 4242
        first = routed.stamps(_sequence_request(sequence, 5, start=True))[1]
        assert first["x-gateway-variant"] == "1"
        routed.split("accumulator", {"1": 0, "": 100})
        answer, stamps = routed.stamps(_sequence_request(sequence, 7))
        assert stamps["x-gateway-variant"] == "1", "the started sequence stays"
        assert np.frombuffer(answer.raw_output_contents[0], np.int32)[0] == 12
        other = routed.stamps(_sequence_request(sequence + 1, 1, start=True))[1]
        assert other["x-gateway-variant"] == "latest", "a new sequence follows the split"
        last = routed.stamps(_sequence_request(sequence, 1, end=True))[1]
        assert last["x-gateway-variant"] == "1"
        # Ended: the same id starting again follows the split.
        again = routed.stamps(_sequence_request(sequence, 1, start=True, end=True))[1]
        assert again["x-gateway-variant"] == "latest"
        routed.stamps(_sequence_request(sequence + 1, 1, end=True))
    finally:
        routed.unroute("accumulator")


def test_ctl_drives_a_rollout(routed: Routed, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{routed.running.gateway.admin_port}"
    base = ["ctl", "--address", address, "--token", TOKEN]
    assert main([*base, "split", "classifier", "1=100"]) == 0
    capsys.readouterr()
    start = [
        "rollout",
        "start",
        "classifier",
        "--to",
        "2",
        "--steps",
        "0,100",
        "--min-step",
        "3600",
    ]
    assert main([*base, *start]) == 0
    assert "rollout classifier: 2 after 1  running  step 1/2 (shadow)" in capsys.readouterr().out
    assert main([*base, "rollout", "pause", "classifier"]) == 0
    assert "paused" in capsys.readouterr().out
    assert main([*base, "rollout", "status", "classifier"]) == 0
    assert "2 after 1  paused  step 1/2 (shadow)" in capsys.readouterr().out
    assert main([*base, "rollout", "resume", "classifier"]) == 0
    assert "2 after 1  running  step 1/2 (shadow)" in capsys.readouterr().out
    assert main([*base, "rollout", "promote", "classifier"]) == 0
    assert "2 after 1  promoted" in capsys.readouterr().out
    route = routed.route("classifier")
    assert route is not None and [(v.version, v.weight) for v in route.variants] == [("2", 1)]
    assert main([*base, "rollout", "history", "classifier"]) == 0
    history = capsys.readouterr().out
    events = ("started", "paused", "resumed", "promoted")
    transitions = [line for line in history.splitlines() if line[:4].isdigit()]  # dated
    assert [e for line in transitions for e in events if f"  {e}  " in line] == list(events)

    # And back to 1, aborted: every call on the baseline (2) again at once.
    start[start.index("--to") + 1] = "1"
    assert main([*base, *start]) == 0
    assert "1 after 2  running" in capsys.readouterr().out
    assert main([*base, "rollout", "abort", "classifier"]) == 0
    assert "aborted" in capsys.readouterr().out
    route = routed.route("classifier")
    assert route is not None
    assert [(v.version, v.weight) for v in route.variants] == [("2", 1), ("1", 0)]
    assert main([*base, "rollout", "resume", "classifier"]) == 2
    assert "aborted already" in capsys.readouterr().err
