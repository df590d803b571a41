"""Backends listed in the configuration file: one Reset, then nothing changes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from gateway.discovery.base import DiscoveryEvent, Endpoint, Reset


class StaticDiscovery:
    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._endpoints = tuple(endpoints)

    async def watch(self) -> AsyncIterator[DiscoveryEvent]:
        yield Reset(self._endpoints)

    def refresh_soon(self) -> None:
        """Nothing to look up again: the list changes only with the settings file."""
