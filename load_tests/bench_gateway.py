"""Benchmark: the gateway against direct Triton and nginx on the same fleet, interleaved.

Starts one local Triton server (``simple``) and, each as its own process in front of it: the
gateway with its Python data plane only (``python``), the gateway fronted by tgw-edge
(``edge``), and nginx with ``grpc_pass`` (installed from Debian's packages when missing).
Rounds alternate (direct, python, edge, nginx, direct, ...) at each concurrency, so drift in
the machine hits all alike. Each round is closed-loop, bounded in time and in count. Prints
p50/p99, added microseconds over direct, throughput ratio and proxy CPU per request (the whole
process tree: gateway + tgw-edge, nginx master + worker).

    .venv/bin/python -m load_tests.bench_gateway --duration 3 --reps 3

A benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.devfleet.fleet import free_port
from load_tests.gateway_process import start_gateway

ROOT = Path(__file__).resolve().parent.parent
INFER = "/inference.GRPCInferenceService/ModelInfer"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Round:
    model: str
    target: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_us: float
    p99_us: float
    cpu_us_per_request: float | None


def simple_request() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
    return request.SerializeToString()


def identity_request(kib: int) -> bytes:
    """A large tensor through the ``identity`` model: ``kib`` KiB in, the same out."""
    values = np.arange(kib * 256, dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[values.size])
    request.raw_input_contents.append(values.tobytes())
    return request.SerializeToString()


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and all its descendants (a gateway and its tgw-edge child)."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    tree = {pid}
    grew = True
    while grew:
        children = {p for p, fields in stats.items() if int(fields[1]) in tree} - tree
        grew = bool(children)
        tree |= children
    return sum(int(stats[p][11]) + int(stats[p][12]) for p in tree if p in stats) / CLOCK_TICKS


async def closed_loop(
    address: str, payload: bytes, concurrency: int, duration_s: float, max_requests: int
) -> tuple[list[int], int]:
    latencies: list[int] = []
    errors = 0
    deadline = time.monotonic() + duration_s
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(INFER)
        await infer(payload, timeout=10)  # warm the connection outside the measurement

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline and len(latencies) + errors < max_requests:
                started = time.perf_counter_ns()
                try:
                    await infer(payload, timeout=10)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter_ns() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def measure(
    model: str,
    payload: bytes,
    target: str,
    address: str,
    cpu_pid: int | None,
    concurrency: int,
    args: argparse.Namespace,
) -> Round:
    cpu_before = process_cpu_seconds(cpu_pid) if cpu_pid else 0.0
    started = time.perf_counter()
    latencies, errors = asyncio.run(
        closed_loop(address, payload, concurrency, args.duration, args.max_requests)
    )
    seconds = time.perf_counter() - started
    cpu = (process_cpu_seconds(cpu_pid) - cpu_before) if cpu_pid else None
    values = np.array(latencies, dtype=np.float64) / 1000.0
    return Round(
        model=model,
        target=target,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_us=float(np.percentile(values, 50)),
        p99_us=float(np.percentile(values, 99)),
        cpu_us_per_request=(cpu * 1e6 / len(latencies)) if cpu is not None and latencies else None,
    )


def start_nginx(backend: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).is_file():
        print("installing nginx from Debian's packages", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx-light"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    port = free_port()
    config = workdir / "nginx.conf"
    # keepalive_requests: nginx's default (1000) ends long runs' connections early.
    config.write_text(
        f"worker_processes 1; daemon off; pid {workdir}/nginx.pid; "
        f"error_log {workdir}/nginx.err;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; upstream triton {{ server {backend}; keepalive 64; "
        "keepalive_requests 100000000; }\n"
        f"  server {{ listen 127.0.0.1:{port} http2; keepalive_requests 100000000;\n"
        "    location / { grpc_pass grpc://triton; } } }\n"
    )
    process = subprocess.Popen([binary, "-c", str(config), "-p", str(workdir)])
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, address
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"nginx did not start; see {workdir}/nginx.err")


def summarize(rounds: list[Round], model: str, concurrency: int) -> list[dict[str, float | str]]:
    def median(target: str, attr: str) -> float:
        values = [
            getattr(r, attr)
            for r in rounds
            if r.target == target
            and r.model == model
            and r.concurrency == concurrency
            and getattr(r, attr) is not None
        ]
        return float(np.median(values)) if values else float("nan")

    def rps(target: str) -> float:
        return median(target, "requests") / median(target, "seconds")

    rows: list[dict[str, float | str]] = []
    for target in dict.fromkeys(r.target for r in rounds):
        rows.append(
            {
                "model": model,
                "target": target,
                "concurrency": concurrency,
                "p50_us": median(target, "p50_us"),
                "p99_us": median(target, "p99_us"),
                "added_p50_us": median(target, "p50_us") - median("direct", "p50_us"),
                "added_p99_us": median(target, "p99_us") - median("direct", "p99_us"),
                "rps": rps(target),
                "throughput_ratio": rps(target) / rps("direct"),
                "cpu_us_per_request": median(target, "cpu_us_per_request"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap per round")
    parser.add_argument("--reps", type=int, default=3, help="rounds per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["simple", "identity"],
        choices=["simple", "identity"],
        help="simple: 2x64 B in; identity: a large tensor (--payload-kib) in and out",
    )
    parser.add_argument("--payload-kib", type=int, default=64, help="identity tensor size")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["python", "edge", "nginx"],
        choices=["python", "edge", "nginx"],
        help="proxies to compare with direct Triton",
    )
    parser.add_argument("--triton-home", type=Path, default=ROOT / ".triton")
    parser.add_argument("--output", type=Path, default=ROOT / "load_tests" / "results")
    args = parser.parse_args()

    installation = TritonInstallation.locate(args.triton_home)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        specs = [ServerSpec("triton-0", models=("simple", "identity"))]
        with LocalFleet(installation, ROOT / "model_repository", workdir / "fleet", specs) as fleet:
            backend = fleet.servers["triton-0"].address
            proxies: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
            try:
                for target in args.targets:
                    if target == "nginx":
                        proxies[target] = start_nginx(backend, workdir)
                    else:
                        mode = "on" if target == "edge" else "off"
                        proxies[target] = start_gateway(
                            [("triton-0", backend)], workdir, edge_mode=mode, name=target
                        )
                targets = [("direct", backend, None)] + [
                    (name, address, process.pid) for name, (process, address) in proxies.items()
                ]
                payloads = {
                    "simple": simple_request(),
                    "identity": identity_request(args.payload_kib),
                }
                rounds: list[Round] = []
                for model, concurrency in itertools.product(args.models, args.concurrency):
                    for _ in range(args.reps):
                        for target, address, pid in targets:
                            payload = payloads[model]
                            result = measure(
                                model, payload, target, address, pid, concurrency, args
                            )
                            rounds.append(result)
                            print(
                                f"  {model:8} {target:8} c={concurrency:<3} "
                                f"n={result.requests:<7} "
                                f"err={result.errors} p50={result.p50_us:8.0f}us "
                                f"p99={result.p99_us:8.0f}us "
                                f"rps={result.requests / result.seconds:8.0f}",
                                file=sys.stderr,
                            )
            finally:
                for process, _ in proxies.values():
                    process.terminate()
                    process.wait(15)

    summary = [
        row
        for model, c in itertools.product(args.models, args.concurrency)
        for row in summarize(rounds, model, c)
    ]
    print(
        f"\nmachine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"{'model':>8} {'target':>8} {'conc':>4} {'p50 us':>8} {'+p50 us':>8} "
        f"{'p99 us':>8} {'+p99 us':>8} "
        f"{'rps':>7} {'ratio':>6} {'cpu us/req':>10}"
    )
    for row in summary:
        print(
            f"{row['model']:>8} {row['target']:>8} {row['concurrency']:>4} {row['p50_us']:>8.0f} "
            f"{row['added_p50_us']:>8.0f} {row['p99_us']:>8.0f} {row['added_p99_us']:>8.0f} "
            f"{row['rps']:>7.0f} {row['throughput_ratio']:>6.2f} {row['cpu_us_per_request']:>10.0f}"
        )
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(
        json.dumps({"rounds": [asdict(r) for r in rounds], "summary": summary}, indent=2)
    )
    print(f"\nraw rounds: {path}")


if __name__ == "__main__":
    main()
