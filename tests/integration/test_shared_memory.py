"""System shared memory through the gateway, for a client on its host: regions registered
with the gateway, inputs read from them and outputs written into them, the same results as
inline tensors, and the same statuses and messages as a Triton server gives for the same
calls (the fleet's own server, asked the same thing with the same regions)."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from gateway.devfleet import LocalFleet
from tests.support.background import BackgroundGateway
from tests.support.models import simple_arrays

BYTES = 64  # one [1, 16] INT32 tensor


@pytest.fixture
def regions() -> Iterator[dict[str, Any]]:
    """Two fresh POSIX regions: inputs (both tensors), outputs (both tensors)."""
    tag = uuid.uuid4().hex[:8]
    handles = {
        "in": shm.create_shared_memory_region(f"in-{tag}", f"/tgw-in-{tag}", 2 * BYTES),
        "out": shm.create_shared_memory_region(f"out-{tag}", f"/tgw-out-{tag}", 2 * BYTES),
    }
    try:
        yield {"tag": tag, **handles}
    finally:
        for handle in handles.values():
            shm.destroy_shared_memory_region(handle)


def register(client: grpcclient.InferenceServerClient, regions: dict[str, Any]) -> None:
    tag = regions["tag"]
    client.register_system_shared_memory(f"in-{tag}", f"/tgw-in-{tag}", 2 * BYTES)
    client.register_system_shared_memory(f"out-{tag}", f"/tgw-out-{tag}", 2 * BYTES)


def keys(regions: dict[str, Any]) -> list[str]:
    tag = regions["tag"]
    return [f"/tgw-in-{tag}", f"/tgw-out-{tag}"]


def mappings_of(key: str) -> int:
    """How many mappings of the POSIX region ``key`` this process holds."""
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(f"/dev/shm{key}"))


def inputs_in(regions: dict[str, Any]) -> list[grpcclient.InferInput]:
    tag = regions["tag"]
    first = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    first.set_shared_memory(f"in-{tag}", BYTES)
    second = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    second.set_shared_memory(f"in-{tag}", BYTES, offset=BYTES)
    return [first, second]


def outputs_in(regions: dict[str, Any]) -> list[grpcclient.InferRequestedOutput]:
    tag = regions["tag"]
    first = grpcclient.InferRequestedOutput("OUTPUT0")
    first.set_shared_memory(f"out-{tag}", BYTES)
    second = grpcclient.InferRequestedOutput("OUTPUT1")
    second.set_shared_memory(f"out-{tag}", BYTES, offset=BYTES)
    return [first, second]


def test_inputs_and_outputs_in_shared_memory_give_the_inline_results(
    gateway: BackgroundGateway, regions: dict[str, Any]
) -> None:
    client = grpcclient.InferenceServerClient(gateway.url)
    a, b = simple_arrays()
    shm.set_shared_memory_region(regions["in"], [a, b])
    register(client, regions)
    try:
        status = client.get_system_shared_memory_status()
        assert {r.name for r in status.regions.values()} >= {f"in-{regions['tag']}"}
        answer = client.infer("simple", inputs_in(regions), outputs=outputs_in(regions))
        response = answer.get_response()
        assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
        assert list(response.raw_output_contents) == [b"", b""], "written to the region"
        total = shm.get_contents_as_numpy(regions["out"], np.int32, [1, 16], offset=0)
        difference = shm.get_contents_as_numpy(regions["out"], np.int32, [1, 16], offset=BYTES)
        inline = grpcclient.InferenceServerClient(gateway.url).infer("simple", _inline_inputs(a, b))
        assert np.array_equal(total, inline.as_numpy("OUTPUT0"))
        assert np.array_equal(difference, inline.as_numpy("OUTPUT1"))
        assert np.array_equal(total, a + b) and np.array_equal(difference, a - b)

        # Mixed: one input inline, one output inline.
        shm.set_shared_memory_region(regions["in"], [b, a])
        first, _ = inputs_in(regions)
        second = _inline_inputs(a, b)[1]
        out_first, _ = outputs_in(regions)
        mixed = client.infer(
            "simple",
            [first, second],
            outputs=[out_first, grpcclient.InferRequestedOutput("OUTPUT1")],
        )
        assert np.array_equal(mixed.as_numpy("OUTPUT1"), b - b)
        written = shm.get_contents_as_numpy(regions["out"], np.int32, [1, 16], offset=0)
        assert np.array_equal(written, b + b)

        # On a stream too: each message is routed by the gateway like a unary call.
        shm.set_shared_memory_region(regions["in"], [a, b])
        answers: queue.Queue[Any] = queue.Queue()
        streaming = grpcclient.InferenceServerClient(gateway.url)
        streaming.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            streaming.async_stream_infer(
                "simple", inputs_in(regions), outputs=outputs_in(regions), request_id="s1"
            )
            result, error = answers.get(timeout=30)
        finally:
            streaming.stop_stream()
        assert error is None and result.get_response().id == "s1"
        # As Triton flags every stream answer: the request's last.
        assert result.get_response().parameters["triton_final_response"].bool_param
        assert np.array_equal(
            shm.get_contents_as_numpy(regions["out"], np.int32, [1, 16], offset=BYTES), a - b
        )
        # The gateway runs in this process: its mappings of the regions sit beside the
        # client's own, and unregistering must let them go.
        mapped_before = {key: mappings_of(key) for key in keys(regions)}
        assert all(count >= 2 for count in mapped_before.values()), mapped_before
    finally:
        client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status().regions == {}, "unregistering frees them"
    mapped_after = {key: mappings_of(key) for key in keys(regions)}
    assert mapped_after == {key: count - 1 for key, count in mapped_before.items()}, "unmapped"


def _inline_inputs(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> list[grpcclient.InferInput]:
    first = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    first.set_data_from_numpy(a)
    second = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    second.set_data_from_numpy(b)
    return [first, second]


def _outcome(
    call: Callable[[grpcclient.InferenceServerClient], object],
    client: grpcclient.InferenceServerClient,
) -> tuple[str, str]:
    try:
        call(client)
    except InferenceServerException as exc:
        return str(exc.status()), str(exc.message())
    return "OK", ""


def test_refusals_are_tritons_own(
    gateway: BackgroundGateway, fleet: LocalFleet, regions: dict[str, Any]
) -> None:
    """Each call made to the gateway and to a Triton server, with the same regions."""
    tag = regions["tag"]
    via_gateway = grpcclient.InferenceServerClient(gateway.url)
    direct = grpcclient.InferenceServerClient(fleet.servers["triton-a"].address)
    a, b = simple_arrays()
    shm.set_shared_memory_region(regions["in"], [a, b])

    def unknown_input() -> list[grpcclient.InferInput]:
        first, second = inputs_in(regions)
        second.set_shared_memory("nowhere", BYTES)
        return [first, second]

    def beyond_the_region() -> list[grpcclient.InferInput]:
        first, second = inputs_in(regions)
        second.set_shared_memory(f"in-{tag}", BYTES, offset=100)
        return [first, second]

    def too_small_output() -> list[grpcclient.InferRequestedOutput]:
        output = grpcclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory(f"out-{tag}", 8)
        return [output]

    cases: list[Callable[[grpcclient.InferenceServerClient], object]] = [
        lambda c: c.register_system_shared_memory(f"in-{tag}", f"/tgw-in-{tag}", 2 * BYTES),
        lambda c: c.register_system_shared_memory("x", f"/tgw-missing-{tag}", 16),
        lambda c: c.register_system_shared_memory("y", f"/tgw-in-{tag}", 4096),
        lambda c: c.get_system_shared_memory_status("never-registered"),
        lambda c: c.infer("simple", unknown_input()),
        lambda c: c.infer("simple", beyond_the_region()),
        lambda c: c.infer("simple", inputs_in(regions), outputs=too_small_output()),
        lambda c: c.unregister_system_shared_memory("never-registered"),
    ]
    for client in (via_gateway, direct):
        register(client, regions)
    try:
        for index, case in enumerate(cases):
            assert _outcome(case, via_gateway) == _outcome(case, direct), index
    finally:
        for client in (via_gateway, direct):
            client.unregister_system_shared_memory()
    code, message = _outcome(
        lambda c: c.register_cuda_shared_memory("cuda", b"\x00" * 64, 0, 64), via_gateway
    )
    assert code == "StatusCode.UNIMPLEMENTED" and "system shared memory" in message
