"""Sequence affinity: every request of a sequence goes to the same backend.

Rendezvous (highest-random-weight) hashing over backend names: when a backend leaves, only
the sequences it held move; the others keep their backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


B = TypeVar("B", bound=Named)


_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def weight(sequence_id: str, backend: str) -> int:
    """FNV-1a 64 of ``sequence_id NUL backend``: tgw-edge computes the very same number, so
    both data paths pin a sequence to the same backend."""
    value = _FNV_OFFSET
    for byte in f"{sequence_id}\x00{backend}".encode():
        value = ((value ^ byte) * _FNV_PRIME) & _MASK
    return value


def backend_for_sequence(sequence_id: str, candidates: Sequence[B]) -> B:
    return max(candidates, key=lambda backend: weight(sequence_id, backend.name))
