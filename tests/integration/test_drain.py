"""SIGTERM mid-load: calls in flight complete, later ones are refused cleanly, exit is 0.

The gateway runs as an operator runs it, in its own process: tgw-edge serves the public port
and hands the Python control plane what it answers itself (here RepositoryIndex, a fan-out
call), so the drain covers both.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2

from gateway.devfleet import LocalFleet
from load_tests import loadgen
from load_tests.gateway_process import start_gateway

INDEX = "/inference.GRPCInferenceService/RepositoryIndex"


def test_sigterm_drains_in_flight_calls(fleet: LocalFleet, tmp_path: Path) -> None:
    process, address = start_gateway(
        [(s.name, s.address) for s in fleet.servers.values()], tmp_path
    )
    outcomes: list[tuple[str, float, grpc.StatusCode]] = []
    sigterm_at = 0.0

    async def load() -> None:
        nonlocal sigterm_at
        async with grpc.aio.insecure_channel(address) as channel:
            spec = loadgen.LoadSpec(target=address, model="simple")
            calls = {
                "routed": (
                    channel.unary_unary(loadgen.INFER),
                    await loadgen.build_request(channel, spec),
                ),
                "handed over": (
                    channel.unary_unary(INDEX),
                    service_pb2.RepositoryIndexRequest().SerializeToString(),
                ),
            }

            async def stream(kind: str) -> None:
                call, payload = calls[kind]
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    try:
                        await call(payload, timeout=10)
                        outcomes.append((kind, started, grpc.StatusCode.OK))
                    except grpc.aio.AioRpcError as exc:
                        outcomes.append((kind, started, exc.code()))
                        await asyncio.sleep(0.01)

            async def terminate() -> None:
                nonlocal sigterm_at
                await asyncio.sleep(1.0)
                sigterm_at = time.monotonic()
                process.send_signal(signal.SIGTERM)

            kinds = ["routed"] * 6 + ["handed over"] * 2
            await asyncio.gather(terminate(), *(stream(kind) for kind in kinds))

    try:
        asyncio.run(load())
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    codes = {code for _, _, code in outcomes}
    # Every call was answered or refused with UNAVAILABLE: none failed CANCELLED, INTERNAL or
    # UNKNOWN, none hung.
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    for kind in ("routed", "handed over"):
        early = [code for k, started, code in outcomes if k == kind and started < sigterm_at - 0.05]
        late = [code for k, started, code in outcomes if k == kind and started >= sigterm_at]
        assert early and set(early) == {grpc.StatusCode.OK}, kind
        assert grpc.StatusCode.UNAVAILABLE in set(late), (kind, late)
