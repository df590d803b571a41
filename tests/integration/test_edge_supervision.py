"""tgw-edge and its control plane survive each other: real processes killed, stopped and refused.

The gateway runs as an operator runs it (``python -m gateway serve --config``), in its own
process, in front of the session's real Triton fleet; its tgw-edge child serves the public port.
A test kills (SIGKILL) or stops (SIGSTOP) one of the two while a load generator sends routed
``simple`` ModelInfer calls, and checks what the other one does. Every process a test starts,
and every tgw-edge those start, is ended by its PID when the test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway._protos.tgw.control.v1 import control_pb2
from gateway.control import snapshot
from gateway.control.client import EdgeControlClient, duration
from gateway.devfleet import LocalFleet
from gateway.devfleet.fleet import free_port
from load_tests import loadgen
from load_tests.hostile import edge_child, infer_request
from tests.support.background import BackgroundGateway
from tests.support.fleet import inference_count
from tests.support.metrics import scrape, scrape_with_edge, total, wait_until
from tests.support.models import simple_arrays, simple_inputs
from tests.support.raw_h2 import H2Client, grpc_frame

ROOT = Path(__file__).resolve().parents[2]
EDGE = "tgw-edge"
INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- processes --------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state not in ("Z", "X")


def _is_edge(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == EDGE and _alive(pid)
    except OSError:
        return False


class GatewayProcess:
    """One ``triton-gateway serve`` process; its stderr (JSON log lines, and those of the
    tgw-edge it starts) goes to ``log``."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        self.pid = self.process.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The control plane's own log events (not tgw-edge's), optionally one kind."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if event.get("process") != EDGE and name in (None, event.get("event")):
                    found.append(event)
        return found

    def other_lines(self) -> list[str]:
        """What the process wrote besides JSON log lines."""
        return [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if line.strip() and not line.startswith("{")
        ]

    def edge_pids(self) -> set[int]:
        pids = (
            e.get("pid") or e.get("edge_pid") for e in self.events() if e["event"] in _EDGE_EVENTS
        )
        return {int(pid) for pid in pids if pid}

    def wait_event(self, name: str, timeout_s: float = 60.0, **fields: Any) -> dict[str, Any]:
        """The first ``name`` event whose fields include ``fields``, waiting (bounded) for it."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events(name):
                if all(event.get(key) == value for key, value in fields.items()):
                    return event
            assert time.monotonic() < deadline, f"no {name} {fields} in {self.log}"
            assert self.process.poll() is None or name == "gateway_stopped", (
                f"the gateway exited ({self.process.returncode}) before {name}: {self.tail()}"
            )
            time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


_EDGE_EVENTS = ("edge_started", "edge_reattached", "gateway_started")


class Gateways:
    """The gateway processes of one test, on one public port and one runtime folder (so a
    restarted one re-attaches), and everything they started: ended by PID at teardown."""

    def __init__(self, fleet: LocalFleet, workdir: Path) -> None:
        self.fleet = fleet
        self.workdir = workdir
        # Short: a Unix socket's path must fit in 107 bytes.
        self.runtime = Path(tempfile.mkdtemp(prefix="tgw-sup-"))
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.started: list[GatewayProcess] = []

    def config(self, name: str = "gateway", **sections: dict[str, Any]) -> Path:
        settings: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": self.port, "shutdown_grace_s": 2},
            "backends": [
                {"name": s.name, "address": s.address} for s in self.fleet.servers.values()
            ],
            "health": {"poll_interval_s": 0.5},
            "metrics": {"host": "127.0.0.1", "port": self.metrics_port},
            "logging": {"level": "info", "format": "json"},
            # Answers come from the fleet, never from a local runtime that could hide a failure.
            "fallback": {"enabled": False},
            "edge": {"runtime_dir": str(self.runtime)},
        }
        for section, overrides in sections.items():
            settings[section] = {**settings.get(section, {}), **overrides}
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(settings))
        return path

    def start(self, config: Path, name: str = "gateway", *, ready: bool = True) -> GatewayProcess:
        gateway = GatewayProcess(config, self.workdir / f"{name}.log")
        self.started.append(gateway)
        if ready:
            gateway.wait_event("gateway_started")
        return gateway

    def close(self) -> None:
        edges: set[int] = set()
        for gateway in self.started:
            process = gateway.process
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)  # a stopped process cannot drain
                    process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            edges |= gateway.edge_pids()
        for pid in edges:
            if _is_edge(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.runtime, ignore_errors=True)


@pytest.fixture
def gateways(fleet: LocalFleet, tmp_path: Path) -> Iterator[Gateways]:
    running = Gateways(fleet, tmp_path)
    try:
        yield running
    finally:
        running.close()


# -- clients ----------------------------------------------------------------------------------


def _closed_loop(address: str, duration_s: float, concurrency: int) -> loadgen.LoadSpec:
    """``concurrency`` streams, each sending its next call when the last one is answered."""
    return loadgen.LoadSpec(
        target=address,
        model="simple",
        mode="closed",
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=20_000,
        timeout_s=10,
    )


def _steady(address: str, duration_s: float, rate: float = 200.0) -> loadgen.LoadSpec:
    """A steady open-loop load of routed ``simple`` ModelInfer calls."""
    return loadgen.LoadSpec(
        target=address,
        model="simple",
        mode="open",
        rate=rate,
        duration_s=duration_s,
        max_requests=int(duration_s * rate),
        timeout_s=10,
    )


def _answered_in(result: loadgen.LoadResult, start: float, end: float) -> int:
    """Calls sent between two perf_counter() times that were answered."""
    low, high = start - result.started_at, end - result.started_at
    return sum(1 for offset, _ in result.timeline if low <= offset < high)


def _fleet_inferences(fleet: LocalFleet) -> int:
    return sum(inference_count(fleet, name, "simple") for name in fleet.servers)


def _routed_call(address: str, timeout_s: float) -> bool:
    """One ``simple`` ModelInfer on a fresh connection: answered correctly?"""
    client = grpcclient.InferenceServerClient(address)
    a, b = simple_arrays()
    try:
        result = client.infer("simple", simple_inputs(a, b), client_timeout=timeout_s)
        return bool(np.array_equal(result.as_numpy("OUTPUT0"), a + b))
    except InferenceServerException:
        return False
    finally:
        client.close()


async def _until_serving(address: str, timeout_s: float = 30.0) -> float | None:
    """perf_counter() time a fresh connection's routed call is first answered again."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if await asyncio.to_thread(_routed_call, address, 0.5):
            return time.perf_counter()
        await asyncio.sleep(0.01)
    return None


class HealthWatch:
    """Every status the gateway's grpc.health.v1 service streams (Watch) for the server,
    read on its private socket: the public port is the edge's, and dies with it."""

    def __init__(self, runtime: Path) -> None:
        self._channel = grpc.insecure_channel(f"unix:{runtime / 'gateway.sock'}")
        stub = health_pb2_grpc.HealthStub(self._channel)
        self._call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        self.statuses: list[int] = []
        self._thread = threading.Thread(target=self._read, name="health-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in self._call:
                self.statuses.append(response.status)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()


def _metric(port: int, name: str) -> float:
    return total(scrape(port), name)


# -- 1. tgw-edge killed ------------------------------------------------------------------------


def test_a_killed_edge_is_logged_restarted_and_serves_again_losing_only_calls_in_flight(
    gateways: Gateways, fleet: LocalFleet, record_property: Callable[[str, object], None]
) -> None:
    gateway = gateways.start(gateways.config())
    first_edge = gateway.wait_event("gateway_started")["edge_pid"]
    assert edge_child(gateway.pid) == first_edge
    metrics = gateways.metrics_port
    assert _metric(metrics, "triton_gateway_edge_up") == 1
    restarts = _metric(metrics, "triton_gateway_edge_restarts_total")
    health = HealthWatch(gateways.runtime)
    killed_at = serving_again_at = 0.0
    try:
        assert wait_until(lambda: health.statuses == [SERVING])

        async def kill_edge() -> None:
            nonlocal killed_at, serving_again_at
            await asyncio.sleep(1.0)
            killed_at = time.perf_counter()
            os.kill(first_edge, signal.SIGKILL)
            serving_again_at = await _until_serving(gateways.address) or 0.0

        concurrency = 4
        spec = _closed_loop(gateways.address, 4.0, concurrency)
        result = asyncio.run(loadgen.run(spec, during=kill_edge))
        assert wait_until(lambda: len(health.statuses) >= 3)
        statuses = list(health.statuses)
    finally:
        health.close()

    # A new edge serves the public port again: a fresh connection's routed call is answered.
    assert serving_again_at > killed_at > 0, "the public port was not served again"
    record_property("serving_again_after_s", round(serving_again_at - killed_at, 3))
    print(f"public port served again {serving_again_at - killed_at:.3f} s after the kill")
    # The load lost only calls on the connection the kill broke, each as UNAVAILABLE: the one
    # each closed-loop stream had in flight, and at most one more a stream sent in the instant
    # before its gRPC channel saw that connection reset (a client effect). Once the channel
    # had reconnected (to the backlog of the port the gateway keeps open, then to the new
    # edge), no call failed.
    kill = killed_at - result.started_at
    lost = [offset for offset, _ in result.failures]
    assert result.sent == result.ok + result.failed
    assert set(result.errors) <= {"UNAVAILABLE"}, dict(result.errors)
    assert len([offset for offset in lost if offset < kill]) <= concurrency, result.failures
    assert len(lost) <= 2 * concurrency, result.failures
    reconnected = min((offset for offset, _ in result.timeline if offset > kill), default=1e9)
    assert all(offset < reconnected for offset in lost), (kill, reconnected, result.failures)
    assert _answered_in(result, serving_again_at, time.perf_counter()) > 0
    assert result.ok >= 100
    # It was logged as an error, and a new edge was started and is the gateway's child now.
    (died,) = gateway.events("edge_died")
    assert died["level"] == "error"
    assert died["pid"] == first_edge
    restarted = [e for e in gateway.events("edge_started") if e["pid"] != first_edge]
    assert len(restarted) == 1
    second_edge = restarted[0]["pid"]
    assert edge_child(gateway.pid) == second_edge
    assert not _alive(first_edge)
    # The gateway's health went NOT_SERVING while no edge ran, and SERVING again.
    assert statuses[:3] == [SERVING, NOT_SERVING, SERVING], statuses
    assert _metric(metrics, "triton_gateway_edge_up") == 1
    assert _metric(metrics, "triton_gateway_edge_restarts_total") == restarts + 1
    # The new edge got the routes: routed calls go straight to the fleet through it.
    routed = total(scrape_with_edge(metrics), "triton_gateway_requests_total", path="edge")
    assert routed > 0


def test_a_hung_edge_is_killed_after_the_hang_timeout_and_replaced(gateways: Gateways) -> None:
    gateway = gateways.start(gateways.config(edge={"hang_timeout_s": 1.0}))
    hung = gateway.wait_event("gateway_started")["edge_pid"]
    restarts = _metric(gateways.metrics_port, "triton_gateway_edge_restarts_total")
    os.kill(hung, signal.SIGSTOP)  # alive, but answers nothing: no more reports
    unresponsive = gateway.wait_event("edge_unresponsive", timeout_s=30, pid=hung)
    assert unresponsive["level"] == "error"
    died = gateway.wait_event("edge_died", timeout_s=30, pid=hung)
    assert "no report for 1 s (killed)" in died["reason"]
    assert wait_until(lambda: not _alive(hung))
    assert wait_until(lambda: edge_child(gateway.pid) not in (None, hung), timeout_s=30)
    assert wait_until(lambda: _routed_call(gateways.address, 2.0), timeout_s=30)
    assert _metric(gateways.metrics_port, "triton_gateway_edge_restarts_total") == restarts + 1
    assert _metric(gateways.metrics_port, "triton_gateway_edge_up") == 1


# -- 2. the control plane killed -----------------------------------------------------------------


def test_the_edge_outlives_a_killed_control_plane_and_a_new_one_reattaches(
    gateways: Gateways, fleet: LocalFleet
) -> None:
    config = gateways.config()
    first = gateways.start(config, "first")
    edge = first.wait_event("gateway_started")["edge_pid"]
    served_before = _fleet_inferences(fleet)
    # A client connection opened before the kill, used across it and after the re-attach.
    held = H2Client(gateways.address, timeout_s=10)
    body = grpc_frame(infer_request())
    answers = [held.call(INFER, body)]
    dead_from = dead_until = attached_at = 0.0
    second: GatewayProcess | None = None

    async def kill_and_replace_control_plane() -> None:
        nonlocal dead_from, dead_until, attached_at, second
        await asyncio.sleep(1.0)
        first.process.kill()
        await asyncio.to_thread(first.process.wait)
        dead_from = time.perf_counter()
        await asyncio.sleep(1.0)
        answers.append(await asyncio.to_thread(held.call, INFER, body))
        await asyncio.sleep(1.0)
        dead_until = time.perf_counter()
        # The same configuration: same port, same runtime folder.
        second = await asyncio.to_thread(gateways.start, config, "second")
        attached_at = time.perf_counter()
        answers.append(await asyncio.to_thread(held.call, INFER, body))

    try:
        result = asyncio.run(
            loadgen.run(_steady(gateways.address, 12.0), during=kill_and_replace_control_plane)
        )
        answers.append(held.call(INFER, body))
        assert not held.closed
    finally:
        held.close()

    # Not one routed call failed, before, while and after the control plane was dead.
    assert result.failed == 0, dict(result.errors)
    assert result.ok == result.sent
    assert _answered_in(result, dead_from, dead_until) > 0
    assert _answered_in(result, attached_at, time.perf_counter()) > 0, "load ended too soon"
    assert _fleet_inferences(fleet) - served_before >= result.ok
    # The connection opened before the kill was never dropped: every call on it was answered.
    assert [answer.code for answer in answers] == ["OK"] * 4, [a.describe() for a in answers]
    # The new control plane re-attached to the same edge: no new edge was started.
    assert second is not None
    (reattached,) = second.events("edge_reattached")
    assert reattached["pid"] == edge
    assert reattached["port"] == gateways.port
    assert second.events("edge_started") == []
    assert second.wait_event("gateway_started")["edge_pid"] == edge
    assert edge_child(second.pid) is None
    assert _is_edge(edge)
    assert _metric(gateways.metrics_port, "triton_gateway_edge_up") == 1
    # The re-attached edge is the new control plane's to stop: SIGTERM ends both.
    second.process.terminate()
    assert second.process.wait(30) == 0
    assert wait_until(lambda: not _is_edge(edge))


def test_a_control_plane_with_other_edge_settings_replaces_the_edge_it_finds(
    gateways: Gateways,
) -> None:
    first = gateways.start(gateways.config("first"), "first")
    old_edge = first.wait_event("gateway_started")["edge_pid"]
    first.process.kill()
    first.process.wait()
    assert _is_edge(old_edge), "the edge outlives its control plane"
    # Same port and runtime folder, another limit of the public port: the running edge
    # cannot take it, so it is drained and a new one started.
    changed = gateways.config(
        "second", edge={"runtime_dir": str(gateways.runtime), "max_connections": 500}
    )
    second = gateways.start(changed, "second")
    (replaced,) = second.events("edge_replaced")
    assert replaced["pid"] == old_edge
    assert second.events("edge_reattached") == []
    new_edge = second.wait_event("gateway_started")["edge_pid"]
    assert new_edge != old_edge
    assert wait_until(lambda: not _is_edge(old_edge))
    assert edge_child(second.pid) == new_edge
    assert _routed_call(gateways.address, 10.0)


# -- 3. the control plane stopped --------------------------------------------------------------


def test_a_stopped_control_plane_fails_no_routed_call_and_is_healthy_after_sigcont(
    gateways: Gateways, fleet: LocalFleet
) -> None:
    # Stopped for longer than the edge's hang timeout: a control plane that resumes must not
    # take its own pause for a silent edge (and kill a healthy one).
    stopped_s = 4.0
    gateway = gateways.start(gateways.config(edge={"hang_timeout_s": 1.5}))
    edge = gateway.wait_event("gateway_started")["edge_pid"]
    served_before = _fleet_inferences(fleet)
    stopped_from = stopped_until = 0.0

    async def stop_control_plane() -> None:
        nonlocal stopped_from, stopped_until
        await asyncio.sleep(1.0)
        os.kill(gateway.pid, signal.SIGSTOP)
        stopped_from = time.perf_counter()
        try:
            await asyncio.sleep(stopped_s)  # the fault's duration
        finally:
            stopped_until = time.perf_counter()
            os.kill(gateway.pid, signal.SIGCONT)

    result = asyncio.run(loadgen.run(_steady(gateways.address, 7.0), during=stop_control_plane))

    # The edge never waited on its stopped control plane.
    assert result.failed == 0, dict(result.errors)
    assert result.ok == result.sent
    assert _answered_in(result, stopped_from, stopped_until) > 0
    assert _fleet_inferences(fleet) - served_before >= result.ok
    # Healthy again: the control plane answers (ServerReady is handed to it by the edge), its
    # health service says SERVING, and it still runs the same edge, never found hung or dead.
    client = grpcclient.InferenceServerClient(gateways.address)

    def ready() -> bool:
        with contextlib.suppress(InferenceServerException):
            return bool(client.is_server_ready(client_timeout=2))
        return False

    assert wait_until(ready, timeout_s=20)
    client.close()
    with grpc.insecure_channel(f"unix:{gateways.runtime / 'gateway.sock'}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING
    # Watched for twice the hang timeout: the edge is never taken for hung, killed or restarted.
    assert not wait_until(
        lambda: bool(gateway.events("edge_unresponsive") or gateway.events("edge_died")),
        timeout_s=3.0,
    ), gateway.tail()
    assert gateway.process.poll() is None
    assert len(gateway.events("edge_started")) == 1
    assert gateway.events("edge_died") == []
    assert edge_child(gateway.pid) == edge
    assert _metric(gateways.metrics_port, "triton_gateway_edge_up") == 1
    assert _metric(gateways.metrics_port, "triton_gateway_edge_restarts_total") == 0
    assert _routed_call(gateways.address, 5.0)


# -- 4. a snapshot the edge cannot apply --------------------------------------------------------


def test_a_snapshot_the_edge_cannot_apply_is_refused_and_the_last_good_one_keeps_serving(
    gateway: BackgroundGateway,
) -> None:
    app = gateway.gateway
    assert app.edge is not None
    control_socket = app.edge.control_socket
    metrics = app.metrics_port
    refused_before = total(scrape_with_edge(metrics), "triton_gateway_edge_snapshots_refused_total")

    def broken_policy(shot: control_pb2.Snapshot) -> None:
        breaker = shot.policy.breaker
        breaker.base_ejection.CopyFrom(duration(30.0))
        breaker.max_ejection.CopyFrom(duration(1.0))
        # Applied, it would also drop every route: nothing would be routed any more.
        del shot.routes[:]

    def unknown_backend(shot: control_pb2.Snapshot) -> None:
        shot.routes.add(model="simple", version="7", backends=["no-such-backend"])

    def negative_timeout(shot: control_pb2.Snapshot) -> None:
        shot.policy.timeouts.floor.seconds = -1

    def stale(shot: control_pb2.Snapshot) -> None:
        shot.version -= 1  # the version served now: not newer

    cases: dict[str, tuple[Callable[[control_pb2.Snapshot], None], str]] = {
        "breaker": (broken_policy, "breaker.max_ejection"),
        "route": (unknown_backend, "no-such-backend"),
        "timeouts": (negative_timeout, "timeouts.floor"),
        "stale": (stale, "stale"),
    }

    async def apply_all() -> dict[str, tuple[int, control_pb2.ApplyResult, int]]:
        client = EdgeControlClient(control_socket)
        outcomes = {}
        try:
            for name, (edit, _) in cases.items():
                serving = (await client.describe(5.0)).snapshot_version
                fallback = app.fallback.models() if app.fallback is not None else ()
                shot = snapshot.build(app.settings, app.pool, fallback)
                shot.version = serving + 1
                edit(shot)
                answer = await client.apply(shot, 5.0)
                after = (await client.describe(5.0)).snapshot_version
                outcomes[name] = (serving, answer, after)
        finally:
            await client.close()
        return outcomes

    # On the gateway's own loop: the pool it reads is that loop's.
    outcomes = gateway.run(apply_all())
    for name, (serving, answer, after) in outcomes.items():
        _, reason = cases[name]
        assert not answer.accepted, name
        assert reason in answer.reason, (name, answer.reason)
        assert answer.serving_version == serving, name
        assert after == serving, name

    def refused() -> float:
        return total(scrape_with_edge(metrics), "triton_gateway_edge_snapshots_refused_total")

    assert wait_until(lambda: refused() >= refused_before + len(cases), timeout_s=20)
    # The last good snapshot serves: its routes still take `simple` straight to the fleet
    # (the refused one had none: the call would have been handed to the Python gateway).
    routed = {"path": "edge", "model": "simple", "code": "OK"}

    def routed_calls() -> float:
        return total(scrape_with_edge(metrics), "triton_gateway_requests_total", **routed)

    before = routed_calls()
    client = grpcclient.InferenceServerClient(gateway.url)
    a, b = simple_arrays()
    for _ in range(5):
        result = client.infer("simple", simple_inputs(a, b))
        assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)
    client.close()
    assert wait_until(lambda: routed_calls() >= before + 5, timeout_s=20)


# -- 5. an edge that keeps dying -----------------------------------------------------------------


def _one_error_line(gateway: GatewayProcess) -> str:
    text = gateway.log.read_text(errors="replace")
    assert "Traceback" not in text, gateway.tail()
    (line,) = gateway.other_lines()
    return line


def test_an_edge_that_dies_at_start_ends_serve_with_one_error_line(
    gateways: Gateways, tmp_path: Path
) -> None:
    # A stand-in for tgw-edge (the "keeps dying" fault): a script that exits at once.
    stand_in = tmp_path / "dying-edge"
    stand_in.write_text("#!/bin/sh\n# stand-in for tgw-edge: dies at once\nexit 3\n")
    stand_in.chmod(0o755)
    gateway = gateways.start(gateways.config(edge={"binary": str(stand_in)}), ready=False)
    assert gateway.process.wait(60) == 2
    line = _one_error_line(gateway)
    assert line.startswith("triton-gateway: tgw-edge exited with code 3 at start"), line
    assert gateway.events("gateway_started") == []


def test_an_edge_killed_past_max_restarts_ends_serve_non_zero_with_one_error_line(
    gateways: Gateways,
) -> None:
    gateway = gateways.start(gateways.config(edge={"max_restarts": 2}))
    edges = [gateway.wait_event("gateway_started")["edge_pid"]]
    # Two restarts are allowed; the third death within the window ends the gateway.
    for _ in range(3):
        os.kill(edges[-1], signal.SIGKILL)
        if len(edges) == 3:
            break

        def restarted() -> bool:
            pids = [e["pid"] for e in gateway.events("edge_started")]
            return len(pids) == len(edges) + 1

        assert wait_until(restarted, timeout_s=30), gateway.tail()
        edges.append(gateway.events("edge_started")[-1]["pid"])
    assert gateway.process.wait(60) == 2
    assert len(set(edges)) == 3
    assert len(gateway.events("edge_died")) == 3
    (given_up,) = gateway.events("edge_given_up")
    assert given_up["level"] == "error"
    line = _one_error_line(gateway)
    assert line.startswith("triton-gateway: tgw-edge was restarted 2 times"), line
    assert "keeps dying" in line
    assert not any(_alive(pid) for pid in edges)
