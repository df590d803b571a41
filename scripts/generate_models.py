"""Regenerate the example ONNX models of ``model_repository/`` byte for byte.

Weights come from seeded generators and the graphs are built with ``onnx.helper``, so running
this script twice produces identical files: ``python scripts/generate_models.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Opset 17 / IR 8 are understood by every ONNX Runtime still in service, including the one
# inside Triton 2.51 and the NGC images.
OPSET = 17
IR_VERSION = 8
SIMPLE_WIDTH = 16
CLASSIFIER_FEATURES = 8
CLASSIFIER_HIDDEN = 16
CLASSIFIER_CLASSES = 3
MAX_BATCH_SIZE = 8

TENSORRT_ACCELERATOR = """optimization {
  execution_accelerators {
    gpu_execution_accelerator: [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
      }
    ]
  }
}
"""


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="triton-gateway-examples",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    return model


def simple_model() -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (Triton's example 'simple')."""
    shape = ["batch", SIMPLE_WIDTH]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.INT32, shape),
            helper.make_tensor_value_info("INPUT1", TensorProto.INT32, shape),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.INT32, shape),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.INT32, shape),
        ],
    )
    return _model(graph)


def classifier_model(seed: int) -> onnx.ModelProto:
    """A two-layer MLP with softmax; the seed picks the weights, so versions differ."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((CLASSIFIER_FEATURES, CLASSIFIER_HIDDEN)).astype(np.float32)
    b1 = rng.standard_normal(CLASSIFIER_HIDDEN).astype(np.float32)
    w2 = rng.standard_normal((CLASSIFIER_HIDDEN, CLASSIFIER_CLASSES)).astype(np.float32)
    b2 = rng.standard_normal(CLASSIFIER_CLASSES).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT", "w1"], ["h_mm"]),
            helper.make_node("Add", ["h_mm", "b1"], ["h_pre"]),
            helper.make_node("Relu", ["h_pre"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["logits_mm"]),
            helper.make_node("Add", ["logits_mm", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["PROBABILITIES"], axis=-1),
        ],
        "classifier",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", CLASSIFIER_FEATURES])],
        [
            helper.make_tensor_value_info(
                "PROBABILITIES", TensorProto.FLOAT, ["batch", CLASSIFIER_CLASSES]
            )
        ],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    return _model(graph)


def identity_model() -> onnx.ModelProto:
    """OUTPUT = INPUT for a flat FP32 tensor of any length: moves large payloads."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT"], ["OUTPUT"])],
        "identity",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["length"])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["length"])],
    )
    return _model(graph)


SIMPLE_CONFIG = f"""name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH_SIZE}
version_policy: {{ latest {{ num_versions: 1 }} }}
input [
  {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ {SIMPLE_WIDTH} ] }},
  {{ name: "INPUT1" data_type: TYPE_INT32 dims: [ {SIMPLE_WIDTH} ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [ {SIMPLE_WIDTH} ] }},
  {{ name: "OUTPUT1" data_type: TYPE_INT32 dims: [ {SIMPLE_WIDTH} ] }}
]
instance_group [ {{ kind: KIND_GPU count: 1 }} ]
dynamic_batching {{ }}
{TENSORRT_ACCELERATOR}"""

CLASSIFIER_CONFIG = f"""name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH_SIZE}
version_policy: {{ latest {{ num_versions: 2 }} }}
input [
  {{ name: "INPUT" data_type: TYPE_FP32 dims: [ {CLASSIFIER_FEATURES} ] }}
]
output [
  {{ name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ {CLASSIFIER_CLASSES} ] }}
]
instance_group [ {{ kind: KIND_GPU count: 1 }} ]
dynamic_batching {{ max_queue_delay_microseconds: 100 }}
{TENSORRT_ACCELERATOR}"""


IDENTITY_CONFIG = f"""name: "identity"
platform: "onnxruntime_onnx"
max_batch_size: 0
version_policy: {{ latest {{ num_versions: 1 }} }}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_GPU count: 1 }} ]
{TENSORRT_ACCELERATOR}"""


def generate(repository: Path) -> None:
    _save(simple_model(), repository / "simple" / "1" / "model.onnx")
    (repository / "simple" / "config.pbtxt").write_text(SIMPLE_CONFIG)
    for version, seed in ((1, 1001), (2, 2002)):
        _save(classifier_model(seed), repository / "classifier" / str(version) / "model.onnx")
    (repository / "classifier" / "config.pbtxt").write_text(CLASSIFIER_CONFIG)
    _save(identity_model(), repository / "identity" / "1" / "model.onnx")
    (repository / "identity" / "config.pbtxt").write_text(IDENTITY_CONFIG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = Path(__file__).resolve().parent.parent / "model_repository"
    parser.add_argument("repository", nargs="?", type=Path, default=default)
    generate(parser.parse_args().repository)


if __name__ == "__main__":
    main()
