"""Backends from DNS: the A/AAAA records of a name (a Kubernetes headless service: one record
per ready pod, the port from the settings) or its SRV records (host and port per backend).

Re-resolved when the answer's TTL runs out, at least every ``interval_s`` and never more often
than ``min_interval_s``; sooner when a backend it gave fails (``refresh_soon``: the pool saw
it unreachable), since a pod replaced behind a long TTL would otherwise go unnoticed until the
TTL runs out. After a failed lookup (no server, a timeout, SERVFAIL), again with a growing
back-off while the last set keeps serving. An empty answer (NXDOMAIN, no records) is an
answer: the set becomes empty, as the service says.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.inet
import dns.rdatatype
import dns.resolver
import structlog

from gateway.discovery.base import DiscoveryEvent, Endpoint, Reset
from gateway.settings import DnsDiscoverySettings

log = structlog.get_logger(__name__)

_NO_RECORDS = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)


class LookupFailed(Exception):
    """The resolver gave no answer (as opposed to an answer with no records)."""


@dataclass(frozen=True, slots=True)
class Answer:
    endpoints: tuple[Endpoint, ...]
    ttl_s: float
    """How long the answer may be kept (the smallest TTL of its records)."""


class DnsDiscovery:
    def __init__(
        self,
        settings: DnsDiscoverySettings,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._resolver = _resolver(settings)
        self._sleep = sleep
        self._clock = clock
        self._refresh = asyncio.Event()

    def refresh_soon(self) -> None:
        """A backend of the last answer failed: look up again now, or once ``min_interval_s``
        has passed since the last lookup (a fleet failing at once costs one lookup)."""
        self._refresh.set()

    async def watch(self) -> AsyncIterator[DiscoveryEvent]:
        settings = self._settings
        current: tuple[Endpoint, ...] | None = None
        backoff = settings.min_interval_s
        while True:
            # Cleared before the lookup, not after: a failure seen while it runs may have been
            # answered by the old records, so it asks for one more.
            self._refresh.clear()
            try:
                answer = await self.resolve()
            except LookupFailed as exc:
                log.warning(
                    "dns_discovery_failed",
                    name=settings.name,
                    resolver=settings.resolver or "system",
                    error=str(exc),
                    keeping=[e.name for e in current or ()],
                    retry_in_s=backoff,
                )
                # Not cut short by refresh_soon: a server that fails is not asked harder.
                await self._sleep(backoff)
                backoff = min(backoff * 2, settings.interval_s)
                continue
            backoff = settings.min_interval_s
            looked_up_at = self._clock()
            if answer.endpoints != current:
                log.info(
                    "dns_discovery_changed",
                    name=settings.name,
                    backends=[f"{e.name}={e.address}" for e in answer.endpoints],
                )
                current = answer.endpoints
                yield Reset(answer.endpoints)
            await self._wait(
                min(max(answer.ttl_s, settings.min_interval_s), settings.interval_s),
                not_before=looked_up_at + settings.min_interval_s,
            )

    async def resolve(self) -> Answer:
        """One lookup: the endpoints in a stable order, and how long they hold."""
        settings = self._settings
        try:
            if settings.record == "SRV":
                return await self._srv()
            return await self._addresses(settings.name, settings.port)
        except _NO_RECORDS:
            return Answer((), settings.interval_s)
        except (dns.exception.DNSException, OSError) as exc:
            raise LookupFailed(f"{type(exc).__name__}: {exc}") from exc

    async def _addresses(self, name: str, port: int) -> Answer:
        endpoints: list[Endpoint] = []
        ttls: list[float] = []
        found_any = False
        kinds = (
            ("A", "AAAA")
            if self._settings.record in ("A/AAAA", "SRV")
            else (self._settings.record,)
        )
        for kind in kinds:
            try:
                answer = await self._resolver.resolve(name, kind, search=False)
            except dns.resolver.NoAnswer:
                continue  # an A-only or AAAA-only name
            found_any = True
            ttls.append(float(answer.rrset.ttl) if answer.rrset is not None else 0.0)
            for record in answer:
                address = _host_port(record.address, port)
                endpoints.append(Endpoint(address, address))
        if not found_any:
            raise dns.resolver.NoAnswer
        return Answer(tuple(sorted(set(endpoints), key=lambda e: e.name)), min(ttls))

    async def _srv(self) -> Answer:
        answer = await self._resolver.resolve(self._settings.name, "SRV", search=False)
        ttls = [float(answer.rrset.ttl) if answer.rrset is not None else 0.0]
        endpoints: list[Endpoint] = []
        for record in answer:
            target = record.target.to_text(omit_final_dot=True)
            try:
                addresses = await self._addresses(target, int(record.port))
            except _NO_RECORDS:
                log.warning("dns_srv_target_unresolved", name=self._settings.name, target=target)
                continue
            ttls.append(addresses.ttl_s)
            # Named by host and port: stable across pod restarts that change the address.
            name = f"{target}:{record.port}"
            endpoints.extend(Endpoint(name, e.address) for e in addresses.endpoints[:1])
        return Answer(tuple(sorted(endpoints, key=lambda e: e.name)), min(ttls))

    async def _wait(self, seconds: float, *, not_before: float) -> None:
        """Until the next lookup: ``seconds``, or less when ``refresh_soon`` asks, though
        never before ``not_before`` (on the injected clock)."""
        timer = asyncio.ensure_future(self._sleep(seconds))
        asked = asyncio.ensure_future(self._refresh.wait())
        try:
            done, _ = await asyncio.wait((timer, asked), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            asked.cancel()
        if timer in done:
            timer.result()  # an injected sleep that fails fails the watch, as if awaited
            return
        left = not_before - self._clock()
        if left > 0:
            await self._sleep(left)


def _resolver(settings: DnsDiscoverySettings) -> dns.asyncresolver.Resolver:
    if settings.resolver is None:
        resolver = dns.asyncresolver.Resolver()  # /etc/resolv.conf
    else:
        host, _, port = settings.resolver.rpartition(":")
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host.strip("[]")]
        resolver.port = int(port)
    resolver.lifetime = settings.timeout_s
    resolver.cache = None  # the TTLs are honoured here, by when the next lookup is made
    return resolver


def _host_port(address: str, port: int) -> str:
    if dns.inet.af_for_address(address) == socket.AF_INET6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"
