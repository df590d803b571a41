"""Counts calls in flight so shutdown can wait for them, and refuses new ones meanwhile.

grpc.aio's own ``server.stop(grace)`` was seen to cancel calls in flight at once (CANCELLED
within milliseconds of SIGTERM), so the gateway drains itself before stopping the server.
"""

from __future__ import annotations

import asyncio
import contextlib


class DrainGate:
    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False
        self._idle: asyncio.Event | None = None

    def enter(self) -> bool:
        """Admit a new call; False once draining (the caller answers UNAVAILABLE)."""
        if self.draining:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, grace_s: float) -> None:
        """Refuse new calls and wait (at most ``grace_s``) for the ones in flight."""
        self.draining = True
        if self.in_flight == 0:
            return
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
