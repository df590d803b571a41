"""The Consul agent the gateway talks to, through py-consul's asyncio client (an untyped
library: kept behind this class and the adapters that call it)."""

from __future__ import annotations

from typing import Any

import consul.aio  # type: ignore[import-untyped]

from gateway.settings import ConsulSettings


class ConsulAgent:
    def __init__(self, settings: ConsulSettings) -> None:
        self._settings = settings
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The client, made on first use: its HTTP session belongs to the running loop."""
        if self._client is None:
            settings = self._settings
            host, _, port = settings.address.rpartition(":")
            self._client = consul.aio.Consul(
                host=host,
                port=int(port),
                scheme=settings.scheme,
                token=settings.token.get_secret_value() if settings.token is not None else None,
                dc=settings.datacenter,
                verify=str(settings.ca_file) if settings.ca_file is not None else True,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.http._session.close()
            self._client = None
