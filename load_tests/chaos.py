"""Chaos scenarios: real Triton processes behind a gateway started here, faults under load.

    .venv/bin/python -m load_tests.chaos all               # every scenario, one after another
    .venv/bin/python -m load_tests.chaos kill --edge off   # one scenario, Python data path only

Each scenario starts three local Triton servers and a gateway process (default settings but
for the ones named below), sends open-loop load, injects its fault a third of the way in and
prints: requests sent, failed (by status), answered by the local fallback, the time from the
fault to the victim's breaker opening and to its health poll showing the fault (scraped from
/metrics every 20 ms), and latency p50/p99 before the fault and in the window after it.

- kill:     SIGKILL one backend; restart it two thirds of the way in.
- hang:     SIGSTOP one backend (per-try timeout 0.3 s); SIGCONT two thirds of the way in.
- kill-all: SIGKILL every backend (the fallback answers); restart them two thirds in.
- unload:   unload `simple` on one backend directly (the gateway learns it from traffic).
- sigterm:  SIGTERM the gateway: calls in flight finish, later ones are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
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

from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.devfleet.fleet import free_port
from load_tests import loadgen
from load_tests.gateway_process import start_gateway

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("kill", "hang", "kill-all", "unload", "sigterm")
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
    edge: str
    result: loadgen.LoadResult
    faulted: float = 0.0
    recovered: float | None = None
    """perf_counter() times of the fault and of the recovery action."""
    watch: Watch = field(default_factory=Watch)
    victim: str = ""
    """The backend that served the most calls before the fault: the fault hits it."""
    victim_outcomes: dict[str, float] = field(default_factory=dict)
    """The gateway's count of calls sent to the victim, by status (scraped at the end)."""

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
            "edge": self.edge,
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


def _outcomes_by_backend(metrics_port: int) -> dict[str, dict[str, float]]:
    """The gateway's request counts: backend → status → calls."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=1) as response:
        text = response.read().decode()
    outcomes: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            backend = sample.labels.get("backend")
            if sample.name == "triton_gateway_requests_total" and backend:
                codes = outcomes.setdefault(backend, {})
                code = sample.labels["code"]
                codes[code] = codes.get(code, 0.0) + sample.value
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


def run_scenario(
    scenario: str, edge: str, spec: loadgen.LoadSpec, installation: TritonInstallation
) -> Outcome:
    fault_delay = spec.duration_s / 3
    recover_delay = spec.duration_s * 2 / 3
    sections: dict[str, dict[str, Any]] = {"edge": {"mode": edge}}
    if scenario == "hang":
        sections["retry"] = {"per_try_timeout_s": 0.3}
    if scenario != "kill-all":
        # The fleet's own resilience must carry every request; only kill-all needs the fallback.
        sections["fallback"] = {"enabled": False}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        specs = [ServerSpec(f"triton-{index}", models=("simple",)) for index in range(3)]
        with LocalFleet(installation, ROOT / "model_repository", workdir / "fleet", specs) as fleet:
            metrics_port = free_port()
            gateway, address = start_gateway(
                [(s.name, s.address) for s in fleet.servers.values()],
                workdir,
                edge_mode=edge,
                metrics_port=metrics_port,
                sections=sections,
            )
            outcome = Outcome(scenario, edge, loadgen.LoadResult(spec))
            armed = asyncio.Event()

            async def chaos() -> None:
                await asyncio.sleep(fault_delay)
                served = await asyncio.to_thread(_outcomes_by_backend, metrics_port)
                outcome.victim = max(
                    fleet.servers, key=lambda name: served.get(name, {}).get("OK", 0.0)
                )
                watcher = asyncio.create_task(
                    _watch(metrics_port, outcome.victim, outcome.watch, armed)
                )
                outcome.faulted = time.perf_counter()
                armed.set()
                await _inject(scenario, fleet, outcome.victim, gateway.pid)
                if scenario in ("kill", "hang", "kill-all"):
                    await asyncio.sleep(max(0.0, recover_delay - fault_delay))
                    await _recover(scenario, fleet, outcome.victim)
                    outcome.recovered = time.perf_counter()
                else:
                    # No recovery: watch until the load ends.
                    await asyncio.sleep(max(0.0, spec.duration_s - fault_delay - 0.2))
                outcome.watch.stop = True
                await watcher

            runner_spec = loadgen.LoadSpec(**{**_fields(spec), "target": address})
            try:
                outcome.result = asyncio.run(loadgen.run(runner_spec, None, None, chaos))
            finally:
                if gateway.poll() is None:
                    with contextlib.suppress(OSError):
                        served = _outcomes_by_backend(metrics_port)
                        outcome.victim_outcomes = served.get(outcome.victim, {})
                    gateway.terminate()
                gateway.wait(30)
    return outcome


async def _inject(scenario: str, fleet: LocalFleet, victim_name: str, gateway_pid: int) -> None:
    victim = fleet.servers[victim_name]
    if scenario == "kill":
        os.kill(victim.pid, signal.SIGKILL)
    elif scenario == "hang":
        os.kill(victim.pid, signal.SIGSTOP)
    elif scenario == "kill-all":
        for server in fleet.servers.values():
            os.kill(server.pid, signal.SIGKILL)
    elif scenario == "unload":
        client = grpcclient.InferenceServerClient(victim.address)
        await asyncio.to_thread(client.unload_model, "simple")
    elif scenario == "sigterm":
        os.kill(gateway_pid, signal.SIGTERM)


async def _recover(scenario: str, fleet: LocalFleet, victim: str) -> None:
    victims = list(fleet.servers) if scenario == "kill-all" else [victim]
    for name in victims:
        server = fleet.servers[name]
        if scenario == "hang":
            os.kill(server.pid, signal.SIGCONT)
            continue
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
    parser.add_argument("--edge", choices=["auto", "on", "off"], default="auto")
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
        outcome = run_scenario(scenario, args.edge, spec, installation)
        report = outcome.report()
        reports.append(report)
        print(json.dumps(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
