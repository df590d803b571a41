"""Chaos under steady load: real Triton processes killed and restarted while clients send."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import tritonclient.grpc as grpcclient

from gateway.devfleet import TritonInstallation
from load_tests import loadgen
from tests.support.fleet import fleet_behind_gateway
from tests.support.metrics import requests_total, scrape_with_edge, total, value, wait_until
from tests.support.models import simple_arrays, simple_inputs

REQUESTS = "triton_gateway_requests_total"


def test_kill_9_one_of_two_backends_under_load_fails_no_request(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    servers = {"steady": ("simple",), "victim": ("simple",)}
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        servers,
        # No fallback: the fleet's own resilience must carry every request.
        fallback={"enabled": False},
        health={"poll_interval_s": 0.2, "poll_timeout_s": 0.5},
        breaker={"consecutive_failures": 2, "base_ejection_s": 0.5},
        # Forgive quickly, so the test sees the restarted backend used again soon (the faults
        # it answered while dead count as slow answers until forgiven).
        balancing={"latency_decay_s": 0.5},
    ) as (fleet, gateway):
        pool = gateway.gateway.pool
        victim = fleet.servers["victim"]
        killed = asyncio.Event()

        async def kill_mid_run() -> None:
            await asyncio.sleep(1.0)
            os.kill(victim.pid, signal.SIGKILL)
            killed.set()

        spec = loadgen.LoadSpec(
            target=gateway.url,
            model="simple",
            mode="open",
            rate=150,
            duration_s=3.0,
            max_requests=1000,
            timeout_s=10,
        )
        result = asyncio.run(loadgen.run(spec, during=kill_mid_run))
        assert killed.is_set()
        assert result.sent == result.ok + result.failed
        assert result.failed == 0, dict(result.errors)
        assert result.ok == result.sent >= 400

        def in_rotation() -> set[str]:
            return {b.name for b in pool.table.candidates.get(("simple", ""), ())}

        assert wait_until(lambda: in_rotation() == {"steady"})
        # The restarted backend comes back into rotation without a gateway restart: the
        # health polls list it again and the edge sends it calls again (a breaker the kill
        # opened lets a trial through and closes).
        port = gateway.gateway.metrics_port
        fleet.restart("victim")
        assert wait_until(lambda: in_rotation() == {"steady", "victim"}, timeout_s=15)
        served = {"path": "edge", "backend": "victim", "code": "OK"}
        served_by_victim = total(scrape_with_edge(port), REQUESTS, **served)
        client = grpcclient.InferenceServerClient(gateway.url)
        a, b = simple_arrays()

        def victim_serves_again() -> bool:
            result = client.infer("simple", simple_inputs(a, b), client_timeout=5)
            assert (result.as_numpy("OUTPUT0") == a + b).all()
            return requests_total(port, **served) > served_by_victim

        assert wait_until(victim_serves_again, timeout_s=15)


def test_a_hung_backend_under_load_costs_a_few_per_try_timeouts_then_gets_no_traffic(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    servers = {"steady": ("simple",), "hung": ("simple",)}
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        servers,
        fallback={"enabled": False},
        health={"poll_interval_s": 60, "poll_timeout_s": 0.5},
        # A fixed per-try timeout for the model (the adaptive one needs answers to learn from).
        timeouts={"per_model_s": {"simple": 0.3}},
        breaker={"consecutive_failures": 2, "base_ejection_s": 0.5},
        # Forgive quickly, so the test sees the backend used again soon after SIGCONT.
        balancing={"latency_decay_s": 0.5},
    ) as (fleet, gateway):
        port = gateway.gateway.metrics_port
        hung = fleet.servers["hung"]
        os.kill(hung.pid, signal.SIGSTOP)  # a real hang: the process stops answering
        try:
            spec = loadgen.LoadSpec(
                target=gateway.url,
                model="simple",
                mode="open",
                rate=100,
                duration_s=2.0,
                max_requests=400,
                timeout_s=5,
            )
            result = asyncio.run(loadgen.run(spec))
            # Each call that met the hung backend moved on after 0.3 s, well inside the
            # client's deadline: none failed.
            assert result.failed == 0, dict(result.errors)
            assert result.ok == result.sent >= 150
            # Only the first few calls met the hang: the slow answers (and the breaker)
            # turned traffic away from it.
            assert wait_until(lambda: requests_total(port, backend="hung") >= 1)
            met_hang = total(scrape_with_edge(port), REQUESTS, backend="hung")
            assert met_hang <= 10, met_hang
        finally:
            os.kill(hung.pid, signal.SIGCONT)

        # SIGCONT: the backend answers requests through the gateway again (its answers
        # to the calls that timed out do not count: they reached nobody).
        assert total(scrape_with_edge(port), REQUESTS, backend="hung", code="OK") == 0
        client = grpcclient.InferenceServerClient(gateway.url)
        a, b = simple_arrays()

        def back() -> bool:
            result = client.infer("simple", simple_inputs(a, b), client_timeout=5)
            assert (result.as_numpy("OUTPUT0") == a + b).all()
            return requests_total(port, backend="hung", code="OK") > 0

        assert wait_until(back, timeout_s=15)


def test_a_model_unloaded_on_one_backend_under_load_leaves_only_that_route(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    models = ("simple", "identity")
    servers = {"steady": models, "shrinking": models}
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        servers,
        fallback={"enabled": False},
        # Polls far apart: only what real traffic shows can move the routes in time.
        health={"poll_interval_s": 60},
        breaker={"consecutive_failures": 1, "base_ejection_s": 60, "max_ejection_s": 60},
    ) as (fleet, gateway):
        pool = gateway.gateway.pool
        port = gateway.gateway.metrics_port
        shrinking = grpcclient.InferenceServerClient(fleet.servers["shrinking"].address)

        async def unload_mid_run() -> None:
            await asyncio.sleep(0.5)
            await asyncio.to_thread(shrinking.unload_model, "simple")

        spec = loadgen.LoadSpec(
            target=gateway.url,
            model="simple",
            # Eight calls in flight: enough that both backends get traffic (alone, a call
            # goes to whichever answers fastest).
            mode="closed",
            concurrency=8,
            duration_s=2.0,
            max_requests=4000,
            timeout_s=5,
        )
        result = asyncio.run(loadgen.run(spec, during=unload_mid_run))
        # The calls that met the stale route were answered by the other backend.
        assert result.failed == 0, dict(result.errors)
        assert result.ok == result.sent >= 150

        def routes(model: str) -> set[str]:
            return {b.name for b in pool.table.candidates.get((model, ""), ())}

        model_breaker = {"backend": "shrinking", "model": "simple"}
        assert wait_until(
            lambda: value(port, "triton_gateway_model_breaker_open", model_breaker) == 1
        )
        # The fault asked the backend's health at once (polls are 60 s apart here): the
        # routes the control plane sends no longer name it for that model.
        assert wait_until(lambda: routes("simple") == {"steady"})
        # The fault was the model's: the backend keeps serving its other model.
        seen = scrape_with_edge(port)
        assert total(seen, "triton_gateway_backend_breaker_open", backend="shrinking") == 0
        assert total(seen, "triton_gateway_breaker_transitions_total", model="") == 0
        assert routes("identity") == {"steady", "shrinking"}
        met_stale = total(seen, REQUESTS, backend="shrinking", model="simple")
        client = grpcclient.InferenceServerClient(gateway.url)
        a, b = simple_arrays()
        for _ in range(20):
            client.infer("simple", simple_inputs(a, b))
        after = scrape_with_edge(port)
        assert total(after, REQUESTS, backend="shrinking", model="simple") == met_stale


def test_one_backend_killed_and_the_others_hung_fails_no_request_with_shipped_settings(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The shipped policy, untouched: adaptive per-try timeouts and hedging move calls off
    the hung backends, and the local fallback answers once none is left."""
    servers = {"killed": ("simple",), "hung-1": ("simple",), "hung-2": ("simple",)}
    with fleet_behind_gateway(triton_installation, tmp_path_factory, servers) as (
        fleet,
        gateway,
    ):
        port = gateway.gateway.metrics_port
        stopped: list[int] = []

        async def kill_then_hang() -> None:
            await asyncio.sleep(1.5)
            os.kill(fleet.servers["killed"].pid, signal.SIGKILL)
            await asyncio.sleep(0.3)
            for name in ("hung-1", "hung-2"):
                os.kill(fleet.servers[name].pid, signal.SIGSTOP)
                stopped.append(fleet.servers[name].pid)

        spec = loadgen.LoadSpec(
            target=gateway.url,
            model="simple",
            mode="open",
            rate=100,
            duration_s=5.0,
            max_requests=600,
            timeout_s=5,
        )
        try:
            result = asyncio.run(loadgen.run(spec, during=kill_then_hang))
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        assert len(stopped) == 2
        assert result.failed == 0, dict(result.errors)
        assert result.ok == result.sent >= 400
        # Once the fleet was gone the local fallback answered.
        assert result.fallback > 0
        assert total(scrape_with_edge(port), REQUESTS, path="fallback", code="OK") > 0
