"""Inputs for the example models and reference outputs computed with ONNX Runtime directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import tritonclient.grpc as grpcclient

MODEL_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def simple_inputs(
    a: npt.NDArray[np.int32], b: npt.NDArray[np.int32]
) -> list[grpcclient.InferInput]:
    first = grpcclient.InferInput("INPUT0", list(a.shape), "INT32")
    first.set_data_from_numpy(a)
    second = grpcclient.InferInput("INPUT1", list(b.shape), "INT32")
    second.set_data_from_numpy(b)
    return [first, second]


def simple_arrays(batch: int = 1, seed: int = 0) -> tuple[npt.NDArray[np.int32], ...]:
    rng = np.random.default_rng(seed)
    a = rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, size=(batch, 16), dtype=np.int32)
    return a, b


def classifier_input(x: npt.NDArray[np.float32]) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def classifier_features(batch: int = 4, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)


def reference_classifier(version: int, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    path = MODEL_REPOSITORY / "classifier" / str(version) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["PROBABILITIES"], {"INPUT": x})
    return np.asarray(probabilities, dtype=np.float32)
