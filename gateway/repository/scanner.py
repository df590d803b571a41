"""Finds what the repository holds now: settled, validated, frozen model contents.

A model directory is read only once nobody writes to it: its fingerprint (every entry's path,
size and modification time) must stay the same for ``settle_s``. Directory names starting with
a dot are never read, so publishing as ``cp -r m repo/.m.tmp && mv repo/.m.tmp repo/m`` (or
copying elsewhere on the same filesystem, then ``mv``) shows the model whole or not at all.
A rejected directory is reported once and retried only when it changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gateway.repository.content import ModelContent
from gateway.repository.metrics import RepositoryMetrics
from gateway.repository.store import ContentChangedError, ContentStore
from gateway.repository.validation import DropRejected, Limits, fingerprint, validate

log = structlog.get_logger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(slots=True)
class _Seen:
    fingerprint: Fingerprint
    since: float
    outcome: ModelContent | DropRejected | None = None
    """What the last read of this very fingerprint gave (None: not read yet)."""


@dataclass(slots=True)
class ScanResult:
    contents: dict[str, ModelContent] = field(default_factory=dict)
    """Every model whose directory is settled and valid, by name."""
    settling: bool = False
    """Some directory changed within ``settle_s``: scan again soon."""


class RepositoryScanner:
    def __init__(
        self,
        root: Path,
        store: ContentStore,
        limits: Limits,
        settle_s: float,
        metrics: RepositoryMetrics,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self._store = store
        self._limits = limits
        self._settle_s = settle_s
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._first_scan = True
        self._seen: dict[str, _Seen] = {}
        self._last_good: dict[str, ModelContent] = {}

    def scan(self) -> ScanResult:
        """Blocking (reads and hashes files): run it off the event loop."""
        result = ScanResult()
        now = self._clock()
        present: set[str] = set()
        for model_dir in _model_dirs(self.root):
            name = model_dir.name
            present.add(name)
            current = fingerprint(model_dir)
            seen = self._seen.get(name)
            if seen is None or seen.fingerprint != current:
                since = now
                if self._first_scan and _written_before(
                    current, self._wall_clock() - self._settle_s
                ):
                    since = now - self._settle_s  # there before the gateway: settled long ago
                self._seen[name] = seen = _Seen(current, since)
            if now - seen.since < self._settle_s:
                result.settling = True
            elif seen.outcome is None:
                outcome = self._read(model_dir)
                after = fingerprint(model_dir)
                if after != seen.fingerprint:
                    # Written to while read: what was read is not what is there now.
                    self._seen[name] = seen = _Seen(after, self._clock())
                else:
                    seen.outcome = outcome
                    if isinstance(outcome, ModelContent):
                        self._last_good[name] = outcome
            content = self._last_good.get(name)
            if content is not None:
                # A rejected or still-settling change keeps the last good content serving.
                result.contents[name] = content
            if seen.outcome is None and now - seen.since >= self._settle_s:
                result.settling = True  # changed while being read: read again
        self._first_scan = False
        for gone in set(self._seen) - present:
            del self._seen[gone]
            self._last_good.pop(gone, None)
            log.info("model_drop_removed", model=gone)
        return result

    def _read(self, model_dir: Path) -> ModelContent | DropRejected | None:
        try:
            content = validate(model_dir, self._limits)
            return self._store.freeze(content)
        except DropRejected as rejected:
            log.error(
                "model_drop_rejected",
                model=rejected.model,
                file=str(rejected.file),
                reason=rejected.reason,
                error=str(rejected),
            )
            self._metrics.rejected.labels(model=rejected.model, reason=rejected.reason).inc()
            return rejected
        except (ContentChangedError, FileNotFoundError):
            return None  # still being written: read again once it settles


def _written_before(current: Fingerprint, wall_time: float) -> bool:
    return all(mtime_ns / 1e9 < wall_time for _, _, mtime_ns in current)


def _model_dirs(root: Path) -> list[Path]:
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not p.name.startswith(".")]
