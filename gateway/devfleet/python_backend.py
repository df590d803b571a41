"""Turns a canonical ONNX model repository into one the wheel's Triton can serve.

The wheel has no ONNX Runtime backend, so each ONNX model is served by a Python-backend
``model.py`` that runs the very same ``model.onnx`` with onnxruntime. The config keeps names,
types, shapes, batching, sequence controls and version policy; only platform, instance kind, the
GPU accelerator and implicit state change:

- Implicit state (``sequence_batching.state``) needs backend support the Python backend lacks,
  so the wrapper keeps it instead, per sequence (correlation ID), exactly as Triton would for
  ONNX Runtime: the OUTPUT_STATE a request produced is the INPUT_STATE of the sequence's next
  request; a START request begins from the initial state (zeros); END drops the state; a
  request that is not READY leaves it as it was; a sequence idle past
  ``max_sequence_idle_microseconds`` (which Triton releases) is forgotten.
- BYTES tensors reach ONNX Runtime as ``str`` (its string tensors are UTF-8 text; numpy
  ``bytes`` objects would be turned into their ``repr``).

A model that is already a Python-backend model (``backend: "python"``, its own ``model.py``)
is copied as it is; only GPU instance groups become one CPU instance, as for ONNX models.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.devfleet.errors import FleetError
from gateway.repository import config as repository_config

MODEL_PY = '''"""Serves model.onnx of this version with ONNX Runtime (from gateway.devfleet)."""
import json
import os
import sys
import time

# The backend stub embeds its own interpreter and may ignore PYTHONPATH: name the model
# environment (numpy<2, onnxruntime) explicitly.
sys.path.insert(0, {site_packages!r})

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

# The canonical config's sequence_batching.state, which Triton's ONNX Runtime backend keeps and
# this wrapper keeps instead (the Python backend has no implicit state). None: read it from the
# served config (the wrapper is then the fleet's "onnxruntime" backend, serving canonical
# configs pushed unchanged).
IMPLICIT_STATE = {implicit_state!r}
DEFAULT_IDLE_MICROSECONDS = 1000000  # Triton's default max_sequence_idle_microseconds


class RequestError(Exception):
    """A request the model refuses (INVALID_ARG), as Triton would."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(here, options, providers=["CPUExecutionProvider"])
        self.outputs = [
            (item["name"], pb_utils.triton_string_to_numpy(item["data_type"]))
            for item in config["output"]
        ]
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.states = (
            list(IMPLICIT_STATE) if IMPLICIT_STATE is not None else _configured_states(config)
        )
        state_inputs = {{state["input_name"] for state in self.states}}
        self.feeds = [i.name for i in self.session.get_inputs() if i.name not in state_inputs]
        sequence = config.get("sequence_batching") or {{}}
        self.controls = {{}}
        for control_input in sequence.get("control_input", []):
            for control in control_input.get("control", []):
                values = (
                    control.get("int32_false_true")
                    or control.get("fp32_false_true")
                    or control.get("bool_false_true")
                    or [0, 1]
                )
                self.controls[control["kind"]] = (control_input["name"], values[1])
        idle_us = int(sequence.get("max_sequence_idle_microseconds") or 0)
        # Triton releases an idle sequence (and rejects its next request unless it STARTs);
        # forget its state a little later, never earlier.
        self.idle_s = 2 * (idle_us or DEFAULT_IDLE_MICROSECONDS) / 1e6
        self.sequences = {{}}  # correlation ID -> (last used, {{input state name: array}})

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._run(request))
            except RequestError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as exc:  # ONNX Runtime's own failures: INTERNAL, as in Triton
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        if self.states:
            self._forget_idle()
        return responses

    def _run(self, request):
        feeds = {{}}
        for name in self.feeds:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"input '{{name}}' is missing")
            feeds[name] = _for_onnx(name, tensor.as_numpy())
        names = [name for name, _ in self.outputs]
        if not self.states:
            return self._response(dict(zip(names, self.session.run(names, feeds))))
        key = request.correlation_id()
        ready = self._flag(request, "CONTROL_SEQUENCE_READY", default=True)
        start = self._flag(request, "CONTROL_SEQUENCE_START", default=False)
        end = self._flag(request, "CONTROL_SEQUENCE_END", default=False)
        held = None if start else self.sequences.get(key)
        batch = next(iter(feeds.values())).shape[0] if self.batching and feeds else None
        for state in self.states:
            if held is not None:
                feeds[state["input_name"]] = held[1][state["input_name"]]
            else:
                feeds[state["input_name"]] = _initial(state, batch)
        wanted = names + [state["output_name"] for state in self.states]
        values = dict(zip(wanted, self.session.run(wanted, feeds)))
        if ready:
            if end:
                self.sequences.pop(key, None)
            else:
                kept = {{s["input_name"]: values[s["output_name"]] for s in self.states}}
                self.sequences[key] = (time.monotonic(), kept)
        return self._response(values)

    def _response(self, values):
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(values[name], dtype=dtype))
            for name, dtype in self.outputs
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _flag(self, request, kind, default):
        control = self.controls.get(kind)
        if control is None:
            return default
        name, true_value = control
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return default
        return bool(tensor.as_numpy().reshape(-1)[0] == true_value)

    def _forget_idle(self):
        now = time.monotonic()
        for key in [k for k, (used, _) in self.sequences.items() if now - used > self.idle_s]:
            del self.sequences[key]


def _configured_states(config):
    """sequence_batching.state of the config JSON (its int64 dims arrive as strings)."""
    states = []
    for state in (config.get("sequence_batching") or {{}}).get("state", []):
        initial = state.get("initial_state") or []
        dims = initial[0].get("dims", []) if initial else state.get("dims", [])
        states.append(
            {{
                "input_name": state["input_name"],
                "output_name": state["output_name"],
                "data_type": state["data_type"],
                "dims": [int(d) for d in dims],
            }}
        )
    return states


def _initial(state, batch):
    """Triton's initial state: zeros (zero_data, or none given), variable dims as 1."""
    dims = [1 if d < 0 else d for d in state["dims"]]
    shape = ([batch] if batch is not None else []) + dims
    return np.zeros(shape, dtype=pb_utils.triton_string_to_numpy(state["data_type"]))


def _for_onnx(name, array):
    """BYTES elements as str: ONNX Runtime's string tensors hold UTF-8 text."""
    if array.dtype != np.object_:
        return array
    try:
        items = [x.decode("utf-8") if isinstance(x, bytes) else x for x in array.reshape(-1)]
    except UnicodeDecodeError as exc:
        raise RequestError(
            f"input '{{name}}': an element is not UTF-8 text, which ONNX string tensors hold "
            f"({{exc}})"
        ) from exc
    return np.array(items, dtype=np.object_).reshape(array.shape)
'''


ONNX_BACKEND = "onnxruntime"
"""The backend name Triton gives ``platform: "onnxruntime_onnx"``: the fleet installs the
wrapper under it as a Python-based backend, so canonical ONNX configs load unchanged."""


def write_onnx_backend(backends_dir: Path, site_packages: Path) -> None:
    """Install the wrapper as the Python-based ``onnxruntime`` backend of ``backends_dir``."""
    backend = backends_dir / ONNX_BACKEND
    backend.mkdir(parents=True, exist_ok=True)
    (backend / "model.py").write_text(
        MODEL_PY.format(site_packages=str(site_packages), implicit_state=None)
    )


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    try:
        return repository_config.read_config(model_dir)
    except repository_config.ModelConfigError as exc:
        raise FleetError(str(exc)) from exc


def python_backend_config(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    """The config the wrapper is served with: Python backend, one CPU instance, no GPU
    accelerator, no implicit state (the wrapper keeps it; see ``implicit_state``)."""
    converted = model_config_pb2.ModelConfig()
    converted.CopyFrom(config)
    converted.platform = ""
    converted.backend = "python"
    converted.ClearField("optimization")
    _cpu_instances(converted)
    if converted.HasField("sequence_batching"):
        converted.sequence_batching.ClearField("state")
    return converted


def implicit_state(config: model_config_pb2.ModelConfig) -> list[dict[str, Any]]:
    """The canonical config's implicit state, for the wrapper to keep per sequence."""
    states: list[dict[str, Any]] = []
    for state in config.sequence_batching.state:
        initial = list(state.initial_state)
        if any(i.WhichOneof("state_data") == "data_file" for i in initial):
            raise FleetError(
                f"model {config.name}: an initial state from a data file is not supported by "
                "the local fleet (zero_data or no initial state is)"
            )
        states.append(
            {
                "input_name": state.input_name,
                "output_name": state.output_name,
                "data_type": model_config_pb2.DataType.Name(state.data_type),
                "dims": list(initial[0].dims) if initial else list(state.dims),
            }
        )
    return states


def is_python_model(config: model_config_pb2.ModelConfig) -> bool:
    """A model with its own ``model.py``: served as it is."""
    return bool(config.backend == "python")


def build_repository(source: Path, target: Path, site_packages: Path) -> list[str]:
    """Write a Python-backend repository for every model of ``source``; return model names."""
    if not source.is_dir():
        raise FleetError(f"model repository {source} does not exist")
    target.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for model_dir in sorted(p for p in source.iterdir() if (p / "config.pbtxt").is_file()):
        config = read_config(model_dir)
        out_dir = target / config.name
        if out_dir.exists():
            shutil.rmtree(out_dir)
        if is_python_model(config):
            _copy_python_model(model_dir, out_dir, config)
        else:
            _write_onnx_model(model_dir, out_dir, config, site_packages)
        names.append(config.name)
    return names


def _copy_python_model(
    model_dir: Path, out_dir: Path, config: model_config_pb2.ModelConfig
) -> None:
    shutil.copytree(model_dir, out_dir)
    if any(g.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU for g in config.instance_group):
        served = model_config_pb2.ModelConfig()
        served.CopyFrom(config)
        _cpu_instances(served)
        (out_dir / "config.pbtxt").write_text(text_format.MessageToString(served))


def _write_onnx_model(
    model_dir: Path, out_dir: Path, config: model_config_pb2.ModelConfig, site_packages: Path
) -> None:
    model_py = MODEL_PY.format(
        site_packages=str(site_packages), implicit_state=implicit_state(config)
    )
    out_dir.mkdir()
    served = python_backend_config(config)
    (out_dir / "config.pbtxt").write_text(text_format.MessageToString(served))
    for version_dir in sorted(p for p in model_dir.iterdir() if p.name.isdigit()):
        onnx_file = version_dir / "model.onnx"
        if not onnx_file.is_file():
            continue
        out_version = out_dir / version_dir.name
        out_version.mkdir()
        shutil.copyfile(onnx_file, out_version / "model.onnx")
        (out_version / "model.py").write_text(model_py)


def _cpu_instances(config: model_config_pb2.ModelConfig) -> None:
    del config.instance_group[:]
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
