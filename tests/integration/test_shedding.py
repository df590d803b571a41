"""Past the in-flight cap, calls are refused at once with RESOURCE_EXHAUSTED; others are served."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from load_tests import loadgen
from tests.support.background import BackgroundGateway
from tests.support.metrics import requests_total, value, wait_until
from tests.support.settings import gateway_settings


def test_calls_past_the_per_model_cap_are_shed(fleet: LocalFleet) -> None:
    settings = gateway_settings(fleet, shedding={"max_in_flight_per_model": 1})
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
        # tgw-edge refused them (no backend was asked) and counted each one; the others it
        # sent to a backend.
        refused = {"path": "edge", "model": "simple", "code": "RESOURCE_EXHAUSTED"}
        served = {"path": "edge", "method": "ModelInfer", "model": "simple", "code": "OK"}

        def counted() -> tuple[float, float, float]:
            return (
                requests_total(port, **refused),
                value(port, "triton_gateway_shed_total", {"model": "simple"}),
                requests_total(port, **served),
            )

        expected = (shed, shed, codes[grpc.StatusCode.OK])
        assert wait_until(lambda: counted() == expected), (counted(), expected)
        # The cap frees as calls finish: a call on its own is served again.
        assert asyncio.run(loadgen.run(loadgen.LoadSpec(target=gateway.url, model="simple",
                                                        max_requests=3))).ok == 3  # fmt: skip
