"""Runs a real in-process gateway on its own event loop thread.

Tests then use sync and aio clients alike (a sync client called from the test thread must not
block the loop that serves it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from gateway.app import Gateway

T = TypeVar("T")


class BackgroundGateway:
    def __init__(self, gateway: Gateway, start_timeout_s: float = 30.0) -> None:
        self.gateway = gateway
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="gateway-loop", daemon=True
        )
        self._start_timeout_s = start_timeout_s

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def __enter__(self) -> BackgroundGateway:
        self._thread.start()
        try:
            self.run(self.gateway.start(), self._start_timeout_s)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.run(self.gateway.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
