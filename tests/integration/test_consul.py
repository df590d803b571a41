"""Consul, for real (a ``consul agent -dev`` built by ``make test``): backends from its
catalog moving in and out under load, and two gateway replicas sharing one traffic state in
its KV store — a change through either reaches both, concurrent changes never overwrite each
other, one replica drives the rollouts, and losing Consul keeps the last state serving."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.app import ADMIN_SERVICE, LIVENESS_SERVICE, Gateway
from gateway.consul_agent import ConsulAgent
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.discovery.base import DiscoveryEvent, Reset
from gateway.discovery.consul import ConsulDiscovery, health_query
from gateway.settings import (
    ConsulDiscoverySettings,
    ConsulSettings,
    GatewaySettings,
    load_settings,
)
from tests.support.background import BackgroundGateway
from tests.support.consul import ConsulServer
from tests.support.drops import SteadyLoad, classify
from tests.support.metrics import scrape, scrape_with_edge, total, wait_until
from tests.support.models import MODEL_REPOSITORY
from tests.support.settings import gateway_settings
from tests.support.traffic import AUTH, TOKEN, Routed, classifier_request

SERVICE = "triton"


@pytest.fixture
def consul_server(tmp_path: Path) -> Iterator[ConsulServer]:
    with ConsulServer(tmp_path) as server:
        yield server


def test_catalog_changes_move_backends_under_load_with_no_failure(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
    consul_server: ConsulServer,
) -> None:
    specs = [
        ServerSpec("cat-a", models=("classifier",)),
        ServerSpec("cat-b", models=("classifier",)),
    ]
    with LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path_factory.mktemp("fleet"), specs
    ) as fleet:
        a, b = fleet.servers["cat-a"].address, fleet.servers["cat-b"].address
        consul_server.register("triton-a", SERVICE, a, passing=True)
        consul_server.register("triton-b", SERVICE, b, passing=False)  # not passing: left out
        # No backends list: the backends come from Consul's catalog alone.
        config = load_settings(
            server={"host": "127.0.0.1", "port": 0},
            metrics={"host": "127.0.0.1", "port": 0},
            repository={"path": str(MODEL_REPOSITORY)},
            discovery={"source": "consul", "consul": {"service": SERVICE, "wait_s": 5}},
            consul={"address": consul_server.address},
            fallback={"enabled": False},  # every answer comes from a discovered backend
            health={"poll_interval_s": 0.2},
        )
        with BackgroundGateway(Gateway(config)) as running:
            pool = running.gateway.pool
            node = consul_server.node

            def backends() -> set[str]:
                return {backend.name.removeprefix(f"{node}/") for backend in pool.backends}

            def serving(name: str) -> bool:
                holders = pool.table.candidates.get(("classifier", ""), ())
                return any(b.name == f"{node}/{name}" for b in holders)

            assert backends() == {"triton-a"}
            with SteadyLoad(running.url) as load:
                consul_server.set_check("triton-b", passing=True)
                assert wait_until(lambda: serving("triton-b"), timeout_s=20), "b passes: added"
                consul_server.set_check("triton-a", passing=False)
                assert wait_until(lambda: backends() == {"triton-b"}, timeout_s=20), "a fails"
                consul_server.set_check("triton-a", passing=True)
                assert wait_until(lambda: serving("triton-a"), timeout_s=20)
                consul_server.deregister("triton-b")
                assert wait_until(lambda: backends() == {"triton-a"}, timeout_s=20), "b gone"
                # Consul goes away: the last set keeps serving.
                consul_server.stop()
                sent = load.sent
                assert wait_until(lambda: load.sent > sent + 50, timeout_s=30)
            assert load.failures == []
            assert backends() == {"triton-a"}


def replica_settings(
    fleet: LocalFleet, consul_server: ConsulServer, state_dir: Path
) -> GatewaySettings:
    return gateway_settings(
        fleet,
        admin={
            "port": 0,
            "token": TOKEN,
            "state_dir": str(state_dir),
            "state_store": "consul",
            "state_key": "tests/traffic-state",
        },
        consul={"address": consul_server.address},
        health={"poll_interval_s": 0.2},
    )


def test_two_replicas_share_one_traffic_state(
    fleet: LocalFleet, tmp_path: Path, consul_server: ConsulServer
) -> None:
    with (
        BackgroundGateway(
            Gateway(replica_settings(fleet, consul_server, tmp_path / "one"))
        ) as one_running,
        BackgroundGateway(
            Gateway(replica_settings(fleet, consul_server, tmp_path / "two"))
        ) as two_running,
    ):
        one, two = Routed(one_running), Routed(two_running)
        try:
            _a_split_through_one_reaches_the_other(one, two)
            _concurrent_changes_never_overwrite_each_other(one, two)
            _a_drain_through_one_drains_on_both(one, two)
            # One replica judges the rollouts.
            assert wait_until(
                lambda: sum(r.running.gateway.leads_rollouts() for r in (one, two)) == 1,
                timeout_s=30,
            )
            _a_rollout_is_judged_on_every_replicas_calls(one, two)
            _losing_consul_keeps_the_last_state_serving(one, consul_server)
        finally:
            one.close()
            two.close()


def _a_split_through_one_reaches_the_other(one: Routed, two: Routed) -> None:
    probe = classifier_request(key="user-0")
    assert "x-gateway-variant" not in two.stamps(probe)[1], "no route yet"
    asked = time.monotonic()
    route = one.split("classifier", {"1": 50, "2": 50})
    traffic = two.running.gateway.traffic
    assert traffic is not None
    assert wait_until(
        lambda: (
            (found := traffic.route("classifier")) is not None and found.revision == route.revision
        ),
        timeout_s=10,
    )
    in_state = time.monotonic() - asked
    # Until the other replica's data plane routes by it: its calls come back stamped with
    # the variant that answered (one call after another, each about a millisecond).
    deadline = asked + 10
    while "x-gateway-variant" not in two.stamps(probe)[1]:
        assert time.monotonic() < deadline, "the other replica's edge never applied the split"
    in_edge = time.monotonic() - asked
    print(
        "a split set through one replica reached the other's state in "
        f"{in_state * 1000:.0f} ms and its data plane in {in_edge * 1000:.0f} ms"
    )
    # Sticky keys: the same variant through either replica (no per-replica state).
    keyed = [(classifier_request(key=f"user-{i}"), ()) for i in range(60)]
    through_one, through_two = one.variants_of(keyed), two.variants_of(keyed)
    assert through_one == through_two
    assert set(through_one) == {"1", "2"}


def _concurrent_changes_never_overwrite_each_other(one: Routed, two: Routed) -> None:
    current = one.route("classifier")
    assert current is not None

    def change(replica: Routed, weights: tuple[int, int]) -> str:
        request = admin_pb2.SetRouteRequest(
            route=admin_pb2.Route(
                name="classifier",
                variants=[
                    admin_pb2.Variant(version="1", weight=weights[0]),
                    admin_pb2.Variant(version="2", weight=weights[1]),
                ],
            ),
            expected_revision=current.revision,
        )
        try:
            replica.admin.SetRoute(request, metadata=AUTH, timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(lambda args: change(*args), [(one, (80, 20)), (two, (20, 80))]))
    assert outcomes == ["ABORTED", "OK"]


def _a_drain_through_one_drains_on_both(one: Routed, two: Routed) -> None:
    one.admin.DrainBackend(admin_pb2.BackendRequest(name="triton-b"), metadata=AUTH, timeout=10)
    try:
        assert wait_until(lambda: two.running.gateway.pool.is_drained("triton-b"), timeout_s=10)
    finally:
        one.admin.UndrainBackend(
            admin_pb2.BackendRequest(name="triton-b"), metadata=AUTH, timeout=10
        )
    assert wait_until(lambda: not two.running.gateway.pool.is_drained("triton-b"), timeout_s=10)


def _a_rollout_is_judged_on_every_replicas_calls(one: Routed, two: Routed) -> None:
    """Calls only through the replica that does not judge: the one that does sums every
    replica's figures, and rolls back a candidate whose copies disagree (versions 1 and 2
    of classifier have other weights) though its own edge served none of these calls."""
    leader, follower = (one, two) if one.running.gateway.leads_rollouts() else (two, one)
    leader.split("classifier", {"1": 100})
    follower.running.run(follower.running.gateway.edge.sync(5.0))  # type: ignore[union-attr]
    port = leader.running.gateway.metrics_port

    def leaders_calls() -> float:
        return total(
            scrape_with_edge(port), "triton_gateway_route_requests_total", route="classifier"
        )

    before = leaders_calls()
    plan = admin_pb2.RolloutPlan(steps=[0, 100], min_requests=10)
    plan.min_step.FromMilliseconds(500)
    request = admin_pb2.StartRolloutRequest(
        route="classifier", candidate=admin_pb2.Variant(version="2"), plan=plan
    )
    leader.admin.StartRollout(request, metadata=AUTH, timeout=10)

    def status() -> admin_pb2.Rollout:
        found: admin_pb2.Rollout = leader.admin.GetRollout(
            admin_pb2.RolloutRequest(route="classifier"), metadata=AUTH, timeout=10
        )
        return found

    with SteadyLoad(follower.running.url, varied=True) as load:
        assert wait_until(lambda: status().status == "rolled_back", timeout_s=60)
    done = status()
    assert done.step == 0, "at the shadow step"
    failed = {e.gate for e in done.history[-1].evidence if e.outcome == "fail"}
    assert "agreement" in failed
    assert load.failures == []
    assert leaders_calls() == before, "the judge's own edge served none of them"
    leader.split("classifier", {"1": 50, "2": 50})  # as it was


def _losing_consul_keeps_the_last_state_serving(one: Routed, consul_server: ConsulServer) -> None:
    health = health_pb2_grpc.HealthStub(one.channel)

    def status(service: str) -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(health.Check(request, timeout=5).status)

    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    assert status(ADMIN_SERVICE) == serving, "Consul answers: the admin service serves"
    consul_server.stop()
    port = one.running.gateway.metrics_port
    assert wait_until(
        lambda: total(scrape(port), "triton_gateway_state_store_reachable") == 0, timeout_s=30
    )
    # Said in grpc.health.v1 too (what probes read): the admin service is NOT_SERVING, while
    # the gateway is live and ready with its last state.
    assert wait_until(lambda: status(ADMIN_SERVICE) == not_serving, timeout_s=10)
    assert status(LIVENESS_SERVICE) == serving
    assert status("") == serving
    with pytest.raises(grpc.RpcError) as refused:
        one.split("classifier", {"1": 100})
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    _, stamps = one.stamps(classifier_request())
    assert stamps["x-gateway-variant"] in {"1", "2"}, "still split by the last state"
    assert classify(one.running.url).get_response().model_name == "classifier"


def test_discovery_blocks_on_the_index_and_backs_off_while_consul_is_gone(
    consul_server: ConsulServer,
) -> None:
    """ConsulDiscovery on the real agent's health endpoint: each query after the first waits
    past the index it was given (a change answers it at once, no polling in between); with
    Consul gone the queries back off, doubling to their cap, and the last set stands."""
    settings = ConsulDiscoverySettings(service=SERVICE, wait_s=30, retry_min_s=0.1, retry_max_s=0.4)
    consul_server.register("triton-a", SERVICE, "127.0.0.1:9001", passing=True)

    async def scenario() -> None:
        agent = ConsulAgent(ConsulSettings(address=consul_server.address))
        real = health_query(agent, settings)
        asked: list[int | None] = []
        answered: list[int] = []
        waits: list[float] = []

        second_query, fifth_wait = asyncio.Event(), asyncio.Event()

        async def query(index: int | None) -> tuple[int, list[dict[str, Any]]]:
            asked.append(index)
            if len(asked) == 2:
                second_query.set()
            found = await real(index)
            answered.append(found[0])
            return found

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 5:
                fifth_wait.set()
            await asyncio.sleep(0)

        events: asyncio.Queue[DiscoveryEvent] = asyncio.Queue()

        async def follow() -> None:
            async for event in ConsulDiscovery(query, settings, sleep=sleep).watch():
                await events.put(event)

        following = asyncio.create_task(follow())
        try:
            first = await asyncio.wait_for(events.get(), 30)
            assert isinstance(first, Reset)
            assert [e.name for e in first.endpoints] == [f"{consul_server.node}/triton-a"]
            # The next query waits past the first answer's index: in flight, unanswered.
            await asyncio.wait_for(second_query.wait(), 30)
            assert asked == [None, answered[0]] and len(answered) == 1

            await asyncio.to_thread(
                consul_server.register, "triton-b", SERVICE, "127.0.0.1:9002", passing=True
            )
            second = await asyncio.wait_for(events.get(), 30)
            assert isinstance(second, Reset) and len(second.endpoints) == 2
            # Two changes (the instance registered with a failing check, then its check
            # passing) answered two blocked queries (the agent's own syncs may answer one or
            # two more; a query that did not block would have been asked hundreds of times);
            # no query went without the latest index.
            assert len(asked) <= 8, f"answered by the changes, not by polling: {asked}"
            assert asked[1:] == answered[: len(asked) - 1]

            await asyncio.to_thread(consul_server.stop)
            await asyncio.wait_for(fifth_wait.wait(), 30)
            assert waits[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]
            assert events.empty(), "the last set stands while Consul is gone"
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            await agent.close()

    asyncio.run(scenario())
