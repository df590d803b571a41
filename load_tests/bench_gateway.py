"""Benchmark: the gateway (tgw-edge) against direct Triton and nginx on the same fleet.

Starts one local Triton server (``simple``, ``identity``) and, each as its own process in
front of it, the gateway (tgw-edge, the data plane, with the Python control plane behind it;
shipped settings) and nginx with ``grpc_pass`` (installed from Debian's packages when
missing). For each workload and model, rounds alternate between the targets (direct, edge,
nginx, direct, ...), so drift in the machine hits all alike; each round is bounded in time
(``--duration``) and in count (``--max-requests``; h2load rounds in time only, as h2load
ignores a count in its timing mode). Medians of rounds are reported. Workloads:

- unary (ModelInfer), closed loop at each ``--concurrency`` (default 1 and 32), driven by
  h2load (Debian's ``nghttp2-client``, installed when missing; one HTTP/2 connection, N
  streams in flight), so a Python client does not starve the proxies on a small machine.
  Each round is checked: a gRPC call with a real client before it, and h2load's counts after
  it (every answer HTTP 200 and carrying a response message: a gRPC error has none).
  Without h2load (and no apt-get to install it) the Python grpc.aio client drives them.
- stream ping-pong: one ModelStreamInfer stream, one request at a time (send, wait for the
  answer, send the next).
- stream pipelined: one ModelStreamInfer stream with ``--pipeline`` requests in flight.
  Streams are driven by a grpc.aio client sending pre-serialized requests.

Prints per workload, model and target: p50/p99 latency, added microseconds over direct, calls
per second and the ratio to direct, and the CPU per call of the proxy's whole process tree
(gateway: tgw-edge + Python control plane, split as edge+ctl; nginx: master + worker).

    .venv/bin/python -m load_tests.bench_gateway --duration 3 --reps 3 --json bench.json

``--threads 1 2 4 8`` runs one gateway per edge thread count (setting ``edge.threads``; the
shipped value is 1, enough for two cores), named edge-t1, edge-t2, ..., all in the same
interleaved rounds: for a machine with more cores (use ``--nginx-workers`` to match nginx).
The JSON (``--json FILE``) holds the machine, the configuration, every round and the summary.

A benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.devfleet.fleet import free_port
from load_tests.gateway_process import start_gateway

ROOT = Path(__file__).resolve().parent.parent
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
EDGE_BINARY = "tgw-edge"
CALL_TIMEOUT_S = 10.0
STREAM_OK_TAG = 0x12
"""First byte of a ModelStreamInferResponse carrying ``infer_response`` (field 2) and no
``error_message`` (field 1, which proto3 writes first when set)."""


@dataclass
class Target:
    name: str
    address: str
    pid: int | None = None
    """Root of the process tree whose CPU is counted (None: direct Triton, not counted)."""
    process: subprocess.Popen[bytes] | None = None
    preflight: grpc.Channel | None = None


@dataclass
class Round:
    workload: str
    model: str
    target: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_us: float
    p99_us: float
    cpu_us_per_request: float | None
    cpu_split_us: dict[str, float] = field(default_factory=dict)
    """CPU per request by process name (tgw-edge / python; nginx)."""
    client: str = ""


# -- requests --------------------------------------------------------------------------------


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


def grpc_frame(message: bytes) -> bytes:
    """The message as it travels in an HTTP/2 DATA frame: uncompressed flag, length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


# -- CPU of a process tree -------------------------------------------------------------------


def process_tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid`` and its descendants (the gateway and its tgw-edge child), summed
    by process name."""
    stats: dict[int, tuple[str, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            stats[int(entry.name)] = (name, text.rsplit(")", 1)[1].split())
    tree = {pid}
    grew = True
    while grew:
        children = {p for p, (_, fields) in stats.items() if int(fields[1]) in tree} - tree
        grew = bool(children)
        tree |= children
    by_name: dict[str, float] = {}
    for p in tree:
        if p in stats:
            name, fields = stats[p]
            by_name[name] = by_name.get(name, 0.0) + (int(fields[11]) + int(fields[12]))
    return {name: ticks / CLOCK_TICKS for name, ticks in by_name.items()}


def tree_pids(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, ValueError, IndexError):
                continue
    tree = {pid}
    grew = True
    while grew:
        children = {p for p, parent in parents.items() if parent in tree} - tree
        grew = bool(children)
        tree |= children
    return tree


class CpuMeter:
    def __init__(self, pid: int | None) -> None:
        self._pid = pid
        self._before = process_tree_cpu(pid) if pid else {}

    def per_request(self, requests: int) -> tuple[float | None, dict[str, float]]:
        if not self._pid or not requests:
            return None, {}
        after = process_tree_cpu(self._pid)
        split = {
            name: (seconds - self._before.get(name, 0.0)) * 1e6 / requests
            for name, seconds in after.items()
        }
        return sum(split.values()), split


def percentiles(latencies_us: np.ndarray) -> tuple[float, float]:
    if latencies_us.size == 0:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(latencies_us, [50, 99])
    return float(p50), float(p99)


# -- tools: h2load, nginx --------------------------------------------------------------------


def ensure_tool(binary: str, package: str) -> str | None:
    """The path of ``binary``, installed from Debian's ``package`` when missing; None (said in
    one line) when it cannot be installed."""
    found = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").is_file() else None
    )
    if found:
        return found
    if shutil.which("apt-get") is None:
        print(
            f"{binary} is missing and apt-get is unavailable to install {package}", file=sys.stderr
        )
        return None
    print(f"installing {package} from Debian's packages", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(
            f"{binary} is missing and apt-get could not install {package}: {exc}", file=sys.stderr
        )
        return None
    return shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").is_file() else None
    )


def tool_version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def git_dirty() -> bool | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(done.stdout.strip()) if done.returncode == 0 else None


def start_nginx(
    binary: str, backend: str, workdir: Path, workers: int
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = workdir / "nginx.conf"
    # keepalive_requests: nginx's default (1000) ends long runs' connections early.
    config.write_text(
        f"worker_processes {workers}; daemon off; pid {workdir}/nginx.pid; "
        f"error_log {workdir}/nginx.err;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; upstream triton {{ server {backend}; keepalive 64; "
        "keepalive_requests 100000000; }\n"
        f"  server {{ listen 127.0.0.1:{port} http2; keepalive_requests 100000000;\n"
        # A stream's messages are one request body to nginx: no limit on its size.
        "    client_max_body_size 0;\n"
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


# -- one check with a real client ------------------------------------------------------------


def check_unary(target: Target, payload: bytes) -> bytes:
    """One ModelInfer with a real gRPC client: the answer's bytes, or an error raised."""
    assert target.preflight is not None
    call = target.preflight.unary_unary(INFER)
    answer: bytes = call(payload, timeout=CALL_TIMEOUT_S)
    return answer


# -- unary with h2load -----------------------------------------------------------------------

_H2LOAD_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_H2LOAD_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_H2LOAD_DATA = re.compile(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers .*?\((\d+)\) data")
_H2LOAD_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s)")


def h2load_round(
    h2load: str,
    target: Target,
    frame_file: Path,
    answer_bytes: int,
    concurrency: int,
    args: argparse.Namespace,
    log_file: Path,
    headers: tuple[str, ...] = (),
) -> tuple[int, int, float, np.ndarray, str]:
    """One closed-loop round: (answered OK, errors, seconds, latencies in µs, note).

    Bounded in time by ``-D`` only: h2load ignores ``-n`` in timing-based mode, and its
    connection timeout (``-T``) does not end a busy connection, so ``--max-requests`` does not
    apply to h2load rounds (the subprocess timeout is the hard bound)."""
    log_file.unlink(missing_ok=True)
    command = [
        h2load,
        "-c", "1",
        "-m", str(concurrency),
        "-t", "1",
        "-D", f"{max(1, round(args.duration * 1000))}ms",
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
        *itertools.chain.from_iterable(("-H", header) for header in headers),
        "-d", str(frame_file),
        "--log-file", str(log_file),
        f"http://{target.address}{INFER}",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.duration + 60, check=False
    )
    out = done.stdout
    if os.environ.get("BENCH_H2LOAD_DEBUG"):  # h2load's own report of every round
        print(out, file=sys.stderr)
    requests = _H2LOAD_REQUESTS.search(out)
    status = _H2LOAD_STATUS.search(out)
    traffic = _H2LOAD_DATA.search(out)
    finished = _H2LOAD_FINISHED.search(out)
    if not (requests and status and traffic and finished):
        raise RuntimeError(f"h2load output not understood:\n{out}\n{done.stderr}")
    _, _, _, succeeded, failed, errored, timeouts = map(int, requests.groups())
    ok_http = int(status.group(1))
    data_bytes = int(traffic.group(3))
    seconds = float(finished.group(1)) / (1000.0 if finished.group(2) == "ms" else 1.0)
    # A gRPC error is a trailers-only answer (HTTP 200, no DATA): every OK answer carries one
    # framed response message, so the data received says how many answers were OK.
    with_message = min(ok_http, data_bytes // answer_bytes) if answer_bytes else ok_http
    errors = (ok_http - with_message) + (succeeded - ok_http) + (failed - timeouts) + errored
    rows = np.loadtxt(log_file, dtype=np.int64, ndmin=2) if log_file.stat().st_size else None
    latencies = (
        rows[rows[:, 1] == 200, 2].astype(np.float64)
        if rows is not None
        else np.empty(0, dtype=np.float64)
    )
    note = f"cut at the end: {timeouts}" if timeouts else ""
    return with_message, errors, seconds, latencies, note


# -- unary with the Python client (when h2load is not there) ---------------------------------


async def python_closed_loop(
    address: str, payload: bytes, concurrency: int, duration_s: float, max_requests: int
) -> tuple[list[int], int]:
    latencies: list[int] = []
    errors = 0
    deadline = time.monotonic() + duration_s
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(INFER)

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline and len(latencies) + errors < max_requests:
                started = time.perf_counter_ns()
                try:
                    await infer(payload, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter_ns() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


# -- streams ---------------------------------------------------------------------------------


def stream_answer_ok(answer: object) -> bool:
    return isinstance(answer, bytes) and bool(answer) and answer[0] == STREAM_OK_TAG


async def ping_pong(
    call: Any, payload: bytes, deadline: float, max_requests: int
) -> tuple[list[int], int]:
    latencies: list[int] = []
    errors = 0
    while time.monotonic() < deadline and len(latencies) + errors < max_requests:
        sent = time.perf_counter_ns()
        await call.write(payload)
        answer = await call.read()
        if stream_answer_ok(answer):
            latencies.append(time.perf_counter_ns() - sent)
        else:
            errors += 1
            if not isinstance(answer, bytes):
                break  # the stream ended
    await call.done_writing()
    return latencies, errors


async def pipelined(
    call: Any, payload: bytes, outstanding: int, deadline: float, max_requests: int
) -> tuple[list[int], int]:
    latencies: list[int] = []
    errors = 0
    slots = asyncio.Semaphore(outstanding)
    sent_at: deque[int] = deque()

    async def writer() -> None:
        count = 0
        while time.monotonic() < deadline and count < max_requests:
            await slots.acquire()
            sent_at.append(time.perf_counter_ns())
            await call.write(payload)
            count += 1
        await call.done_writing()

    writing = asyncio.ensure_future(writer())
    try:
        while True:
            answer = await call.read()
            if not isinstance(answer, bytes):
                break  # the stream ended: the writer is done and every answer is in
            now = time.perf_counter_ns()
            slots.release()
            sent = sent_at.popleft()
            if stream_answer_ok(answer):
                latencies.append(now - sent)
            else:
                errors += 1
    except BaseException:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
            await writing  # its failure is the reader's
        raise
    await writing
    return latencies, errors + len(sent_at)  # sent and never answered


async def stream_round(
    address: str, payload: bytes, outstanding: int, duration_s: float, max_requests: int
) -> tuple[int, int, float, np.ndarray]:
    """One ModelStreamInfer stream, ``outstanding`` requests in flight (1: ping-pong): (OK
    answers, errors, seconds, latencies in µs). Answers come in request order on a stream (a
    model that is not decoupled), so each answer is timed against the oldest request."""
    async with grpc.aio.insecure_channel(address) as channel:
        method = channel.stream_stream(STREAM)  # no serializers: bytes in, bytes out
        call = method(timeout=duration_s + 60)
        await call.write(payload)  # warm the stream outside the measurement
        first = await call.read()
        if not stream_answer_ok(first):
            raise RuntimeError(f"stream warm-up answer is not OK: {first!r:.200}")
        started = time.perf_counter()
        deadline = time.monotonic() + duration_s
        if outstanding == 1:
            latencies, errors = await ping_pong(call, payload, deadline, max_requests)
        else:
            latencies, errors = await pipelined(call, payload, outstanding, deadline, max_requests)
        seconds = time.perf_counter() - started
        if await call.code() != grpc.StatusCode.OK:
            errors += 1
        values = np.array(latencies, dtype=np.float64) / 1000.0
        return len(latencies), errors, seconds, values


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "unary" | "stream"
    concurrency: int


def workloads(args: argparse.Namespace) -> list[Workload]:
    result: list[Workload] = []
    if "unary" in args.workloads:
        result += [Workload(f"unary c={c}", "unary", c) for c in args.concurrency]
    if "stream" in args.workloads:
        result.append(Workload("stream ping-pong", "stream", 1))
        result.append(Workload(f"stream pipelined K={args.pipeline}", "stream", args.pipeline))
    return result


def measure(
    workload: Workload,
    model: str,
    payload: bytes,
    target: Target,
    args: argparse.Namespace,
    h2load: str | None,
    files: dict[str, tuple[Path, int]],
    workdir: Path,
) -> Round:
    note = ""
    if workload.kind == "unary":
        answer = check_unary(target, payload)  # a real client first: the target answers OK
        frame_file, _ = files[model]
        answer_bytes = len(grpc_frame(answer))
        meter = CpuMeter(target.pid)
        if h2load:
            client = "h2load"
            ok, errors, seconds, latencies, note = h2load_round(
                h2load, target, frame_file, answer_bytes, workload.concurrency, args,
                workdir / "h2load.log",
            )  # fmt: skip
        else:
            client = "python grpc.aio"
            started = time.perf_counter()
            loop = python_closed_loop(
                target.address, payload, workload.concurrency, args.duration, args.max_requests
            )
            raw, errors = asyncio.run(loop)
            seconds = time.perf_counter() - started
            ok, latencies = len(raw), np.array(raw, dtype=np.float64) / 1000.0
    else:
        client = "python grpc.aio stream"
        meter = CpuMeter(target.pid)
        ok, errors, seconds, latencies = asyncio.run(
            stream_round(
                target.address, payload, workload.concurrency, args.duration, args.max_requests
            )
        )
    cpu, split = meter.per_request(ok)
    p50, p99 = percentiles(latencies)
    if note:
        client = f"{client} ({note})"
    return Round(
        workload=workload.name,
        model=model,
        target=target.name,
        concurrency=workload.concurrency,
        requests=ok,
        errors=errors,
        seconds=seconds,
        p50_us=p50,
        p99_us=p99,
        cpu_us_per_request=cpu,
        cpu_split_us=split,
        client=client,
    )


def summarize(rounds: list[Round], workload: str, model: str) -> list[dict[str, Any]]:
    mine = [r for r in rounds if r.workload == workload and r.model == model]

    def median(target: str, attr: str) -> float:
        values = [getattr(r, attr) for r in mine if r.target == target]
        values = [v for v in values if v is not None and not math.isnan(v)]
        return float(np.median(values)) if values else float("nan")

    def rps(target: str) -> float:
        values = [r.requests / r.seconds for r in mine if r.target == target and r.seconds > 0]
        return float(np.median(values)) if values else float("nan")

    rows: list[dict[str, Any]] = []
    for target in dict.fromkeys(r.target for r in mine):
        split_names = sorted({n for r in mine if r.target == target for n in r.cpu_split_us})
        split = {
            name: float(
                np.median([r.cpu_split_us.get(name, 0.0) for r in mine if r.target == target])
            )
            for name in split_names
        }
        rows.append(
            {
                "workload": workload,
                "model": model,
                "target": target,
                "rounds": sum(1 for r in mine if r.target == target),
                "requests": sum(r.requests for r in mine if r.target == target),
                "errors": sum(r.errors for r in mine if r.target == target),
                "p50_us": median(target, "p50_us"),
                "p99_us": median(target, "p99_us"),
                "added_p50_us": median(target, "p50_us") - median("direct", "p50_us"),
                "added_p99_us": median(target, "p99_us") - median("direct", "p99_us"),
                "rps": rps(target),
                "throughput_ratio": rps(target) / rps("direct"),
                "cpu_us_per_request": median(target, "cpu_us_per_request"),
                "cpu_split_us": split,
            }
        )
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(h2load: str | None, nginx: str | None) -> dict[str, Any]:
    try:
        memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        memory_kib = 0
    edge = ROOT / ".venv" / "bin" / EDGE_BINARY
    return {
        "host": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
        "h2load": tool_version([h2load, "--version"]) if h2load else None,
        "nginx": tool_version([nginx, "-v"]) if nginx else None,
        "tgw_edge": tool_version([str(edge), "--version"]) if edge.is_file() else None,
        "tgw_edge_sha256": (
            hashlib.sha256(edge.read_bytes()).hexdigest()[:16] if edge.is_file() else None
        ),
        "git_commit": tool_version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "git_dirty": git_dirty(),
    }


def split_text(split: dict[str, float]) -> str:
    if len(split) < 2:
        return ""
    # An A/B build runs under its own file name (tgw-edge-NAME, cut to 15 characters).
    order = sorted(split.items(), key=lambda item: (not item[0].startswith(EDGE_BINARY), item[0]))
    return "+".join(f"{value:.0f}" for _, value in order) + (
        " (edge+ctl)" if order[0][0].startswith(EDGE_BINARY) else ""
    )


def print_table(summary: list[dict[str, Any]]) -> None:
    header = (
        f"{'workload':<22} {'model':<8} {'target':<8} {'p50 us':>8} {'+p50':>7} "
        f"{'p99 us':>8} {'+p99':>7} {'rps':>7} {'ratio':>6} {'cpu us/req':>10}  "
        f"{'errors':>6}  cpu split"
    )
    print(header)
    for row in summary:
        direct = row["target"] == "direct"
        cpu = row["cpu_us_per_request"]
        added_p50 = "" if direct else f"{row['added_p50_us']:+.0f}"
        added_p99 = "" if direct else f"{row['added_p99_us']:+.0f}"
        cpu_text = "" if math.isnan(cpu) else f"{cpu:.0f}"
        print(
            f"{row['workload']:<22} {row['model']:<8} {row['target']:<8} "
            f"{row['p50_us']:>8.0f} {added_p50:>7} "
            f"{row['p99_us']:>8.0f} {added_p99:>7} "
            f"{row['rps']:>7.0f} {row['throughput_ratio']:>6.2f} "
            f"{cpu_text:>10}  {row['errors']:>6}  "
            f"{split_text(row['cpu_split_us'])}"
        )


def iterate(
    groups: list[tuple[Workload, str]], reps: int, targets: list[Target]
) -> Iterator[tuple[Workload, str, Target]]:
    for workload, model in groups:
        for _ in range(reps):
            for target in targets:
                yield workload, model, target


def stop(target: Target) -> None:
    if target.preflight is not None:
        target.preflight.close()
    process = target.process
    if process is None:
        return
    pids = tree_pids(process.pid) - {process.pid}
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    for pid in pids:  # a tgw-edge (its own session) the gateway did not stop
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        time.sleep(1.0)
        with contextlib.suppress(OSError):
            os.kill(pid, 9)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap per round")
    parser.add_argument("--reps", type=int, default=3, help="rounds per target and workload")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 32], help="unary calls in flight"
    )
    parser.add_argument(
        "--pipeline", type=int, default=32, help="requests in flight on the pipelined stream"
    )
    parser.add_argument(
        "--workloads", nargs="+", default=["unary", "stream"], choices=["unary", "stream"]
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["simple"],
        choices=["simple", "identity"],
        help="simple: 2x64 B in; identity: a large tensor (--payload-kib) in and out",
    )
    parser.add_argument("--payload-kib", type=int, default=64, help="identity tensor size")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["edge", "nginx"],
        choices=["edge", "nginx"],
        help="proxies to compare with direct Triton",
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="edge worker threads (setting edge.threads; shipped: 1); several values start "
        "one gateway each (edge-t1, edge-t2, ...)",
    )
    parser.add_argument(
        "--edge-binaries",
        type=Path,
        nargs="+",
        default=None,
        help="compare tgw-edge builds: one gateway per binary (edge-NAME), in place of 'edge'",
    )
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes")
    parser.add_argument(
        "--unary-client",
        choices=["h2load", "python"],
        default="h2load",
        help="load generator for unary rounds (python: grpc.aio, competes for CPU)",
    )
    parser.add_argument("--triton-home", type=Path, default=ROOT / ".triton")
    parser.add_argument("--json", type=Path, default=None, help="write everything here")
    return parser.parse_args()


def describe_configuration(args: argparse.Namespace, h2load: str | None) -> dict[str, Any]:
    threads = f"edge.threads {' / '.join(map(str, args.threads))}" if args.threads else None
    return {
        "gateway": "shipped settings (config/gateway.yaml defaults, edge.threads 1) except: "
        "listen on a free 127.0.0.1 port, one backend, metrics on a free port, logging "
        "warning/json" + (f"; {threads}" if threads else ""),
        "nginx": f"worker_processes {args.nginx_workers}, grpc_pass, upstream keepalive 64",
        "triton": "one local tritonserver 2.51 (nvidia-pytriton), simple and identity served "
        "by the Python backend (onnxruntime), shared by all targets",
        "unary_client": (
            "h2load, one connection, N streams in flight" if h2load else "python grpc.aio"
        ),
        "stream_client": "python grpc.aio, one stream, pre-serialized requests",
        "duration_s": args.duration,
        "max_requests": args.max_requests,
        "reps": args.reps,
        "pipeline": args.pipeline,
        "payload_kib": args.payload_kib,
    }


def start_targets(
    args: argparse.Namespace, backend: str, workdir: Path, nginx: str | None, targets: list[Target]
) -> None:
    """Appends the proxies to ``targets`` (already holding direct) as they start."""
    for binary in args.edge_binaries or []:
        # A/B of edge builds: the same shipped settings, another tgw-edge.
        name = f"edge-{binary.name}"
        sections = {"edge": {"binary": str(binary.resolve())}}
        process, address = start_gateway(
            [("triton-0", backend)], workdir, name=name, sections=sections
        )
        targets.append(Target(name, address, process.pid, process))
    if "edge" in args.targets and not args.edge_binaries:
        for threads in args.threads or [None]:
            several = args.threads is not None and len(args.threads) > 1
            name = f"edge-t{threads}" if several else "edge"
            sections = {"edge": {"threads": threads}} if threads else None
            process, address = start_gateway(
                [("triton-0", backend)], workdir, name=name, sections=sections
            )
            targets.append(Target(name, address, process.pid, process))
    if nginx:
        process, address = start_nginx(nginx, backend, workdir, args.nginx_workers)
        targets.append(Target("nginx", address, process.pid, process))
    for target in targets:
        target.preflight = grpc.insecure_channel(target.address)


def compare_answers(targets: list[Target], payloads: dict[str, bytes]) -> None:
    """Every target answers as direct Triton does before anything is measured."""
    for model, payload in payloads.items():
        expected = service_pb2.ModelInferResponse.FromString(check_unary(targets[0], payload))
        for target in targets[1:]:
            got = service_pb2.ModelInferResponse.FromString(check_unary(target, payload))
            if list(got.raw_output_contents) != list(expected.raw_output_contents):
                print(f"  {target.name}: {model} answers differ from direct", file=sys.stderr)


def run_rounds(
    args: argparse.Namespace,
    targets: list[Target],
    payloads: dict[str, bytes],
    h2load: str | None,
    workdir: Path,
) -> tuple[list[Round], list[dict[str, str]]]:
    files = {}
    for model, payload in payloads.items():
        files[model] = (workdir / f"{model}.grpc", len(payload))
        files[model][0].write_bytes(grpc_frame(payload))
    rounds: list[Round] = []
    failures: list[dict[str, str]] = []
    groups = list(itertools.product(workloads(args), args.models))
    for workload, model, target in iterate(groups, args.reps, targets):
        payload = payloads[model]  # a stream message is a ModelInferRequest too
        try:
            result = measure(workload, model, payload, target, args, h2load, files, workdir)
        except (grpc.RpcError, RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"  {workload.name} {model} {target.name}: round failed: {exc}", file=sys.stderr)
            failures.append(
                {
                    "workload": workload.name,
                    "model": model,
                    "target": target.name,
                    "error": str(exc),
                }
            )
            continue
        rounds.append(result)
        cpu = result.cpu_us_per_request
        print(
            f"  {workload.name:<22} {model:8} {target.name:8} "
            f"n={result.requests:<7} err={result.errors} "
            f"p50={result.p50_us:7.0f}us p99={result.p99_us:7.0f}us "
            f"rps={result.requests / result.seconds:7.0f}"
            + (f" cpu={cpu:.0f}us/req" if cpu is not None else ""),
            file=sys.stderr,
        )
    return rounds, failures


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    configuration: dict[str, Any],
    rounds: list[Round],
    failures: list[dict[str, str]],
) -> None:
    summary = [
        row
        for workload, model in itertools.product(workloads(args), args.models)
        for row in summarize(rounds, workload.name, model)
    ]
    print(
        f"\nmachine: {info['nproc']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB, "
        f"Python {info['python']}; load average at start "
        f"{info['load_average_at_start'][0]:.2f}, at end {info['load_average_at_end'][0]:.2f}"
    )
    print(f"gateway: {configuration['gateway']}")
    print(f"nginx: {configuration['nginx']}")
    print(
        f"unary client: {configuration['unary_client']}; streams: "
        f"{configuration['stream_client']}; {args.reps} rounds of {args.duration:g} s "
        "per target, interleaved; medians of rounds\n"
    )
    print_table(summary)
    if failures:
        print(f"\n{len(failures)} rounds failed (above, and in the JSON): not in the table")
    if args.json:
        document = {
            "command": [sys.executable, "-m", "load_tests.bench_gateway", *sys.argv[1:]],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": info,
            "configuration": configuration,
            "rounds": [asdict(r) for r in rounds],
            "failed_rounds": failures,
            "summary": summary,
        }
        args.json.write_text(json.dumps(document, indent=2))
        print(f"\nJSON: {args.json}")


def main() -> None:
    args = parse_args()
    h2load = None
    if "unary" in args.workloads and args.unary_client == "h2load":
        h2load = ensure_tool("h2load", "nghttp2-client")
        if h2load is None:
            print("unary rounds use the Python grpc.aio client instead", file=sys.stderr)
    nginx = ensure_tool("nginx", "nginx-light") if "nginx" in args.targets else None
    if "nginx" in args.targets and nginx is None:
        print("nginx left out of the targets", file=sys.stderr)
    installation = TritonInstallation.locate(args.triton_home)
    payloads = {"simple": simple_request(), "identity": identity_request(args.payload_kib)}
    payloads = {model: payloads[model] for model in args.models}
    info = machine(h2load, nginx)
    configuration = describe_configuration(args, h2load)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        specs = [ServerSpec("triton-0", models=("simple", "identity"))]
        with LocalFleet(installation, ROOT / "model_repository", workdir / "fleet", specs) as fleet:
            backend = fleet.servers["triton-0"].address
            targets = [Target("direct", backend)]
            try:
                start_targets(args, backend, workdir, nginx, targets)
                compare_answers(targets, payloads)
                rounds, failures = run_rounds(args, targets, payloads, h2load, workdir)
            finally:
                for target in targets:
                    stop(target)
    info["load_average_at_end"] = list(os.getloadavg())
    report(args, info, configuration, rounds, failures)


if __name__ == "__main__":
    main()
