"""Follows the settings file however it is saved: written in place, replaced by a rename
(``sed -i``, most editors) or swapped behind a symlink (a Kubernetes ConfigMap's ``..data``).

A watch on the file itself ends with the first replacement (it follows the old inode), so the
folders are watched and the content the path resolves to is compared.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from watchfiles import awatch

log = structlog.get_logger(__name__)

_DEBOUNCE_MS = 200
_STEP_MS = 50


def content_digest(path: Path) -> bytes | None:
    """sha256 of what ``path`` resolves to now; None while it cannot be read (mid-swap)."""
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


def _folders(path: Path) -> frozenset[Path]:
    """The folder of the path, and that of the file it resolves to when that lies elsewhere
    (a ConfigMap's targets lie below the path's own folder, whose ``..data`` swap is seen)."""
    own = path.absolute().parent
    try:
        target = path.resolve().parent
    except (OSError, RuntimeError):  # a link loop: only the path's own folder can change it
        return frozenset({own})
    if target == own or target.is_relative_to(own) or not target.is_dir():
        return frozenset({own})
    return frozenset({own, target})


async def content_changes(
    path: Path, since: bytes | None, *, recheck_s: float = 5.0
) -> AsyncIterator[None]:
    """Yields each time the content ``path`` resolves to differs from the last seen
    (``since``: the digest of the content already applied). Besides file-system events the
    content is compared every ``recheck_s``, so a missed event delays a change, never loses
    it. Runs until cancelled."""
    last = since
    missing = False
    while True:
        folders = _folders(path)
        async for _ in awatch(
            *folders,
            watch_filter=None,
            recursive=False,
            debounce=_DEBOUNCE_MS,
            step=_STEP_MS,
            rust_timeout=max(1, round(recheck_s * 1000)),
            yield_on_timeout=True,
        ):
            current = content_digest(path)
            if current is None and not missing:
                log.warning("config_unreadable", path=str(path), hint="the last read applies")
            missing = current is None
            if current is not None and current != last:
                last = current
                yield
            if _folders(path) != folders:
                break  # the link now leads to another folder: watch that one
