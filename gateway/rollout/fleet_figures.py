"""The traffic routes' figures over every replica: with several gateway replicas, each edge sees
only the calls of the clients connected to its replica (gRPC balances by connection), so the
replica that judges the rollouts must sum them all — a candidate failing only for the clients
of another replica would otherwise never be rolled back.

Each replica publishes its edge's cumulative per-variant figures to Consul's KV store
(``<state_key>/figures/<replica>/<boot>``) every ``rollout.tick_s``; the leading replica reads
them all and keeps a running sum that only grows: what each replica's counters grew by since
the last read (all of them when its edge restarted, its counters fell). A replica's first read
only sets where it starts: the sum counts calls made while the leader watches, never a history
it would put into a window already open. The rollout controller opens and closes its windows
on that sum exactly as on one edge's counters. Figures are published only while a rollout runs.
A replica that stops publishing adds nothing more; its key is removed when it stops, or by the
leader once it has not changed for ``STALE_S``. A gateway that restarts publishes under a key
of its own (``<boot>``), a replica the leader has not seen yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from gateway.consul_agent import ConsulAgent
from gateway.traffic.figures import VariantTotals

log = structlog.get_logger(__name__)

Key = tuple[str, str]
"""(traffic route, variant)."""
STALE_S = 600.0
"""A replica's key unchanged this long is a replica gone without removing it."""


class FiguresSum:
    """The sum over replicas of what their cumulative figures grew by since first read."""

    def __init__(self) -> None:
        self._last: dict[str, dict[Key, VariantTotals]] = {}
        """Per replica: its figures when last read."""
        self._sum: dict[Key, VariantTotals] = {}

    def add(self, replica: str, figures: Mapping[Key, VariantTotals]) -> None:
        before = self._last.get(replica)
        self._last[replica] = dict(figures)
        if before is None:
            return  # where this replica starts
        for key, now in figures.items():
            earlier = before.get(key)
            # minus() takes a counter that fell (the replica's edge restarted) as counting
            # from zero: all of it is new. A variant new to the replica: all of it too.
            grown = now if earlier is None else now.minus(earlier)
            total = self._sum.get(key)
            self._sum[key] = grown if total is None else total.plus(grown)

    def totals(self) -> Mapping[Key, VariantTotals]:
        return self._sum


class FleetFigures:
    def __init__(
        self,
        agent: ConsulAgent,
        prefix: str,
        replica: str,
        local: Callable[[], Mapping[Key, VariantTotals]],
        leads: Callable[[], bool],
        judging: Callable[[], bool],
        *,
        interval_s: float,
        wall_clock: Callable[[], float],
    ) -> None:
        self._agent = agent
        self._prefix = prefix.rstrip("/") + "/"
        # A key per gateway, not per host and process: two gateways of one process (or a
        # reused name) must not overwrite each other's figures.
        self._key = f"{self._prefix}{replica}/{uuid.uuid4().hex[:12]}"
        self._local = local
        self._leads = leads
        self._judging = judging
        self._interval_s = interval_s
        self._wall_clock = wall_clock
        self._sum = FiguresSum()
        self._task: asyncio.Task[None] | None = None

    def totals(self) -> Mapping[Key, VariantTotals]:
        """The sum over every replica (empty until this replica leads and has read them)."""
        return self._sum.totals()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fleet-figures")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):  # Consul gone: the leader removes it later
            await asyncio.wait_for(self._agent.client.kv.delete(self._key), self._interval_s)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._round(), max(self._interval_s * 5, 5.0))
            except Exception as exc:  # Consul unreachable: the last sum stands, tried again
                error = f"{type(exc).__name__}: {exc}"
                log.warning("rollout_figures_unavailable", key=self._key, error=error)
            await asyncio.sleep(self._interval_s)

    async def _round(self) -> None:
        client = self._agent.client
        if not self._judging():
            # No rollout running: nothing to publish (every write goes through Consul's
            # log), and a sum started afresh when one begins (its windows open after).
            self._sum = FiguresSum()
            return
        await client.kv.put(self._key, document(self._wall_clock(), self._local()))
        if not self._leads():
            # A replica that starts leading sums from its first read (the controller opens
            # fresh windows then too).
            self._sum = FiguresSum()
            return
        _, entries = await client.kv.get(self._prefix, recurse=True)
        now = self._wall_clock()
        for entry in entries or []:
            replica = entry["Key"][len(self._prefix) :]
            try:
                at, figures = parsed(entry["Value"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("rollout_figures_unreadable", key=entry["Key"], error=str(exc))
                continue
            if now - at > STALE_S:
                await client.kv.delete(entry["Key"])
                continue
            self._sum.add(replica, figures)


def document(at: float, figures: Mapping[Key, VariantTotals]) -> str:
    """One replica's figures as published (JSON; the latency's last bound, inf, is written
    as Infinity, which Python's json reads back)."""
    return json.dumps(
        {
            "at": at,
            "variants": [
                {"route": route, "variant": variant, **dataclasses.asdict(totals)}
                for (route, variant), totals in figures.items()
            ],
        }
    )


def parsed(value: Any) -> tuple[float, dict[Key, VariantTotals]]:
    """(when, figures) of a published document."""
    document = json.loads(value)
    figures = {}
    for row in document["variants"]:
        fields = dict(row)
        key = (str(fields.pop("route")), str(fields.pop("variant")))
        fields["latency"] = tuple((float(b), int(c)) for b, c in fields["latency"])
        figures[key] = VariantTotals(**fields)
    return float(document["at"]), figures
