"""Model drops end to end: a real gateway pushing a real repository copy to real Triton servers
(EXPLICIT model control, started empty) over RepositoryModelLoad, under real load.

These servers are this module's own (two more tritonserver processes): the tests load, reload
and unload models on them, which the session fleet's other tests must not see.
"""

from __future__ import annotations

import queue
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.app import Gateway
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
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
from tests.support.metrics import scrape, total, wait_until
from tests.support.models import MODEL_REPOSITORY, classifier_features, classifier_input


def rollbacks(gateway: BackgroundGateway, model: str) -> float:
    """Rollouts of ``model`` this gateway rolled back so far."""
    samples = scrape(gateway.gateway.metrics_port)
    return total(samples, "triton_gateway_model_rollouts_total", model=model, outcome="rolled_back")


@pytest.fixture(scope="module")
def empty_fleet(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    specs = [ServerSpec("drop-a", models=()), ServerSpec("drop-b", models=())]
    with LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path_factory.mktemp("drop-fleet"), specs
    ) as running:
        yield running


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("drops") / "model_repository"
    root.mkdir()
    for name in ("classifier", "simple"):
        shutil.copytree(MODEL_REPOSITORY / name, root / name)
    return root


@pytest.fixture(scope="module")
def gateway(empty_fleet: LocalFleet, repository: Path) -> Iterator[BackgroundGateway]:
    settings = pushing_settings(
        {s.name: s.address for s in empty_fleet.servers.values()},
        repository,
        # Drops on their own here; progressive rollouts of drops: test_rollouts.
        {"rollout": {"automatic": False}},
        settle_s=0.3,
        rescan_interval_s=0.5,
        reconcile_interval_s=0.5,
        drain_s=0.3,
    )
    with BackgroundGateway(Gateway(settings), start_timeout_s=60) as running:
        wait_idle(running)
        yield running


def streamed_version(url: str) -> str:
    """The version that answers one unversioned classifier request on a ModelStreamInfer."""
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("classifier", classifier_input(classifier_features(batch=2)))
        result, error = answers.get(timeout=10)
    finally:
        client.stop_stream()
    assert error is None, error
    assert isinstance(result, grpcclient.InferResult)
    return str(result.get_response().model_version)


def test_the_fleet_gets_the_repository_and_serves_only_what_passed(
    gateway: BackgroundGateway, empty_fleet: LocalFleet
) -> None:
    for server in empty_fleet.servers.values():
        for model, version in (("classifier", "1"), ("classifier", "2"), ("simple", "1")):
            assert ready_on(server.address, model, version), (server.name, model, version)
    assert classify(gateway.url).get_response().model_version == "2"
    samples = scrape(gateway.gateway.metrics_port)
    holders = {
        dict(labels)["backend"]
        for name, labels in samples
        if name == "triton_gateway_model_content_info" and dict(labels)["model"] == "classifier"
    }
    assert holders == {"drop-a", "drop-b"}


def test_a_new_version_dropped_under_load_is_served_once_rolled_out_with_no_failure(
    gateway: BackgroundGateway, empty_fleet: LocalFleet, repository: Path
) -> None:
    model_dir = repository / "classifier"
    new = str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) + 1)
    with SteadyLoad(gateway.url) as load:
        assert wait_until(lambda: load.sent > 20, timeout_s=30)
        renamed = drop(model_dir / "2", model_dir / new)
        served = wait_until(
            lambda: classify(gateway.url).get_response().model_version == new,
            timeout_s=ROLLOUT_WAIT_S,
        )
        first_served = time.monotonic() - renamed
        wait_idle(gateway)
        assert wait_until(lambda: load.sent > 20 + 50, timeout_s=30)
    print(f"new version: rename -> first served {first_served:.2f} s; load {load.versions}")
    assert served
    assert load.failures == []
    # version_policy latest {2}: the oldest served version left every backend.
    previous = str(int(new) - 2)
    for server in empty_fleet.servers.values():
        assert ready_on(server.address, "classifier", new)
        assert not ready_on(server.address, "classifier", previous)


def test_a_new_version_of_a_routed_model_gets_only_the_weight_its_route_gives(
    gateway: BackgroundGateway, empty_fleet: LocalFleet, repository: Path
) -> None:
    traffic = gateway.gateway.traffic
    assert traffic is not None
    model_dir = repository / "classifier"
    current = str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()))
    new = str(int(current) + 1)
    route = admin_pb2.Route(
        name="classifier", variants=[admin_pb2.Variant(version=current, weight=100)]
    )
    created = gateway.run(traffic.set_route(route, 0))
    try:
        gateway.run(gateway.gateway.edge.sync(5.0))  # type: ignore[union-attr]
        with SteadyLoad(gateway.url) as load:
            assert wait_until(lambda: load.sent > 10, timeout_s=30)
            drop(model_dir / current, model_dir / new)
            assert wait_until(
                lambda: all(
                    ready_on(s.address, "classifier", new) for s in empty_fleet.servers.values()
                ),
                timeout_s=ROLLOUT_WAIT_S,
            )
            wait_idle(gateway)
            sent = load.sent
            assert wait_until(lambda: load.sent > sent + 30, timeout_s=30)
        print(f"routed model, new version {new} rolled out under load: {load.versions}")
        (status,) = [m for m in gateway.gateway.repository.status() if m.name == "classifier"]  # type: ignore[union-attr]
        assert new in status.served_versions and not status.rolling_out
        assert {b.backend for b in status.backends} == {"drop-a", "drop-b"}
        assert all(b.sha256 == status.sha256 for b in status.backends)
        assert status.history[-1].event == "completed"
        assert status.history[-2].event == "started"
        assert load.failures == []
        assert set(load.versions) == {current}, "the route gives the new version no weight"
        assert classify(gateway.url, version=new).get_response().model_version == new
        # The split's weights are kept until an operator moves them.
        kept = traffic.route("classifier")
        assert kept is not None and kept.revision == created.revision
        moved = admin_pb2.Route(
            name="classifier", variants=[admin_pb2.Variant(version=new, weight=100)]
        )
        gateway.run(traffic.set_route(moved, created.revision))
        gateway.run(gateway.gateway.edge.sync(5.0))  # type: ignore[union-attr]
        assert classify(gateway.url).get_response().model_version == new
    finally:
        current_route = traffic.route("classifier")
        if current_route is not None:
            gateway.run(traffic.delete_route("classifier", current_route.revision))


def test_a_brand_new_model_is_served_seconds_after_its_rename(
    gateway: BackgroundGateway, repository: Path
) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(gateway.url))
    request = service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[4])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    answered: dict[str, float] = {}
    renamed = drop(MODEL_REPOSITORY / "identity", repository / "identity")

    def served_by_the_fleet() -> bool:
        try:
            _, call = stub.ModelInfer.with_call(request, timeout=10)
        except grpc.RpcError:
            return False
        by_fallback = ("x-gateway-served-by", "fallback") in tuple(call.trailing_metadata() or ())
        answered.setdefault("first answer", time.monotonic() - renamed)
        return not by_fallback

    assert wait_until(served_by_the_fleet, timeout_s=ROLLOUT_WAIT_S)
    answered["first answer from the fleet"] = time.monotonic() - renamed
    print("new model: rename -> " + ", ".join(f"{k} {v:.2f} s" for k, v in answered.items()))


def test_a_bad_drop_is_rejected_with_its_reason_and_serving_goes_on(
    gateway: BackgroundGateway, repository: Path
) -> None:
    model_dir = repository / "classifier"
    before = classify(gateway.url).get_response().model_version
    bad = str(int(before) + 10)
    staging = repository / f".{bad}.partial"
    shutil.copytree(model_dir / before, staging)
    (staging / "model.onnx").write_bytes(b"not an onnx file")
    with SteadyLoad(gateway.url) as load:
        staging.rename(model_dir / bad)

        def rejected() -> bool:
            samples = scrape(gateway.gateway.metrics_port)
            return (
                total(
                    samples,
                    "triton_gateway_model_drops_rejected_total",
                    model="classifier",
                    reason="onnx",
                )
                >= 1
            )

        assert wait_until(rejected, timeout_s=30)
        wait_idle(gateway)
        assert wait_until(lambda: load.sent > 30, timeout_s=30)
    shutil.rmtree(model_dir / bad)
    assert load.failures == []
    assert set(load.versions) == {before}
    assert classify(gateway.url).get_response().model_version == before


def test_a_load_the_canary_refuses_is_rolled_back_and_the_old_content_keeps_serving(
    gateway: BackgroundGateway, empty_fleet: LocalFleet, repository: Path
) -> None:
    config = repository / "simple" / "config.pbtxt"
    original = config.read_text()
    before = rollbacks(gateway, "simple")
    # A runtime no server has: Triton refuses the load (the config itself is valid).
    config.write_text(original.replace('platform: "onnxruntime_onnx"', 'backend: "no_such"'))
    try:
        assert wait_until(lambda: rollbacks(gateway, "simple") > before, timeout_s=ROLLOUT_WAIT_S)
        client = grpcclient.InferenceServerClient(gateway.url)
        for server in empty_fleet.servers.values():
            assert ready_on(server.address, "simple", "1"), server.name
        assert client.is_model_ready("simple")
    finally:
        config.write_text(original)
    wait_idle(gateway)


def test_a_backend_restarted_empty_gets_the_models_again(
    gateway: BackgroundGateway, empty_fleet: LocalFleet
) -> None:
    name = "drop-b"
    server = empty_fleet.servers[name]
    with SteadyLoad(gateway.url) as load:
        server.process.kill() if server.process is not None else None
        assert wait_until(lambda: not server.is_running(), timeout_s=10)
        restarted = empty_fleet.restart(name)
        assert wait_until(
            lambda: (
                ready_on(restarted.address, "classifier", "2")
                or ready_on(restarted.address, "classifier", "3")
            ),
            timeout_s=ROLLOUT_WAIT_S,
        )
        wait_idle(gateway)
        assert wait_until(lambda: load.sent > 50, timeout_s=30)
    assert load.failures == []


def test_a_removed_version_leaves_the_routes_then_the_fleet_with_no_failure(
    gateway: BackgroundGateway, empty_fleet: LocalFleet, repository: Path
) -> None:
    model_dir = repository / "classifier"
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
    newest, kept = str(versions[-1]), str(versions[-2])
    assert classify(gateway.url).get_response().model_version == newest
    with SteadyLoad(gateway.url) as unversioned, SteadyLoad(gateway.url, kept) as pinned:
        assert wait_until(lambda: unversioned.sent > 20 and pinned.sent > 20, timeout_s=30)
        shutil.rmtree(model_dir / newest)
        assert wait_until(
            lambda: all(
                not ready_on(s.address, "classifier", newest) for s in empty_fleet.servers.values()
            ),
            timeout_s=ROLLOUT_WAIT_S,
        )
        wait_idle(gateway)
        sent = unversioned.sent
        assert wait_until(lambda: unversioned.sent > sent + 20, timeout_s=30)
    assert unversioned.failures == []
    assert pinned.failures == []
    assert classify(gateway.url).get_response().model_version == kept


def test_a_backend_answering_unlike_the_local_session_is_rolled_back(
    gateway: BackgroundGateway,
    empty_fleet: LocalFleet,
    triton_installation: TritonInstallation,
    tmp_path: Path,
) -> None:
    # A real Triton whose ONNX runtime is broken on purpose (a stand-in for a faulty build or
    # a file altered on that server): every numeric output is off by one.
    broken = LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path / "broken-fleet", [ServerSpec("x")]
    )
    broken.prepare()
    backends = tmp_path / "broken-backends"
    shutil.copytree(tmp_path / "broken-fleet" / "backends", backends, symlinks=True)
    wrapper = backends / "onnxruntime" / "model.py"
    source = wrapper.read_text()
    assert "np.ascontiguousarray(values[name], dtype=dtype)" in source
    wrapper.write_text(
        source.replace(
            "np.ascontiguousarray(values[name], dtype=dtype)",
            "np.ascontiguousarray(values[name] + 1, dtype=dtype)",
        )
    )
    broken = LocalFleet(
        triton_installation,
        MODEL_REPOSITORY,
        tmp_path / "broken-fleet",
        [ServerSpec("broken", models=(), extra_args=(f"--backend-directory={backends}",))],
    )
    repository = tmp_path / "repository"
    repository.mkdir()
    shutil.copytree(MODEL_REPOSITORY / "simple", repository / "simple")
    healthy = empty_fleet.servers["drop-a"]
    with broken:
        settings = pushing_settings(
            {"broken": broken.servers["broken"].address, "drop-a": healthy.address},
            repository,
            reconcile_interval_s=0.5,
        )
        with BackgroundGateway(Gateway(settings), start_timeout_s=60) as checking:
            assert wait_until(lambda: rollbacks(checking, "simple") >= 1, timeout_s=ROLLOUT_WAIT_S)
            assert not ready_on(broken.servers["broken"].address, "simple", "1")
            assert ready_on(healthy.address, "simple", "1")
            client = grpcclient.InferenceServerClient(checking.url)
            assert client.is_model_ready("simple")


def test_a_backend_dying_during_a_rollout_stops_it_and_the_previous_version_keeps_serving(
    gateway: BackgroundGateway, empty_fleet: LocalFleet, repository: Path
) -> None:
    model_dir = repository / "classifier"
    current = classify(gateway.url).get_response().model_version
    new = str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) + 1)
    canary, other = empty_fleet.servers["drop-a"], empty_fleet.servers["drop-b"]
    before = rollbacks(gateway, "classifier")

    with SteadyLoad(gateway.url) as load:
        assert wait_until(lambda: load.sent > 20, timeout_s=30)
        drop(model_dir / current, model_dir / new)
        # The canary passed: the second backend dies while it loads the new version.
        assert wait_until(
            lambda: ready_on(canary.address, "classifier", new), timeout_s=ROLLOUT_WAIT_S
        )
        # The canary would answer an unversioned request with the new version: on a stream
        # too, the edge sends it naming the fleet's latest.
        assert streamed_version(gateway.url) == current
        assert other.process is not None
        other.process.kill()
        assert wait_until(
            lambda: rollbacks(gateway, "classifier") > before, timeout_s=ROLLOUT_WAIT_S
        )
        assert wait_until(
            lambda: not ready_on(canary.address, "classifier", new), timeout_s=ROLLOUT_WAIT_S
        )
        assert classify(gateway.url).get_response().model_version == current
        empty_fleet.restart("drop-b")
        assert wait_until(
            lambda: ready_on(empty_fleet.servers["drop-b"].address, "classifier", current),
            timeout_s=ROLLOUT_WAIT_S,
        )
        wait_idle(gateway)
    shutil.rmtree(model_dir / new)
    wait_idle(gateway)
    assert load.failures == []
    assert set(load.versions) == {current}


def test_a_gateway_restarted_over_a_fleet_serving_the_repository_pushes_nothing(
    gateway: BackgroundGateway, empty_fleet: LocalFleet, repository: Path
) -> None:
    wait_idle(gateway)
    settings = pushing_settings(
        {s.name: s.address for s in empty_fleet.servers.values()}, repository
    )
    with BackgroundGateway(Gateway(settings), start_timeout_s=60) as second:
        wait_idle(second)
        samples = scrape(second.gateway.metrics_port)
        # It read back what every backend serves (the digest in each pushed config) and
        # found the repository there: no rollout, every backend proven and routed.
        assert total(samples, "triton_gateway_model_rollouts_total") == 0
        holders = {
            dict(labels)["backend"]
            for name, labels in samples
            if name == "triton_gateway_model_content_info" and dict(labels)["model"] == "classifier"
        }
        assert holders == {"drop-a", "drop-b"}
        assert (
            classify(second.url).get_response().model_version
            == classify(gateway.url).get_response().model_version
        )


def test_a_backend_that_takes_no_loads_keeps_serving_its_own_models(
    triton_installation: TritonInstallation, tmp_path: Path
) -> None:
    # Triton in POLL mode refuses every RepositoryModelLoad: the rollout stops, nothing is
    # unloaded or withdrawn there, and its own `simple` keeps answering.
    polling = LocalFleet(
        triton_installation,
        MODEL_REPOSITORY,
        tmp_path / "polling-fleet",
        [ServerSpec("polling", models=(), extra_args=("--model-control-mode=poll",))],
    )
    repository = tmp_path / "repository"
    repository.mkdir()
    shutil.copytree(MODEL_REPOSITORY / "simple", repository / "simple")
    with polling:
        server = polling.servers["polling"]
        assert ready_on(server.address, "simple", "1")
        settings = pushing_settings({"polling": server.address}, repository)
        with BackgroundGateway(Gateway(settings), start_timeout_s=60) as checking:
            assert wait_until(lambda: rollbacks(checking, "simple") >= 1, timeout_s=ROLLOUT_WAIT_S)
            assert ready_on(server.address, "simple", "1")
            stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(checking.url))
            request = service_pb2.ModelInferRequest(model_name="simple")
            for name in ("INPUT0", "INPUT1"):
                request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
                request.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
            _, call = stub.ModelInfer.with_call(request, timeout=10)
            assert ("x-gateway-served-by", "fallback") not in tuple(call.trailing_metadata() or ())
