"""Golden requests: inputs generated from a model's config, the answer the local ONNX Runtime
session gives on the very same files, and the check of a backend's answer against it.

A backend is given traffic for a pushed version only after it answered its golden request like
the local session did (within ``atol + rtol * |expected|``, NaN where NaN, strings exactly):
a file altered on the backend's side, a wrong runtime or a broken load shows up here, before
any client sees it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tritonclient.grpc import InferResult, model_config_pb2, service_pb2
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from gateway.backends.tensor_codec import config_datatype
from gateway.repository.content import GOLDEN_INPUTS, ModelContent
from gateway.repository.validation import read_golden_inputs

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class GoldenCase:
    """One request to send and, for ONNX models, the outputs it must produce."""

    request: service_pb2.ModelInferRequest
    expected: dict[str, Array] | None
    """None: the model cannot be run locally (a Python model); the answer must only be OK."""


@dataclass(frozen=True, slots=True)
class Tolerance:
    atol: float
    rtol: float


def golden_case(content: ModelContent, version: str) -> GoldenCase | None:
    """The version's golden request; None for a decoupled model (answers only on a stream)."""
    config = content.config
    if config.model_transaction_policy.decoupled:
        return None
    seed = int.from_bytes(hashlib.sha256(f"{content.name}/{version}".encode()).digest()[:8])
    rng = np.random.default_rng(seed)
    batch = [1] if config.max_batch_size > 0 else []
    if content.golden_inputs:
        provided = read_golden_inputs(content.directory / GOLDEN_INPUTS)
        inputs = {spec.name: _provided(provided[spec.name]) for spec in config.input}
        batch = [next(iter(inputs.values())).shape[0]] if batch and inputs else batch
    else:
        inputs = {spec.name: _generated(spec, batch, rng) for spec in config.input}
    request = service_pb2.ModelInferRequest(model_name=content.name, model_version=version)
    request.id = "tgw-golden"
    for spec in config.input:
        array = inputs[spec.name]
        # The tensor's contents travel in raw_input_contents, in input order.
        request.inputs.add(
            name=spec.name, datatype=config_datatype(spec.data_type), shape=list(array.shape)
        )
        request.raw_input_contents.append(_raw(array))
    for spec in config.output:
        request.outputs.add(name=spec.name)
    correlation_id = 1 + int(rng.integers(1 << 40))
    if config.HasField("sequence_batching"):
        # One whole sequence in one request: START and END together, a fresh correlation ID.
        request.parameters["sequence_id"].int64_param = correlation_id
        request.parameters["sequence_start"].bool_param = True
        request.parameters["sequence_end"].bool_param = True
    expected = (
        _reference(content, version, inputs, batch, correlation_id) if content.is_onnx else None
    )
    return GoldenCase(request=request, expected=expected)


def mismatch(
    case: GoldenCase, response: service_pb2.ModelInferResponse, tolerance: Tolerance
) -> str | None:
    """Why the backend's answer differs from the local session's; None when it agrees."""
    if case.expected is None:
        return None
    result = InferResult(response)
    for name, want in case.expected.items():
        got = result.as_numpy(name)
        if got is None:
            return f"output '{name}' missing"
        if got.shape != want.shape:
            return f"output '{name}': shape {list(got.shape)}, expected {list(want.shape)}"
        if want.dtype == np.object_:
            if [_text(x) for x in got.reshape(-1)] != [_text(x) for x in want.reshape(-1)]:
                return f"output '{name}': strings differ"
            continue
        if got.dtype != want.dtype:
            return f"output '{name}': dtype {got.dtype}, expected {want.dtype}"
        if not np.allclose(got, want, atol=tolerance.atol, rtol=tolerance.rtol, equal_nan=True):
            worst = float(np.nanmax(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            return (
                f"output '{name}': max abs difference {worst:.6g} over atol {tolerance.atol} "
                f"+ rtol {tolerance.rtol}"
            )
    return None


def _provided(array: Array) -> Array:
    if array.dtype.kind in ("U", "S"):
        items = [x.encode() if isinstance(x, str) else bytes(x) for x in array.reshape(-1)]
        return np.array(items, dtype=np.object_).reshape(array.shape)
    return array


def _generated(
    spec: model_config_pb2.ModelInput, batch: list[int], rng: np.random.Generator
) -> Array:
    shape = batch + [1 if d < 0 else d for d in spec.dims]
    datatype = config_datatype(spec.data_type)
    if datatype == "BYTES":
        count = int(np.prod(shape)) if shape else 1
        return np.array(
            [f"golden-{int(rng.integers(1000))}".encode() for _ in range(count)], dtype=np.object_
        ).reshape(shape)
    dtype = np.dtype(triton_to_np_dtype(datatype))
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        # Small values: models often use integer inputs as indices or counts.
        return rng.integers(0, 4, size=shape).astype(dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def _raw(array: Array) -> bytes:
    if array.dtype == np.object_:
        serialized = serialize_byte_tensor(array)
        return b"" if serialized is None else bytes(serialized.item())
    return np.ascontiguousarray(array).tobytes()


def _reference(
    content: ModelContent,
    version: str,
    inputs: dict[str, Array],
    batch: list[int],
    correlation_id: int,
) -> dict[str, Array]:
    config = content.config
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    path = content.directory / version / (config.default_model_filename or "model.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds: dict[str, Array] = {}
    for name, array in inputs.items():
        feeds[name] = (
            np.array([_text(x) for x in array.reshape(-1)], dtype=np.object_).reshape(array.shape)
            if array.dtype == np.object_
            else array
        )
    for state in config.sequence_batching.state:
        # A sequence's first request starts from the initial state: zeros.
        initial = state.initial_state[0].dims if state.initial_state else state.dims
        dims = batch + [1 if d < 0 else d for d in initial]
        feeds[state.input_name] = np.zeros(
            dims, dtype=triton_to_np_dtype(config_datatype(state.data_type))
        )
    for control_input in config.sequence_batching.control_input:
        if control_input.control:
            feeds[control_input.name] = _control_value(control_input, batch, correlation_id)
    names = [spec.name for spec in config.output]
    values = session.run(names, feeds)
    return {
        name: (
            np.array([_text(x).encode() for x in value.reshape(-1)], dtype=np.object_).reshape(
                value.shape
            )
            if value.dtype == np.object_
            else value
        )
        for name, value in zip(names, values, strict=True)
    }


def _control_value(
    control_input: model_config_pb2.ModelSequenceBatching.ControlInput,
    batch: list[int],
    correlation_id: int,
) -> Array:
    """What Triton feeds a control input on a request that starts and ends its sequence: the
    "true" value of START, END and READY, the correlation ID for CORRID."""
    shape = [*batch, 1]
    control = control_input.control[0]
    kinds = model_config_pb2.ModelSequenceBatching.Control
    if control.kind == kinds.CONTROL_SEQUENCE_CORRID:
        dtype = triton_to_np_dtype(config_datatype(control.data_type))
        return np.full(shape, correlation_id, dtype=dtype)
    if control.fp32_false_true:
        return np.full(shape, control.fp32_false_true[1], dtype=np.float32)
    if control.bool_false_true:
        return np.full(shape, control.bool_false_true[1], dtype=np.bool_)
    true_value = control.int32_false_true[1] if control.int32_false_true else 1
    return np.full(shape, true_value, dtype=np.int32)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
