"""Hostile clients against a gateway process (tgw-edge in front): one attack at a time, measured.

    .venv/bin/python -m load_tests.hostile                          # every attack
    .venv/bin/python -m load_tests.hostile framing slow_reader --json /tmp/hostile.json
    .venv/bin/python -m load_tests.hostile --edge-binary /tmp/bin/tgw-edge --triton-home .triton

Starts three local Triton servers and a gateway process (shipped settings, loopback ports),
then runs each attack with raw HTTP/2 (h2c, prior knowledge) while a well-behaved client sends
small `simple` ModelInfer calls (and, one call in four, ServerReady, which tgw-edge hands to the
Python gateway), and samples RSS and open fds of the gateway process and of its tgw-edge child
every 50 ms. Per attack it prints the gRPC status answered (and how long it took), Triton's own
answer to the same bytes where that makes sense, the other client's calls (ok / failed, p99),
and RSS / fds before, at peak and after the attack (once settled). Fresh calls then probe the
gateway; one left broken (or with a breaker open) is noted and replaced for the next attack.
anonymous_load runs last, on a fleet of its own: before the fix it changes the backends.

To measure another build, run this file from that tree (its `gateway` package is imported) and
name its edge: `cd /tmp/before && PYTHONPATH=/tmp/before /work/main/.venv/bin/python -m
load_tests.hostile --edge-binary /tmp/before-bin/tgw-edge --triton-home /work/main/.triton`.

- continuation_flood: HEADERS without END_HEADERS, then CONTINUATION frames (up to 64 MiB).
- ping_flood, settings_flood: PING / SETTINGS frames from a client that never reads.
- idle_connections: 1,100 TCP connections that never send the preface; new clients meanwhile.
- framing: ModelInfer with a lying length prefix, a truncated prefix, no body, a compressed
  flag without grpc-encoding, and a valid one; through the gateway and straight to Triton.
- slow_reader: window 0, twelve 2 MiB identity answers stuck; in-flight gauge after disconnect.
- header_poison: 8-16 KiB metadata, grpc-timeout `abc` / `999999999S`, grpc-encoding `bogus`.
- grpc_timeout_huge: grpc-timeout `2562047H` and `99999999H` on a valid call.
- long_name: a 300-char and a 64 KiB model name, a 300-char version, version `abc`.
- stream_malformed: a ModelStreamInfer message of garbage between two valid ones.
- handover_port: TCP listeners of both processes besides the public and metrics ports, and
  whether a forged `x-gateway-tried` call gets through the Python gateway's private port.
- anonymous_load: RepositoryModelLoad of a Python model writing a marker file; an anonymous
  RepositoryModelUnload('identity').
- shm_notfound: 50 calls naming an unknown shared-memory region: status, breakers, fallback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2

from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.devfleet.fleet import free_port
from load_tests.gateway_process import start_gateway
from tests.support.raw_h2 import (
    ACK,
    CONTINUATION,
    HEADERS,
    PING,
    SETTINGS,
    GrpcAnswer,
    H2Client,
    RawConnection,
    frame,
    grpc_frame,
    peer_closed,
    settings_payload,
)

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "/inference.GRPCInferenceService/"
INFER = SERVICE + "ModelInfer"
STREAM_INFER = SERVICE + "ModelStreamInfer"
MODEL_READY = SERVICE + "ModelReady"
SERVER_READY = SERVICE + "ServerReady"
REPOSITORY_LOAD = SERVICE + "RepositoryModelLoad"
REPOSITORY_UNLOAD = SERVICE + "RepositoryModelUnload"
MIB = 1024 * 1024
SAMPLE_PERIOD_S = 0.05
FALLBACK = ("x-gateway-served-by", "fallback")


# Requests.


def infer_request(
    model: str = "simple", version: str = "", *, shm_region: str | None = None
) -> bytes:
    """A serialized ModelInferRequest for ``simple``; ``shm_region`` names the inputs'
    shared-memory region instead of sending their bytes."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        if shm_region is None:
            request.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
        else:
            tensor.parameters["shared_memory_region"].string_param = shm_region
            tensor.parameters["shared_memory_byte_size"].int64_param = 64
    return bytes(request.SerializeToString())


def identity_request(nbytes: int) -> bytes:
    """A ModelInferRequest for ``identity`` whose answer is ``nbytes`` of FP32."""
    count = nbytes // 4
    request = service_pb2.ModelInferRequest(model_name="identity")
    request.inputs.add(name="INPUT", datatype="FP32", shape=[count])
    request.raw_input_contents.append(np.ones(count, dtype=np.float32).tobytes())
    return bytes(request.SerializeToString())


# What the processes hold.


@dataclass(frozen=True, slots=True)
class Usage:
    rss_kib: int
    fds: int


def usage(pid: int) -> Usage | None:
    """VmRSS and open file descriptors of ``pid``; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), "0")
    return Usage(int(rss), fds)


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(child) for child in text.split()]
    return found


def edge_child(gateway_pid: int) -> int | None:
    """The tgw-edge process the gateway started, if any."""
    for child in children(gateway_pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/comm").read_text().strip() == "tgw-edge":
                return child
    return None


def open_files_limit(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return None


@dataclass
class Figures:
    """RSS (KiB) and fds of one process before, at peak during, and after an attack."""

    before: Usage | None = None
    peak: Usage | None = None
    after: Usage | None = None

    def observe(self, seen: Usage | None) -> None:
        if seen is None:
            return
        if self.peak is None:
            self.peak = seen
        else:
            self.peak = Usage(max(self.peak.rss_kib, seen.rss_kib), max(self.peak.fds, seen.fds))

    def rss_growth_kib(self) -> int | None:
        if self.before is None or self.after is None:
            return None
        return self.after.rss_kib - self.before.rss_kib

    def rss_peak_growth_kib(self) -> int | None:
        if self.before is None or self.peak is None:
            return None
        return self.peak.rss_kib - self.before.rss_kib

    def fds_growth(self) -> int | None:
        if self.before is None or self.after is None:
            return None
        return self.after.fds - self.before.fds


class Sampler:
    """Samples the processes every 50 ms on a thread of its own while in its ``with`` block."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.figures = {name: Figures(before=usage(pid)) for name, pid in pids.items()}
        self._pids = pids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_PERIOD_S):
            for name, pid in self._pids.items():
                self.figures[name].observe(usage(pid))

    def settle(self, timeout_s: float) -> None:
        """Record 'after' once fds and RSS stop moving (three equal samples), bounded."""
        deadline = time.monotonic() + timeout_s
        history: list[tuple[Usage | None, ...]] = []
        while True:
            history.append(tuple(usage(pid) for pid in self._pids.values()))
            if (len(history) >= 3 and _steady(history[-3:])) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for name, seen in zip(self._pids, history[-1], strict=True):
            self.figures[name].after = seen
            self.figures[name].observe(seen)


def _steady(samples: Sequence[tuple[Usage | None, ...]]) -> bool:
    for column in zip(*samples, strict=True):
        if any(seen is None for seen in column):
            continue
        fds = {seen.fds for seen in column if seen}
        rss = [seen.rss_kib for seen in column if seen]
        if len(fds) > 1 or max(rss) - min(rss) > 512:
            return False
    return True


# The well-behaved client.


@dataclass
class LoadSummary:
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    """Method and status → calls."""
    examples: dict[str, str] = field(default_factory=dict)
    """Method and status → the message of the first such failure."""
    p99_ms: float | None = None
    max_ms: float | None = None

    @property
    def failures(self) -> int:
        return sum(self.failed.values())


class OthersLoad:
    """A well-behaved client while in its ``with`` block: small ``simple`` ModelInfer calls
    (routed by tgw-edge to Triton) and, one call in four, ServerReady (which tgw-edge hands to
    the Python gateway), at a steady rate on one grpc.aio channel with a thread and event loop
    of its own; bounded by ``max_s``. Failures are counted by method and status."""

    def __init__(self, address: str, rate: float, timeout_s: float, max_s: float) -> None:
        self._address, self._rate, self._timeout_s, self._max_s = address, rate, timeout_s, max_s
        self._stop = threading.Event()
        self._latencies_ms: list[float] = []
        self._codes: Counter[str] = Counter()
        self._examples: dict[str, str] = {}
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run()), name="others", daemon=True
        )

    def __enter__(self) -> OthersLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self._timeout_s + 5)

    def summary(self) -> LoadSummary:
        ok = self._codes.get("OK", 0)
        failed = {code: n for code, n in self._codes.items() if code != "OK"}
        summary = LoadSummary(ok=ok, failed=failed, examples=dict(self._examples))
        if self._latencies_ms:
            summary.p99_ms = round(float(np.percentile(self._latencies_ms, 99)), 2)
            summary.max_ms = round(max(self._latencies_ms), 2)
        return summary

    async def _run(self) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(self._address, options=options) as channel:
            calls = [
                ("ModelInfer", channel.unary_unary(INFER), infer_request()),
                ("ServerReady", channel.unary_unary(SERVER_READY), b""),
            ]
            tasks: set[asyncio.Task[None]] = set()
            period = 1.0 / self._rate
            started = time.monotonic()
            next_at = started
            sent = 0
            while not self._stop.is_set() and time.monotonic() - started < self._max_s:
                task = asyncio.create_task(self._one(*calls[1 if sent % 4 == 3 else 0]))
                sent += 1
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks, timeout=self._timeout_s + 1)

    async def _one(
        self, method: str, call: grpc.aio.UnaryUnaryMultiCallable, payload: bytes
    ) -> None:
        started = time.perf_counter()
        try:
            await call(payload, timeout=self._timeout_s)
            code = "OK"
        except grpc.aio.AioRpcError as error:
            code = f"{method} {error.code().name}"
            self._examples.setdefault(code, error.details() or "")
        self._latencies_ms.append((time.perf_counter() - started) * 1000)
        self._codes[code] += 1


# What an attack found.


@dataclass
class Outcome:
    """One answer: a gRPC status name (or what happened instead), its message, and the time
    from the last request byte to the answer."""

    code: str
    message: str = ""
    elapsed_s: float | None = None
    served_by: str = ""

    @classmethod
    def of(cls, answer: GrpcAnswer) -> Outcome:
        served_by = answer.trailers.get("x-gateway-served-by") or answer.headers.get(
            "x-gateway-served-by", ""
        )
        return cls(answer.code, answer.message, _round(answer.elapsed_s), served_by)

    def describe(self, limit: int = 90) -> str:
        message = self.message if len(self.message) <= limit else self.message[:limit] + "..."
        return f"{self.code}: {message}" if message else self.code


@dataclass
class Finding:
    """What the attack got from the gateway (case → outcome), what Triton answers to the same
    bytes, when the gateway reacted, and whatever else the attack measured."""

    gateway: dict[str, Outcome]
    triton: dict[str, Outcome] = field(default_factory=dict)
    time_to_answer_s: float | None = -1.0
    """Negative: the slowest of the gateway's answers. None: it never reacted."""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time_to_answer_s is not None and self.time_to_answer_s < 0:
            times = [o.elapsed_s for o in self.gateway.values() if o.elapsed_s is not None]
            self.time_to_answer_s = max(times) if times else None


@dataclass
class Report:
    attack: str
    finding: Finding
    others: LoadSummary
    processes: dict[str, Figures]
    """"gateway" and "edge"."""
    survived: dict[str, bool]
    """Whether each process was still running after the attack."""
    left_broken: list[str] = field(default_factory=list)
    """Fresh well-behaved calls that failed after the attack (see :func:`probe`)."""


@dataclass(frozen=True, slots=True)
class Params:
    """Sizes and bounds of the attacks; the defaults reproduce the defects within seconds."""

    call_timeout_s: float = 5.0
    continuation_bytes: int = 64 * MIB
    flood_frames: int = 4_000_000
    flood_max_s: float = 5.0
    idle_connections: int = 1100
    idle_wait_s: float = 15.0
    slow_reader_calls: int = 12
    slow_reader_bytes: int = 2 * MIB
    slow_reader_hold_s: float = 6.0
    """Longer than call_timeout_s: the other client's calls stuck behind it time out."""
    in_flight_wait_s: float = 90.0
    header_sizes: tuple[int, ...] = (8192, 12288, 16384)
    shm_calls: int = 50
    load_rate: float = 40.0
    min_load_s: float = 1.0
    settle_s: float = 5.0


@dataclass
class Target:
    """The gateway under attack and the fleet behind it."""

    gateway: str
    gateway_pid: int
    edge_pid: int | None
    metrics_port: int
    triton: dict[str, str]
    """Backend name → address."""
    workdir: Path
    admin_port: int = 0
    """The admin service (localhost, token-protected): a listener on purpose."""

    @property
    def public_port(self) -> int:
        return int(self.gateway.rsplit(":", 1)[1])

    @property
    def reference(self) -> str:
        """The Triton server asked for reference answers."""
        return next(iter(self.triton.values()))

    def pids(self) -> dict[str, int]:
        pids = {"gateway": self.gateway_pid}
        if self.edge_pid is not None:
            pids["edge"] = self.edge_pid
        return pids


# Plain gRPC calls (grpc, not raw HTTP/2) with trailing metadata.


def unary(
    address: str,
    path: str,
    payload: bytes,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    timeout_s: float = 5.0,
) -> tuple[Outcome, bytes]:
    """One call on a fresh connection of its own; the outcome and the response bytes."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    started = time.perf_counter()
    with grpc.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(path)
        try:
            response, state = call.with_call(payload, metadata=metadata, timeout=timeout_s)
        except grpc.RpcError as error:
            elapsed = time.perf_counter() - started
            trailing = dict(error.trailing_metadata() or ())
            code, details = error.code().name, error.details() or ""
            return Outcome(code, details, _round(elapsed), trailing.get(FALLBACK[0], "")), b""
        elapsed = time.perf_counter() - started
        trailing = dict(state.trailing_metadata() or ())
        return Outcome("OK", "", _round(elapsed), trailing.get(FALLBACK[0], "")), response


def model_ready(address: str, name: str) -> bool:
    request = service_pb2.ModelReadyRequest(name=name).SerializeToString()
    outcome, response = unary(address, MODEL_READY, request, timeout_s=5.0)
    return outcome.code == "OK" and service_pb2.ModelReadyResponse.FromString(response).ready


def scrape(metrics_port: int) -> list[tuple[str, dict[str, str], float]]:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def in_flight(metrics_port: int) -> float:
    """Calls in flight on both data paths, as the gateway's gauge says."""
    return sum(
        value
        for name, _, value in scrape(metrics_port)
        if name == "triton_gateway_in_flight_requests"
    )


def open_breakers(metrics_port: int) -> list[str]:
    return [
        "/".join(labels.values())
        for name, labels, value in scrape(metrics_port)
        if name in ("triton_gateway_backend_breaker_open", "triton_gateway_model_breaker_open")
        and value == 1
    ]


# Attacks. Each runs against the gateway (measured) and, where it makes sense, against Triton
# directly for the reference answer (before the measured window).


def _raw_calls(
    address: str, cases: dict[str, tuple[bytes | None, list[tuple[str, str]]]], timeout_s: float
) -> dict[str, Outcome]:
    """Each (body, metadata) case on a connection of its own; body None: END_STREAM on the
    headers."""
    outcomes = {}
    for case, (body, metadata) in cases.items():
        with H2Client(address, timeout_s=timeout_s) as client:
            outcomes[case] = Outcome.of(client.call(INFER, body, metadata, timeout_s))
    return outcomes


def _framing_cases() -> dict[str, tuple[bytes | None, list[tuple[str, str]]]]:
    message = infer_request()
    return {
        "long_prefix": (grpc_frame(message, declared=len(message) + 100), []),
        "truncated_prefix": (b"\x00\x00\x00", []),
        "no_body": (None, []),
        "compressed_no_encoding": (grpc_frame(message, compressed=True), []),
        "valid": (grpc_frame(message), []),
    }


def framing(target: Target, params: Params) -> Finding:
    return Finding(_raw_calls(target.gateway, _framing_cases(), params.call_timeout_s))


def framing_reference(target: Target, params: Params) -> dict[str, Outcome]:
    return _raw_calls(target.reference, _framing_cases(), params.call_timeout_s)


def _timeout_cases() -> dict[str, tuple[bytes | None, list[tuple[str, str]]]]:
    body = grpc_frame(infer_request())
    return {timeout: (body, [("grpc-timeout", timeout)]) for timeout in ("2562047H", "99999999H")}


def grpc_timeout_huge(target: Target, params: Params) -> Finding:
    return Finding(_raw_calls(target.gateway, _timeout_cases(), params.call_timeout_s))


def grpc_timeout_huge_reference(target: Target, params: Params) -> dict[str, Outcome]:
    return _raw_calls(target.reference, _timeout_cases(), params.call_timeout_s)


def _long_name_cases() -> dict[str, tuple[bytes | None, list[tuple[str, str]]]]:
    requests = {
        "name_300": infer_request("m" * 300),
        "name_64KiB": infer_request("m" * 65536),
        "version_300": infer_request("simple", "1" * 300),
        "version_abc": infer_request("simple", "abc"),
    }
    return {case: (grpc_frame(request), []) for case, request in requests.items()}


def long_name(target: Target, params: Params) -> Finding:
    return Finding(_raw_calls(target.gateway, _long_name_cases(), params.call_timeout_s))


def long_name_reference(target: Target, params: Params) -> dict[str, Outcome]:
    return _raw_calls(target.reference, _long_name_cases(), params.call_timeout_s)


def _poison_sequence(params: Params) -> list[tuple[str, list[tuple[str, str]]]]:
    big = [
        (f"metadata_{size // 1024}KiB", [("x-poison", "a" * size)]) for size in params.header_sizes
    ]
    return [
        *big,
        ("timeout_abc", [("grpc-timeout", "abc")]),
        ("timeout_9_digits", [("grpc-timeout", "999999999S")]),
        ("encoding_bogus", [("grpc-encoding", "bogus")]),
        ("valid_after", []),
    ]


def _poison(address: str, params: Params) -> tuple[dict[str, Outcome], int]:
    """The sequence on one connection (a new one only when the server closed it); the
    outcomes and how many connections it took."""
    body = grpc_frame(infer_request())
    outcomes: dict[str, Outcome] = {}
    connections = 1
    client = H2Client(address, timeout_s=params.call_timeout_s)
    try:
        for case, metadata in _poison_sequence(params):
            if client.closed:
                client.close()
                client = H2Client(address, timeout_s=params.call_timeout_s)
                connections += 1
            outcomes[case] = Outcome.of(client.call(INFER, body, metadata, params.call_timeout_s))
    finally:
        client.close()
    return outcomes, connections


def _unknown_model_call(address: str, timeout_s: float) -> Outcome:
    """A fresh client's call with a deadline that tgw-edge hands to the Python gateway."""
    return unary(address, INFER, infer_request("no-such-model"), timeout_s=timeout_s)[0]


def header_poison(target: Target, params: Params) -> Finding:
    outcomes, connections = _poison(target.gateway, params)
    outcomes["fresh_client_after"] = _unknown_model_call(target.gateway, params.call_timeout_s)
    return Finding(outcomes, details={"connections_used": connections})


def header_poison_reference(target: Target, params: Params) -> dict[str, Outcome]:
    outcomes = _poison(target.reference, params)[0]
    outcomes["fresh_client_after"] = _unknown_model_call(target.reference, params.call_timeout_s)
    return outcomes


def _describe_stream_messages(messages: Sequence[bytes]) -> list[str]:
    described = []
    for raw in messages:
        response = service_pb2.ModelStreamInferResponse.FromString(raw)
        described.append(
            f"error_message: {response.error_message}" if response.error_message else "OK"
        )
    return described


def _stream_exchange(address: str, timeout_s: float) -> dict[str, Outcome]:
    """valid, garbage, valid on one ModelStreamInfer stream: what came back after each, and the
    stream's final status."""
    valid = grpc_frame(infer_request())
    garbage = grpc_frame(b"\xff\xff\xff\xff\xff\xff")
    outcomes: dict[str, Outcome] = {}
    with H2Client(address, timeout_s=timeout_s) as client:
        stream = client.start(STREAM_INFER)
        seen = 0
        for step, body in (("first_valid", valid), ("garbage", garbage), ("second_valid", valid)):
            started = time.perf_counter()
            with contextlib.suppress(Exception):
                client.send(stream, body)
            messages = client.wait_messages(stream, seen + 1, min(timeout_s, 3.0))
            fresh = _describe_stream_messages(messages[seen:])
            seen = len(messages)
            elapsed = _round(time.perf_counter() - started) if fresh else None
            outcomes[step] = Outcome("; ".join(fresh) or "(no response message)", "", elapsed)
        with contextlib.suppress(Exception):
            client.send(stream, b"", end_stream=True)
        outcomes["stream_end"] = Outcome.of(client.answer(stream, timeout_s))
    return outcomes


def stream_malformed(target: Target, params: Params) -> Finding:
    return Finding(_stream_exchange(target.gateway, params.call_timeout_s))


def stream_malformed_reference(target: Target, params: Params) -> dict[str, Outcome]:
    return _stream_exchange(target.reference, params.call_timeout_s)


def _hpack_filler(size: int) -> bytes:
    """Whole literal header fields (without indexing, new name) filling ``size`` bytes."""
    field_ = b"\x00\x07x-flood\x64" + b"a" * 100
    return field_ * (size // len(field_))


def _continuation_flood(
    address: str, total_bytes: int, max_s: float
) -> tuple[Outcome, dict[str, Any]]:
    with RawConnection(address, timeout_s=2.0) as conn:
        conn.read(0.2)
        conn.send(frame(SETTINGS, ACK, 0, b""))
        conn.send(frame(HEADERS, 0, 1, RawConnection.header_block(address, INFER)))
        batch = frame(CONTINUATION, 0, 1, _hpack_filler(16384)) * 16
        sent, started = 0, time.perf_counter()
        stalled = False
        while sent < total_bytes and time.perf_counter() - started < max_s:
            if not conn.send(batch):
                stalled = not conn.closed
                break
            sent += len(batch)
            conn.read(0.001)
            if conn.closed or conn.goaway_code is not None or conn.resets:
                break
        reacted = time.perf_counter() - started
        conn.read(1.0, max_bytes=MIB)
        outcome = conn.outcome()
    if outcome == "open":
        outcome = "stopped reading" if stalled else f"no reaction to {sent // MIB} MiB"
    details = {"bytes_sent": sent, "server_stopped_reading": stalled}
    return Outcome(outcome, f"after {sent / MIB:.1f} MiB", _round(reacted)), details


def continuation_flood(target: Target, params: Params) -> Finding:
    outcome, details = _continuation_flood(target.gateway, params.continuation_bytes, 10.0)
    return Finding({"flood": outcome}, details=details)


def continuation_flood_reference(target: Target, params: Params) -> dict[str, Outcome]:
    return {"flood": _continuation_flood(target.reference, params.continuation_bytes, 10.0)[0]}


def _frame_flood(
    address: str, one: bytes, count: int, max_s: float
) -> tuple[Outcome, dict[str, Any]]:
    """``count`` copies of frame ``one`` from a client with a tiny receive buffer that reads
    nothing until the end."""
    per_write = 256
    with RawConnection(address, timeout_s=1.0, rcvbuf=4096) as conn:
        sent, started, stalled = 0, time.perf_counter(), False
        while sent < count and time.perf_counter() - started < max_s:
            if not conn.send(one * per_write, timeout_s=1.0):
                stalled = not conn.closed
                break
            sent += per_write
        reacted = time.perf_counter() - started
        conn.read(1.0, max_bytes=16 * MIB)
        outcome = conn.outcome()
    if outcome == "open":
        outcome = "stopped reading" if stalled else "read every frame"
    details = {"frames_sent": sent, "server_stopped_reading": stalled}
    return Outcome(outcome, f"after {sent} frames", _round(reacted)), details


def _ping() -> bytes:
    return frame(PING, 0, 0, b"hostile!")


def _settings() -> bytes:
    return frame(SETTINGS, 0, 0, settings_payload({1: 4096}))


def ping_flood(target: Target, params: Params) -> Finding:
    outcome, details = _frame_flood(
        target.gateway, _ping(), params.flood_frames, params.flood_max_s
    )
    return Finding({"flood": outcome}, details=details)


def ping_flood_reference(target: Target, params: Params) -> dict[str, Outcome]:
    return {
        "flood": _frame_flood(target.reference, _ping(), params.flood_frames, params.flood_max_s)[0]
    }


def settings_flood(target: Target, params: Params) -> Finding:
    outcome, details = _frame_flood(
        target.gateway, _settings(), params.flood_frames, params.flood_max_s
    )
    return Finding({"flood": outcome}, details=details)


def settings_flood_reference(target: Target, params: Params) -> dict[str, Outcome]:
    flood = _frame_flood(target.reference, _settings(), params.flood_frames, params.flood_max_s)
    return {"flood": flood[0]}


def _raise_own_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def _open_idle(address: str, count: int) -> tuple[list[socket.socket], str]:
    host, port = address.rsplit(":", 1)
    held: list[socket.socket] = []
    error = ""
    for _ in range(count):
        try:
            held.append(socket.create_connection((host, int(port)), timeout=2.0))
        except OSError as exc:
            error = f"connect {len(held) + 1} failed: {exc}"
            break
    return held, error


def _wait_closed(held: Sequence[socket.socket], wait_s: float) -> list[float]:
    """Seconds after which the server closed each connection (bounded wait)."""
    started = time.monotonic()
    closed_after: dict[int, float] = {}
    while len(closed_after) < len(held) and time.monotonic() - started < wait_s:
        for index, sock in enumerate(held):
            if index not in closed_after and peer_closed(sock):
                closed_after[index] = time.monotonic() - started
        time.sleep(0.1)
    return sorted(closed_after.values())


def idle_connections(target: Target, params: Params) -> Finding:
    _raise_own_fd_limit(params.idle_connections + 512)
    held, error = _open_idle(target.gateway, params.idle_connections)
    try:
        probe = unary(target.gateway, INFER, infer_request(), timeout_s=params.call_timeout_s)[0]
        closed = _wait_closed(held, params.idle_wait_s)
    finally:
        for sock in held:
            sock.close()
    all_closed = len(closed) == len(held)
    all_closed_after = _round(closed[-1]) if all_closed and closed else None
    code = f"{len(closed)}/{len(held)} closed"
    message = (
        f"all by {closed[-1]:.1f} s" if all_closed and closed else f"in {params.idle_wait_s} s"
    )
    details = {
        "opened": len(held),
        "connect_error": error,
        "closed": len(closed),
        "first_closed_after_s": _round(closed[0]) if closed else None,
        "all_closed_after_s": all_closed_after,
        "edge_open_files_limit": open_files_limit(target.edge_pid) if target.edge_pid else None,
    }
    return Finding(
        {"idle": Outcome(code, message, all_closed_after), "new_client": probe},
        time_to_answer_s=all_closed_after,
        details=details,
    )


def _wait_in_flight(metrics_port: int, at_most: float, wait_s: float) -> float | None:
    """Seconds until the in-flight gauge is at most ``at_most``; None if not within wait_s."""
    started = time.monotonic()
    while time.monotonic() - started < wait_s:
        with contextlib.suppress(OSError):
            if in_flight(metrics_port) <= at_most:
                return time.monotonic() - started
        time.sleep(0.25)
    return None


def slow_reader(target: Target, params: Params) -> Finding:
    body = grpc_frame(identity_request(params.slow_reader_bytes))
    baseline = in_flight(target.metrics_port)
    with H2Client(target.gateway, timeout_s=params.call_timeout_s, initial_window=0) as client:
        streams = []
        for _ in range(params.slow_reader_calls):
            stream = client.start(INFER)
            client.send(stream, body, end_stream=True)
            streams.append(stream)
        held_until = time.monotonic() + params.slow_reader_hold_s
        while time.monotonic() < held_until and not client.closed:
            client.pump(0.1)
        answered = sum(1 for stream in streams if client.streams[stream].headers)
        stuck = in_flight(target.metrics_port)
    drained_after = _wait_in_flight(target.metrics_port, baseline, params.in_flight_wait_s)
    details = {
        "headers_received": answered,
        "in_flight_while_stuck": stuck,
        "in_flight_zero_after_disconnect_s": _round(drained_after),
    }
    message = (
        f"in flight back to {baseline:g} {drained_after:.1f} s after disconnect"
        if drained_after is not None
        else f"in flight still > {baseline:g} {params.in_flight_wait_s} s after disconnect"
    )
    outcome = Outcome(
        f"{answered}/{len(streams)} answered (headers)", message, _round(drained_after)
    )
    return Finding(
        {"slow_reader": outcome}, time_to_answer_s=_round(drained_after), details=details
    )


def _listening_inodes(kind: str) -> dict[int, int]:
    """inode → port of the listening sockets of /proc/net/<kind> (tcp, tcp6)."""
    found: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/net/{kind}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    return inodes


def tcp_listeners(pid: int) -> list[int]:
    """Ports ``pid`` listens on over TCP (IPv4 and IPv6)."""
    listening = {**_listening_inodes("tcp"), **_listening_inodes("tcp6")}
    return sorted({listening[inode] for inode in _socket_inodes(pid) if inode in listening})


def unix_listeners(pid: int) -> list[dict[str, Any]]:
    """Unix sockets ``pid`` listens on: path and permission bits."""
    mine = _socket_inodes(pid)
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            accepting = int(fields[3], 16) & 0x10000
            if accepting and int(fields[6]) in mine:
                path = fields[7] if len(fields) > 7 else ""
                mode = None
                if path and not path.startswith("@"):
                    with contextlib.suppress(OSError):
                        mode = oct(os.stat(path).st_mode & 0o777)
                found.append({"path": path, "mode": mode})
    return found


def handover_port(target: Target, params: Params) -> Finding:
    known = {target.public_port, target.metrics_port, target.admin_port}
    extra = {
        name: [port for port in tcp_listeners(pid) if port not in known]
        for name, pid in target.pids().items()
    }
    forged = [("x-gateway-tried", next(iter(target.triton)))]
    outcomes = {}
    for name, ports in extra.items():
        for port in ports:
            address = f"127.0.0.1:{port}"
            outcomes[f"{name}:{port}"] = unary(
                address, INFER, infer_request(), metadata=forged, timeout_s=params.call_timeout_s
            )[0]
    if not outcomes:
        outcomes["private_tcp_port"] = Outcome(
            "none", "no TCP listener besides the public, metrics and admin ports"
        )
    # The admin port takes no inference and no admin call without the token.
    admin = f"127.0.0.1:{target.admin_port}"
    outcomes["admin_infer"] = unary(
        admin, INFER, infer_request(), metadata=forged, timeout_s=params.call_timeout_s
    )[0]
    outcomes["admin_without_token"] = unary(
        admin, "/tgw.admin.v1.GatewayAdmin/ListRoutes", b"", timeout_s=params.call_timeout_s
    )[0]
    details = {
        "extra_tcp_listeners": extra,
        "unix_listeners": {name: unix_listeners(pid) for name, pid in target.pids().items()},
    }
    return Finding(outcomes, details=details)


MARKER_MODEL = """import pathlib

pathlib.Path({marker!r}).write_text("written by an anonymous RepositoryModelLoad")


class TritonPythonModel:
    def execute(self, requests):
        return []
"""


def _load_request(marker: Path) -> bytes:
    config = {
        "name": "pwned",
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [1]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
    }
    request = service_pb2.RepositoryModelLoadRequest(model_name="pwned")
    request.parameters["config"].string_param = json.dumps(config)
    request.parameters["file:1/model.py"].bytes_param = MARKER_MODEL.format(
        marker=str(marker)
    ).encode()
    return bytes(request.SerializeToString())


def anonymous_load(target: Target, params: Params) -> Finding:
    marker = target.workdir / "pwned-marker"
    marker.unlink(missing_ok=True)
    load = unary(target.gateway, REPOSITORY_LOAD, _load_request(marker), timeout_s=60.0)[0]
    deadline = time.monotonic() + 2.0
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pwned_ready = {name: model_ready(address, "pwned") for name, address in target.triton.items()}
    unload_request = service_pb2.RepositoryModelUnloadRequest(model_name="identity")
    unload = unary(
        target.gateway, REPOSITORY_UNLOAD, unload_request.SerializeToString(), timeout_s=30.0
    )[0]
    identity_ready = {
        name: model_ready(address, "identity") for name, address in target.triton.items()
    }
    details = {
        "marker_written": marker.exists(),
        "pwned_ready": pwned_ready,
        "identity_ready_after_unload": identity_ready,
        "backends_alive": {name: _alive(address) for name, address in target.triton.items()},
    }
    return Finding({"load_pwned": load, "unload_identity": unload}, details=details)


def _alive(address: str) -> bool:
    request = service_pb2.ServerLiveRequest().SerializeToString()
    return unary(address, SERVICE + "ServerLive", request, timeout_s=3.0)[0].code == "OK"


def _shm_call(address: str, timeout_s: float) -> Outcome:
    return unary(address, INFER, infer_request(shm_region="nope"), timeout_s=timeout_s)[0]


def shm_notfound(target: Target, params: Params) -> Finding:
    outcomes = [_shm_call(target.gateway, params.call_timeout_s) for _ in range(params.shm_calls)]
    codes = Counter(outcome.code for outcome in outcomes)
    common = codes.most_common(1)[0][0]
    first = next(outcome for outcome in outcomes if outcome.code == common)
    summary = Outcome(
        f"{common} x{codes[common]}/{len(outcomes)}",
        first.message,
        max(o.elapsed_s or 0.0 for o in outcomes),
    )
    details = {
        "codes": dict(codes),
        "messages": sorted({o.describe(200) for o in outcomes}),
        "served_by_fallback": sum(1 for o in outcomes if o.served_by == FALLBACK[1]),
        "breakers_open": open_breakers(target.metrics_port),
    }
    return Finding({"shm_nope": summary}, details=details)


def shm_notfound_reference(target: Target, params: Params) -> dict[str, Outcome]:
    return {"shm_nope": _shm_call(target.reference, params.call_timeout_s)}


@dataclass(frozen=True, slots=True)
class Attack:
    name: str
    run: Callable[[Target, Params], Finding]
    reference: Callable[[Target, Params], dict[str, Outcome]] | None = None
    own_fleet: bool = False
    """Runs last, on a fleet and gateway of its own (it changes or may crash the backends)."""


ATTACKS: dict[str, Attack] = {
    attack.name: attack
    for attack in (
        Attack("continuation_flood", continuation_flood, continuation_flood_reference),
        Attack("ping_flood", ping_flood, ping_flood_reference),
        Attack("settings_flood", settings_flood, settings_flood_reference),
        Attack("idle_connections", idle_connections),
        Attack("framing", framing, framing_reference),
        Attack("slow_reader", slow_reader),
        Attack("header_poison", header_poison, header_poison_reference),
        Attack("grpc_timeout_huge", grpc_timeout_huge, grpc_timeout_huge_reference),
        Attack("long_name", long_name, long_name_reference),
        Attack("stream_malformed", stream_malformed, stream_malformed_reference),
        Attack("handover_port", handover_port),
        Attack("shm_notfound", shm_notfound, shm_notfound_reference),
        Attack("anonymous_load", anonymous_load, own_fleet=True),
    )
}


def measure(attack: Attack, target: Target, params: Params) -> Report:
    """Triton's reference answer first (unmeasured), then the attack on the gateway while the
    other client runs and the processes are sampled; 'after' once they settle."""
    reference = attack.reference(target, params) if attack.reference else {}
    load_cap_s = params.in_flight_wait_s + params.idle_wait_s + 120.0
    with Sampler(target.pids()) as sampler:
        with OthersLoad(
            target.gateway, params.load_rate, params.call_timeout_s, load_cap_s
        ) as load:
            started = time.monotonic()
            finding = attack.run(target, params)
            # Short attacks still get a second of the other client's calls.
            time.sleep(max(0.0, params.min_load_s - (time.monotonic() - started)))
        sampler.settle(params.settle_s)
    finding.triton = reference
    survived = {name: usage(pid) is not None for name, pid in target.pids().items()}
    broken = probe(target, params.call_timeout_s) if all(survived.values()) else []
    return Report(attack.name, finding, load.summary(), sampler.figures, survived, broken)


def probe(target: Target, timeout_s: float) -> list[str]:
    """Well-behaved calls from a fresh client after an attack, one per path: what failed."""
    expected = (
        ("routed ModelInfer", INFER, infer_request(), "OK"),
        ("handed-over ModelInfer", INFER, infer_request("no-such-model"), "NOT_FOUND"),
        ("ServerReady", SERVER_READY, b"", "OK"),
    )
    broken = []
    for name, path, payload, code in expected:
        outcome = unary(target.gateway, path, payload, timeout_s=timeout_s)[0]
        if outcome.code != code:
            broken.append(f"{name}: {outcome.describe()}")
    with contextlib.suppress(OSError):
        broken += [f"breaker open: {name}" for name in open_breakers(target.metrics_port)]
    return broken


# Fleet and gateway.


class Bench:
    """Local Triton servers (every example model) and a gateway process in front of them,
    which :meth:`restart_gateway` replaces when an attack killed or broke it."""

    def __init__(
        self,
        installation: TritonInstallation,
        workdir: Path,
        *,
        servers: int = 3,
        sections: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        specs = [ServerSpec(f"triton-{index}") for index in range(servers)]
        self._fleet = LocalFleet(installation, ROOT / "model_repository", workdir / "fleet", specs)
        self._workdir = workdir
        self._sections = sections or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._starts = 0
        self.target: Target | None = None

    def __enter__(self) -> Target:
        self._fleet.start()
        try:
            return self.restart_gateway()
        except BaseException:
            self._fleet.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._process is not None:
                _stop(self._process)
        finally:
            self._fleet.stop()

    def restart_gateway(self) -> Target:
        """Stop the gateway process (if any) and start a fresh one on new ports."""
        if self._process is not None:
            _stop(self._process)
        self._starts += 1
        metrics_port, admin_port = free_port(), free_port()
        self._process, address = start_gateway(
            [(s.name, s.address) for s in self._fleet.servers.values()],
            self._workdir,
            metrics_port=metrics_port,
            admin_port=admin_port,
            sections=self._sections,
            name=f"gateway-{self._starts}",
        )
        self.target = Target(
            gateway=address,
            gateway_pid=self._process.pid,
            edge_pid=_wait_edge(self._process.pid),
            metrics_port=metrics_port,
            triton={s.name: s.address for s in self._fleet.servers.values()},
            workdir=self._workdir,
            admin_port=admin_port,
        )
        return self.target

    def restart_dead_backends(self) -> list[str]:
        dead = [name for name, s in self._fleet.servers.items() if not s.is_running()]
        for name in dead:
            self._fleet.restart(name)
        return dead


def _wait_edge(gateway_pid: int, timeout_s: float = 5.0) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = edge_child(gateway_pid)
        if pid is not None:
            return pid
        time.sleep(0.1)
    return None


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(
    names: Sequence[str],
    installation: TritonInstallation,
    params: Params,
    *,
    sections: dict[str, dict[str, Any]] | None = None,
    on_report: Callable[[Report], None] = lambda report: None,
) -> list[Report]:
    """Every named attack in order, those needing a fleet of their own last, each in its own."""
    shared = [ATTACKS[name] for name in names if not ATTACKS[name].own_fleet]
    alone = [ATTACKS[name] for name in names if ATTACKS[name].own_fleet]
    reports: list[Report] = []
    groups = ([shared] if shared else []) + [[attack] for attack in alone]
    for group in groups:
        with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
            bench = Bench(installation, Path(tmp), sections=sections)
            with bench as first:
                target = first
                for index, attack in enumerate(group):
                    if index:
                        target = _fresh_if_harmed(bench, target, reports[-1])
                    report = measure(attack, target, params)
                    reports.append(report)
                    on_report(report)
    return reports


def _fresh_if_harmed(bench: Bench, target: Target, last: Report) -> Target:
    """A new gateway process (and restarted backends) when the last attack left damage, so
    that each attack is measured on its own."""
    dead = bench.restart_dead_backends()
    if dead:
        last.left_broken.append(f"backends died: {', '.join(dead)}")
    if last.left_broken or not all(last.survived.values()):
        return bench.restart_gateway()
    return target


# Output.

COLUMNS = (
    "attack", "status answered (gateway)", "Triton's answer", "time to answer",
    "others ok/failed", "others p99", "edge RSS MiB before/peak/after",
    "edge fds before/peak/after", "gateway RSS MiB before/peak/after",
    "gateway fds before/peak/after", "notes",
)  # fmt: skip


def _cases(outcomes: dict[str, Outcome]) -> str:
    if not outcomes:
        return "-"
    if len(outcomes) == 1:
        return _cell(next(iter(outcomes.values())).describe())
    return "<br>".join(_cell(f"{case}: {o.describe()}") for case, o in outcomes.items())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _triple(figures: Figures | None, pick: Callable[[Usage], float | int]) -> str:
    if figures is None:
        return "-"
    values = [figures.before, figures.peak, figures.after]
    return " / ".join("gone" if v is None else f"{pick(v):g}" for v in values)


def _mib(seen: Usage) -> float:
    return round(seen.rss_kib / 1024, 1)


def _fds(seen: Usage) -> int:
    return seen.fds


def _notes(report: Report) -> str:
    notes = [f"{k}={v}" for k, v in report.finding.details.items() if v not in (None, "", {}, [])]
    notes += [f"{name} DIED" for name, alive in report.survived.items() if not alive]
    notes += [f"LEFT BROKEN: {failure}" for failure in report.left_broken]
    notes += [f"others' {code}: {message!r}" for code, message in report.others.examples.items()]
    return _cell("; ".join(notes)) or "-"


def table(reports: Sequence[Report]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for report in reports:
        others = report.others
        failed = ", ".join(f"{code} {n}" for code, n in others.failed.items()) or "0"
        time_to_answer = report.finding.time_to_answer_s
        row = [
            report.attack,
            _cases(report.finding.gateway),
            _cases(report.finding.triton),
            "-" if time_to_answer is None else f"{time_to_answer:.3f} s",
            f"{others.ok} / {failed}",
            "-" if others.p99_ms is None else f"{others.p99_ms:.1f} ms",
            _triple(report.processes.get("edge"), _mib),
            _triple(report.processes.get("edge"), _fds),
            _triple(report.processes.get("gateway"), _mib),
            _triple(report.processes.get("gateway"), _fds),
            _notes(report),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hostile", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("attacks", nargs="*", metavar="ATTACK", help=", ".join(ATTACKS))
    parser.add_argument("--edge-binary", type=Path, help="tgw-edge to run (default: installed)")
    parser.add_argument("--triton-home", type=Path, default=ROOT / ".triton")
    parser.add_argument("--json", type=Path)
    defaults = Params()
    parser.add_argument("--idle-connections", type=int, default=defaults.idle_connections)
    parser.add_argument("--in-flight-wait", type=float, default=defaults.in_flight_wait_s)
    parser.add_argument("--continuation-mib", type=int, default=defaults.continuation_bytes // MIB)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.attacks) - set(ATTACKS))
    if unknown:
        parser.error(f"unknown attacks: {', '.join(unknown)}")
    params = replace(
        defaults,
        idle_connections=args.idle_connections,
        in_flight_wait_s=args.in_flight_wait,
        continuation_bytes=args.continuation_mib * MIB,
    )
    sections: dict[str, dict[str, Any]] = {}
    if args.edge_binary is not None:
        sections["edge"] = {"binary": str(args.edge_binary.resolve())}
    installation = TritonInstallation.locate(args.triton_home)

    def progress(report: Report) -> None:
        print(f"{report.attack}: {_cases(report.finding.gateway)}", file=sys.stderr, flush=True)

    reports = run(
        args.attacks or list(ATTACKS),
        installation,
        params,
        sections=sections,
        on_report=progress,
    )
    print(table(reports))
    if args.json:
        args.json.write_text(json.dumps([asdict(report) for report in reports], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
