"""Checks a dropped model directory before anything is loaded anywhere.

The config is read with Triton's own schema (protobuf text format into tritonclient's
ModelConfig); an ONNX model is read with ``onnx`` (its checker, then inputs, outputs, dtypes and
shapes against the config) and opened once with the ONNX Runtime the gateway runs, so an opset
or operator that runtime does not support is refused here, with the file named, not on the
fleet. Every pushed file is hashed (sha256) as it is read.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import triton_to_np_dtype

from gateway.backends.tensor_codec import config_datatype
from gateway.repository.config import ModelConfigError, read_config
from gateway.repository.content import (
    GOLDEN_INPUTS,
    ModelContent,
    ModelFile,
    content_digest,
    served_versions,
)

RejectReason = Literal[
    "config", "no_versions", "unreadable", "size", "onnx", "opset", "io_mismatch", "dtype"
]
"""Why a drop was refused: a small fixed set, used as a metric label."""

DEFAULT_MODEL_FILES = {"onnxruntime": "model.onnx", "python": "model.py"}

# ONNX TensorProto element types -> Triton config data types.
ONNX_TO_CONFIG: dict[int, int] = {
    onnx.TensorProto.BOOL: model_config_pb2.TYPE_BOOL,
    onnx.TensorProto.UINT8: model_config_pb2.TYPE_UINT8,
    onnx.TensorProto.UINT16: model_config_pb2.TYPE_UINT16,
    onnx.TensorProto.UINT32: model_config_pb2.TYPE_UINT32,
    onnx.TensorProto.UINT64: model_config_pb2.TYPE_UINT64,
    onnx.TensorProto.INT8: model_config_pb2.TYPE_INT8,
    onnx.TensorProto.INT16: model_config_pb2.TYPE_INT16,
    onnx.TensorProto.INT32: model_config_pb2.TYPE_INT32,
    onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64,
    onnx.TensorProto.FLOAT16: model_config_pb2.TYPE_FP16,
    onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32,
    onnx.TensorProto.DOUBLE: model_config_pb2.TYPE_FP64,
    onnx.TensorProto.STRING: model_config_pb2.TYPE_STRING,
    onnx.TensorProto.BFLOAT16: model_config_pb2.TYPE_BF16,
}
_HASH_CHUNK = 1 << 20


class DropRejected(Exception):
    """A model directory that must not be loaded: which file, and why, in one line."""

    def __init__(self, model: str, file: Path, reason: RejectReason, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.model = model
        self.file = file
        self.reason: RejectReason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    max_model_bytes: int
    """Most bytes of all pushed files of one model together (one RepositoryModelLoad)."""


def validate(model_dir: Path, limits: Limits) -> ModelContent:
    """The directory as pushable content, or ``DropRejected`` naming the file and reason."""
    name = model_dir.name
    config_path = model_dir / "config.pbtxt"
    try:
        config = read_config(model_dir)
    except ModelConfigError as exc:
        reason: RejectReason = "unreadable" if isinstance(exc.__cause__, OSError) else "config"
        raise DropRejected(name, config_path, reason, str(exc.__cause__ or exc)) from exc
    if config.name != name:
        raise DropRejected(
            name,
            config_path,
            "config",
            f"the config names model {config.name!r}, its directory is {name!r} (Triton "
            "requires them equal)",
        )
    versions = tuple(
        sorted((p.name for p in model_dir.iterdir() if p.is_dir() and _is_version(p.name)), key=int)
    )
    if not versions:
        raise DropRejected(
            name, model_dir, "no_versions", "no version directory (a positive integer name)"
        )
    files = _hashed_files(model_dir, versions, limits)
    backend = _backend(config)
    model_file = config.default_model_filename or DEFAULT_MODEL_FILES.get(backend, "")
    for version in versions:
        if model_file and not (model_dir / version / model_file).is_file():
            raise DropRejected(
                name, model_dir / version / model_file, "unreadable", "missing model file"
            )
        if backend == "onnxruntime":
            _check_onnx(name, model_dir / version / model_file, config)
    golden = model_dir / GOLDEN_INPUTS
    if golden.exists():
        _check_golden_inputs(name, golden, config)
    pushed = tuple(files)
    return ModelContent(
        name=name,
        directory=model_dir,
        config=config,
        files=pushed,
        versions=versions,
        served_versions=served_versions(config.version_policy, versions),
        digest=content_digest(config, pushed),
        golden_inputs=golden.exists(),
    )


def _is_version(name: str) -> bool:
    return name.isascii() and name.isdigit() and int(name) > 0


def read_golden_inputs(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The arrays of a golden-inputs file (numbers, or unicode text for BYTES inputs)."""
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _check_golden_inputs(name: str, path: Path, config: model_config_pb2.ModelConfig) -> None:
    try:
        arrays = read_golden_inputs(path)
    except (OSError, ValueError) as exc:
        raise DropRejected(name, path, "config", f"golden inputs unreadable: {exc}") from exc
    for spec in config.input:
        array = arrays.get(spec.name)
        if array is None:
            raise DropRejected(name, path, "config", f"golden inputs lack input '{spec.name}'")
        if spec.data_type == model_config_pb2.TYPE_STRING:
            wanted_kind = array.dtype.kind in ("U", "S")
        else:
            wanted_kind = array.dtype == np.dtype(
                triton_to_np_dtype(config_datatype(spec.data_type))
            )
        rank = len(spec.dims) + (1 if config.max_batch_size > 0 else 0)
        if not wanted_kind or array.ndim != rank:
            raise DropRejected(
                name,
                path,
                "config",
                f"golden input '{spec.name}' is {array.dtype} of rank {array.ndim}; the config "
                f"says {model_config_pb2.DataType.Name(spec.data_type)} of rank {rank}",
            )


def _backend(config: model_config_pb2.ModelConfig) -> str:
    if config.backend:
        return str(config.backend)
    return "onnxruntime" if config.platform == "onnxruntime_onnx" else str(config.platform)


def _hashed_files(model_dir: Path, versions: tuple[str, ...], limits: Limits) -> list[ModelFile]:
    files: list[ModelFile] = []
    total = 0
    for version in versions:
        for path in sorted((model_dir / version).rglob("*")):
            relative = path.relative_to(model_dir)
            if any(part.startswith(".") for part in relative.parts) or path.is_dir():
                continue  # editor and copy-tool leftovers are never pushed
            if path.is_symlink() or not path.is_file():
                raise DropRejected(
                    model_dir.name, path, "unreadable", "not a plain file (links are not pushed)"
                )
            try:
                size = path.stat().st_size
                total += size
                if total > limits.max_model_bytes:
                    raise DropRejected(
                        model_dir.name,
                        path,
                        "size",
                        f"the model's files exceed repository.max_model_bytes "
                        f"({limits.max_model_bytes} bytes)",
                    )
                files.append(ModelFile(relative.as_posix(), _sha256(path), size))
            except OSError as exc:
                raise DropRejected(
                    model_dir.name, path, "unreadable", exc.strerror or str(exc)
                ) from exc
    return files


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _check_onnx(name: str, path: Path, config: model_config_pb2.ModelConfig) -> None:
    try:
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # the checker's, the protobuf parser's (a truncated file), OSError
        reason: RejectReason = "unreadable" if isinstance(exc, OSError) else "onnx"
        message = f"not a valid ONNX model: {_first_line(exc)}"
        raise DropRejected(name, path, reason, message) from exc
    _check_runtime(name, path, model)
    _check_io(name, path, model.graph, config)


def _check_runtime(name: str, path: Path, model: onnx.ModelProto) -> None:
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own untyped errors
        message = _first_line(exc)
        reason: RejectReason = "opset" if "opset" in message.lower() else "onnx"
        raise DropRejected(
            name,
            path,
            reason,
            f"ONNX Runtime {ort.__version__} cannot run it (opset {opset}): {message}",
        ) from exc


def _check_io(
    name: str, path: Path, graph: onnx.GraphProto, config: model_config_pb2.ModelConfig
) -> None:
    initializers = {i.name for i in graph.initializer}
    model_inputs = {i.name: i for i in graph.input if i.name not in initializers}
    model_outputs = {o.name: o for o in graph.output}
    states = config.sequence_batching.state
    state_inputs = {s.input_name for s in states}
    control_inputs = {c.name for c in config.sequence_batching.control_input}
    batched = config.max_batch_size > 0
    for spec in config.input:
        _compare(name, path, "input", spec, model_inputs.get(spec.name), batched)
    for spec in config.output:
        _compare(name, path, "output", spec, model_outputs.get(spec.name), batched)
    for state in states:
        for kind, tensor_name, found in (
            ("input", state.input_name, model_inputs),
            ("output", state.output_name, model_outputs),
        ):
            if tensor_name not in found:
                raise DropRejected(
                    name,
                    path,
                    "io_mismatch",
                    f"implicit state {kind} '{tensor_name}' of the config is not in the model",
                )
    unexpected = sorted(
        set(model_inputs) - {s.name for s in config.input} - state_inputs - control_inputs
    )
    if unexpected:
        raise DropRejected(
            name, path, "io_mismatch", f"model inputs not in the config: {', '.join(unexpected)}"
        )


def _compare(
    name: str,
    path: Path,
    kind: str,
    spec: model_config_pb2.ModelInput | model_config_pb2.ModelOutput,
    tensor: onnx.ValueInfoProto | None,
    batched: bool,
) -> None:
    if tensor is None:
        raise DropRejected(
            name, path, "io_mismatch", f"config {kind} '{spec.name}' is not in the model"
        )
    onnx_type = tensor.type.tensor_type
    expected_type = ONNX_TO_CONFIG.get(int(onnx_type.elem_type))
    if expected_type != spec.data_type:
        model_type = onnx.TensorProto.DataType.Name(onnx_type.elem_type)
        config_type = model_config_pb2.DataType.Name(spec.data_type)
        raise DropRejected(
            name,
            path,
            "dtype",
            f"{kind} '{spec.name}': the config says {config_type}, the model {model_type}",
        )
    if not onnx_type.HasField("shape"):
        return  # rank unknown in the model: nothing to compare
    model_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in onnx_type.shape.dim]
    config_dims = list(spec.reshape.shape) if spec.HasField("reshape") else list(spec.dims)
    if batched:
        if not model_dims or model_dims[0] != -1:
            raise DropRejected(
                name,
                path,
                "io_mismatch",
                f"{kind} '{spec.name}': max_batch_size > 0 needs a dynamic first dimension in "
                f"the model, which has {_shape(model_dims)}",
            )
        model_dims = model_dims[1:]
    compatible = len(model_dims) == len(config_dims) and all(
        m in (-1, c) for m, c in zip(model_dims, config_dims, strict=True)
    )
    if not compatible:
        raise DropRejected(
            name,
            path,
            "io_mismatch",
            f"{kind} '{spec.name}': the config's shape {_shape(config_dims)} does not match the "
            f"model's {_shape(model_dims)}" + (" (after the batch dimension)" if batched else ""),
        )


def _shape(dims: list[int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def fingerprint(model_dir: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of every entry: unchanged between two looks means nobody is
    writing. Cheap (no file is read), so it is taken on every scan."""
    entries: list[tuple[str, int, int]] = []
    for root, dirs, names in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for entry in sorted(names):
            path = Path(root, entry)
            try:
                stat = path.lstat()
            except OSError:
                continue
            entries.append((path.relative_to(model_dir).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)
