"""Backends that are absent, late or hung: the gateway says so clearly and keeps serving."""

from __future__ import annotations

import os
import signal
import socket
import time

import grpc
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.settings import load_settings
from tests.conftest import MODEL_REPOSITORY
from tests.support.background import BackgroundGateway
from tests.support.metrics import value
from tests.support.models import simple_arrays, simple_inputs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(condition, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_no_backend_then_a_backend_comes_up(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = _free_port()
    settings = load_settings(
        server={"host": "127.0.0.1", "port": 0},
        metrics={"host": "127.0.0.1", "port": 0},
        fallback={"enabled": False},
        backends=[{"name": "late", "address": f"127.0.0.1:{port}"}],
        health={"poll_interval_s": 0.1, "poll_timeout_s": 0.5, "startup_wait_s": 1},
    )
    with BackgroundGateway(Gateway(settings)) as gateway:
        client = grpcclient.InferenceServerClient(gateway.url)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(gateway.url))
        metrics_port = gateway.gateway.metrics_port
        up = {"backend": "late"}
        assert client.is_server_live()
        assert not client.is_server_ready()
        assert value(metrics_port, "triton_gateway_backend_up", up) == 0
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.NOT_SERVING
        )
        a, b = simple_arrays()
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", simple_inputs(a, b))
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "no Triton backend is ready" in info.value.message()

        spec = ServerSpec("late", grpc_port=port, models=("simple",))
        fleet_dir = tmp_path_factory.mktemp("late-fleet")
        with LocalFleet(triton_installation, MODEL_REPOSITORY, fleet_dir, [spec]):
            _wait_for(client.is_server_ready)
            assert value(metrics_port, "triton_gateway_backend_up", up) == 1
            result = client.infer("simple", simple_inputs(a, b))
            assert (result.as_numpy("OUTPUT0") == a + b).all()
            _wait_for(
                lambda: (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    == health_pb2.HealthCheckResponse.SERVING
                )
            )
        _wait_for(lambda: not client.is_server_ready())
        # The backend going down shows in the metrics too.
        assert value(metrics_port, "triton_gateway_backend_up", up) == 0


def test_client_deadline_bounds_a_call_to_a_hung_backend(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spec = ServerSpec("hung", models=("simple",))
    fleet_dir = tmp_path_factory.mktemp("hung-fleet")
    with LocalFleet(triton_installation, MODEL_REPOSITORY, fleet_dir, [spec]) as fleet:
        server = fleet.servers["hung"]
        settings = load_settings(
            server={"host": "127.0.0.1", "port": 0},
            metrics={"host": "127.0.0.1", "port": 0},
            backends=[{"name": "hung", "address": server.address}],
            # Slow polls, so the hang is met by the request, not first noticed by a poll.
            health={"poll_interval_s": 30, "poll_timeout_s": 0.5},
        )
        with BackgroundGateway(Gateway(settings)) as gateway:
            client = grpcclient.InferenceServerClient(gateway.url)
            a, b = simple_arrays()
            os.kill(server.pid, signal.SIGSTOP)  # a real hang: the process stops answering
            try:
                with pytest.raises(InferenceServerException) as info:
                    client.infer("simple", simple_inputs(a, b), client_timeout=0.5)
                assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
            finally:
                os.kill(server.pid, signal.SIGCONT)
            result = client.infer("simple", simple_inputs(a, b), client_timeout=10)
            assert (result.as_numpy("OUTPUT1") == a - b).all()
