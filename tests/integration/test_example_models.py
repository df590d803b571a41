"""The kinds of models Triton users rely on, through the gateway's public port.

BYTES and INT8 tensors, a stateful sequence model (``accumulator``, implicit state: each
sequence keeps its own running sum) over unary calls and over one ModelStreamInfer stream, and a
decoupled model (``repeat``: N responses to one request, on a stream only). Stream tests run
against the gateway and against Triton directly, so a failure says which of the two broke.
The local fallback never answers the sequence or the decoupled model.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import yaml
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from gateway.settings import load_settings
from tests.conftest import MODEL_REPOSITORY
from tests.support.background import BackgroundGateway
from tests.support.fleet import inference_count
from tests.support.metrics import wait_until

INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVED_BY_FALLBACK = ("x-gateway-served-by", "fallback")
STREAM_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def client(gateway_url: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(gateway_url)


@pytest.fixture(scope="module")
def direct(fleet: LocalFleet) -> grpcclient.InferenceServerClient:
    """triton-a, the only server with the new models."""
    return grpcclient.InferenceServerClient(fleet.servers["triton-a"].address)


@pytest.fixture(params=["gateway", "direct"])
def stream_target(request: pytest.FixtureRequest, gateway_url: str, fleet: LocalFleet) -> str:
    """Where a stream test runs: the gateway, or triton-a itself for comparison."""
    return gateway_url if request.param == "gateway" else fleet.servers["triton-a"].address


# -- BYTES -------------------------------------------------------------------------------------


def _text(values: Sequence[bytes]) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("TEXT", [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_))
    return [tensor]


TEXTS = [b"hello, World", b"", "gr\u00fc\u00dfe \u00e9t\u00e9 \u4e2d\u6587".encode(), b"MiXeD 1 !?"]


def test_strings_round_trip_matches_triton_and_python(
    client: grpcclient.InferenceServerClient, direct: grpcclient.InferenceServerClient
) -> None:
    via_gateway = client.infer("strings", _text(TEXTS))
    from_triton = direct.infer("strings", _text(TEXTS))
    response = via_gateway.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("UPPER", "BYTES", [4]),
        ("ECHO", "BYTES", [4]),
    ]
    for name in ("UPPER", "ECHO"):
        assert via_gateway.as_numpy(name).tolist() == from_triton.as_numpy(name).tolist()
    # The "C" locale upper-cases ASCII letters only, as bytes.upper() does; ECHO is exact.
    assert via_gateway.as_numpy("UPPER").tolist() == [t.upper() for t in TEXTS]
    assert via_gateway.as_numpy("ECHO").tolist() == TEXTS


def test_an_empty_strings_tensor_gives_empty_outputs(
    client: grpcclient.InferenceServerClient,
) -> None:
    response = client.infer("strings", _text([])).get_response()
    assert [(o.name, list(o.shape)) for o in response.outputs] == [("UPPER", [0]), ("ECHO", [0])]


def test_text_that_is_not_utf8_is_refused_as_triton_refuses_it(
    client: grpcclient.InferenceServerClient, direct: grpcclient.InferenceServerClient
) -> None:
    errors = []
    for target in (client, direct):
        with pytest.raises(InferenceServerException) as info:
            target.infer("strings", _text([b"ok", b"\xff\xfe"]))
        errors.append((info.value.status(), info.value.message()))
    assert errors[0] == errors[1]
    assert errors[0][0] == "StatusCode.INVALID_ARGUMENT"
    assert "not UTF-8" in errors[0][1]


# -- INT8 --------------------------------------------------------------------------------------


def _int8_inputs(a: npt.NDArray[np.int8], b: npt.NDArray[np.int8]) -> list[grpcclient.InferInput]:
    tensors = []
    for name, values in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(name, list(values.shape), "INT8")
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    return tensors


def test_int8_round_trip_matches_triton_and_numpy(
    client: grpcclient.InferenceServerClient, direct: grpcclient.InferenceServerClient
) -> None:
    rng = np.random.default_rng(8)
    a = rng.integers(-128, 128, size=(3, 16), dtype=np.int8)
    b = rng.integers(-128, 128, size=(3, 16), dtype=np.int8)
    a[0, :2], b[0, :2] = (127, -128), (1, -1)  # past both ends: wraps around
    via_gateway = client.infer("int8_add", _int8_inputs(a, b))
    from_triton = direct.infer("int8_add", _int8_inputs(a, b))
    outputs = via_gateway.get_response().outputs
    assert [(o.name, o.datatype, list(o.shape)) for o in outputs] == [
        ("OUTPUT0", "INT8", [3, 16]),
        ("OUTPUT1", "INT8", [3, 16]),
    ]
    for name in ("OUTPUT0", "OUTPUT1"):
        assert via_gateway.as_numpy(name).dtype == np.int8
        assert np.array_equal(via_gateway.as_numpy(name), from_triton.as_numpy(name))
    assert np.array_equal(via_gateway.as_numpy("OUTPUT0"), a + b)  # numpy's int8 wraps too
    assert np.array_equal(via_gateway.as_numpy("OUTPUT1"), a - b)
    assert via_gateway.as_numpy("OUTPUT0")[0, :2].tolist() == [-128, 127]


# -- the sequence model ------------------------------------------------------------------------


def _accumulator_input(value: int) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return [tensor]


def _interleaved(
    first_id: int, sequences: int = 4, steps: int = 6, seed: int = 0
) -> list[tuple[int, int, bool, bool]]:
    """(sequence ID, value, start, end) for ``sequences`` sequences of ``steps`` requests,
    interleaved in a shuffled order that keeps each sequence's own order."""
    rng = np.random.default_rng(seed)
    values = {
        first_id + s: [int(v) for v in rng.integers(-1000, 1000, size=steps)]
        for s in range(sequences)
    }
    pending = {sid: 0 for sid in values}
    order = []
    while pending:
        sid = int(rng.choice(sorted(pending)))
        step = pending[sid]
        order.append((sid, values[sid][step], step == 0, step == steps - 1))
        if step == steps - 1:
            del pending[sid]
        else:
            pending[sid] = step + 1
    return order


def _running_sums(order: Sequence[tuple[int, int, bool, bool]]) -> list[int]:
    """What each request of ``order`` must answer: its sequence's sum so far."""
    totals: dict[int, int] = {}
    expected = []
    for sid, value, start, _ in order:
        totals[sid] = (0 if start else totals[sid]) + value
        expected.append(totals[sid])
    return expected


def test_interleaved_sequences_keep_their_own_state(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet
) -> None:
    order = _interleaved(first_id=1001, seed=1)
    ran_before = inference_count(fleet, "triton-a", "accumulator")
    answers = [
        int(
            client.infer(
                "accumulator",
                _accumulator_input(value),
                sequence_id=sid,
                sequence_start=start,
                sequence_end=end,
            ).as_numpy("OUTPUT")[0, 0]
        )
        for sid, value, start, end in order
    ]
    assert answers == _running_sums(order)
    assert inference_count(fleet, "triton-a", "accumulator") == ran_before + len(order)


def test_end_drops_the_state_and_start_begins_again(
    client: grpcclient.InferenceServerClient, direct: grpcclient.InferenceServerClient
) -> None:
    def send(value: int, start: bool = False, end: bool = False) -> int:
        result = client.infer(
            "accumulator",
            _accumulator_input(value),
            sequence_id=2001,
            sequence_start=start,
            sequence_end=end,
        )
        return int(result.as_numpy("OUTPUT")[0, 0])

    assert [send(5, start=True), send(7), send(-2, end=True)] == [5, 12, 10]
    # Ended: a request that does not START again is Triton's client error, passed unchanged.
    errors = []
    for target in (client, direct):
        with pytest.raises(InferenceServerException) as info:
            target.infer("accumulator", _accumulator_input(1), sequence_id=2001)
        errors.append((info.value.status(), info.value.message()))
    assert errors[0] == errors[1]
    assert errors[0][0] == "StatusCode.INVALID_ARGUMENT"
    assert "must specify the START flag" in errors[0][1]
    # The same ID started again begins from zero, not from the old sum.
    assert [send(100, start=True), send(1, end=True)] == [100, 101]


async def test_concurrent_sequences_batched_together_keep_their_own_state(
    gateway_url: str,
) -> None:
    # Each round sends one request of every sequence at once: Triton's Oldest strategy may
    # batch them into one execution, which must still keep the sequences apart.
    sequences, rounds = 6, 5
    values = np.random.default_rng(3).integers(-50, 50, size=(rounds, sequences)).tolist()
    async with aioclient.InferenceServerClient(gateway_url) as client:

        async def one(sequence: int, step: int) -> int:
            result = await client.infer(
                "accumulator",
                _accumulator_input(values[step][sequence]),
                sequence_id=3001 + sequence,
                sequence_start=step == 0,
                sequence_end=step == rounds - 1,
            )
            return int(result.as_numpy("OUTPUT")[0, 0])

        answers = [
            await asyncio.gather(*(one(s, step) for s in range(sequences)))
            for step in range(rounds)
        ]
    assert answers == np.cumsum(values, axis=0).tolist()


class _Stream:
    """One ModelStreamInfer stream of a sync tritonclient; its results by request ID."""

    def __init__(self, target: str) -> None:
        self.client = grpcclient.InferenceServerClient(target)
        self.results: queue.Queue[tuple[Any, InferenceServerException | None]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def next(self) -> tuple[Any, InferenceServerException | None]:
        return self.results.get(timeout=STREAM_TIMEOUT_S)

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.fixture
def stream(stream_target: str) -> Iterator[_Stream]:
    opened = _Stream(stream_target)
    yield opened
    opened.close()


def test_interleaved_sequences_over_one_stream(
    stream: _Stream, stream_target: str, gateway_url: str
) -> None:
    # Distinct IDs for the two targets: both reach triton-a.
    order = _interleaved(first_id=4001 if stream_target == gateway_url else 4101, seed=4)
    for index, (sid, value, start, end) in enumerate(order):
        stream.client.async_stream_infer(
            "accumulator",
            _accumulator_input(value),
            request_id=str(index),
            sequence_id=sid,
            sequence_start=start,
            sequence_end=end,
        )
    answers: dict[int, int] = {}
    for _ in order:
        result, error = stream.next()
        assert error is None, error
        answers[int(result.get_response().id)] = int(result.as_numpy("OUTPUT")[0, 0])
    assert [answers[i] for i in range(len(order))] == _running_sums(order)


# -- the decoupled model -----------------------------------------------------------------------


def _repeat_input(count: int, delay_ms: int | None = None) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("IN", [1], "INT32")
    tensor.set_data_from_numpy(np.array([count], dtype=np.int32))
    if delay_ms is None:
        return [tensor]
    delay = grpcclient.InferInput("DELAY", [1], "UINT32")
    delay.set_data_from_numpy(np.array([delay_ms], dtype=np.uint32))
    return [tensor, delay]


def test_decoupled_model_answers_n_responses_on_a_stream(stream: _Stream) -> None:
    counts = {"five": (5, None), "three-slowly": (3, 20), "none": (0, None)}
    for request_id, (count, delay_ms) in counts.items():
        stream.client.async_stream_infer(
            "repeat",
            _repeat_input(count, delay_ms),
            request_id=request_id,
            enable_empty_final_response=True,
        )
    outs: dict[str, list[int]] = {request_id: [] for request_id in counts}
    finished: set[str] = set()
    while finished != set(counts):
        result, error = stream.next()
        assert error is None, error
        response = result.get_response()
        assert response.model_name == "repeat"
        if response.parameters["triton_final_response"].bool_param:
            assert not response.outputs  # the final flag comes alone
            finished.add(response.id)
            continue
        assert response.id not in finished
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
            ("OUT", "INT32", [1])
        ]
        outs[response.id].append(int(result.as_numpy("OUT")[0]))
    # Each request's responses in order, none lost or repeated, whatever the interleaving.
    assert outs == {request_id: list(range(count)) for request_id, (count, _) in counts.items()}


def test_a_decoupled_request_answered_with_nothing_is_no_fault(stream: _Stream) -> None:
    """Zero answers is one of a decoupled model's answers, and without
    ``enable_empty_final_response`` Triton sends nothing for it, nor any sign that a request
    with answers is done: silence on the stream proves no backend hung, and a stream that ends
    OK had every answer. A slower request beside it keeps all its answers."""
    # Enough answers for the model's latency to be known: its per-try timeout is then short.
    for index in range(25):
        stream.client.async_stream_infer("repeat", _repeat_input(1), request_id=f"warm-{index}")
    warm = [stream.next() for _ in range(25)]
    assert [error for _, error in warm if error is not None] == []
    stream.client.async_stream_infer("repeat", _repeat_input(4, delay_ms=150), request_id="slow")
    stream.client.async_stream_infer("repeat", _repeat_input(0), request_id="nothing")
    stream.client.stop_stream()  # half-closes, and waits for the stream's end
    answers: list[tuple[str, int]] = []
    while not stream.results.empty():
        result, error = stream.results.get_nowait()
        assert error is None, error.message()
        answers.append((result.get_response().id, int(result.as_numpy("OUT")[0])))
    assert answers == [("slow", n) for n in range(4)]


def test_decoupled_model_reports_a_bad_request_on_the_stream(stream: _Stream) -> None:
    stream.client.async_stream_infer("repeat", _repeat_input(-1), request_id="bad")
    result, error = stream.next()
    assert result is None
    assert error is not None
    assert "IN must be between 0 and 1000" in error.message()


def test_decoupled_model_refuses_unary_calls_as_triton_does(
    client: grpcclient.InferenceServerClient, direct: grpcclient.InferenceServerClient
) -> None:
    errors = []
    for target in (client, direct):
        with pytest.raises(InferenceServerException) as info:
            target.infer("repeat", _repeat_input(2))
        errors.append((info.value.status(), info.value.message()))
    assert errors[0] == errors[1]
    assert errors[0][0] == "StatusCode.UNIMPLEMENTED"
    assert "decoupled" in errors[0][1]


# -- the local fallback ------------------------------------------------------------------------


def _request(name: str, tensors: dict[str, tuple[str, npt.NDArray[Any]]], **fields: Any) -> bytes:
    """A serialized ModelInferRequest with raw contents, BYTES length-prefixed as on the wire."""
    request = service_pb2.ModelInferRequest(model_name=name, **fields)
    for input_name, (datatype, values) in tensors.items():
        request.inputs.add(name=input_name, datatype=datatype, shape=list(values.shape))
        if datatype == "BYTES":
            items = [bytes(v) for v in values.reshape(-1)]
            raw = b"".join(len(v).to_bytes(4, "little") + v for v in items)
        else:
            raw = values.tobytes()
        request.raw_input_contents.append(raw)
    return bytes(request.SerializeToString())


def _one_stream_of_three(target: str) -> tuple[list[Any], list[str]]:
    """strings, accumulator (a whole sequence) and repeat on one stream: the answers, and the
    in-stream error messages."""
    stream = _Stream(target)
    try:
        stream.client.async_stream_infer("strings", _text([b"on a stream"]), request_id="s")
        stream.client.async_stream_infer(
            "accumulator",
            _accumulator_input(9),
            request_id="a",
            sequence_id=5002,
            sequence_start=True,
            sequence_end=True,
        )
        stream.client.async_stream_infer("repeat", _repeat_input(2), request_id="r")
        outcomes = [stream.next() for _ in range(3)]
    finally:
        stream.close()
    answers = [result for result, error in outcomes if error is None]
    return answers, [error.message() for _, error in outcomes if error is not None]


def test_the_fallback_answers_stateless_models_only(fleet: LocalFleet, tmp_path: Path) -> None:
    """A gateway whose only backend (triton-a, which has every example model) is drained: the
    local fallback answers the stateless ONNX models, never the sequence or decoupled model,
    whose calls get UNAVAILABLE as for any model the fleet has but cannot serve now."""
    triton_a = fleet.servers["triton-a"]
    config = tmp_path / "gateway.yaml"

    def write(drained: bool) -> None:
        settings = {
            "server": {"host": "127.0.0.1", "port": 0},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "repository": {"path": str(MODEL_REPOSITORY)},
            "health": {"poll_interval_s": 0.2},
            "backends": [{"name": "triton-a", "address": triton_a.address, "drained": drained}],
        }
        config.write_text(yaml.safe_dump(settings))

    write(drained=False)
    gateway = Gateway(load_settings(config), config_path=config)
    with (
        BackgroundGateway(gateway) as running,
        grpc.insecure_channel(running.url) as channel,
    ):
        infer = channel.unary_unary(INFER)
        strings = _request("strings", {"TEXT": ("BYTES", np.array([b"fallback"], np.object_))})
        nine = {"INPUT": ("INT32", np.array([[9]], dtype=np.int32))}
        accumulator = _request(
            "accumulator",
            nine,
            parameters={
                "sequence_id": service_pb2.InferParameter(int64_param=5001),
                "sequence_start": service_pb2.InferParameter(bool_param=True),
                "sequence_end": service_pb2.InferParameter(bool_param=True),
            },
        )
        without_sequence = _request("accumulator", nine)
        repeat = _request("repeat", {"IN": ("INT32", np.array([2], dtype=np.int32))})

        def by_fallback(request: bytes) -> bool:
            _, call = infer.with_call(request, timeout=10)
            return SERVED_BY_FALLBACK in (call.trailing_metadata() or ())

        # Served by triton-a while it is in rotation.
        assert wait_until(lambda: not by_fallback(strings))
        answer, call = infer.with_call(accumulator, timeout=10)
        assert SERVED_BY_FALLBACK not in (call.trailing_metadata() or ())
        assert service_pb2.ModelInferResponse.FromString(answer).raw_output_contents[0] == (
            np.array([[9]], dtype=np.int32).tobytes()
        )
        fallback = gateway.fallback
        assert fallback is not None
        assert fallback.models() == ["classifier", "identity", "int8_add", "simple", "strings"]

        write(drained=True)
        assert wait_until(lambda: by_fallback(strings))
        upper = service_pb2.ModelInferResponse.FromString(infer(strings, timeout=10))
        assert upper.raw_output_contents[0] == len(b"FALLBACK").to_bytes(4, "little") + b"FALLBACK"
        a = np.full((1, 16), 100, dtype=np.int8)
        int8 = _request("int8_add", {"INPUT0": ("INT8", a), "INPUT1": ("INT8", a)})
        answer, call = infer.with_call(int8, timeout=10)
        assert SERVED_BY_FALLBACK in (call.trailing_metadata() or ())
        output0 = service_pb2.ModelInferResponse.FromString(answer).raw_output_contents[0]
        assert np.frombuffer(output0, dtype=np.int8).tolist() == (a + a).reshape(-1).tolist()
        ran_before = inference_count(fleet, "triton-a", "accumulator")
        for request in (accumulator, without_sequence, repeat):
            with pytest.raises(grpc.RpcError) as info:
                infer.with_call(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
            assert SERVED_BY_FALLBACK not in (info.value.trailing_metadata() or ())
        # The same on a stream: the fallback answers the stateless model's message only.
        answers, errors = _one_stream_of_three(running.url)
        assert [a.as_numpy("UPPER").tolist() for a in answers] == [[b"ON A STREAM"]]
        assert sorted(errors) == [
            "no backend can serve model 'accumulator' now (down, drained or ejected)",
            "no backend can serve model 'repeat' now (down, drained or ejected)",
        ]
        assert inference_count(fleet, "triton-a", "accumulator") == ran_before
