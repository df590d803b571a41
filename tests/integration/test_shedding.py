"""Past the in-flight cap, calls are refused at once with RESOURCE_EXHAUSTED; others are served."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from load_tests import loadgen
from tests.support.background import BackgroundGateway
from tests.support.metrics import requests_total, wait_until
from tests.support.settings import gateway_settings


@pytest.mark.parametrize("edge", ["off", "on"], ids=["python", "edge"])
def test_calls_past_the_per_model_cap_are_shed(fleet: LocalFleet, edge: str) -> None:
    settings = gateway_settings(
        fleet,
        edge={"mode": edge},
        shedding={"max_in_flight_per_model": 1},
    )
    with BackgroundGateway(Gateway(settings)) as gateway:

        async def burst() -> Counter[grpc.StatusCode]:
            async with grpc.aio.insecure_channel(gateway.url) as channel:
                spec = loadgen.LoadSpec(target=gateway.url, model="simple")
                payload = await loadgen.build_request(channel, spec)
                infer = channel.unary_unary(loadgen.INFER)

                async def one() -> grpc.StatusCode:
                    try:
                        await infer(payload, timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        assert "at capacity" in (exc.details() or "")
                        return exc.code()
                    return grpc.StatusCode.OK

                return Counter(await asyncio.gather(*(one() for _ in range(32))))

        codes = asyncio.run(burst())
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        port = gateway.gateway.metrics_port
        shed = codes[grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert wait_until(
            lambda: requests_total(port, model="simple", code="RESOURCE_EXHAUSTED") >= shed
        )
        # The cap frees as calls finish: a call on its own is served again.
        assert asyncio.run(loadgen.run(loadgen.LoadSpec(target=gateway.url, model="simple",
                                                        max_requests=3))).ok == 3  # fmt: skip
