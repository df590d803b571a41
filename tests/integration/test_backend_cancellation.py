"""Clients that cancel, or whose deadline ends, while their answer completes never cancel the
backend's call.

Triton 2.51 (the local fleet's) crashes with SIGSEGV when a ModelInfer call is cancelled as
its answer completes: direct calls cancelled at about their own latency kill a server within
about a thousand calls. Through the gateway the same calls leave it serving, with no call
failed on its side: the edge keeps deadlines itself and reads an abandoned call's answer to the
end instead of resetting it. A server of its own, so a crash could not take down the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.app import Gateway
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.settings import load_settings
from tests.conftest import MODEL_REPOSITORY
from tests.support.background import BackgroundGateway
from tests.support.metrics import scrape_with_edge, total

THREADS = 4
CALLS_PER_THREAD = 1000
"""Four clients, each giving up no sooner than half the call's latency: a client that resets
streams the edge has not even accepted yet, many at once, is a Rapid Reset attack to the edge
(``edge.max_pending_accept_reset_streams``) and loses its connection."""


@pytest.fixture(scope="module")
def racing(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalFleet, BackgroundGateway]]:
    specs = [ServerSpec("racing", models=("simple",))]
    with LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path_factory.mktemp("racing"), specs
    ) as fleet:
        settings = load_settings(
            server={"host": "127.0.0.1", "port": 0},
            metrics={"host": "127.0.0.1", "port": 0},
            repository={"path": str(Path(tmp_path_factory.mktemp("none")))},
            fallback={"enabled": False},
            backends=[{"name": "racing", "address": fleet.servers["racing"].address}],
            health={"poll_interval_s": 0.1, "poll_timeout_s": 1.0},
        )
        with BackgroundGateway(Gateway(settings)) as running:
            yield fleet, running


def _simple_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = "INT32"
        tensor.shape.extend([1, 16])
    request.raw_input_contents.extend([np.arange(16, dtype=np.int32).tobytes()] * 2)
    return request


def _backend_statistics(address: str) -> service_pb2.ModelStatistics:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    answer = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="simple"), timeout=10)
    (statistics,) = answer.model_stats
    return statistics


def test_calls_given_up_as_they_complete_leave_the_backend_serving(
    racing: tuple[LocalFleet, BackgroundGateway],
) -> None:
    fleet, running = racing
    server = fleet.servers["racing"]
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(running.url))
    request = _simple_request()
    started = time.perf_counter()
    for _ in range(100):
        stub.ModelInfer(request, timeout=10)
    latency = (time.perf_counter() - started) / 100
    outcomes: dict[str, int] = {}
    details: list[str] = []
    lock = threading.Lock()

    def give_up(seed: int) -> None:
        # Half cancelled by the client, half ended by their deadline, each at about the
        # call's own latency: many are given up just as the backend answers.
        rng = np.random.default_rng(seed)
        for i in range(CALLS_PER_THREAD):
            after = latency * rng.uniform(0.5, 1.5)
            if i % 2:
                call = stub.ModelInfer.future(request, timeout=after)
            else:
                call = stub.ModelInfer.future(request, timeout=10)
                time.sleep(after)
                call.cancel()
            try:
                call.result()
                outcome = "OK"
            except grpc.FutureCancelledError:
                outcome = "CANCELLED"
            except grpc.RpcError as exc:
                outcome = exc.code().name
                if outcome not in ("CANCELLED", "DEADLINE_EXCEEDED"):
                    with lock:
                        details.append(f"{outcome}: {exc.details()}")
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    threads = [threading.Thread(target=give_up, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"{THREADS * CALLS_PER_THREAD} calls given up at ~{latency * 1e6:.0f} µs: {outcomes}")
    assert set(outcomes) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED"}, details[:5]
    assert outcomes.get("CANCELLED", 0) + outcomes.get("DEADLINE_EXCEEDED", 0) > 0

    assert server.process is not None
    assert server.process.poll() is None, "the backend crashed"
    answer = stub.ModelInfer(request, timeout=10)
    assert answer.model_name == "simple"
    # Every call that reached the backend completed there: none failed or was cancelled.
    statistics = _backend_statistics(server.address)
    print(
        f"backend: {statistics.inference_stats.success.count} succeeded, "
        f"{statistics.inference_stats.fail.count} failed"
    )
    assert statistics.inference_stats.fail.count == 0
    # Operators see the work nobody waited for.
    samples = scrape_with_edge(running.gateway.metrics_port)
    drained = total(samples, "triton_gateway_backend_calls_drained_total")
    print(f"calls drained: {drained:.0f}")
    assert drained > 0
