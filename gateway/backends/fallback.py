"""The local safety net: ONNX Runtime sessions on the repository's own model files.

Used when no Triton can serve a request. It answers like Triton: same validation and
INVALID_ARGUMENT cases, same output names, datatypes and shapes, the version that ran. The only
importer of onnxruntime. Sessions run off the event loop on ``max_concurrency`` threads, with at
most ``max_queue`` more calls waiting for one (a burst when the fleet vanishes), and tensors are
decoded within a byte budget per call and for all calls together; beyond either it answers
RESOURCE_EXHAUSTED at once instead of queueing without end.

The models it serves are the repository's listing: read at start, then followed as drops are
validated (``follow``: new versions served, removed ones released, changed ones reloaded), read
from the gateway's frozen copy of each validated model. A name a client sends is only ever
looked up in that listing, never used to build a path. Only stateless, unary ONNX
models are listed: a sequence model (``sequence_batching``: its state lives on the Triton that
runs the sequence), a decoupled model (answers on a stream only) and any model that is not an
ONNX Runtime model (a Python-backend ``model.py``, an ensemble) are never answered here, even
when ``fallback.models`` names them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import structlog
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.backends.classification import requested_classes, top_classes
from gateway.backends.tensor_codec import (
    DTYPES,
    TYPED_FIELDS,
    Naming,
    check_contents_type,
    config_datatype,
    decode_input,
    decoded_bytes_bound,
    element_count,
    encode_output,
)
from gateway.backends.triton_order import map_order
from gateway.errors import GatewayError, InvalidRequestError, ModelNotFoundError
from gateway.repository.config import ModelConfigError, model_versions, read_config
from gateway.repository.content import ModelContent
from gateway.routing.versions import canonical_version

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
    labels: dict[str, tuple[str, ...]]
    """Per output with a `label_filename`: its lines, for `classification` answers."""


class OnnxFallback:
    """Serves the repository's models locally, loading each (model, version) once."""

    def __init__(
        self,
        repository: Path | None = None,
        *,
        models: Sequence[str] | None = None,
        threads: int = 1,
        max_concurrency: int = 2,
        max_queue: int = 0,
        max_request_bytes: int = 64 * 1024 * 1024,
        max_total_bytes: int = 256 * 1024 * 1024,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        self._allowed = frozenset(models) if models is not None else None
        self._catalog = _catalog(repository, self._allowed) if repository is not None else {}
        """Model name -> its versions ascending (a fixed directory's, or see ``follow``)."""
        self._directories = (
            {name: repository / name for name in self._catalog} if repository else {}
        )
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
        self._load_lock = threading.Lock()
        self._in_flight = 0
        self._max_request_bytes = max_request_bytes
        self._max_total_bytes = max_total_bytes
        self._reserved_bytes = 0

    def follow(self, contents: Mapping[str, ModelContent]) -> None:
        """Serve what the repository holds now (validated contents): sessions of versions
        gone or changed are released, new ones load on first use (or now, with preload)."""
        catalog: dict[str, tuple[str, ...]] = {}
        directories: dict[str, Path] = {}
        for name, content in sorted(contents.items()):
            if self._allowed is not None and name not in self._allowed:
                continue
            reason = refusal(content.directory)
            if reason is not None:
                continue
            catalog[name] = content.served_versions
            directories[name] = content.directory
        with self._load_lock:
            kept = {
                key: model
                for key, model in self._sessions.items()
                if directories.get(key[0]) == self._directories.get(key[0])
                and key[1] in catalog.get(key[0], ())
            }
            released = sorted(key for key in self._sessions if key not in kept and key[1])
            self._catalog, self._directories, self._sessions = catalog, directories, kept
        if released:
            log.info("fallback_models_released", models=[f"{n}:{v}" for n, v in released])

    def models(self) -> list[str]:
        """The models the fallback may answer, sorted."""
        return sorted(self._catalog)

    def serves(self, name: str) -> bool:
        """Whether the model is in the repository and allowed for the fallback."""
        return name in self._catalog

    def knows(self, name: str, version: str) -> bool:
        """Whether the fallback has this version ("" or canonical) of the model."""
        versions = self._catalog.get(name)
        return versions is not None and (not version or version in versions)

    def preload(self) -> None:
        """Load every allowed model's latest version now rather than on first use."""
        for name in sorted(self._catalog):
            self._model(name, "")

    async def infer(self, request: bytes) -> bytes:
        """Answer one serialized ModelInferRequest; raises GatewayError subclasses."""
        if self._in_flight >= self._capacity:
            raise FallbackBusyError(
                f"the local fallback is at capacity ({self._max_concurrency} running, "
                f"{self._capacity - self._max_concurrency} waiting)"
            )
        needed = decoded_bytes_bound(request)
        if needed > self._max_request_bytes:
            raise FallbackBusyError(
                f"the local fallback does not take this request: its tensors need up to "
                f"{needed} bytes decoded, over fallback.max_request_bytes "
                f"({self._max_request_bytes})"
            )
        if self._reserved_bytes + needed > self._max_total_bytes:
            raise FallbackBusyError(
                f"the local fallback is at its memory budget: fallback.max_total_bytes "
                f"({self._max_total_bytes}) of tensors decoded or waiting"
            )
        self._in_flight += 1
        self._reserved_bytes += needed
        try:
            loop = asyncio.get_running_loop()
            answer: bytes = await loop.run_in_executor(self._executor, self._infer, request)
            return answer
        finally:
            self._in_flight -= 1
            self._reserved_bytes -= needed

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._sessions.clear()

    def _infer(self, data: bytes) -> bytes:
        try:
            request = service_pb2.ModelInferRequest.FromString(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise InvalidRequestError("failed to parse the request") from exc
        model = self._model(request.model_name, request.model_version)
        _check_priority(request)
        # Triton reads the outputs' parameters with the request, before the model checks it.
        classes = {o.name: requested_classes(o) for o in request.outputs}
        feeds = _validated_inputs(model, request)
        # Each output once (Triton keeps the requested outputs as a set).
        wanted = list(dict.fromkeys(o.name for o in request.outputs)) or list(model.outputs)
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
            k = classes.get(name, 0)
            if k:
                array = top_classes(
                    array, datatype, k, model.max_batch_size > 0, model.labels.get(name, ())
                )
                datatype = "BYTES"
            response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
            response.raw_output_contents.append(encode_output(array, datatype))
        answer: bytes = response.SerializeToString()
        return answer

    def _model(self, name: str, version: str) -> _Model:
        """The session for the model version, as Triton resolves it: the version string is
        parsed first (INVALID_ARGUMENT), then the name and version looked up (NOT_FOUND)."""
        version = canonical_version(version)
        model = self._sessions.get((name, version))
        if model is not None:
            return model
        versions = self._catalog.get(name)
        if versions is None:
            raise ModelNotFoundError(name)
        resolved = version or versions[-1]
        if resolved not in versions:
            raise ModelNotFoundError(name, version)
        with self._load_lock:
            model = self._sessions.get((name, resolved))
            if model is None:
                directory = self._directories.get(name)
                if directory is None:  # released by ``follow`` meanwhile
                    raise ModelNotFoundError(name, version)
                model = self._load(directory, resolved)
                self._sessions[(name, resolved)] = model
            # Keys are listed versions or "": bounded by the repository, not by clients.
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
            labels={
                t.name: _labels(model_dir, t.label_filename)
                for t in config.output
                if t.label_filename
            },
        )


ONNX_PLATFORMS = ("", "onnxruntime_onnx")
ONNX_BACKENDS = ("", "onnxruntime")


def _catalog(repository: Path, allowed: frozenset[str] | None) -> dict[str, tuple[str, ...]]:
    """Servable models of the repository: a config.pbtxt, at least one versioned model.onnx,
    and a stateless unary ONNX Runtime model (see ``refusal``)."""
    catalog: dict[str, tuple[str, ...]] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        if allowed is not None and model_dir.name not in allowed:
            continue
        if not (model_dir / "config.pbtxt").is_file():
            continue
        reason = refusal(model_dir)
        if reason is not None:
            # Named in fallback.models: say loudly that it will not be served.
            report = log.warning if allowed is not None else log.info
            report("fallback_model_refused", model=model_dir.name, reason=reason)
            continue
        versions = model_versions(model_dir)
        if versions:
            catalog[model_dir.name] = tuple(str(v) for v in versions)
    return catalog


def refusal(model_dir: Path) -> str | None:
    """Why the stateless, unary fallback must not answer this model; None when it may."""
    try:
        config = read_config(model_dir)
    except ModelConfigError as exc:
        return str(exc)
    if config.HasField("sequence_batching"):
        return (
            "a sequence model: its state lives on the Triton backend running the sequence, "
            "which the stateless fallback cannot take over"
        )
    if config.model_transaction_policy.decoupled:
        return "a decoupled model: its answers come on a stream, the fallback answers ModelInfer"
    if config.platform not in ONNX_PLATFORMS or config.backend not in ONNX_BACKENDS:
        kind = config.platform or config.backend
        return f"not an ONNX Runtime model ({kind!r}): the fallback runs model.onnx only"
    return None


def _tensor(
    spec: model_config_pb2.ModelInput | model_config_pb2.ModelOutput,
) -> _Tensor:
    return _Tensor(spec.name, config_datatype(spec.data_type), tuple(spec.dims))


def _labels(model_dir: Path, filename: str) -> tuple[str, ...]:
    """An output's class labels, one per line, from a file in the model's folder (none when
    the file cannot be read, as Triton then answers without them)."""
    path = (model_dir / filename).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        return ()
    try:
        return tuple(path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError):
        return ()


def _rid(request: service_pb2.ModelInferRequest) -> str:
    return f"[request id: {request.id or '<id_unknown>'}] "


def _validated_inputs(
    model: _Model, request: service_pb2.ModelInferRequest
) -> dict[str, np.ndarray[Any, Any]]:
    """Check the request against the config as Triton does, then decode each input."""
    prefix = _rid(request)
    given = [t.name for t in request.inputs]
    raw = list(request.raw_input_contents)
    _check_data_sources(model, request, raw, prefix)  # by now no name comes twice
    # From here on Triton's core walks the inputs in its map's order, not the request's.
    walked = map_order(given)
    positions = {name: index for index, name in enumerate(given)}
    if len(given) != len(model.inputs):
        missing = [name for name in model.inputs if name not in positions]
        raise InvalidRequestError(
            f"{prefix}expected {len(model.inputs)} inputs but got {len(given)} inputs for "
            f"model '{model.name}'. Got input(s) {_listed(walked)}, but missing required "
            f"input(s) {_listed_missing(missing)}. Please provide all required input(s)."
        )
    for name in walked:
        if name not in model.inputs:
            # Triton's words, without the request id this once.
            raise InvalidRequestError(
                f"unexpected inference input '{name}' for model '{model.name}'"
            )
    if model.max_batch_size > 0:
        _check_batch(model, [request.inputs[positions[name]] for name in walked], prefix)
    naming = Naming(model.name, prefix)
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    for name in walked:
        index = positions[name]
        tensor = request.inputs[index]
        expected = model.inputs[tensor.name]
        if tensor.datatype != expected.datatype:
            # Triton names a datatype it does not know '<invalid>'.
            spelled = tensor.datatype if tensor.datatype in DTYPES else "<invalid>"
            raise InvalidRequestError(
                f"{prefix}inference input '{tensor.name}' data-type is '{spelled}', "
                f"but model '{model.name}' expects '{expected.datatype}'"
            )
        if model.max_batch_size > 0 and tensor.shape and tensor.shape[0] == 0 and raw:
            _check_empty_batch(tensor, raw[index], naming)
        _check_shape(model, expected, list(tensor.shape), prefix)
        array = decode_input(tensor, raw[index] if raw else None, naming)
        if array.dtype.hasobject:
            array = _as_text(array, tensor.name, prefix)
        feeds[tensor.name] = array
    return feeds


def _as_text(array: np.ndarray[Any, Any], name: str, prefix: str) -> np.ndarray[Any, Any]:
    """BYTES elements as str: ONNX Runtime's string tensors hold UTF-8 text, and it would feed
    a ``bytes`` object as its repr (``"b'abc'"``)."""
    try:
        items = [x.decode("utf-8") if isinstance(x, bytes) else x for x in array.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"{prefix}input '{name}': an element is not UTF-8 text, which ONNX string tensors "
            f"hold ({exc})"
        ) from exc
    return np.array(items, dtype=np.object_).reshape(array.shape)


_BATCH_NOTE = (
    ". NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension "
    "to be prepended to each input shape. If you want to specify the full shape including the "
    "batch dim in your input dims config, try setting max_batch_size to zero. See the model "
    "configuration docs for more info on max_batch_size."
)


def _check_data_sources(
    model: _Model, request: service_pb2.ModelInferRequest, raw: Sequence[bytes], prefix: str
) -> None:
    """As Triton builds the request, input by input: a second copy of a name, then where its
    data is (raw contents by position, extra ones ignored; or typed contents, never both)."""
    seen: set[str] = set()
    for index, tensor in enumerate(request.inputs):
        if tensor.name in seen:
            raise InvalidRequestError(f"{prefix}input '{tensor.name}' already exists in request")
        seen.add(tensor.name)
        if tensor.HasField("contents"):
            if raw:
                raise InvalidRequestError(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{tensor.name}' for model '{model.name}'"
                )
            if tensor.datatype in TYPED_FIELDS:
                check_contents_type(tensor, model.name)
        elif index >= len(raw):
            raise InvalidRequestError(
                f"unable to find data for input tensor '{tensor.name}' for model "
                f"'{model.name}' in request."
            )


def _check_priority(request: service_pb2.ModelInferRequest) -> None:
    if "priority" not in request.parameters:
        return
    kind = request.parameters["priority"].WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidRequestError(
            "invalid value type for 'priority' parameter, expected int64_param or uint64_param."
        )


def _listed(names: Sequence[str]) -> str:
    """A list of names as Triton writes it: ['a','b']."""
    return "[" + ",".join(f"'{name}'" for name in names) + "]"


def _listed_missing(names: Sequence[str]) -> str:
    """The missing inputs as Triton lists them: ['a','b'] — and, for none, "]" (it drops the
    last character of "['a','b'," to lose the comma, and with no name that is the bracket)."""
    return ("[" + "".join(f"'{name}'," for name in names))[:-1] + "]"


def _check_empty_batch(
    tensor: service_pb2.ModelInferRequest.InferInputTensor, raw: bytes, naming: Naming
) -> None:
    """A batch of 0 passes Triton's shape check, and it sizes the input's bytes by the
    shape without its batch dimension: other bytes get its byte size refusal. (Bytes of
    that size it hands to the backend; the fallback refuses them by their shape.)"""
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None or tensor.datatype == "BYTES":
        return
    expected = element_count(list(tensor.shape)[1:]) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidRequestError(
            f"{naming.prefix}input byte size mismatch for input '{tensor.name}' for model "
            f"'{naming.model}'. Expected {expected}, got {len(raw)}"
        )


def _dims(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _check_batch(
    model: _Model,
    inputs: Sequence[service_pb2.ModelInferRequest.InferInputTensor],
    prefix: str,
) -> None:
    """A batching model's inputs (in Triton's order) share their first dimension, at most
    max_batch_size."""
    batch: int | None = None
    for tensor in inputs:
        first = tensor.shape[0] if tensor.shape else 0
        if batch is None:
            batch = first
        elif first != batch:
            raise InvalidRequestError(
                f"{prefix}input '{tensor.name}' batch size does not match other inputs for "
                f"'{model.name}'"
            )
    if batch is not None and batch > model.max_batch_size:
        raise InvalidRequestError(
            f"{prefix}inference request batch-size must be <= {model.max_batch_size} for "
            f"'{model.name}'"
        )


def _check_shape(model: _Model, expected: _Tensor, shape: list[int], prefix: str) -> None:
    if any(d < 0 for d in shape):
        raise InvalidRequestError(
            f"{prefix}All input dimensions should be specified for input '{expected.name}' for "
            f"model '{model.name}', got {_dims(shape)}"
        )
    dims = list(expected.dims)
    full = ([-1] if model.max_batch_size > 0 else []) + dims
    ok = len(shape) == len(full) and all(
        want in (-1, got) for want, got in zip(full, shape, strict=False)
    )
    if ok and model.max_batch_size > 0:
        ok = 1 <= shape[0] <= model.max_batch_size
    if not ok:
        note = _BATCH_NOTE if model.max_batch_size > 0 else ""
        raise InvalidRequestError(
            f"{prefix}unexpected shape for input '{expected.name}' for model '{model.name}'. "
            f"Expected {_dims(full)}, got {_dims(shape)}{note}"
        )
