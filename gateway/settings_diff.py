"""What changed between two readings of the settings file, as dotted keys: a reload says
which it applied and which wait for a restart."""

from __future__ import annotations

from typing import Any


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two settings dumps (lists by index)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after)):
            found += changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        found = []
        for index, (old, new) in enumerate(zip(before, after, strict=True)):
            found += changed_keys(old, new, f"{prefix}{index}.")
        return found
    return [] if before == after else [prefix.rstrip(".")]


def is_drain(key: str) -> bool:
    """``backends.N.drained``: applied on reload like the policy sections."""
    parts = key.split(".")
    return len(parts) == 3 and parts[0] == "backends" and parts[2] == "drained"
