"""Regenerate the example models of ``model_repository/`` byte for byte.

Weights come from seeded generators and the graphs are built with ``onnx.helper``, so running
this script twice produces identical files: ``python scripts/generate_models.py``. Every file of
the repository comes from here: the ONNX graphs, each ``config.pbtxt`` and the one Python-backend
model (``repeat``, decoupled, which ONNX Runtime cannot be).
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
INT8_WIDTH = 16
# A sequence left without a request this long is released by Triton (its state with it).
SEQUENCE_IDLE_MICROSECONDS = 5_000_000
ACCUMULATOR_CANDIDATE_SEQUENCES = 64

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


def accumulator_model() -> onnx.ModelProto:
    """A stateful sequence model with Triton's implicit state: OUTPUT is the sum of every INPUT
    of the sequence so far.

    The inputs are exactly what Triton's ONNX Runtime backend feeds a sequence model with
    implicit state (it refuses a model whose inputs differ): INPUT, the four sequence controls
    START, END, READY, CORRID (``[batch, 1]`` each) and INPUT_STATE, the OUTPUT_STATE the
    previous request of the same sequence produced. START discards the state; a batch slot that
    is not READY keeps it unchanged. END and CORRID are fed but not needed by the arithmetic.
    """
    shape = ["batch", 1]
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["START"], ["start"], to=TensorProto.BOOL),
            helper.make_node("Cast", ["READY"], ["ready"], to=TensorProto.BOOL),
            helper.make_node("Where", ["start", "zero", "INPUT_STATE"], ["previous"]),
            helper.make_node("Add", ["previous", "INPUT"], ["sum"]),
            helper.make_node("Where", ["ready", "sum", "INPUT_STATE"], ["OUTPUT_STATE"]),
            helper.make_node("Identity", ["OUTPUT_STATE"], ["OUTPUT"]),
        ],
        "accumulator",
        [
            helper.make_tensor_value_info("INPUT", TensorProto.INT32, shape),
            helper.make_tensor_value_info("START", TensorProto.INT32, shape),
            helper.make_tensor_value_info("END", TensorProto.INT32, shape),
            helper.make_tensor_value_info("READY", TensorProto.INT32, shape),
            helper.make_tensor_value_info("CORRID", TensorProto.UINT64, shape),
            helper.make_tensor_value_info("INPUT_STATE", TensorProto.INT32, shape),
        ],
        [
            helper.make_tensor_value_info("OUTPUT", TensorProto.INT32, shape),
            helper.make_tensor_value_info("OUTPUT_STATE", TensorProto.INT32, shape),
        ],
        initializer=[numpy_helper.from_array(np.array(0, dtype=np.int32), "zero")],
    )
    return _model(graph)


def strings_model() -> onnx.ModelProto:
    """BYTES in, BYTES out: UPPER has the ASCII letters of each TEXT element upper-cased
    (StringNormalizer in the "C" locale, which every image has; others pass unchanged), ECHO
    is TEXT itself. Elements are UTF-8 text, as ONNX string tensors are.

    StringNormalizer refuses an empty tensor, so one empty string is appended before it and cut
    off after it: an empty TEXT gives empty outputs instead of an error.
    """
    graph = helper.make_graph(
        [
            helper.make_node("Concat", ["TEXT", "pad"], ["padded"], axis=0),
            helper.make_node(
                "StringNormalizer",
                ["padded"],
                ["padded_upper"],
                case_change_action="UPPER",
                is_case_sensitive=1,
                locale="C",
            ),
            helper.make_node("Shape", ["TEXT"], ["length"]),
            helper.make_node("Slice", ["padded_upper", "start", "length", "axis"], ["UPPER"]),
            helper.make_node("Identity", ["TEXT"], ["ECHO"]),
        ],
        "strings",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["length"])],
        [
            helper.make_tensor_value_info("UPPER", TensorProto.STRING, ["length"]),
            helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["length"]),
        ],
        initializer=[
            helper.make_tensor("pad", TensorProto.STRING, [1], [b""]),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "axis"),
        ],
    )
    return _model(graph)


def int8_add_model() -> onnx.ModelProto:
    """INT8 ``simple``: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, wrapping around
    as two's-complement int8 does (numpy's int8 arithmetic).

    ONNX Runtime has no int8 Add/Sub on every provider, and a narrowing Cast of an out-of-range
    value is not defined by ONNX, so the graph computes in int32 and wraps explicitly:
    ((x + 128) mod 256) - 128 is in int8's range before the Cast back.
    """
    shape = ["batch", INT8_WIDTH]
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["difference"]),
    ]
    for wide, out in (("sum", "OUTPUT0"), ("difference", "OUTPUT1")):
        nodes += [
            helper.make_node("Add", [wide, "offset"], [f"{wide}_shifted"]),
            helper.make_node("Mod", [f"{wide}_shifted", "modulus"], [f"{wide}_mod"], fmod=0),
            helper.make_node("Sub", [f"{wide}_mod", "offset"], [f"{wide}_wrapped"]),
            helper.make_node("Cast", [f"{wide}_wrapped"], [out], to=TensorProto.INT8),
        ]
    graph = helper.make_graph(
        nodes,
        "int8_add",
        [
            helper.make_tensor_value_info("INPUT0", TensorProto.INT8, shape),
            helper.make_tensor_value_info("INPUT1", TensorProto.INT8, shape),
        ],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.INT8, shape),
            helper.make_tensor_value_info("OUTPUT1", TensorProto.INT8, shape),
        ],
        initializer=[
            numpy_helper.from_array(np.array(128, dtype=np.int32), "offset"),
            numpy_helper.from_array(np.array(256, dtype=np.int32), "modulus"),
        ],
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


# Implicit state (sequence_batching.state): Triton keeps OUTPUT_STATE of each request and feeds
# it back as INPUT_STATE of the next request of the same sequence, starting from zeros. The
# Oldest strategy batches requests of different sequences together (CORRID tells them apart).
ACCUMULATOR_CONFIG = f"""name: "accumulator"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH_SIZE}
version_policy: {{ latest {{ num_versions: 1 }} }}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_GPU count: 1 }} ]
sequence_batching {{
  max_sequence_idle_microseconds: {SEQUENCE_IDLE_MICROSECONDS}
  oldest {{ max_candidate_sequences: {ACCUMULATOR_CANDIDATE_SEQUENCES} }}
  control_input [
    {{
      name: "START"
      control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ]
    }},
    {{
      name: "END"
      control [ {{ kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] }} ]
    }},
    {{
      name: "READY"
      control [ {{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }} ]
    }},
    {{
      name: "CORRID"
      control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ]
    }}
  ]
  state [
    {{
      input_name: "INPUT_STATE"
      output_name: "OUTPUT_STATE"
      data_type: TYPE_INT32
      dims: [ 1 ]
      initial_state {{ name: "zero" data_type: TYPE_INT32 dims: [ 1 ] zero_data: true }}
    }}
  ]
}}
"""

# String kernels run on the CPU whatever the instance kind: a CPU instance avoids the copies.
STRINGS_CONFIG = """name: "strings"
platform: "onnxruntime_onnx"
max_batch_size: 0
version_policy: { latest { num_versions: 1 } }
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]
output [
  { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "ECHO" data_type: TYPE_STRING dims: [ -1 ] }
]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

INT8_ADD_CONFIG = f"""name: "int8_add"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH_SIZE}
version_policy: {{ latest {{ num_versions: 1 }} }}
input [
  {{ name: "INPUT0" data_type: TYPE_INT8 dims: [ {INT8_WIDTH} ] }},
  {{ name: "INPUT1" data_type: TYPE_INT8 dims: [ {INT8_WIDTH} ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_INT8 dims: [ {INT8_WIDTH} ] }},
  {{ name: "OUTPUT1" data_type: TYPE_INT8 dims: [ {INT8_WIDTH} ] }}
]
instance_group [ {{ kind: KIND_GPU count: 1 }} ]
dynamic_batching {{ }}
"""

# Decoupled: one request, N responses on a ModelStreamInfer stream. ONNX Runtime models cannot
# be decoupled, so this one is a Python-backend model everywhere (production included).
REPEAT_CONFIG = """name: "repeat"
backend: "python"
max_batch_size: 0
version_policy: { latest { num_versions: 1 } }
model_transaction_policy { decoupled: true }
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "DELAY" data_type: TYPE_UINT32 dims: [ 1 ] optional: true }
]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

REPEAT_MODEL_PY = '''"""Decoupled ``repeat``: N responses to one request, as Triton's repeat_int32.

IN (INT32 [1]) holds N, from 0 to 1000; the optional DELAY (UINT32 [1]) is the pause in
milliseconds between two responses, at most 1000. Response i carries OUT = [i]; then a final
flag with no tensor closes the request. Only a ModelStreamInfer stream can carry the answers.
Generated by scripts/generate_models.py.
"""

import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

MAX_RESPONSES = 1000
MAX_DELAY_MS = 1000
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                "model 'repeat' must be decoupled: model_transaction_policy { decoupled: true }"
            )
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = 0

    def execute(self, requests):
        # Each request is answered from its own thread, so a slow one (DELAY) does not hold
        # back the others; execute returns at once, as decoupled models do.
        for request in requests:
            with self._lock:
                self._running += 1
            threading.Thread(target=self._answer, args=(request,), daemon=True).start()
        return None

    def finalize(self):
        with self._idle:
            self._idle.wait_for(lambda: self._running == 0, timeout=5)

    def _answer(self, request):
        try:
            self._respond(request)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    @staticmethod
    def _respond(request):
        sender = request.get_response_sender()
        count = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().reshape(-1)[0])
        delay = pb_utils.get_input_tensor_by_name(request, "DELAY")
        delay_ms = 0 if delay is None else int(delay.as_numpy().reshape(-1)[0])
        if not 0 <= count <= MAX_RESPONSES or delay_ms > MAX_DELAY_MS:
            message = (
                f"IN must be between 0 and {MAX_RESPONSES} and DELAY at most {MAX_DELAY_MS} ms, "
                f"got IN={count}, DELAY={delay_ms}"
            )
            error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        for index in range(count):
            if request.is_cancelled():
                error = pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED)
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                return
            if index and delay_ms:
                time.sleep(delay_ms / 1000)
            out = pb_utils.Tensor("OUT", np.array([index], dtype=np.int32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
        sender.send(flags=FINAL)
'''


def generate(repository: Path) -> None:
    _save(simple_model(), repository / "simple" / "1" / "model.onnx")
    (repository / "simple" / "config.pbtxt").write_text(SIMPLE_CONFIG)
    for version, seed in ((1, 1001), (2, 2002)):
        _save(classifier_model(seed), repository / "classifier" / str(version) / "model.onnx")
    (repository / "classifier" / "config.pbtxt").write_text(CLASSIFIER_CONFIG)
    _save(identity_model(), repository / "identity" / "1" / "model.onnx")
    (repository / "identity" / "config.pbtxt").write_text(IDENTITY_CONFIG)
    _save(accumulator_model(), repository / "accumulator" / "1" / "model.onnx")
    (repository / "accumulator" / "config.pbtxt").write_text(ACCUMULATOR_CONFIG)
    _save(strings_model(), repository / "strings" / "1" / "model.onnx")
    (repository / "strings" / "config.pbtxt").write_text(STRINGS_CONFIG)
    _save(int8_add_model(), repository / "int8_add" / "1" / "model.onnx")
    (repository / "int8_add" / "config.pbtxt").write_text(INT8_ADD_CONFIG)
    (repository / "repeat" / "1").mkdir(parents=True, exist_ok=True)
    (repository / "repeat" / "1" / "model.py").write_text(REPEAT_MODEL_PY)
    (repository / "repeat" / "config.pbtxt").write_text(REPEAT_CONFIG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = Path(__file__).resolve().parent.parent / "model_repository"
    parser.add_argument("repository", nargs="?", type=Path, default=default)
    generate(parser.parse_args().repository)


if __name__ == "__main__":
    main()
