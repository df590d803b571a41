"""A backend that dies is ejected by its breaker in tgw-edge from real traffic, before any
health poll; the edge's retries carry the calls that meet it."""

from __future__ import annotations

import os
import signal

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.devfleet import TritonInstallation
from tests.support.fleet import fleet_behind_gateway
from tests.support.metrics import scrape_with_edge, total, value, wait_until
from tests.support.models import (
    classifier_features,
    classifier_input,
    simple_arrays,
    simple_inputs,
)

BACKEND_OPEN = "triton_gateway_backend_breaker_open"
TRANSITIONS = "triton_gateway_breaker_transitions_total"
RETRIES = "triton_gateway_retries_total"
REQUESTS = "triton_gateway_requests_total"


def test_a_killed_backend_is_ejected_and_no_request_fails(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    servers = {"alive": ("simple",), "victim": ("simple",)}
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        servers,
        # Polls far apart: only the breaker can notice the death in time.
        health={"poll_interval_s": 60},
        breaker={"consecutive_failures": 1, "base_ejection_s": 60, "max_ejection_s": 60},
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

        def ejected() -> bool:
            return value(port, BACKEND_OPEN, {"backend": "victim"}) == 1

        # Every request succeeds: the ones that meet the dead backend are tried again on
        # another, and the breaker takes it out of the edge's choice.
        for _ in range(40):
            result = client.infer("simple", simple_inputs(a, b))
            assert (result.as_numpy("OUTPUT0") == a + b).all()
            if ejected():
                break
        assert wait_until(ejected)
        seen = scrape_with_edge(port)
        assert total(seen, BACKEND_OPEN, backend="victim") == 1
        assert total(seen, BACKEND_OPEN, backend="alive") == 0
        assert total(seen, TRANSITIONS, backend="victim", model="", state="open") >= 1
        assert total(seen, TRANSITIONS, backend="alive", state="open") == 0
        # The calls that met it were moved by the edge, not answered by the fallback.
        assert total(seen, REQUESTS, path="edge", backend="victim", code="UNAVAILABLE") >= 1
        assert total(seen, RETRIES, backend="victim", code="UNAVAILABLE") >= 1
        assert total(seen, REQUESTS, path="fallback") == 0
        # The fault also asked the victim's health at once (polls are 60 s apart here), so
        # the routes the control plane sends no longer name it.
        down = {"backend": "victim"}
        assert wait_until(lambda: value(port, "triton_gateway_backend_up", down) == 0)
        assert wait_until(lambda: routes() == {"alive"})
        met_victim = total(scrape_with_edge(port), REQUESTS, backend="victim")
        for _ in range(10):
            result = client.infer("simple", simple_inputs(a, b))
            assert (result.as_numpy("OUTPUT0") == a + b).all()
        after = scrape_with_edge(port)
        assert total(after, REQUESTS, backend="victim") == met_victim
        assert total(after, REQUESTS, path="fallback") == 0


def test_calls_that_meet_a_dead_backend_are_retried_on_another(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """No fallback, no breaker help: the edge's retry alone saves every request."""
    servers = {"alive": ("simple",), "victim": ("simple",)}
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        servers,
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
        retried = {"backend": "victim", "code": "UNAVAILABLE"}
        # The dead backend stays in the routes until a call meets it (polls are 60 s apart),
        # and the balancer draws it while it has no answer on record: a call meets it within
        # a few requests.
        for _ in range(30):
            result = client.infer("simple", simple_inputs(a, b))
            assert (result.as_numpy("OUTPUT1") == a - b).all()
            if value(port, RETRIES, retried) >= 1:
                break
        assert wait_until(lambda: value(port, RETRIES, retried) >= 1)
        for _ in range(10):
            result = client.infer("simple", simple_inputs(a, b))
            assert (result.as_numpy("OUTPUT1") == a - b).all()
        seen = scrape_with_edge(port)
        assert total(seen, REQUESTS, path="edge", backend="victim", code="UNAVAILABLE") >= 1
        # The breaker was no help: with these thresholds it never opened.
        assert total(seen, BACKEND_OPEN, backend="victim") == 0
        assert total(seen, TRANSITIONS, backend="victim", state="open") == 0


def test_a_model_whose_only_backend_died_is_unavailable_not_unknown(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    servers = {"holder": ("simple", "classifier"), "other": ("simple",)}
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        servers,
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
