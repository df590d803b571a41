"""Benchmark: the gateway's ONNX Runtime fallback against a bare ``session.run``.

    .venv/bin/python -m load_tests.bench_fallback --iterations 2000

Same model files, same inputs, one call at a time, interleaved in rounds. Prints p50/p99 of
each and the added microseconds (request parsing, validation, the thread hand-off, response
encoding), and the resident memory each loaded model adds to the process.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2

from gateway.backends.fallback import OnnxFallback

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def classifier_request(x: np.ndarray) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="classifier", model_version="2")
    request.inputs.add(name="INPUT", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


async def time_fallback(fallback: OnnxFallback, payload: bytes, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await fallback.infer(payload)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def time_bare(session: ort.InferenceSession, x: np.ndarray, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        session.run(["PROBABILITIES"], {"INPUT": x})
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=2000, help="calls per round (bound)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    repository = ROOT / "model_repository"
    fallback = OnnxFallback(repository, max_concurrency=1)
    memory: dict[str, int] = {}
    for model in ("simple", "classifier", "identity"):
        before = rss_bytes()
        fallback._model(model, "")  # load now, to measure it
        memory[model] = rss_bytes() - before
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(repository / "classifier" / "2" / "model.onnx"), options,
        providers=["CPUExecutionProvider"],
    )  # fmt: skip
    x = np.random.default_rng(0).standard_normal((args.batch, 8)).astype(np.float32)
    payload = classifier_request(x)
    bare: list[float] = []
    through: list[float] = []
    for _ in range(args.rounds):
        bare += time_bare(session, x, args.iterations)
        through += asyncio.run(time_fallback(fallback, payload, args.iterations))
    fallback.close()

    def p(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    print(f"classifier v2, batch {args.batch}, {args.rounds}x{args.iterations} calls each")
    print(f"{'':10} {'p50 us':>8} {'p99 us':>8}")
    print(f"{'bare ORT':10} {p(bare, 50):>8.1f} {p(bare, 99):>8.1f}")
    print(f"{'fallback':10} {p(through, 50):>8.1f} {p(through, 99):>8.1f}")
    print(f"{'added':10} {p(through, 50) - p(bare, 50):>8.1f} {p(through, 99) - p(bare, 99):>8.1f}")
    for model, size in memory.items():
        print(f"memory per loaded model: {model:10} {size / 1024:8.0f} KiB")


if __name__ == "__main__":
    main()
