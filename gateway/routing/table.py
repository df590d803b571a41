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
    name_version: Mapping[str, str] = field(default_factory=dict)
    """Models whose unversioned requests must name the latest version (see ``build``)."""

    @classmethod
    def build(
        cls,
        ready_versions: Mapping[B, frozenset[ModelKey]],
        pinned_latest: Mapping[str, str] | None = None,
        present: Mapping[B, frozenset[ModelKey]] | None = None,
    ) -> RouteTable[B]:
        """Index backend → READY (name, version) sets by key.

        "Latest" is one version fleet-wide, so every answer to an unversioned request comes
        from the same version and the request bytes never need rewriting: the newest version
        every backend holding the model has READY. While a rollout is half-way (a new version
        on some backends only), that is still the old one; where no version is on all of them
        (a version policy that keeps one version), the version most backends hold, the older
        on a tie. The unversioned key goes only to backends that hold it. ``pinned_latest``
        overrides the rule for a model while its pinned version is READY somewhere: the
        repository manager pins the last completed rollout's newest version, so "latest"
        moves only when a rollout is through, even if a backend dies half-way.

        Triton answers an unversioned request with its own newest READY version: where a
        backend of the unversioned route holds (or is being given, ``present``) a version newer
        than the fleet's latest, ``name_version`` tells the edge to send the requests naming
        the latest; otherwise they go as they came.
        """
        by_key: dict[ModelKey, list[B]] = {}
        holders: dict[str, int] = {}
        for backend, keys in ready_versions.items():
            for name in {name for name, _ in keys}:
                holders[name] = holders.get(name, 0) + 1
            for key in sorted(keys):
                by_key.setdefault(key, []).append(backend)
        versions: dict[str, list[str]] = {}
        for name, version in by_key:
            versions.setdefault(name, []).append(version)
        pins = pinned_latest or {}
        latest = {
            name: pins[name]
            if (name, pins.get(name, "")) in by_key
            else _fleet_latest(name, sorted(found, key=_version_order), by_key, holders[name])
            for name, found in versions.items()
        }
        candidates = {key: tuple(backends) for key, backends in by_key.items()}
        physical = present if present is not None else ready_versions
        named: dict[str, str] = {}
        for name, version in latest.items():
            candidates[(name, "")] = candidates[(name, version)]
            newest = _version_order(version)
            if any(
                model == name and _version_order(held) > newest
                for b in candidates[(name, version)]
                for model, held in physical.get(b, frozenset())
            ):
                named[name] = version
        return cls(candidates=candidates, latest_version=latest, name_version=named)

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


def _fleet_latest(
    name: str, ascending: list[str], by_key: Mapping[ModelKey, list[B]], holders: int
) -> str:
    everywhere = [v for v in ascending if len(by_key[(name, v)]) == holders]
    if everywhere:
        return everywhere[-1]
    # max() keeps the first of equals: the older version on a tie.
    return max(ascending, key=lambda v: len(by_key[(name, v)]))


def _version_order(version: str) -> tuple[int, str]:
    # Triton versions are positive integers; order numerically, keep any odd label last-resort.
    return (int(version), "") if version.isdigit() else (-1, version)
