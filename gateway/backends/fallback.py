"""The local safety net: ONNX Runtime sessions on the repository's own model files.

Used when no Triton can serve a request. It answers like Triton: same validation and
INVALID_ARGUMENT cases, same output names, datatypes and shapes, the version that ran. The only
importer of onnxruntime. Sessions run off the event loop on ``max_concurrency`` threads, with at
most ``max_queue`` more calls waiting for one (a burst when the fleet vanishes); beyond that it
answers RESOURCE_EXHAUSTED at once instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import structlog
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.backends.tensor_codec import config_datatype, decode_input, encode_output
from gateway.errors import GatewayError, InvalidRequestError, ModelNotFoundError
from gateway.repository.config import ModelConfigError, model_versions, read_config

log = structlog.get_logger(__name__)


class FallbackBusyError(GatewayError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass(frozen=True, slots=True)
class _Tensor:
    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Model:
    name: str
    version: str
    max_batch_size: int
    inputs: dict[str, _Tensor]
    outputs: dict[str, _Tensor]
    session: Any  # onnxruntime.InferenceSession (untyped)


class OnnxFallback:
    """Serves the repository's models locally, loading each (model, version) once."""

    def __init__(
        self,
        repository: Path,
        *,
        models: Sequence[str] | None = None,
        threads: int = 1,
        max_concurrency: int = 2,
        max_queue: int = 0,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        self._repository = repository
        self._allowed = frozenset(models) if models is not None else None
        self._threads = threads
        self._max_concurrency = max_concurrency
        self._capacity = max_concurrency + max_queue
        available = set(ort.get_available_providers())
        # CUDA/TensorRT only when configured and actually present; CPU always works.
        self._providers = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="fallback")
        # Keyed by (name, requested version): "" maps to the latest version's session too, so
        # a request touches no file once its model is loaded.
        self._sessions: dict[tuple[str, str], _Model] = {}
        self._serves: dict[str, bool] = {}
        self._load_lock = threading.Lock()
        self._in_flight = 0

    def serves(self, name: str) -> bool:
        """Whether the model is in the repository and allowed for the fallback (cached)."""
        known = self._serves.get(name)
        if known is None:
            known = self._serves[name] = self._check_serves(name)
        return known

    def _check_serves(self, name: str) -> bool:
        if not name or "/" in name or (self._allowed is not None and name not in self._allowed):
            return False
        model_dir = self._repository / name
        return (model_dir / "config.pbtxt").is_file() and bool(model_versions(model_dir))

    def preload(self) -> None:
        """Load every allowed model's latest version now rather than on first use."""
        for model_dir in sorted(p for p in self._repository.iterdir() if p.is_dir()):
            if self.serves(model_dir.name):
                self._model(model_dir.name, "")

    async def infer(self, request: bytes) -> bytes:
        """Answer one serialized ModelInferRequest; raises GatewayError subclasses."""
        if self._in_flight >= self._capacity:
            raise FallbackBusyError(
                f"the local fallback is at capacity ({self._max_concurrency} running, "
                f"{self._capacity - self._max_concurrency} waiting)"
            )
        self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            answer: bytes = await loop.run_in_executor(self._executor, self._infer, request)
            return answer
        finally:
            self._in_flight -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._sessions.clear()

    def _infer(self, data: bytes) -> bytes:
        try:
            request = service_pb2.ModelInferRequest.FromString(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise InvalidRequestError("failed to parse the request") from exc
        model = self._model(request.model_name, request.model_version)
        feeds = _validated_inputs(model, request)
        wanted = [o.name for o in request.outputs] or list(model.outputs)
        for name in wanted:
            if name not in model.outputs:
                raise InvalidRequestError(
                    f"{_rid(request)}unexpected inference output '{name}' for model '{model.name}'"
                )
        results = model.session.run(wanted, feeds)
        response = service_pb2.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        for name, value in zip(wanted, results, strict=True):
            datatype = model.outputs[name].datatype
            array = np.asarray(value)
            response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
            response.raw_output_contents.append(encode_output(array, datatype))
        answer: bytes = response.SerializeToString()
        return answer

    def _model(self, name: str, version: str) -> _Model:
        model = self._sessions.get((name, version))
        if model is not None:
            return model
        if not self.serves(name):
            raise ModelNotFoundError(name, version)
        model_dir = self._repository / name
        versions = [str(v) for v in model_versions(model_dir)]
        resolved = version or versions[-1]
        if resolved not in versions:
            raise ModelNotFoundError(name, version)
        with self._load_lock:
            model = self._sessions.get((name, resolved))
            if model is None:
                model = self._load(model_dir, resolved)
                self._sessions[(name, resolved)] = model
            self._sessions[(name, version)] = model
        return model

    def _load(self, model_dir: Path, version: str) -> _Model:
        try:
            config = read_config(model_dir)
        except ModelConfigError as exc:
            raise GatewayError(str(exc)) from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(model_dir / version / "model.onnx"), options, providers=self._providers
        )
        log.info("fallback_model_loaded", model=config.name, version=version)
        return _Model(
            name=config.name,
            version=version,
            max_batch_size=config.max_batch_size,
            inputs={t.name: _tensor(t) for t in config.input},
            outputs={t.name: _tensor(t) for t in config.output},
            session=session,
        )


def _tensor(
    spec: model_config_pb2.ModelInput | model_config_pb2.ModelOutput,
) -> _Tensor:
    return _Tensor(spec.name, config_datatype(spec.data_type), tuple(spec.dims))


def _rid(request: service_pb2.ModelInferRequest) -> str:
    return f"[request id: {request.id or '<id_unknown>'}] "


def _validated_inputs(
    model: _Model, request: service_pb2.ModelInferRequest
) -> dict[str, np.ndarray[Any, Any]]:
    """Check the request against the config as Triton does, then decode each input."""
    prefix = _rid(request)
    given = [t.name for t in request.inputs]
    for name in given:
        if name not in model.inputs:
            raise InvalidRequestError(
                f"{prefix}unexpected inference input '{name}' for model '{model.name}'"
            )
    if len(given) != len(model.inputs) or len(set(given)) != len(given):
        missing = sorted(set(model.inputs) - set(given))
        raise InvalidRequestError(
            f"{prefix}expected {len(model.inputs)} inputs but got {len(given)} inputs for "
            f"model '{model.name}'. Got input(s) {given}, but missing required input(s) "
            f"{missing}. Please provide all required input(s)."
        )
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"{prefix}expected {len(request.inputs)} raw_input_contents, got {len(raw)}"
        )
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    for index, tensor in enumerate(request.inputs):
        expected = model.inputs[tensor.name]
        if tensor.datatype != expected.datatype:
            raise InvalidRequestError(
                f"{prefix}inference input '{tensor.name}' data-type is '{tensor.datatype}', "
                f"but model '{model.name}' expects '{expected.datatype}'"
            )
        _check_shape(model, expected, list(tensor.shape), prefix)
        feeds[tensor.name] = decode_input(tensor, raw[index] if raw else None)
    return feeds


def _check_shape(model: _Model, expected: _Tensor, shape: list[int], prefix: str) -> None:
    dims = list(expected.dims)
    full = ([-1] if model.max_batch_size > 0 else []) + dims
    ok = len(shape) == len(full) and all(
        want in (-1, got) for want, got in zip(full, shape, strict=False)
    )
    if ok and model.max_batch_size > 0:
        ok = 1 <= shape[0] <= model.max_batch_size
    if not ok:
        raise InvalidRequestError(
            f"{prefix}unexpected shape for input '{expected.name}' for model '{model.name}'. "
            f"Expected {full}, got {shape}"
        )
