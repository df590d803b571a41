"""The gateway's own immutable copy of every model content it accepted.

The repository is a place people write to; a push, a golden check, the fallback and a rollback
must read exactly the bytes that were validated, even after the drop was changed or removed.
So each accepted content is frozen here: files kept once by sha256 (``blobs/``), and a
read-only tree per content digest (``models/<digest>/``, hard links to the blobs) that looks
like the model directory. A file that changed between validation and the copy is not frozen:
its drop is still being written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import replace
from pathlib import Path

from gateway.repository.content import GOLDEN_INPUTS, ModelContent

_CHUNK = 1 << 20


class ContentChangedError(Exception):
    """A file's bytes no longer match what validation hashed."""


class ContentStore:
    def __init__(self, root: Path) -> None:
        self._blobs = root / "blobs"
        self._models = root / "models"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._models.mkdir(parents=True, exist_ok=True)

    def freeze(self, content: ModelContent) -> ModelContent:
        """The same content, read from the store from now on."""
        tree = self._models / content.digest
        if not tree.is_dir():
            staging = self._models / f".{content.digest}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for item in content.files:
                blob = self._blob(content.directory / item.path, item.sha256)
                target = staging / item.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(blob, target)
            shutil.copyfile(content.directory / "config.pbtxt", staging / "config.pbtxt")
            if content.golden_inputs:
                shutil.copyfile(content.directory / GOLDEN_INPUTS, staging / GOLDEN_INPUTS)
            staging.rename(tree)
        return replace(content, directory=tree)

    def keep_only(self, trees: set[str]) -> None:
        """Forget contents no longer desired nor needed for a rollback (``trees``: the
        names of the trees kept, their contents' digests)."""
        for tree in self._models.iterdir():
            if tree.name not in trees:
                shutil.rmtree(tree, ignore_errors=True)
        for blob in self._blobs.iterdir():
            if blob.stat().st_nlink <= 1:
                blob.unlink(missing_ok=True)

    def _blob(self, source: Path, sha256: str) -> Path:
        blob = self._blobs / sha256
        if blob.is_file():
            return blob
        partial = self._blobs / f".{sha256}.partial"
        hasher = hashlib.sha256()
        with source.open("rb") as reader, partial.open("wb") as writer:
            while chunk := reader.read(_CHUNK):
                hasher.update(chunk)
                writer.write(chunk)
        if hasher.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise ContentChangedError(f"{source} changed while it was being read")
        partial.chmod(0o444)
        partial.rename(blob)
        return blob
