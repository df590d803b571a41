"""A backend that dies is ejected by its breaker from real traffic, before any health poll."""

from __future__ import annotations

import os
import signal

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.devfleet import TritonInstallation
from tests.support.fleet import fleet_behind_gateway
from tests.support.metrics import value, wait_until
from tests.support.models import (
    classifier_features,
    classifier_input,
    simple_arrays,
    simple_inputs,
)


@pytest.mark.parametrize("edge", ["off", "on"], ids=["python", "edge"])
def test_a_killed_backend_is_ejected_and_no_request_fails(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
    edge: str,
) -> None:
    servers = {"alive": ("simple",), "victim": ("simple",)}
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        servers,
        edge={"mode": edge},
        # Polls far apart: only the breaker can notice the death in time.
        health={"poll_interval_s": 60},
        breaker={"consecutive_failures": 1, "base_ejection_s": 60},
    ) as (fleet, gateway):
        client = grpcclient.InferenceServerClient(gateway.url)
        pool = gateway.gateway.pool
        port = gateway.gateway.metrics_port
        a, b = simple_arrays()
        victim = fleet.servers["victim"]
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.process is not None
        victim.process.wait()

        def routes() -> set[str]:
            return {backend.name for backend in pool.table.candidates[("simple", "")]}

        # Every request succeeds: the ones that meet the dead backend are answered by
        # another path, and the breaker takes it out of the routes.
        for _ in range(20):
            result = client.infer("simple", simple_inputs(a, b))
            assert (result.as_numpy("OUTPUT0") == a + b).all()
            if routes() == {"alive"}:
                break
        assert wait_until(lambda: routes() == {"alive"})
        assert value(port, "triton_gateway_backend_breaker_open", {"backend": "victim"}) == 1
        assert value(port, "triton_gateway_backend_breaker_open", {"backend": "alive"}) == 0
        # The fault also asked the victim's health at once (polls are 60 s apart here).
        down = {"backend": "victim"}
        assert wait_until(lambda: value(port, "triton_gateway_backend_up", down) == 0)
        for _ in range(10):
            client.infer("simple", simple_inputs(a, b))


@pytest.mark.parametrize("edge", ["off", "on"], ids=["python", "edge"])
def test_calls_that_meet_a_dead_backend_are_retried_on_another(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
    edge: str,
) -> None:
    """No fallback, no breaker help: the retry alone saves every request."""
    servers = {"alive": ("simple",), "victim": ("simple",)}
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        servers,
        edge={"mode": edge},
        fallback={"enabled": False},
        health={"poll_interval_s": 60},
        breaker={"consecutive_failures": 1000, "min_requests": 1000},
    ) as (fleet, gateway):
        client = grpcclient.InferenceServerClient(gateway.url)
        port = gateway.gateway.metrics_port
        victim = fleet.servers["victim"]
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.process is not None
        victim.process.wait()
        a, b = simple_arrays()
        for _ in range(10):
            result = client.infer("simple", simple_inputs(a, b))
            assert (result.as_numpy("OUTPUT1") == a - b).all()
        if edge == "off":
            # The Python path retried; through tgw-edge the gateway was told which backend
            # failed and never picked it, so nothing needed retrying there.
            retried = value(
                port,
                "triton_gateway_retries_total",
                {"backend": "victim", "code": "UNAVAILABLE"},
            )
            assert retried >= 1
        assert gateway.gateway.pool.table.candidates[("simple", "")]  # still both listed


@pytest.mark.parametrize("edge", ["off", "on"], ids=["python", "edge"])
def test_a_model_whose_only_backend_died_is_unavailable_not_unknown(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
    edge: str,
) -> None:
    servers = {"holder": ("simple", "classifier"), "other": ("simple",)}
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        servers,
        edge={"mode": edge},
        fallback={"enabled": False},
    ) as (fleet, gateway):
        client = grpcclient.InferenceServerClient(gateway.url)
        pool = gateway.gateway.pool
        holder = fleet.servers["holder"]
        os.kill(holder.pid, signal.SIGKILL)
        assert wait_until(lambda: ("classifier", "") not in pool.table.candidates)
        x = classifier_features()
        with pytest.raises(InferenceServerException) as info:
            client.infer("classifier", classifier_input(x))
        # The client may retry later: UNAVAILABLE, not "unknown model".
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "classifier" in (info.value.message() or "")
        # A version the fleet never had is still unknown, in Triton's words.
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("classifier", classifier_input(x), model_version="9")
        assert unknown.value.status() == "StatusCode.NOT_FOUND"
        a, b = simple_arrays()
        result = client.infer("simple", simple_inputs(a, b))
        assert (result.as_numpy("OUTPUT0") == a + b).all()
