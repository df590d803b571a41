"""Backends from Consul's catalog: the instances of a service whose health checks all pass,
followed with blocking queries on the health endpoint's index (an answer comes the moment
the set changes, or after ``wait_s``).

While Consul cannot be reached, the last set keeps serving and the query is retried with a
growing back-off; an index that goes backwards (Consul restarted, or its state was
restored) starts the blocking queries over, as Consul's documentation says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from gateway.consul_agent import ConsulAgent
from gateway.discovery.base import DiscoveryEvent, Endpoint, Reset
from gateway.settings import ConsulDiscoverySettings

log = structlog.get_logger(__name__)

HealthQuery = Callable[[int | None], Awaitable[tuple[int, list[dict[str, Any]]]]]
"""(index to wait past, or None) -> (Consul's index, the passing instances)."""


class ConsulDiscovery:
    def __init__(
        self,
        query: HealthQuery,
        settings: ConsulDiscoverySettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._query = query
        self._settings = settings
        self._sleep = sleep

    async def watch(self) -> AsyncIterator[DiscoveryEvent]:
        settings = self._settings
        current: tuple[Endpoint, ...] | None = None
        index: int | None = None
        backoff = settings.retry_min_s
        while True:
            try:
                new_index, instances = await self._query(index)
            except Exception as exc:  # unreachable, refused, an error status: keep the last set
                log.warning(
                    "consul_discovery_failed",
                    service=settings.service,
                    error=f"{type(exc).__name__}: {exc}",
                    keeping=[e.name for e in current or ()],
                    retry_in_s=backoff,
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, settings.retry_max_s)
                continue
            backoff = settings.retry_min_s
            # A blocking query waits past the index it is given; one that went backwards
            # (Consul restarted, or its state restored) starts the queries over.
            index = new_index if index is None or new_index >= index else None
            endpoints = tuple(sorted((_endpoint(i) for i in instances), key=lambda e: e.name))
            if endpoints != current:
                log.info(
                    "consul_discovery_changed",
                    service=settings.service,
                    backends=[f"{e.name}={e.address}" for e in endpoints],
                )
                current = endpoints
                yield Reset(endpoints)

    def refresh_soon(self) -> None:
        """Nothing to do: the blocking query already answers the moment a check fails, and
        asking before it does would return the same set."""


def _endpoint(instance: dict[str, Any]) -> Endpoint:
    service, node = instance["Service"], instance["Node"]
    host = service.get("Address") or node["Address"]
    address = f"[{host}]:{service['Port']}" if ":" in host else f"{host}:{service['Port']}"
    # A service ID is unique on its node only (it defaults to the service's name).
    return Endpoint(name=f"{node['Node']}/{service['ID']}", address=address)


def health_query(agent: ConsulAgent, settings: ConsulDiscoverySettings) -> HealthQuery:
    """The blocking health query of ``settings.service``."""

    async def query(index: int | None) -> tuple[int, list[dict[str, Any]]]:
        found_index, nodes = await agent.client.health.service(
            settings.service,
            index=index,
            wait=f"{settings.wait_s:g}s",
            passing=True,
            tag=settings.tag,
        )
        return int(found_index), list(nodes)

    return query
