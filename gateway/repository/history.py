"""What the fleet's rollouts did, per model, for the admin service and ``ctl models``: the last
events (started, completed, rolled back) with their figures, and which backend serves which
content. Bounded: the last ``per_model`` events of each model."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    at: float
    """Wall-clock time (seconds since the epoch)."""
    event: str
    """started, completed, found_served, rolled_back."""
    sha256: str
    backends: tuple[str, ...] = ()
    detail: str = ""
    seconds: float | None = None


class RolloutLog:
    def __init__(self, wall_clock: Callable[[], float], per_model: int = 20) -> None:
        self._wall_clock = wall_clock
        self._per_model = per_model
        self._events: dict[str, deque[RolloutEvent]] = {}
        self.in_progress: dict[str, str] = {}
        """Model -> the content digest being rolled out now."""

    def record(
        self,
        model: str,
        event: str,
        sha256: str,
        backends: tuple[str, ...] = (),
        detail: str = "",
        seconds: float | None = None,
    ) -> None:
        events = self._events.setdefault(model, deque(maxlen=self._per_model))
        events.append(RolloutEvent(self._wall_clock(), event, sha256, backends, detail, seconds))
        if event == "started":
            self.in_progress[model] = sha256
        else:
            self.in_progress.pop(model, None)

    def history(self, model: str) -> list[RolloutEvent]:
        return list(self._events.get(model, ()))
