"""Requests naming shared-memory regions that Triton refuses, or reads in its own way, sent to
the gateway and to the fleet's own server (triton-a) with the same regions: the same status
and message each time, from the same check in the same order — the tensors' shared-memory and
classification parameters, typed contents beside shared memory, the registration's key,
bounds and offset — and the model's own checks before any of them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2
from tritonclient.grpc.service_pb2_grpc import GRPCInferenceServiceStub as Stub

from gateway.devfleet import LocalFleet
from tests.support.background import BackgroundGateway

BYTES = 64  # one [1, 16] INT32 tensor
OUT = 1024  # where the outputs go in the region
SIZE = 4096

Value = str | int | bool | tuple[int]
"""A parameter: string, int64 or bool; a 1-tuple is a uint64."""
Params = dict[str, Value]


@dataclass(frozen=True)
class Servers:
    gateway: Stub
    triton: Stub

    @property
    def both(self) -> tuple[Stub, Stub]:
        return self.gateway, self.triton


@dataclass(frozen=True)
class Region:
    name: str
    key: str
    handle: Any


@pytest.fixture
def servers(gateway: BackgroundGateway, fleet: LocalFleet) -> Iterator[Servers]:
    with (
        grpc.insecure_channel(gateway.url) as via_gateway,
        grpc.insecure_channel(fleet.servers["triton-a"].address) as direct,
    ):
        yield Servers(Stub(via_gateway), Stub(direct))


@pytest.fixture
def region(servers: Servers) -> Iterator[Region]:
    """A fresh 4 KiB region holding the two inputs of ``simple`` (at 0 and 64), registered
    under the same name with the gateway and with triton-a."""
    tag = uuid.uuid4().hex[:8]
    name, key = f"chk-{tag}", f"/tgw-chk-{tag}"
    handle = shm.create_shared_memory_region(name, key, SIZE)
    shm.set_shared_memory_region(handle, list(_arrays()))
    made = Region(name, key, handle)
    try:
        for stub in servers.both:
            stub.SystemSharedMemoryRegister(_registration(made.name, made.key, SIZE))
        yield made
    finally:
        for stub in servers.both:
            stub.SystemSharedMemoryUnregister(
                service_pb2.SystemSharedMemoryUnregisterRequest(name=made.name)
            )
        shm.destroy_shared_memory_region(handle)


def test_shared_memory_parameters_are_checked_as_triton_checks_them(
    servers: Servers, region: Region
) -> None:
    def at(offset: int = 0, size: int = BYTES, name: str = region.name) -> Params:
        return {
            "shared_memory_region": name,
            "shared_memory_offset": offset,
            "shared_memory_byte_size": size,
        }

    inputs_in_region = {"INPUT0": at(0), "INPUT1": at(BYTES)}
    cases: dict[str, service_pb2.ModelInferRequest] = {
        "input region without byte size": _simple(
            {"INPUT0": {"shared_memory_region": region.name}, "INPUT1": at(BYTES)}
        ),
        "unknown input region without byte size": _simple(
            {"INPUT0": {"shared_memory_region": "nowhere"}, "INPUT1": at(BYTES)}
        ),
        "output region without byte size": _simple(
            outputs={"OUTPUT0": {"shared_memory_region": "nowhere"}}
        ),
        "region as int64": _simple({"INPUT0": {**at(), "shared_memory_region": 3}}),
        "output region as int64": _simple(
            outputs={"OUTPUT0": {**at(OUT), "shared_memory_region": 5}}
        ),
        "offset as string": _simple(
            {**inputs_in_region, "INPUT0": {**at(), "shared_memory_offset": "0"}}
        ),
        "offset as uint64": _simple(
            {**inputs_in_region, "INPUT0": {**at(), "shared_memory_offset": (0,)}}
        ),
        "output offset as string": _simple(
            outputs={"OUTPUT0": {**at(OUT), "shared_memory_offset": "1"}}
        ),
        "byte size as string": _simple(
            {**inputs_in_region, "INPUT0": {**at(), "shared_memory_byte_size": "64"}}
        ),
        "negative offset": _simple({**inputs_in_region, "INPUT0": at(-4)}),
        "offset past the region": _simple({**inputs_in_region, "INPUT0": at(SIZE)}),
        "no bytes at offset 0": _simple({**inputs_in_region, "INPUT0": at(0, 0)}),
        "output and classification": _simple(outputs={"OUTPUT0": {**at(OUT), "classification": 2}}),
        "unknown output region and classification": _simple(
            outputs={"OUTPUT0": {**at(OUT, name="nowhere"), "classification": 2}}
        ),
        "a bad classification before a region": _simple(
            outputs={"OUTPUT0": {"classification": "2"}, "OUTPUT1": at(OUT, name="nowhere")}
        ),
        "byte size without region before a region": _simple(
            {"INPUT0": {"shared_memory_byte_size": BYTES}, "INPUT1": at(0, name="nowhere")},
            raw=1,
        ),
        "an input without data before one in the region": _simple(
            {"INPUT0": {}, "INPUT1": at(BYTES)}, raw=0
        ),
        "an input before a bad output region": _simple(
            {**inputs_in_region, "INPUT0": at(0, 0)}, outputs={"OUTPUT0": at(0, name="nowhere")}
        ),
        "unknown model": _simple({"INPUT0": at(0, name="nowhere")}, model="nosuch"),
        "unreadable version": _simple({"INPUT0": at(0, name="nowhere")}, version="x"),
        "input named twice": _simple(
            {"INPUT0": at(0, name="nowhere")}, raw=1, extra_input="INPUT0"
        ),
    }
    request = _simple(inputs_in_region)
    request.parameters["sequence_start"].int64_param = 1
    cases["bad request parameter"] = request
    for label, request in cases.items():
        answers = [_outcome(stub, request) for stub in servers.both]
        assert answers[0] == answers[1], label
        assert answers[0][0] != "OK", label


def test_typed_contents_beside_shared_memory_are_read_as_triton_reads_them(
    servers: Servers, region: Region
) -> None:
    in_region: Params = {"shared_memory_region": region.name, "shared_memory_byte_size": BYTES}
    a, b = _arrays()

    # Typed contents for one input, the other in the region: no raw contents at all.
    typed = _simple({"INPUT0": in_region, "INPUT1": {}}, raw=0)
    typed.inputs[1].contents.int_contents.extend(b.flatten().tolist())
    answers = [_outcome(stub, typed) for stub in servers.both]
    assert answers[0] == answers[1] == ("OK", "", answers[0][2])
    outputs = [np.frombuffer(data, np.int32) for data in answers[0][2]]
    assert np.array_equal(outputs[0], (a + b).flatten()), "read from the region"

    # INT8 contents are the low byte of each int32 element.
    narrowed = _request(
        "int8_add", {"INPUT0": {}, "INPUT1": {**in_region, "shared_memory_byte_size": 16}}, "INT8"
    )
    narrowed.inputs[0].contents.int_contents.extend([300, -129, 5, 127] * 4)
    answers = [_outcome(stub, narrowed) for stub in servers.both]
    assert answers[0] == answers[1] and answers[0][0] == "OK"

    def refused(label: str) -> service_pb2.ModelInferRequest:
        request = _simple({"INPUT0": in_region, "INPUT1": {}}, raw=0)
        in_region_contents, typed_contents = (t.contents for t in request.inputs)
        if label == "contents and shared memory":
            in_region_contents.int_contents.extend([1] * 16)
        elif label == "empty contents and shared memory":
            in_region_contents.SetInParent()
        elif label == "contents of another type":
            typed_contents.fp32_contents.extend([1.0] * 16)
        else:  # two kinds of contents
            typed_contents.int_contents.extend([1] * 16)
            typed_contents.int64_contents.extend([1] * 16)
        return request

    for label in (
        "contents and shared memory",
        "empty contents and shared memory",
        "contents of another type",
        "two kinds of contents",
    ):
        request = refused(label)
        answers = [_outcome(stub, request) for stub in servers.both]
        assert answers[0] == answers[1], label
        assert answers[0][0] == "INVALID_ARGUMENT", label


def test_output_sizes_are_unsigned_as_triton_reads_them(servers: Servers, region: Region) -> None:
    """-64 bytes at offset 1024 is (2**64 - 64) bytes: Triton's bounds check wraps and lets
    it through, and the output is written."""
    request = _simple(
        outputs={
            "OUTPUT0": {
                "shared_memory_region": region.name,
                "shared_memory_offset": OUT,
                "shared_memory_byte_size": -BYTES,
            }
        }
    )
    a, _ = _arrays()
    for stub in servers.both:
        shm.set_shared_memory_region(region.handle, [np.zeros(16, np.int32)], offset=OUT)
        assert _outcome(stub, request) == ("OK", "", [b""])
        written = shm.get_contents_as_numpy(region.handle, np.int32, [1, 16], offset=OUT)
        assert np.array_equal(written, a + a)


def test_registration_is_refused_as_triton_refuses_it(servers: Servers) -> None:
    tag = uuid.uuid4().hex[:8]
    key = f"/tgw-reg-{tag}"
    handle = shm.create_shared_memory_region(f"reg-{tag}", key, 4 * SIZE)
    cases = [
        ("first", key, 0, SIZE),
        ("same key, another name", key, SIZE, SIZE),  # Triton cannot reopen a key in use
        ("unaligned offset", f"/tgw-reg2-{tag}", 64, 128),
        ("no bytes", f"/tgw-reg2-{tag}", 0, 0),
        ("beyond the file", f"/tgw-reg2-{tag}", SIZE, SIZE + 1),
        ("past any file", f"/tgw-reg2-{tag}", 2**64 - SIZE, 2 * SIZE),  # the sum wraps
        ("aligned offset", f"/tgw-reg2-{tag}", SIZE, SIZE),
    ]
    second = shm.create_shared_memory_region(f"reg2-{tag}", f"/tgw-reg2-{tag}", 2 * SIZE)
    names = [f"{label}-{tag}" for label, *_ in cases]
    try:
        for name, (label, region_key, offset, byte_size) in zip(names, cases, strict=True):
            request = service_pb2.SystemSharedMemoryRegisterRequest(
                name=name, key=region_key, offset=offset, byte_size=byte_size
            )
            answers = [_status(stub.SystemSharedMemoryRegister, request) for stub in servers.both]
            assert answers[0] == answers[1], label
        again = _registration(names[0], f"/tgw-reg2-{tag}", SIZE)
        answers = [_status(stub.SystemSharedMemoryRegister, again) for stub in servers.both]
        assert answers[0] == answers[1] and answers[0][0] == "ALREADY_EXISTS"
        status = [
            stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest()).regions
            for stub in servers.both
        ]
        ours = [{n: r for n, r in each.items() if n.endswith(tag)} for each in status]
        assert ours[0] == ours[1] and set(ours[0]) == {names[0], names[-1]}
    finally:
        for stub in servers.both:
            for name in names:
                stub.SystemSharedMemoryUnregister(
                    service_pb2.SystemSharedMemoryUnregisterRequest(name=name)
                )
        shm.destroy_shared_memory_region(handle)
        shm.destroy_shared_memory_region(second)


def test_a_region_at_an_offset_is_read_from_its_registered_bytes(
    servers: Servers,
) -> None:
    """A region registered at a (page-aligned) offset: the gateway reads and writes the bytes
    from that offset on — Triton 2.51 adds the offset twice (it maps the file from the offset
    and then skips it again), reading bytes that are not the region's — and refuses bytes
    past the region's end, which Triton's bounds (offset + byte size) would let it read."""
    tag = uuid.uuid4().hex[:8]
    name, key = f"at-{tag}", f"/tgw-at-{tag}"
    handle = shm.create_shared_memory_region(name, key, 3 * SIZE)
    a, b = _arrays()
    shm.set_shared_memory_region(handle, [a, b], offset=SIZE)
    try:
        servers.gateway.SystemSharedMemoryRegister(_registration(name, key, SIZE, offset=SIZE))
        inputs: dict[str, Params] = {
            "INPUT0": {"shared_memory_region": name, "shared_memory_byte_size": BYTES},
            "INPUT1": {
                "shared_memory_region": name,
                "shared_memory_byte_size": BYTES,
                "shared_memory_offset": BYTES,
            },
        }
        outputs: dict[str, Params] = {
            "OUTPUT0": {
                "shared_memory_region": name,
                "shared_memory_byte_size": BYTES,
                "shared_memory_offset": 2 * BYTES,
            }
        }
        answer = _outcome(servers.gateway, _simple(inputs, outputs=outputs))
        assert answer[0] == "OK"
        written = shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=SIZE + 2 * BYTES)
        assert np.array_equal(written, a + b)
        beyond = {**inputs, "INPUT1": {**inputs["INPUT1"], "shared_memory_offset": SIZE}}
        assert _outcome(servers.gateway, _simple(beyond))[:2] == (
            "INVALID_ARGUMENT",
            f"Invalid offset + byte size for shared memory region: '{name}'",
        )
    finally:
        servers.gateway.SystemSharedMemoryUnregister(
            service_pb2.SystemSharedMemoryUnregisterRequest(name=name)
        )
        shm.destroy_shared_memory_region(handle)


def _arrays() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    return a, a * 10


def _registration(
    name: str, key: str, byte_size: int, offset: int = 0
) -> service_pb2.SystemSharedMemoryRegisterRequest:
    return service_pb2.SystemSharedMemoryRegisterRequest(
        name=name, key=key, offset=offset, byte_size=byte_size
    )


def _simple(
    inputs: dict[str, Params] | None = None,
    outputs: dict[str, Params] | None = None,
    raw: int | None = None,
    model: str = "simple",
    version: str = "",
    extra_input: str | None = None,
) -> service_pb2.ModelInferRequest:
    """A ``simple`` request: the inputs named (INPUT0 and INPUT1 with no parameters when
    none are) and ``raw`` raw contents (by default, one for each input not in a region)."""
    given = {"INPUT0": {}, "INPUT1": {}} if inputs is None else inputs
    request = _request(model, given, "INT32", outputs)
    request.model_version = version
    if extra_input is not None:
        request.inputs.add(name=extra_input, datatype="INT32", shape=[1, 16])
    if raw is None:
        raw = sum("shared_memory_region" not in params for params in given.values())
    a, _ = _arrays()
    request.raw_input_contents.extend([a.tobytes()] * raw)
    return request


def _request(
    model: str,
    inputs: dict[str, Params],
    datatype: str,
    outputs: dict[str, Params] | None = None,
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, params in inputs.items():
        _set(request.inputs.add(name=name, datatype=datatype, shape=[1, 16]).parameters, params)
    for name, params in (outputs or {}).items():
        _set(request.outputs.add(name=name).parameters, params)
    return request


def _set(parameters: Any, values: Params) -> None:
    for key, value in values.items():
        if isinstance(value, tuple):
            parameters[key].uint64_param = value[0]
        elif isinstance(value, bool):
            parameters[key].bool_param = value
        elif isinstance(value, int):
            parameters[key].int64_param = value
        else:
            parameters[key].string_param = value


def _outcome(stub: Stub, request: service_pb2.ModelInferRequest) -> tuple[str, str, list[bytes]]:
    try:
        response = stub.ModelInfer(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", []
    return "OK", "", list(response.raw_output_contents)


def _status(call: Callable[[Any], object], request: object) -> tuple[str, str]:
    try:
        call(request)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""
