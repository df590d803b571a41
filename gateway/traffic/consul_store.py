"""The traffic state shared by gateway replicas: one document (protobuf JSON of
``tgw.admin.v1.State``, as the file store writes it) under one key of Consul's KV store.

Every save is a check-and-set on the key's ModifyIndex, made as a one-operation transaction
so Consul answers with the index it gave the write: a replica that saves after another one
saved fails with ``StateConflict`` and applies its change again on top of theirs (see
``TrafficState``). Every replica follows the key with blocking queries, so a change saved
through any of them reaches the others as soon as Consul has it.

While Consul cannot be reached, a replica keeps serving its last state, refuses changes
(UNAVAILABLE: they could not be shared), retries with a growing back-off, and says so in
its log, its metrics and its admin service's health.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import structlog

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.consul_agent import ConsulAgent
from gateway.traffic.store import (
    Adopt,
    RouteStoreError,
    StateConflict,
    parse_state,
    state_document,
)

log = structlog.get_logger(__name__)


class ConsulRouteStore:
    def __init__(
        self,
        agent: ConsulAgent,
        key: str,
        *,
        on_reachable: Callable[[bool], None] = lambda reachable: None,
        wait_s: float = 10.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        self._agent = agent
        self._key = key
        self._on_reachable = on_reachable
        self._wait_s = wait_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._index = 0
        """ModifyIndex of the state this replica holds (0: the key does not exist)."""

    async def load(self) -> admin_pb2.State:
        try:
            _, entry = await self._agent.client.kv.get(self._key)
        except Exception as exc:
            self._on_reachable(False)
            raise RouteStoreError(
                f"cannot read the shared traffic state from Consul ({self._key}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self._on_reachable(True)
        return self._held(entry)

    async def save(self, state: admin_pb2.State) -> None:
        document = state_document(state).encode()
        operation = {
            "KV": {
                "Verb": "cas",
                "Key": self._key,
                "Value": base64.b64encode(document).decode(),
                "Index": self._index,
            }
        }
        try:
            answer = await self._agent.client.txn.put([operation])
        except Exception as exc:
            if str(exc).startswith("409") and "stale" in str(exc):
                raise StateConflict from exc  # someone saved since this replica read
            if not str(exc).startswith("409"):
                self._on_reachable(False)
            raise RouteStoreError(
                f"cannot save the shared traffic state to Consul ({self._key}): "
                f"{type(exc).__name__}: {exc}; the change was not made"
            ) from exc
        self._on_reachable(True)
        self._index = int(answer["Results"][0]["KV"]["ModifyIndex"])

    async def follow(self, adopt: Adopt) -> None:
        backoff = self._retry_min_s
        index = 0
        while True:
            try:
                found_index, entry = await self._agent.client.kv.get(
                    self._key, index=index or None, wait=f"{self._wait_s:g}s"
                )
                found_index = int(found_index)
                modified = int(entry["ModifyIndex"]) if entry is not None else 0
                # Newer than what this replica holds: saved by another one. The index moves
                # only once the state is held: a save in between fails its check-and-set and
                # is applied again on top (never over a state it has not seen).
                if entry is not None and modified > self._index and await adopt(_parsed(entry)):
                    self._index = max(self._index, modified)
            except RouteStoreError as exc:  # a document this gateway cannot read
                self._on_reachable(False)
                log.error("traffic_state_unreadable", key=self._key, error=str(exc))
                await asyncio.sleep(self._retry_max_s)
                continue
            except Exception as exc:
                self._on_reachable(False)
                log.warning(
                    "traffic_state_unreachable",
                    key=self._key,
                    error=f"{type(exc).__name__}: {exc}",
                    hint="serving the last state; changes are refused until Consul is back",
                    retry_in_s=backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max_s)
                continue
            backoff = self._retry_min_s
            self._on_reachable(True)
            # A blocking query waits past the index it is given; one that went backwards
            # (Consul restored) starts the queries over.
            index = found_index if found_index >= index else 0

    def _held(self, entry: dict[str, Any] | None) -> admin_pb2.State:
        """The state of ``entry`` (None: no state saved yet), now the one this replica
        holds."""
        if entry is None:
            self._index = 0
            return admin_pb2.State()
        state = _parsed(entry)
        self._index = int(entry["ModifyIndex"])
        return state


def _parsed(entry: dict[str, Any]) -> admin_pb2.State:
    try:
        return parse_state((entry["Value"] or b"").decode())
    except ValueError as exc:
        raise RouteStoreError(
            f"the shared traffic state in Consul ({entry['Key']}) cannot be read ({exc}): "
            "restore it from a backup or delete the key to start with no routes"
        ) from exc
