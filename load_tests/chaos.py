"""Chaos scenarios: real Triton processes behind a gateway started here, faults under load.

    .venv/bin/python -m load_tests.chaos all               # every scenario, one after another
    .venv/bin/python -m load_tests.chaos kill-edge         # one scenario

Each scenario starts three local Triton servers and a gateway process (the shipped settings,
but for the fallback, off where named below), sends open-loop load, injects its fault a third
of the way in and prints: requests sent, failed (by status), answered by the local fallback,
the time from the fault to the victim's breaker opening and to its health poll showing the
fault (scraped from /metrics every 20 ms), and latency p50/p99 before the fault and in the
window after it.

Faults of the fleet (no fallback: the fleet's own resilience must carry every call):
- kill:       SIGKILL one backend; restart it two thirds of the way in.
- hang:       SIGSTOP one backend; SIGCONT two thirds of the way in.
- unload:     unload `simple` on one backend directly (the gateway learns it from traffic).
Faults the fallback must cover:
- kill-all:   SIGKILL every backend; restart them two thirds in.
- kill-hang:  SIGKILL one backend and SIGSTOP the others; recovered two thirds in.
Faults of the gateway's own processes:
- sigterm:            SIGTERM the gateway: calls in flight finish, later ones are refused.
- kill-control-plane: SIGKILL the Python gateway; tgw-edge keeps serving; a new gateway
                      process on the same port re-attaches to it two thirds in.
- stop-control-plane: SIGSTOP the Python gateway for 10 s (the load runs at least 15 s).
- kill-edge:          SIGKILL tgw-edge: the gateway logs it and starts a new one; reports
                      the time until the public port answers again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient
from hdrh.histogram import HdrHistogram
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.devfleet.fleet import free_port
from load_tests import loadgen
from load_tests.gateway_process import start_gateway
from load_tests.hostile import edge_child

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = (
    "kill",
    "hang",
    "unload",
    "kill-all",
    "kill-hang",
    "sigterm",
    "kill-control-plane",
    "stop-control-plane",
    "kill-edge",
)
FLEET_FAULTS = ("kill", "hang", "unload", "kill-all", "kill-hang")
"""Scenarios whose victim is a backend: its breaker and health poll are watched."""
RECOVERED = ("kill", "hang", "kill-all", "kill-hang", "kill-control-plane", "stop-control-plane")
STOP_CONTROL_PLANE_S = 10.0
WATCH_PERIOD_S = 0.02


@dataclass
class Watch:
    """When (perf_counter) the victim's breaker was first seen open, and its health poll first
    showed the fault."""

    breaker_open_at: float | None = None
    poll_down_at: float | None = None
    stop: bool = False

    def settled(self, now: float) -> bool:
        if self.poll_down_at is None:
            return False
        return self.breaker_open_at is not None or now - self.poll_down_at > 0.5


@dataclass
class Outcome:
    scenario: str
    result: loadgen.LoadResult
    faulted: float = 0.0
    recovered: float | None = None
    """perf_counter() times of the fault and of the recovery action."""
    watch: Watch = field(default_factory=Watch)
    victim: str = ""
    """The backend that served the most calls before the fault: the fault hits it."""
    victim_outcomes: dict[str, float] = field(default_factory=dict)
    """The gateway's count of calls sent to the victim, by status (scraped at the end)."""
    serving_again: float | None = None
    """perf_counter() time the public port answered again after the fault (kill-edge)."""
    edge_restarts: float | None = None
    """The gateway's count of tgw-edge restarts at the end."""

    def report(self) -> dict[str, Any]:
        result = self.result
        fault_at = self.faulted - result.started_at
        end = (
            self.recovered - result.started_at
            if self.recovered is not None
            else result.spec.duration_s
        )
        before = _percentiles(result.timeline, 0.0, fault_at)
        during = _percentiles(result.timeline, fault_at, end)

        def after(moment: float | None) -> float | None:
            return None if moment is None else round(moment - self.faulted, 3)

        return {
            "scenario": self.scenario,
            "victim": self.victim,
            "sent": result.sent,
            "ok": result.ok,
            "failed": dict(result.errors),
            # Sent before the fault and failed: calls in flight that were lost (sigterm) or hit.
            "failed_sent_before_fault": sum(1 for t, _ in result.failures if t < fault_at),
            "fallback": result.fallback,
            # Calls the gateway sent to the victim that failed there (each retried elsewhere,
            # handed over or answered by the fallback, unless counted in "failed").
            "victim_faults": sum(n for code, n in self.victim_outcomes.items() if code != "OK"),
            "fault_at_s": round(fault_at, 3),
            "window_s": round(end - fault_at, 3),
            "breaker_open_after_s": after(self.watch.breaker_open_at),
            "poll_down_after_s": after(self.watch.poll_down_at),
            "serving_again_after_s": after(self.serving_again),
            "edge_restarts": self.edge_restarts,
            "p50_before_ms": before[0],
            "p99_before_ms": before[1],
            "p50_fault_ms": during[0],
            "p99_fault_ms": during[1],
        }


def _percentiles(
    timeline: Sequence[tuple[float, float]], start: float, end: float
) -> tuple[float | None, float | None]:
    histogram = HdrHistogram(1, loadgen.MAX_LATENCY_US, 3)
    for offset, latency_us in timeline:
        if start <= offset < end:
            histogram.record_value(min(int(latency_us), loadgen.MAX_LATENCY_US))
    if histogram.get_total_count() == 0:
        return None, None
    return (
        round(histogram.get_value_at_percentile(50) / 1000, 2),
        round(histogram.get_value_at_percentile(99) / 1000, 2),
    )


def _samples(metrics_port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=1) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _outcomes_by_backend(
    metrics_port: int,
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] | None = None,
) -> dict[str, dict[str, float]]:
    """The gateway's request counts: backend → status → calls."""
    outcomes: dict[str, dict[str, float]] = {}
    for (name, series), count in (samples or _samples(metrics_port)).items():
        labels = dict(series)
        backend = labels.get("backend")
        if name == "triton_gateway_requests_total" and backend:
            codes = outcomes.setdefault(backend, {})
            codes[labels["code"]] = codes.get(labels["code"], 0.0) + count
    return outcomes


def _victim_state(metrics_port: int, victim: str) -> tuple[bool, bool]:
    """(breaker open for the backend or any of its models, health poll shows the fault: the
    backend down, or no model version READY on it; the victims serve only ``simple``)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=1) as response:
        text = response.read().decode()
    breaker = down = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("backend") != victim:
                continue
            if sample.name in (
                "triton_gateway_backend_breaker_open",
                "triton_gateway_model_breaker_open",
            ):
                breaker |= sample.value == 1
            elif sample.name in (
                "triton_gateway_backend_up",
                "triton_gateway_backend_ready_model_versions",
            ):
                down |= sample.value == 0
    return breaker, down


async def _watch(metrics_port: int, victim: str, watch: Watch, armed: asyncio.Event) -> None:
    await armed.wait()
    # A scrape costs the gateway CPU: stop once the poll has shown the fault and the breaker
    # had half a second more to open, so the watching does not weigh on the fault window.
    while not watch.stop and not watch.settled(time.perf_counter()):
        try:
            breaker, down = await asyncio.to_thread(_victim_state, metrics_port, victim)
        except OSError:
            break  # the gateway is gone (sigterm)
        now = time.perf_counter()
        if breaker and watch.breaker_open_at is None:
            watch.breaker_open_at = now
        if down and watch.poll_down_at is None:
            watch.poll_down_at = now
        await asyncio.sleep(WATCH_PERIOD_S)


def _schedule(scenario: str, spec: loadgen.LoadSpec) -> tuple[loadgen.LoadSpec, float, float]:
    """The load, the fault's and the recovery's delays from its start."""
    if scenario == "stop-control-plane":
        spec = loadgen.LoadSpec(**{**_fields(spec), "duration_s": max(spec.duration_s, 15.0)})
        return spec, spec.duration_s / 3, spec.duration_s / 3 + STOP_CONTROL_PLANE_S
    return spec, spec.duration_s / 3, spec.duration_s * 2 / 3


def run_scenario(
    scenario: str, spec: loadgen.LoadSpec, installation: TritonInstallation
) -> Outcome:
    spec, fault_delay, recover_delay = _schedule(scenario, spec)
    sections: dict[str, dict[str, Any]] = {}
    if scenario in ("kill", "hang", "unload"):
        # The fleet's own resilience must carry every request.
        sections["fallback"] = {"enabled": False}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        specs = [ServerSpec(f"triton-{index}", models=("simple",)) for index in range(3)]
        with LocalFleet(installation, ROOT / "model_repository", workdir / "fleet", specs) as fleet:
            backends = [(s.name, s.address) for s in fleet.servers.values()]
            metrics_port, port = free_port(), free_port()
            gateway, address = start_gateway(
                backends, workdir, metrics_port=metrics_port, port=port, sections=sections
            )
            processes = Processes(gateway, edge_child(gateway.pid))
            outcome = Outcome(scenario, loadgen.LoadResult(spec))
            armed = asyncio.Event()

            async def restart_gateway() -> None:
                # Same ports: the new control plane finds the edge that kept serving.
                processes.gateway, _ = await asyncio.to_thread(
                    start_gateway,
                    backends,
                    workdir,
                    metrics_port=metrics_port,
                    port=port,
                    sections=sections,
                    name="gateway-restarted",
                )

            async def chaos() -> None:
                await asyncio.sleep(fault_delay)
                served = await asyncio.to_thread(_outcomes_by_backend, metrics_port)
                outcome.victim = max(
                    fleet.servers, key=lambda name: served.get(name, {}).get("OK", 0.0)
                )
                watcher = None
                if scenario in FLEET_FAULTS:
                    watcher = asyncio.create_task(
                        _watch(metrics_port, outcome.victim, outcome.watch, armed)
                    )
                outcome.faulted = time.perf_counter()
                armed.set()
                await _inject(scenario, fleet, outcome.victim, processes)
                if scenario == "kill-edge":
                    outcome.serving_again = await _until_serving(address)
                if scenario in RECOVERED:
                    await asyncio.sleep(max(0.0, recover_delay - fault_delay))
                    if scenario == "kill-control-plane":
                        await restart_gateway()
                    else:
                        await _recover(scenario, fleet, outcome.victim, processes)
                    outcome.recovered = time.perf_counter()
                else:
                    # No recovery: watch until the load ends.
                    await asyncio.sleep(max(0.0, spec.duration_s - fault_delay - 0.2))
                outcome.watch.stop = True
                if watcher is not None:
                    await watcher

            runner_spec = loadgen.LoadSpec(**{**_fields(spec), "target": address})
            try:
                outcome.result = asyncio.run(loadgen.run(runner_spec, None, None, chaos))
            finally:
                _finish(processes, metrics_port, outcome)
    return outcome


@dataclass
class Processes:
    """The gateway process of the run (replaced when it is restarted) and its first edge."""

    gateway: subprocess.Popen[bytes]
    edge: int | None


def _finish(processes: Processes, metrics_port: int, outcome: Outcome) -> None:
    """Read the final counts, stop the gateway, and end an edge a killed gateway left behind."""
    gateway = processes.gateway
    if gateway.poll() is None:
        with contextlib.suppress(OSError):
            samples = _samples(metrics_port)
            served = _outcomes_by_backend(metrics_port, samples)
            outcome.victim_outcomes = served.get(outcome.victim, {})
            outcome.edge_restarts = sum(
                value
                for (name, _), value in samples.items()
                if name == "triton_gateway_edge_restarts_total"
            )
        gateway.terminate()
    gateway.wait(30)
    edge = processes.edge
    if edge is not None and Path(f"/proc/{edge}").exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(edge, signal.SIGKILL)


async def _until_serving(address: str, timeout_s: float = 10.0) -> float | None:
    """perf_counter() time the public port first answers ServerLive again."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        # A fresh channel each time: a used one waits out gRPC's reconnect backoff (1 s).
        client = grpcclient.InferenceServerClient(address)
        try:
            if await asyncio.to_thread(client.is_server_live, client_timeout=0.2):
                return time.perf_counter()
        except InferenceServerException:
            pass
        finally:
            client.close()
        await asyncio.sleep(0.005)
    return None


async def _inject(scenario: str, fleet: LocalFleet, victim_name: str, processes: Processes) -> None:
    victim = fleet.servers[victim_name]
    if scenario == "kill":
        os.kill(victim.pid, signal.SIGKILL)
    elif scenario == "hang":
        os.kill(victim.pid, signal.SIGSTOP)
    elif scenario == "kill-all":
        for server in fleet.servers.values():
            os.kill(server.pid, signal.SIGKILL)
    elif scenario == "kill-hang":
        os.kill(victim.pid, signal.SIGKILL)
        for name, server in fleet.servers.items():
            if name != victim_name:
                os.kill(server.pid, signal.SIGSTOP)
    elif scenario == "unload":
        client = grpcclient.InferenceServerClient(victim.address)
        await asyncio.to_thread(client.unload_model, "simple")
    elif scenario == "sigterm":
        os.kill(processes.gateway.pid, signal.SIGTERM)
    elif scenario == "kill-control-plane":
        os.kill(processes.gateway.pid, signal.SIGKILL)
        await asyncio.to_thread(processes.gateway.wait)
    elif scenario == "stop-control-plane":
        os.kill(processes.gateway.pid, signal.SIGSTOP)
    elif scenario == "kill-edge":
        assert processes.edge is not None, "the gateway runs no tgw-edge"
        os.kill(processes.edge, signal.SIGKILL)


async def _recover(scenario: str, fleet: LocalFleet, victim: str, processes: Processes) -> None:
    if scenario == "stop-control-plane":
        os.kill(processes.gateway.pid, signal.SIGCONT)
        return
    stopped = [n for n in fleet.servers if n != victim] if scenario == "kill-hang" else []
    if scenario == "hang":
        stopped = [victim]
    for name in stopped:
        os.kill(fleet.servers[name].pid, signal.SIGCONT)
    killed = {"kill": [victim], "kill-hang": [victim], "kill-all": list(fleet.servers)}
    for name in killed.get(scenario, []):
        server = fleet.servers[name]
        if server.process is not None:
            await asyncio.to_thread(server.process.wait)
        # Off the loop so the load keeps its schedule while Triton starts.
        await asyncio.to_thread(fleet.restart, name)


def _fields(spec: loadgen.LoadSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in loadgen.LoadSpec.__slots__}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chaos", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s, open loop")
    parser.add_argument("--duration", type=float, default=9.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--triton-home", type=Path, default=ROOT / ".triton")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    installation = TritonInstallation.locate(args.triton_home)
    spec = loadgen.LoadSpec(
        target="",
        model="simple",
        mode="open",
        rate=args.rate,
        duration_s=args.duration,
        max_requests=args.max_requests,
        timeout_s=args.timeout,
    )
    reports = []
    for scenario in SCENARIOS if args.scenario == "all" else (args.scenario,):
        outcome = run_scenario(scenario, spec, installation)
        report = outcome.report()
        reports.append(report)
        print(json.dumps(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
