"""Benchmark: ModelInfer through the gateway with tensors inline, against the same call with
its input and output in system shared memory registered with the gateway.

    .venv/bin/python -m load_tests.bench_shm --calls 300 --reps 3 --kib 64

One local Triton serving ``identity``, a gateway process in front, one call at a time,
interleaved in rounds. Prints the median latency of each per round: what the shared-memory
path (the hand-over to the gateway, the loopback call through the edge, the copies in and out
of the regions) costs over inline tensors.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from load_tests.gateway_process import start_gateway

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round (bound)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--kib", type=int, default=64, help="tensor size")
    parser.add_argument("--triton-home", type=Path, default=ROOT / ".triton")
    args = parser.parse_args()
    installation = TritonInstallation.locate(args.triton_home)
    x = np.random.default_rng(0).random(args.kib * 256, dtype=np.float32)
    tag = uuid.uuid4().hex[:8]
    regions = [
        shm.create_shared_memory_region(f"in-{tag}", f"/bench-in-{tag}", x.nbytes),
        shm.create_shared_memory_region(f"out-{tag}", f"/bench-out-{tag}", x.nbytes),
    ]
    try:
        shm.set_shared_memory_region(regions[0], [x])
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            specs = [ServerSpec("triton-0", models=("identity",))]
            with LocalFleet(
                installation, ROOT / "model_repository", workdir / "fleet", specs
            ) as fleet:
                process, address = start_gateway(
                    [("triton-0", fleet.servers["triton-0"].address)], workdir
                )
                try:
                    rounds = measure(address, x, tag, args.calls, args.reps)
                finally:
                    process.terminate()
                    process.wait(30)
        assert np.array_equal(shm.get_contents_as_numpy(regions[1], np.float32, list(x.shape)), x)
    finally:
        for region in regions:
            shm.destroy_shared_memory_region(region)
    for name, medians in rounds.items():
        shown = ", ".join(f"{m:.0f}" for m in medians)
        print(f"{name:>14}: p50 per round {shown} µs")
    added = statistics.median(rounds["shared memory"]) - statistics.median(rounds["inline"])
    print(f"{args.kib} KiB in and out: shared memory adds {added:.0f} µs at p50")


def measure(address: str, x: np.ndarray, tag: str, calls: int, reps: int) -> dict[str, list[float]]:
    client = grpcclient.InferenceServerClient(address)
    client.register_system_shared_memory(f"in-{tag}", f"/bench-in-{tag}", x.nbytes)
    client.register_system_shared_memory(f"out-{tag}", f"/bench-out-{tag}", x.nbytes)
    metadata = client.get_model_metadata("identity")
    input_name, output_name = metadata.inputs[0].name, metadata.outputs[0].name

    def inline() -> None:
        tensor = grpcclient.InferInput(input_name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("identity", [tensor])

    def in_shared_memory() -> None:
        tensor = grpcclient.InferInput(input_name, list(x.shape), "FP32")
        tensor.set_shared_memory(f"in-{tag}", x.nbytes)
        output = grpcclient.InferRequestedOutput(output_name)
        output.set_shared_memory(f"out-{tag}", x.nbytes)
        client.infer("identity", [tensor], outputs=[output])

    ways: dict[str, Callable[[], None]] = {"inline": inline, "shared memory": in_shared_memory}
    for way in ways.values():
        for _ in range(50):  # warm-up
            way()
    rounds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(reps):
        for name, way in ways.items():
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                way()
                times.append(time.perf_counter() - started)
            rounds[name].append(statistics.median(times) * 1e6)
    client.unregister_system_shared_memory()
    return rounds


if __name__ == "__main__":
    main()
