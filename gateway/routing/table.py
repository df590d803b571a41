"""The route table: an immutable snapshot of which backends have which model versions READY.

Rebuilt off the hot path whenever a health poll changes what a backend serves, and swapped in
with one assignment, so request handlers read it without locks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.errors import ModelNotFoundError

B = TypeVar("B")

ModelKey = tuple[str, str]
"""(model name, model version); version "" means the latest version in the fleet."""


@dataclass(frozen=True, slots=True)
class RouteTable(Generic[B]):
    """Candidates per model key; the unversioned key holds the fleet's latest version."""

    candidates: Mapping[ModelKey, tuple[B, ...]] = field(default_factory=dict)
    latest_version: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, ready_versions: Mapping[B, frozenset[ModelKey]]) -> RouteTable[B]:
        """Index backend → READY (name, version) sets by key.

        An unversioned request goes only to backends that have the fleet's highest version
        READY, so every answer to "latest" comes from the same version while a rollout is
        half-way and the request bytes never need rewriting.
        """
        by_key: dict[ModelKey, list[B]] = {}
        for backend, keys in ready_versions.items():
            for key in sorted(keys):
                by_key.setdefault(key, []).append(backend)
        latest: dict[str, str] = {}
        for name, version in by_key:
            current = latest.get(name)
            if current is None or _version_order(version) > _version_order(current):
                latest[name] = version
        candidates = {key: tuple(backends) for key, backends in by_key.items()}
        for name, version in latest.items():
            candidates[(name, "")] = candidates[(name, version)]
        return cls(candidates=candidates, latest_version=latest)

    def lookup(self, name: str, version: str) -> tuple[B, ...]:
        """Backends able to serve the key; ModelNotFoundError (Triton's wording) if none."""
        found = self.candidates.get((name, version))
        if not found:
            raise ModelNotFoundError(name, version)
        return found

    def backends_with_model(self, name: str) -> tuple[B, ...]:
        """Every backend with any version of ``name`` READY, in a stable order."""
        seen: dict[B, None] = {}
        for (model, _), backends in self.candidates.items():
            if model == name:
                seen.update(dict.fromkeys(backends))
        return tuple(seen)


def _version_order(version: str) -> tuple[int, str]:
    # Triton versions are positive integers; order numerically, keep any odd label last-resort.
    return (int(version), "") if version.isdigit() else (-1, version)
