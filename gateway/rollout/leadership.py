"""Which replica drives the progressive rollouts: with a traffic state shared in Consul, one
replica at a time holds a Consul lock (a key acquired with a session) and judges the steps;
the others follow the state it saves. Alone (the file store), a gateway always leads.

The session has a TTL and is renewed at a third of it; a replica that cannot renew (Consul
unreachable, the session gone) stops leading at once, and another acquires the lock once
the session expires. A new leader judges every running step on a fresh window, as after a
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from gateway.consul_agent import ConsulAgent

log = structlog.get_logger(__name__)


class Leadership(Protocol):
    def leads(self) -> bool: ...

    def start(self) -> None: ...

    async def close(self) -> None: ...


class SoleLeader:
    """One gateway, its own state: it always leads."""

    def leads(self) -> bool:
        return True

    def start(self) -> None:
        return

    async def close(self) -> None:
        return


class ConsulLeadership:
    def __init__(
        self,
        agent: ConsulAgent,
        key: str,
        replica: str,
        *,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agent = agent
        self._key = key
        self._replica = replica
        self._ttl_s = max(ttl_s, 10.0)  # Consul's shortest session TTL
        self._clock = clock
        self._session: str | None = None
        self._leading = False
        self._confirmed_at = float("-inf")
        """When a round last found this replica holding the lock."""
        self._task: asyncio.Task[None] | None = None

    def leads(self) -> bool:
        # Not confirmed for two thirds of the TTL (Consul unreachable, a call hanging):
        # another replica may take the lock once the session expires, so this one stops first.
        return self._leading and self._clock() - self._confirmed_at < self._ttl_s * 2 / 3

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollout-leadership")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            # Handing the lock on at once rather than at the session's expiry.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._agent.client.session.destroy(self._session), self._ttl_s / 3
                )
        self._set(False)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._round(), self._ttl_s / 3)
            except Exception as exc:  # Consul unreachable, the session gone: not leading
                self._set(False)
                lost, self._session = self._session, None
                log.warning("rollout_leadership_lost", error=f"{type(exc).__name__}: {exc}")
                if lost is not None:
                    # Handed on at once if Consul hears it; otherwise it expires.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(
                            self._agent.client.session.destroy(lost), self._ttl_s / 3
                        )
            await asyncio.sleep(self._ttl_s / 3)

    async def _round(self) -> None:
        client = self._agent.client
        if self._session is None:
            self._session = await client.session.create(
                name=f"triton-gateway rollouts {self._replica}",
                ttl=int(self._ttl_s),
                behavior="release",
                lock_delay=0,
            )
        else:
            renewed = await client.session.renew(self._session)
            if renewed is None:
                raise LookupError("the session expired")
        _, entry = await client.kv.get(self._key)
        holder = entry.get("Session") if entry is not None else None
        if holder != self._session:
            # Not ours (any more: the key deleted or restored): ask for it.
            holder = (
                self._session
                if await client.kv.put(self._key, self._replica, acquire=self._session)
                else holder
            )
        leading = holder == self._session
        if leading:
            self._confirmed_at = self._clock()
        self._set(leading)

    def _set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info("rollout_leadership", replica=self._replica, leading=leading)
