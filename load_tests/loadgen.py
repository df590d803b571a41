"""Load generator for any KServe v2 / Triton gRPC endpoint (gateway, Triton, nginx, ...).

Closed loop: N concurrent streams, each sending its next request when the last one answered.
Open loop: a constant rate; every request is timed from its *intended* send time, so a target
that falls behind shows its queueing in the latency instead of slowing the generator down
(no coordinated omission). Both are bounded by a duration and a request count.

    .venv/bin/python -m load_tests.loadgen --target localhost:8001 --model simple \\
        --mode open --rate 500 --duration 10 --json out.json --plots out/

Reports p50/p90/p99/p99.9 (HdrHistogram), throughput, errors by status code, responses served
by the gateway's fallback (trailing metadata), and the model versions that answered (A/B).
Exit status: 0 passed, 1 a threshold crossed, 2 no run (the target or the model cannot be
reached: said in one line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from hdrh.histogram import HdrHistogram
from tritonclient.grpc import service_pb2

from gateway.routing.wire import read_model_key
from load_tests.plots import write_plots

INFER = "/inference.GRPCInferenceService/ModelInfer"
METADATA = "/inference.GRPCInferenceService/ModelMetadata"
FALLBACK_METADATA = ("x-gateway-served-by", "fallback")
"""Trailing metadata the gateway sets on answers from its local fallback runtime."""
MAX_LATENCY_US = 600_000_000
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


class LoadError(Exception):
    """The run cannot start: the message says what failed, in one line."""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    target: str
    model: str
    version: str = ""
    mode: str = "closed"
    concurrency: int = 1
    rate: float = 100.0
    duration_s: float = 10.0
    max_requests: int = 1_000_000
    timeout_s: float = 30.0
    batch: int = 1


@dataclass
class LoadResult:
    """Everything one run measured; ``to_json`` is the file format."""

    spec: LoadSpec
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    fallback: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    latency: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, MAX_LATENCY_US, 3))
    queue_delay: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, MAX_LATENCY_US, 3))
    timeline: list[tuple[float, float]] = field(default_factory=list)
    """(intended send offset in s, latency in µs) of every answered request."""
    failures: list[tuple[float, str]] = field(default_factory=list)
    """(intended send offset in s, status name) of every failed request."""
    started_at: float = 0.0
    """time.perf_counter() at offset 0, to place other events on the timeline."""
    """(seconds since start, latency µs) of every answered request, for the plots."""

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def percentiles(self, histogram: HdrHistogram | None = None) -> dict[str, float]:
        histogram = histogram or self.latency
        if histogram.get_total_count() == 0:
            return {f"p{p:g}": 0.0 for p in PERCENTILES}
        return {f"p{p:g}": float(histogram.get_value_at_percentile(p)) for p in PERCENTILES}

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": {name: getattr(self.spec, name) for name in LoadSpec.__slots__},
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "errors": dict(self.errors),
            "fallback": self.fallback,
            "versions": dict(self.versions),
            "elapsed_s": self.elapsed_s,
            "throughput_rps": self.ok / self.elapsed_s if self.elapsed_s else 0.0,
            "latency_us": {
                **self.percentiles(),
                "max": float(self.latency.get_max_value()),
                "mean": float(self.latency.get_mean_value()),
            },
            "queue_delay_us": {
                **self.percentiles(self.queue_delay),
                "max": float(self.queue_delay.get_max_value()),
            },
        }


async def build_request(channel: grpc.aio.Channel, spec: LoadSpec, seed: int = 0) -> bytes:
    """A serialized ModelInferRequest with random inputs shaped from the model's metadata."""
    metadata_call = channel.unary_unary(
        METADATA,
        request_serializer=service_pb2.ModelMetadataRequest.SerializeToString,
        response_deserializer=service_pb2.ModelMetadataResponse.FromString,
    )
    try:
        metadata = await metadata_call(
            service_pb2.ModelMetadataRequest(name=spec.model, version=spec.version), timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND or not spec.version:
            raise
        # A version that does not exist still gets well-formed requests (to measure errors).
        metadata = await metadata_call(
            service_pb2.ModelMetadataRequest(name=spec.model), timeout=10
        )
    rng = np.random.default_rng(seed)
    request = service_pb2.ModelInferRequest(model_name=spec.model, model_version=spec.version)
    for tensor in metadata.inputs:
        shape = [spec.batch if dim < 0 else dim for dim in tensor.shape]
        dtype = _NUMPY.get(tensor.datatype)
        if dtype is None:
            raise ValueError(f"input {tensor.name}: datatype {tensor.datatype} not supported")
        values = (rng.standard_normal(shape) * 100).astype(dtype)
        request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
        request.raw_input_contents.append(values.tobytes())
    return request.SerializeToString()


class _Runner:
    def __init__(self, spec: LoadSpec, payload: bytes, infer: grpc.aio.UnaryUnaryMultiCallable):
        self.spec = spec
        self.payload = payload
        self.infer = infer
        self.result = LoadResult(spec)
        self.start = 0.0

    async def one(self, intended: float) -> None:
        result = self.result
        result.sent += 1
        actual = time.perf_counter()
        result.queue_delay.record_value(max(1, int((actual - intended) * 1e6)))
        call = self.infer(self.payload, timeout=self.spec.timeout_s)
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            result.errors[exc.code().name] += 1
            result.failures.append((intended - self.start, exc.code().name))
            return
        latency_us = max(1, int((time.perf_counter() - intended) * 1e6))
        result.latency.record_value(min(latency_us, MAX_LATENCY_US))
        result.timeline.append((intended - self.start, latency_us))
        result.ok += 1
        result.versions[read_model_key(response)[1]] += 1
        trailing = await call.trailing_metadata()
        if trailing is not None and FALLBACK_METADATA in tuple(trailing):
            result.fallback += 1


async def run(
    spec: LoadSpec,
    progress: Callable[[LoadResult], None] | None = None,
    schedule: Sequence[float] | None = None,
    during: Callable[[], Awaitable[None]] | None = None,
) -> LoadResult:
    """One bounded run against ``spec.target``.

    ``schedule``: open-loop send offsets in seconds (ramps, spikes); by default a constant
    ``spec.rate``. ``during``: a coroutine run alongside the load (a chaos action).
    """
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(spec.target, options=options) as channel:
        try:
            payload = await build_request(channel, spec)
        except grpc.aio.AioRpcError as exc:
            raise LoadError(
                f"cannot read the metadata of model '{spec.model}' from {spec.target}: "
                f"{exc.code().name}: {exc.details()}"
            ) from exc
        except ValueError as exc:
            raise LoadError(f"cannot build a request for model '{spec.model}': {exc}") from exc
        runner = _Runner(spec, payload, channel.unary_unary(INFER))
        with contextlib.suppress(grpc.aio.AioRpcError):
            # Connect outside the measurement; its answer (maybe an error) is not counted.
            await runner.infer(payload, timeout=spec.timeout_s)
        runner.start = runner.result.started_at = time.perf_counter()
        deadline = runner.start + spec.duration_s
        reporter = asyncio.create_task(_report(runner.result, progress)) if progress else None
        action = asyncio.create_task(during()) if during else None
        try:
            if spec.mode == "closed":
                await _closed_loop(runner, deadline)
            else:
                offsets = schedule if schedule is not None else constant_rate(spec)
                await _open_loop(runner, deadline, offsets)
        finally:
            if reporter is not None:
                reporter.cancel()
            if action is not None:
                await action
        runner.result.elapsed_s = time.perf_counter() - runner.start
        return runner.result


async def _closed_loop(runner: _Runner, deadline: float) -> None:
    spec = runner.spec

    async def stream() -> None:
        while time.perf_counter() < deadline and runner.result.sent < spec.max_requests:
            await runner.one(time.perf_counter())

    await asyncio.gather(*(stream() for _ in range(spec.concurrency)))


def constant_rate(spec: LoadSpec) -> list[float]:
    count = min(spec.max_requests, int(spec.duration_s * spec.rate))
    return [index / spec.rate for index in range(count)]


async def _open_loop(runner: _Runner, deadline: float, offsets: Sequence[float]) -> None:
    spec = runner.spec
    tasks: set[asyncio.Task[None]] = set()
    for index, offset in enumerate(offsets):
        intended = runner.start + offset
        if intended >= deadline or index >= spec.max_requests:
            break
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(runner.one(intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        # In-flight requests finish within their own timeout; the run stays bounded.
        await asyncio.wait(tasks)


async def _report(result: LoadResult, progress: Callable[[LoadResult], None]) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress(result)


def print_progress(result: LoadResult) -> None:
    p = result.percentiles()
    sys.stderr.write(
        f"\r  sent {result.sent:>8}  ok {result.ok:>8}  failed {result.failed:>6}  "
        f"p50 {p['p50']:>8.0f}us  p99 {p['p99']:>8.0f}us "
    )
    sys.stderr.flush()


def summary_lines(result: LoadResult) -> list[str]:
    data = result.to_json()
    lat, queue = data["latency_us"], data["queue_delay_us"]
    lines = [
        f"target {result.spec.target}  model {result.spec.model}  mode {result.spec.mode}",
        f"sent {data['sent']}  ok {data['ok']}  failed {data['failed']}  "
        f"throughput {data['throughput_rps']:.0f}/s over {data['elapsed_s']:.1f}s",
        "latency us  " + "  ".join(f"{k} {v:.0f}" for k, v in lat.items()),
        "queue us    " + "  ".join(f"{k} {v:.0f}" for k, v in queue.items()),
    ]
    if data["errors"]:
        lines.append("errors      " + "  ".join(f"{k} {v}" for k, v in data["errors"].items()))
    lines.append(f"fallback    {data['fallback']}")
    lines.append(
        "versions    " + "  ".join(f"{k or '-'}: {v}" for k, v in data["versions"].items())
    )
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadgen", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--target", default="localhost:8001", help="host:port of the endpoint")
    parser.add_argument("--model", default="simple")
    parser.add_argument("--version", default="")
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--concurrency", type=int, default=1, help="closed loop: streams")
    parser.add_argument("--rate", type=float, default=100.0, help="open loop: requests/s")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds (bound)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="count (bound)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request deadline, s")
    parser.add_argument("--batch", type=int, default=1, help="size of dynamic batch dims")
    parser.add_argument("--json", type=Path, help="write the result as JSON here")
    parser.add_argument("--plots", type=Path, help="write PNG plots into this folder")
    parser.add_argument(
        "--histogram", type=Path, help="write the latency histogram here (HdrHistogram, base64)"
    )
    parser.add_argument(
        "--max-p99", type=float, help="exit 1 when the p99 latency is above this many ms"
    )
    parser.add_argument(
        "--max-error-rate",
        type=float,
        default=0.0,
        help="exit 1 when more than this share of calls fail (default 0: any failure)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    spec = LoadSpec(
        target=args.target,
        model=args.model,
        version=args.version,
        mode=args.mode,
        concurrency=args.concurrency,
        rate=args.rate,
        duration_s=args.duration,
        max_requests=args.max_requests,
        timeout_s=args.timeout,
        batch=args.batch,
    )
    try:
        result = asyncio.run(run(spec, None if args.quiet else print_progress))
    except LoadError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        sys.stderr.write("\n")
    print("\n".join(summary_lines(result)))
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2))
    if args.plots:
        for path in write_plots(result, args.plots):
            print(f"plot {path}")
    if args.histogram:
        # The standard encoding: HdrHistogram tools (and HdrHistogram.decode) read it back.
        args.histogram.write_bytes(result.latency.encode())
        print(f"histogram {args.histogram}")
    crossed = thresholds_crossed(result, args.max_p99, args.max_error_rate)
    for line in crossed:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if crossed else 0


def thresholds_crossed(
    result: LoadResult, max_p99_ms: float | None, max_error_rate: float
) -> list[str]:
    """Why the run fails its thresholds (none: it passes)."""
    crossed = []
    rate = result.failed / result.sent if result.sent else 0.0
    if rate > max_error_rate:
        crossed.append(
            f"{result.failed} of {result.sent} calls failed ({rate:.2%} > {max_error_rate:.2%}): "
            + ", ".join(f"{code} x{count}" for code, count in result.errors.most_common())
        )
    p99_ms = result.percentiles()["p99"] / 1000
    if max_p99_ms is not None and p99_ms > max_p99_ms:
        crossed.append(f"p99 {p99_ms:.2f} ms > {max_p99_ms:g} ms")
    return crossed


if __name__ == "__main__":
    sys.exit(main())
