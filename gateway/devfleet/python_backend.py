"""Turns a canonical ONNX model repository into one the wheel's Triton can serve.

The wheel has no ONNX Runtime backend, so each model is served by a Python-backend ``model.py``
that runs the very same ``model.onnx`` with onnxruntime. The config keeps names, types, shapes,
batching and version policy; only platform, instance kind and the GPU accelerator change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.devfleet.errors import FleetError
from gateway.repository import config as repository_config

MODEL_PY = '''"""Serves model.onnx of this version with ONNX Runtime (from gateway.devfleet)."""
import json
import os
import sys

# The backend stub embeds its own interpreter and may ignore PYTHONPATH: name the model
# environment (numpy<2, onnxruntime) explicitly.
sys.path.insert(0, {site_packages!r})

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(here, options, providers=["CPUExecutionProvider"])
        self.inputs = [item["name"] for item in config["input"]]
        self.outputs = [
            (item["name"], pb_utils.triton_string_to_numpy(item["data_type"]))
            for item in config["output"]
        ]

    def execute(self, requests):
        names = [name for name, _ in self.outputs]
        responses = []
        for request in requests:
            feeds = {{
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.inputs
            }}
            results = self.session.run(names, feeds)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value, dtype=dtype))
                for (name, dtype), value in zip(self.outputs, results)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    try:
        return repository_config.read_config(model_dir)
    except repository_config.ModelConfigError as exc:
        raise FleetError(str(exc)) from exc


def python_backend_config(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    converted = model_config_pb2.ModelConfig()
    converted.CopyFrom(config)
    converted.platform = ""
    converted.backend = "python"
    converted.ClearField("optimization")
    del converted.instance_group[:]
    converted.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
    return converted


def build_repository(source: Path, target: Path, site_packages: Path) -> list[str]:
    """Write a Python-backend repository for every model of ``source``; return model names."""
    if not source.is_dir():
        raise FleetError(f"model repository {source} does not exist")
    target.mkdir(parents=True, exist_ok=True)
    model_py = MODEL_PY.format(site_packages=str(site_packages))
    names: list[str] = []
    for model_dir in sorted(p for p in source.iterdir() if (p / "config.pbtxt").is_file()):
        config = python_backend_config(read_config(model_dir))
        out_dir = target / config.name
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir()
        (out_dir / "config.pbtxt").write_text(text_format.MessageToString(config))
        for version_dir in sorted(p for p in model_dir.iterdir() if p.name.isdigit()):
            onnx_file = version_dir / "model.onnx"
            if not onnx_file.is_file():
                continue
            out_version = out_dir / version_dir.name
            out_version.mkdir()
            shutil.copyfile(onnx_file, out_version / "model.onnx")
            (out_version / "model.py").write_text(model_py)
        names.append(config.name)
    return names
