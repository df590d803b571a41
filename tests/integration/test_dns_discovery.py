"""DNS discovery against a real DNS server (dnsmasq on loopback): address records of a
headless service, SRV records, TTLs, a server that is down, a lookup made before the TTL runs
out when a backend fails; and backends moving in and out of a gateway under load as records
are added and removed, with no failed request."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.backends.pool import BackendPool
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.discovery.base import Endpoint, Reset
from gateway.discovery.dns import DnsDiscovery, LookupFailed
from gateway.settings import DnsDiscoverySettings, load_settings
from tests.support import dns as dns_support
from tests.support.background import BackgroundGateway
from tests.support.dns import TTL_S, DnsServer
from tests.support.drops import SteadyLoad, classify, pushing_settings, ready_on, wait_idle
from tests.support.metrics import wait_until
from tests.support.models import MODEL_REPOSITORY

SERVICE = "triton.inference.svc.test"
SRV_NAME = f"_grpc._tcp.{SERVICE}"


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    with DnsServer(tmp_path) as server:
        yield server


def settings(server: DnsServer, **values: object) -> DnsDiscoverySettings:
    return DnsDiscoverySettings.model_validate(
        {"name": SERVICE, "resolver": server.address, "timeout_s": 0.5, **values}
    )


def test_address_records_are_backends_on_the_configured_port(dns_server: DnsServer) -> None:
    dns_server.serve(hosts={SERVICE: ["10.1.0.7", "10.1.0.5", "fd00::9"]})
    discovery = DnsDiscovery(settings(dns_server, port=8101))
    answer = asyncio.run(discovery.resolve())
    assert answer.endpoints == (
        Endpoint("10.1.0.5:8101", "10.1.0.5:8101"),
        Endpoint("10.1.0.7:8101", "10.1.0.7:8101"),
        Endpoint("[fd00::9]:8101", "[fd00::9]:8101"),
    )
    assert answer.ttl_s == TTL_S, "the records' TTL says when to look again"
    only_v4 = DnsDiscovery(settings(dns_server, port=8101, record="A"))
    assert len(asyncio.run(only_v4.resolve()).endpoints) == 2
    # A name with no records is an answer: no backends.
    gone = DnsDiscovery(settings(dns_server, name="nothing.svc.test"))
    assert asyncio.run(gone.resolve()).endpoints == ()


def test_srv_records_name_backends_by_target_and_port(dns_server: DnsServer) -> None:
    dns_server.serve(
        hosts={"triton-0.test": ["10.2.0.1"], "triton-1.test": ["10.2.0.2"]},
        srv={SRV_NAME: [("triton-1.test", 9001), ("triton-0.test", 9000)]},
    )
    discovery = DnsDiscovery(settings(dns_server, name=SRV_NAME, record="SRV"))
    assert asyncio.run(discovery.resolve()).endpoints == (
        Endpoint("triton-0.test:9000", "10.2.0.1:9000"),
        Endpoint("triton-1.test:9001", "10.2.0.2:9001"),
    )


def test_a_server_that_is_down_keeps_the_last_set(dns_server: DnsServer) -> None:
    dns_server.serve(hosts={SERVICE: ["10.3.0.1"]})
    waits: list[float] = []
    four_waits = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            dns_server.stop()  # down after the first answer
        if len(waits) == 4:
            four_waits.set()
        await asyncio.sleep(0)

    async def scenario() -> list[object]:
        discovery = DnsDiscovery(
            settings(dns_server, min_interval_s=0.5, interval_s=4), sleep=sleep
        )
        events: list[object] = []

        async def consume() -> None:
            async for event in discovery.watch():
                events.append(event)

        task = asyncio.create_task(consume())
        await asyncio.wait_for(four_waits.wait(), 30)
        task.cancel()
        return events

    events = asyncio.run(scenario())
    # One set, then no event for the failures: the last set stands.
    assert events == [Reset((Endpoint("10.3.0.1:8001", "10.3.0.1:8001"),))]
    # Looked up again at the TTL (above min_interval_s); failures back off, doubling.
    assert waits[:4] == [TTL_S, 0.5, 1.0, 2.0]
    with pytest.raises(LookupFailed):
        asyncio.run(DnsDiscovery(settings(dns_server)).resolve())


def test_a_failed_backend_is_looked_up_again_before_the_ttl_runs_out(
    dns_server: DnsServer,
) -> None:
    """``refresh_soon`` cuts the TTL's wait short, but not the minimum interval since the last
    lookup. On an injected clock; a wait as long as the TTL never ends here."""
    dns_server.serve(hosts={SERVICE: ["10.4.0.1"]})
    now = [100.0]
    timeline: asyncio.Queue[object] = asyncio.Queue()

    async def sleep(seconds: float) -> None:
        await timeline.put(("wait", seconds))
        if seconds >= TTL_S:
            await asyncio.Event().wait()  # the TTL never runs out in this test
        now[0] += seconds

    async def scenario() -> list[object]:
        discovery = DnsDiscovery(
            settings(dns_server, min_interval_s=0.5, interval_s=3600),
            sleep=sleep,
            clock=lambda: now[0],
        )

        async def consume() -> None:
            async for event in discovery.watch():
                await timeline.put(event)

        async def next_seen() -> object:
            return await asyncio.wait_for(timeline.get(), 30)

        task = asyncio.create_task(consume())
        seen = [await next_seen(), await next_seen()]
        # The record changes; the backend it named fails (the pool calls refresh_soon).
        dns_server.serve(hosts={SERVICE: ["10.4.0.2"]})
        discovery.refresh_soon()
        seen += [await next_seen(), await next_seen(), await next_seen()]
        # Long after that lookup: looked up again at once, no wait first (same set, no event).
        now[0] += 5
        discovery.refresh_soon()
        seen.append(await next_seen())
        task.cancel()
        return seen

    old, new = (Endpoint(f"10.4.0.{n}:8001", f"10.4.0.{n}:8001") for n in (1, 2))
    assert asyncio.run(scenario()) == [
        Reset((old,)),
        ("wait", TTL_S),
        ("wait", 0.5),  # what is left of min_interval_s since the lookup (the clock stood still)
        Reset((new,)),
        ("wait", TTL_S),
        ("wait", TTL_S),
    ]


def test_a_backend_that_dies_is_replaced_from_dns_without_waiting_for_the_ttl(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: DnsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The records say an hour; the gateway looks again once its backend stops answering."""
    monkeypatch.setattr(dns_support, "TTL_S", 3600)
    specs = [ServerSpec(name, models=("classifier",)) for name in ("ttl-a", "ttl-b")]
    with LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path_factory.mktemp("fleet"), specs
    ) as fleet:
        ports = {name: int(s.address.rsplit(":", 1)[1]) for name, s in fleet.servers.items()}
        hosts = {"a.triton.test": ["127.0.0.1"], "b.triton.test": ["127.0.0.1"]}
        a, b = ("a.triton.test", ports["ttl-a"]), ("b.triton.test", ports["ttl-b"])
        dns_server.serve(hosts=hosts, srv={SRV_NAME: [a]})
        config = load_settings(
            server={"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 2},
            metrics={"host": "127.0.0.1", "port": 0},
            repository={"path": str(MODEL_REPOSITORY)},
            fallback={"enabled": False},  # every answer comes from a discovered backend
            health={"poll_interval_s": 0.2, "poll_timeout_s": 1.0},
            discovery={
                "source": "dns",
                "dns": {
                    "name": SRV_NAME,
                    "record": "SRV",
                    "resolver": dns_server.address,
                    "min_interval_s": 0.2,
                    "interval_s": 3600,
                    "timeout_s": 0.5,
                },
            },
        )
        with BackgroundGateway(Gateway(config), start_timeout_s=60) as running:
            backends, serving = _watching(running.gateway.pool)
            name_a, name_b = f"{a[0]}:{a[1]}", f"{b[0]}:{b[1]}"
            assert wait_until(lambda: serving(name_a), timeout_s=30)
            dns_server.serve(hosts=hosts, srv={SRV_NAME: [b]})
            assert backends() == {name_a}, "the old answer holds for its TTL while a serves"
            os.kill(fleet.servers["ttl-a"].pid, signal.SIGKILL)
            assert wait_until(lambda: backends() == {name_b} and serving(name_b), timeout_s=30)
            assert classify(running.url).get_response().model_name == "classifier"


def _watching(pool: BackendPool) -> tuple[Callable[[], set[str]], Callable[[str], bool]]:
    """The pool's backends by name, and whether a backend takes `classifier` calls."""

    def backends() -> set[str]:
        return {backend.name for backend in pool.backends}

    def serving(name: str) -> bool:
        holders = pool.table.candidates.get(("classifier", ""), ())
        return any(backend.name == name for backend in holders)

    return backends, serving


def test_records_added_and_removed_move_backends_under_load_with_no_failure(
    triton_installation: TritonInstallation,
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: DnsServer,
) -> None:
    """Servers started empty: the gateway pushes its repository's model to each one DNS
    brings in (the drops' reconciliation) before that one takes calls."""
    repository = tmp_path_factory.mktemp("dns-repository") / "model_repository"
    repository.mkdir()
    shutil.copytree(MODEL_REPOSITORY / "classifier", repository / "classifier")
    specs = [ServerSpec("dns-a", models=()), ServerSpec("dns-b", models=())]
    with LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path_factory.mktemp("fleet"), specs
    ) as fleet:
        ports = {name: int(s.address.rsplit(":", 1)[1]) for name, s in fleet.servers.items()}
        hosts = {"a.triton.test": ["127.0.0.1"], "b.triton.test": ["127.0.0.1"]}
        a = ("a.triton.test", ports["dns-a"])
        b = ("b.triton.test", ports["dns-b"])
        dns_server.serve(hosts=hosts, srv={SRV_NAME: [a]})
        discovery = {
            "source": "dns",
            "dns": {
                "name": SRV_NAME,
                "record": "SRV",
                "resolver": dns_server.address,
                "min_interval_s": 0.2,
                "interval_s": 1.0,
                "timeout_s": 0.5,
            },
        }
        config = pushing_settings(
            {},
            repository,
            # Every answer comes from a discovered backend (no local fallback).
            {"discovery": discovery, "fallback": {"enabled": False}},
            settle_s=0.3,
            reconcile_interval_s=0.5,
        )
        with BackgroundGateway(Gateway(config), start_timeout_s=60) as running:
            wait_idle(running)
            backends, serving = _watching(running.gateway.pool)
            name_a, name_b = f"{a[0]}:{a[1]}", f"{b[0]}:{b[1]}"
            assert backends() == {name_a} and serving(name_a)
            with SteadyLoad(running.url) as load:
                dns_server.serve(hosts=hosts, srv={SRV_NAME: [a, b]})
                assert wait_until(lambda: serving(name_b), timeout_s=60), "b added, then served"
                assert ready_on(fleet.servers["dns-b"].address, "classifier", "2")
                dns_server.serve(hosts=hosts, srv={SRV_NAME: [b]})
                assert wait_until(lambda: backends() == {name_b}, timeout_s=20), "a removed"
                sent = load.sent
                assert wait_until(lambda: load.sent > sent + 20, timeout_s=30)
                # The DNS server goes away: the last set keeps serving.
                dns_server.stop()
                sent = load.sent
                assert wait_until(lambda: load.sent > sent + 50, timeout_s=30)
            assert load.failures == []
            assert backends() == {name_b}
            assert classify(running.url).get_response().model_name == "classifier"
            print(f"DNS: {load.sent} calls while b came and a went, {len(load.failures)} failed")
