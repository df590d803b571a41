"""SIGTERM mid-load: calls in flight complete, later ones are refused cleanly, exit is 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest

from gateway.devfleet import LocalFleet
from load_tests import loadgen
from load_tests.gateway_process import start_gateway


@pytest.mark.parametrize("edge", ["off", "on"], ids=["python", "edge"])
def test_sigterm_drains_in_flight_calls(fleet: LocalFleet, tmp_path: Path, edge: str) -> None:
    process, address = start_gateway(
        [(s.name, s.address) for s in fleet.servers.values()], tmp_path, edge_mode=edge
    )
    outcomes: list[tuple[float, grpc.StatusCode]] = []
    sigterm_at = 0.0

    async def load() -> None:
        nonlocal sigterm_at
        async with grpc.aio.insecure_channel(address) as channel:
            spec = loadgen.LoadSpec(target=address, model="simple")
            payload = await loadgen.build_request(channel, spec)
            infer = channel.unary_unary(loadgen.INFER)

            async def stream() -> None:
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    try:
                        await infer(payload, timeout=10)
                        outcomes.append((started, grpc.StatusCode.OK))
                    except grpc.aio.AioRpcError as exc:
                        outcomes.append((started, exc.code()))
                        await asyncio.sleep(0.01)

            async def terminate() -> None:
                nonlocal sigterm_at
                await asyncio.sleep(1.0)
                sigterm_at = time.monotonic()
                process.send_signal(signal.SIGTERM)

            await asyncio.gather(terminate(), *(stream() for _ in range(8)))

    try:
        asyncio.run(load())
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    codes = {code for _, code in outcomes}
    refused = {grpc.StatusCode.UNAVAILABLE}
    if edge == "off":
        # Known gap of the Python-only server: a call that reaches it in the last
        # milliseconds, while grpc.aio tears the server down, is CANCELLED rather than
        # refused. Behind tgw-edge (the default) every late call gets UNAVAILABLE.
        refused.add(grpc.StatusCode.CANCELLED)
    # Every call was answered or refused: none failed INTERNAL/UNKNOWN, none hung.
    assert codes <= {grpc.StatusCode.OK, *refused}, codes
    early = [code for started, code in outcomes if started < sigterm_at - 0.05]
    late = [code for started, code in outcomes if started >= sigterm_at]
    assert early and set(early) == {grpc.StatusCode.OK}
    assert grpc.StatusCode.UNAVAILABLE in set(late)
