"""Load shedding: caps on calls in flight, for the gateway and per model.

Past a cap a call is refused at once with RESOURCE_EXHAUSTED: a fast, clear "not now" beats a
queue that grows until every client's deadline expires.
"""

from __future__ import annotations


class LoadShedder:
    def __init__(self, max_in_flight: int | None, max_in_flight_per_model: int | None) -> None:
        self._max = max_in_flight
        self._max_per_model = max_in_flight_per_model
        self._total = 0
        self._per_model: dict[str, int] = {}

    def try_enter(self, model: str) -> bool:
        """Admit one call for ``model``; False when a cap is reached (nothing is counted)."""
        if self._max is not None and self._total >= self._max:
            return False
        current = self._per_model.get(model, 0)
        if self._max_per_model is not None and current >= self._max_per_model:
            return False
        self._total += 1
        self._per_model[model] = current + 1
        return True

    def leave(self, model: str) -> None:
        self._total -= 1
        remaining = self._per_model[model] - 1
        if remaining:
            self._per_model[model] = remaining
        else:
            # Entries live only while calls do: client-chosen names cannot grow the map.
            del self._per_model[model]
