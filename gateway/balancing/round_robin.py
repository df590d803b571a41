"""Round-robin choice per model key: an even spread with no shared state between keys."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

B = TypeVar("B")


class RoundRobinBalancer:
    """Cycles through the candidates of each key independently."""

    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}

    def choose(self, key: Hashable, candidates: Sequence[B]) -> B:
        index = self._next.get(key, 0)
        self._next[key] = index + 1
        return candidates[index % len(candidates)]
