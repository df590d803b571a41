"""The discovery seam: a source sends the full backend set, then additions and removals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A backend as discovery knows it."""

    name: str
    address: str


@dataclass(frozen=True, slots=True)
class Reset:
    """Replace the whole set with these endpoints."""

    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class Add:
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class Remove:
    name: str


DiscoveryEvent = Reset | Add | Remove


class Discovery(Protocol):
    """A source of backend endpoints; the pool rebuilds only what an event changes."""

    def watch(self) -> AsyncIterator[DiscoveryEvent]: ...

    def refresh_soon(self) -> None:
        """A backend this source gave turned unreachable: look again soon, within the
        source's own rate limit, in case it was replaced (a no-op where nothing is to gain)."""
