"""ModelStreamInfer through tgw-edge: every message routed on its own, answered as Triton
answers on a stream, and a backend's fault failing none of the stream's requests."""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.devfleet import LocalFleet, TritonInstallation
from tests.support.background import BackgroundGateway
from tests.support.fleet import fleet_behind_gateway, inference_count
from tests.support.metrics import scrape_with_edge, total, value, wait_until
from tests.support.models import classifier_features, classifier_input, simple_arrays, simple_inputs

Answer = tuple[grpcclient.InferResult | None, Exception | None]


class Stream:
    """One client stream (tritonclient's), its answers collected in arrival order."""

    def __init__(self, address: str) -> None:
        self.client = grpcclient.InferenceServerClient(address)
        self.answers: queue.Queue[Answer] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.answers.put((result, error)))

    def send(self, model: str, inputs: list[grpcclient.InferInput], **options: str) -> None:
        self.client.async_stream_infer(model, inputs, **options)

    def collect(self, count: int, timeout_s: float = 30.0) -> list[Answer]:
        return [self.answers.get(timeout=timeout_s) for _ in range(count)]

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def _mixed_requests(stream: Stream) -> None:
    """simple and classifier interleaved, an unknown model, a version the model lacks, and
    one Triton cannot read."""
    a, b = simple_arrays(seed=1)
    x = classifier_features(batch=2, seed=2)
    for index in range(4):
        stream.send("simple", simple_inputs(a, b), request_id=f"s{index}")
        stream.send("classifier", classifier_input(x), request_id=f"c{index}", model_version="1")
    stream.send("no_such_model", simple_inputs(a, b), request_id="unknown")
    stream.send("simple", simple_inputs(a, b), request_id="v9", model_version="9")
    stream.send("simple", simple_inputs(a, b), request_id="vx", model_version="x")


def _describe(answer: Answer) -> tuple[str, str]:
    result, error = answer
    if error is not None:
        return "error", str(error)
    assert result is not None
    response = result.get_response()
    return response.id, f"{response.model_name}/{response.model_version}"


def test_one_stream_carries_several_models_answered_as_triton_answers(
    gateway_url: str, fleet: LocalFleet
) -> None:
    through = Stream(gateway_url)
    direct = Stream(fleet.servers["triton-a"].address)
    try:
        _mixed_requests(through)
        _mixed_requests(direct)
        gateway_answers = through.collect(11)
        triton_answers = direct.collect(11)
    finally:
        through.close()
        direct.close()
    # Same answers, same order (request order, as Triton writes a stream), same error texts.
    assert [_describe(a) for a in gateway_answers] == [_describe(a) for a in triton_answers]
    assert [_describe(a)[0] for a in gateway_answers[:8]] == [
        f"{kind}{index}" for index in range(4) for kind in ("s", "c")
    ]
    a, b = simple_arrays(seed=1)
    result = gateway_answers[0][0]
    assert result is not None
    assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_stream_requests_are_counted_by_the_edge(gateway: BackgroundGateway) -> None:
    port = gateway.gateway.metrics_port
    series = {
        "path": "edge",
        "method": "ModelStreamInfer",
        "model": "classifier",
        "version": "2",
        "code": "OK",
    }

    def counted() -> float:
        return total(scrape_with_edge(port), "triton_gateway_requests_total", **series)

    before = counted()
    stream = Stream(gateway.url)
    try:
        x = classifier_features(batch=1, seed=5)
        for index in range(3):
            stream.send("classifier", classifier_input(x), request_id=str(index), model_version="2")
        assert all(error is None for _, error in stream.collect(3))
    finally:
        stream.close()
    assert counted() == before + 3


@pytest.fixture(scope="module")
def two_backends(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalFleet, BackgroundGateway]]:
    """Two servers of `simple` behind a gateway with the shipped policy (no fallback: the
    fleet alone must carry every request)."""
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        {"stream-a": ("simple",), "stream-b": ("simple",)},
        fallback={"enabled": False},
        health={"poll_interval_s": 0.2, "poll_timeout_s": 0.5},
    ) as running:
        yield running


def _send_paced(stream: Stream, count: int, fault_at: int, fault: object) -> None:
    a, b = simple_arrays(seed=4)
    for index in range(count):
        if index == fault_at:
            fault()  # type: ignore[operator]
        stream.send("simple", simple_inputs(a, b), request_id=str(index))
        time.sleep(0.004)  # a paced client: the fault lands mid-stream


def _busiest(fleet: LocalFleet) -> str:
    return max(fleet.servers, key=lambda name: inference_count(fleet, name, "simple"))


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_a_backend_killed_or_hung_mid_stream_fails_none_of_its_requests(
    two_backends: tuple[LocalFleet, BackgroundGateway], fault: str
) -> None:
    fleet, gateway = two_backends
    stream = Stream(gateway.url)
    victim: list[str] = []

    def inject() -> None:
        victim.append(_busiest(fleet))
        server = fleet.servers[victim[0]]
        os.kill(server.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)

    try:
        _send_paced(stream, 300, 150, inject)
        answers = stream.collect(300)
    finally:
        stream.close()
        if fault == "hang":
            os.kill(fleet.servers[victim[0]].pid, signal.SIGCONT)
    errors = [str(error) for _, error in answers if error is not None]
    assert errors == []
    # Every request answered once, in request order, with its right result.
    assert [_describe(answer)[0] for answer in answers] == [str(i) for i in range(300)]
    a, b = simple_arrays(seed=4)
    for result, _ in answers:
        assert result is not None
        assert np.array_equal(result.as_numpy("OUTPUT1"), a - b)
    # The requests caught on the victim were sent again, to the other backend.
    port = gateway.gateway.metrics_port
    assert (
        value(port, "triton_gateway_retries_total", {"backend": victim[0], "code": "UNAVAILABLE"})
        >= 1
    )
    if fault == "kill":
        fleet.restart(victim[0])
    assert wait_until(
        lambda: len(gateway.gateway.pool.table.candidates.get(("simple", ""), ())) == 2, 30
    )


def _repeat_request(request_id: str, count: int, delay_ms: int) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="repeat", id=request_id)
    for name, datatype, number in (("IN", "INT32", count), ("DELAY", "UINT32", delay_ms)):
        request.inputs.add(name=name, datatype=datatype, shape=[1])
        request.raw_input_contents.append(np.array([number], dtype=datatype.lower()).tobytes())
    return request


def test_a_decoupled_request_cut_by_its_backend_is_reported_once_and_the_stream_goes_on(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Answers a decoupled model already gave cannot be taken back: its request, cut short by
    its backend's death, is reported in the stream (as Triton reports a failed request), not
    sent again to repeat them; the stream's next requests go to the backend left."""
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        {"stream-a": ("simple", "repeat"), "stream-b": ("simple",)},
        fallback={"enabled": False},
    ) as (fleet, gateway):
        _cut_decoupled_request(fleet, gateway)


def _cut_decoupled_request(fleet: LocalFleet, gateway: BackgroundGateway) -> None:
    requests: queue.Queue[service_pb2.ModelInferRequest | None] = queue.Queue()
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(gateway.url))
    answers = stub.ModelStreamInfer(iter(requests.get, None), timeout=60)
    try:
        requests.put(_repeat_request("slow", 8, 250))
        first = [next(answers) for _ in range(2)]
        os.kill(fleet.servers["stream-a"].pid, signal.SIGKILL)  # the only holder of `repeat`
        a, b = simple_arrays(seed=6)
        after = service_pb2.ModelInferRequest(model_name="simple", id="after")
        for name, values in (("INPUT0", a), ("INPUT1", b)):
            after.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            after.raw_input_contents.append(values.tobytes())
        cut = next(answers)
        requests.put(after)
        served = next(answers)
    finally:
        requests.put(None)
    rest = list(answers)  # the stream ends OK after the client's half-close
    assert [(m.error_message, m.infer_response.id) for m in first] == [("", "slow")] * 2
    assert [np.frombuffer(m.infer_response.raw_output_contents[0], np.int32)[0] for m in first] == [
        0,
        1,
    ]
    assert (cut.infer_response.id, bool(cut.error_message)) == ("slow", True)
    assert (served.error_message, served.infer_response.id) == ("", "after")
    assert rest == []


def test_cancelling_a_stream_releases_its_requests_on_the_edge_and_the_backend(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        {"held": ("simple",)},
        fallback={"enabled": False},
        # The hang below must last until the client cancels: no per-try timeout or health
        # poll ends it first.
        timeouts={"per_model_s": {"simple": 120}},
        health={"poll_interval_s": 60},
    ) as (fleet, gateway):
        port = gateway.gateway.metrics_port
        server = fleet.servers["held"]
        os.kill(server.pid, signal.SIGSTOP)
        channel = grpc.insecure_channel(gateway.url)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple", id="held")
        a, b = simple_arrays()
        for name, array in (("INPUT0", a), ("INPUT1", b)):
            request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            request.raw_input_contents.append(array.tobytes())
        release: queue.Queue[None] = queue.Queue()

        def requests() -> Iterator[service_pb2.ModelInferRequest]:
            for _ in range(4):
                yield request
            release.get()  # the client keeps its stream open until it cancels it

        def in_flight() -> float:
            return value(port, "triton_gateway_in_flight_requests", {"path": "edge"})

        call = stub.ModelStreamInfer(requests())
        try:
            assert wait_until(lambda: in_flight() == 4)
            call.cancel()
            # The edge lets go of them at once, with the backend still hung.
            assert wait_until(lambda: in_flight() == 0)
        finally:
            release.put(None)
            os.kill(server.pid, signal.SIGCONT)
            channel.close()
        # The backend's stream was reset with the client's: Triton dropped the four queued
        # requests instead of running them for a client that is gone. A new call (queued
        # behind them, had they stayed) is served and is the only one it ever ran.
        client = grpcclient.InferenceServerClient(gateway.url)
        answer = client.infer("simple", simple_inputs(a, b), client_timeout=10)
        assert np.array_equal(answer.as_numpy("OUTPUT0"), a + b)
        assert inference_count(fleet, "held", "simple") == 1
        assert in_flight() == 0


def _accumulator_input(value: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return [tensor]


def test_sequences_on_streams_and_unary_calls_keep_their_state_across_backends(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Eight sequences at once over two backends of the sequence model; each request of a
    sequence goes, at random, on one of two streams or as a unary call. A request that
    reached the other backend, or another sequence's state, makes its running sum wrong."""
    servers = {"seq-a": ("accumulator",), "seq-b": ("accumulator",)}
    with fleet_behind_gateway(
        triton_installation, tmp_path_factory, servers, fallback={"enabled": False}
    ) as (fleet, gateway):
        rng = np.random.default_rng(7)
        sequences = {9001 + index: [int(v) for v in rng.integers(-50, 50, 6)] for index in range(8)}
        streams = [Stream(gateway.url), Stream(gateway.url)]
        unary = grpcclient.InferenceServerClient(gateway.url)
        expected: dict[str, int] = {}
        sent_on = [0, 0]
        try:
            for step in range(6):
                for sid, values in sequences.items():
                    options = {
                        "sequence_id": sid,
                        "sequence_start": step == 0,
                        "sequence_end": step == 5,
                    }
                    request_id = f"{sid}-{step}"
                    expected[request_id] = sum(values[: step + 1])
                    lane = int(rng.integers(0, 3))
                    if lane == 2:
                        answer = unary.infer(
                            "accumulator",
                            _accumulator_input(values[step]),
                            request_id=request_id,
                            **options,
                        )
                        assert int(answer.as_numpy("OUTPUT")[0, 0]) == expected[request_id]
                        continue
                    streams[lane].send(
                        "accumulator",
                        _accumulator_input(values[step]),
                        request_id=request_id,
                        **options,
                    )
                    sent_on[lane] += 1
                    # The next request of this sequence may go another way: let this one land.
                    ((result, error),) = streams[lane].collect(1)
                    assert error is None, error
                    assert result is not None
                    response_id = result.get_response().id
                    assert int(result.as_numpy("OUTPUT")[0, 0]) == expected[response_id]
        finally:
            for stream in streams:
                stream.close()
        assert min(sent_on) > 0
        # Both backends held sequences: the pins spread them, and each kept its own.
        ran = {name: inference_count(fleet, name, "accumulator") for name in servers}
        assert all(count > 0 for count in ran.values()), ran
        assert sum(ran.values()) == 8 * 6
