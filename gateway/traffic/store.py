"""Where the admin state (routes, drains) is kept across restarts and crashes.

``RouteStore`` is the interface; ``FileRouteStore`` keeps one JSON document (protobuf JSON of
``tgw.admin.v1.State``) and a second copy of it, each written atomically (temporary file,
fsync, rename, fsync of the folder): a crash leaves the old or the new state, never half of
one. A document that cannot be read is reported and the good copy is used; with no good copy
left the gateway refuses to start rather than silently forget every split.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import structlog
from google.protobuf import json_format

from gateway._protos.tgw.admin.v1 import admin_pb2

log = structlog.get_logger(__name__)


class RouteStoreError(Exception):
    """The state cannot be read or written; the message says what to do."""


class StateConflict(Exception):
    """Another replica saved the shared state since this one last read it."""


Adopt = Callable[[admin_pb2.State], Awaitable[bool]]
"""Takes a state someone else saved; False when it is not newer than the one held."""


class RouteStore(Protocol):
    async def load(self) -> admin_pb2.State:
        """The last saved state (empty when none was ever saved)."""
        ...

    async def save(self, state: admin_pb2.State) -> None:
        """Durably, before returning; StateConflict when the store holds a state saved by
        someone else since this store's last load or save (a shared store)."""
        ...

    async def follow(self, adopt: Adopt) -> None:
        """Until cancelled, hand ``adopt`` every state someone else saves (returns at once
        for a store only this gateway writes)."""
        ...


class FileRouteStore:
    """The single-replica default: a file only this gateway writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.copy = path.with_name(path.name + ".bak")

    async def load(self) -> admin_pb2.State:
        return await asyncio.to_thread(self.load_now)

    async def save(self, state: admin_pb2.State) -> None:
        await asyncio.to_thread(self.save_now, state)

    async def follow(self, adopt: Adopt) -> None:
        return  # nobody else writes it

    def load_now(self) -> admin_pb2.State:
        problems: list[str] = []
        unreadable: list[Path] = []
        for candidate in (self.path, self.copy):
            try:
                text = candidate.read_text()
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(f"{candidate}: {exc.strerror or exc}")
                unreadable.append(candidate)
                continue
            try:
                state = parse_state(text)
            except ValueError as exc:
                problems.append(f"{candidate}: {exc}")
                unreadable.append(candidate)
                log.error("route_state_corrupt", path=str(candidate), error=str(exc))
                continue
            if problems:
                log.warning("route_state_recovered", path=str(candidate), revision=state.revision)
                for bad in unreadable:
                    self._keep_aside(bad)
            return state
        if problems:
            # Left where they are: the next start refuses too, until someone decides.
            raise RouteStoreError(
                "the route state cannot be read (" + "; ".join(problems) + "): restore it from "
                f"a backup or remove {' and '.join(map(str, unreadable))} to start with no routes"
            )
        return admin_pb2.State()

    def save_now(self, state: admin_pb2.State) -> None:
        text = state_document(state)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(self.path, text)
            _write_atomically(self.copy, text)
        except OSError as exc:
            raise RouteStoreError(f"cannot write the route state to {self.path}: {exc}") from exc

    def _keep_aside(self, path: Path) -> None:
        # The unreadable file is kept for inspection (a good copy serves); the next save
        # writes a good one.
        with contextlib.suppress(OSError):
            path.rename(path.with_name(f"{path.name}.corrupt-{int(time.time())}"))


def parse_state(text: str) -> admin_pb2.State:
    """A document this store wrote: a JSON object with a positive revision (every save has
    one), else ValueError — an empty or foreign file must not pass for "no routes"."""
    try:
        if not isinstance(json.loads(text), dict):
            raise ValueError("not a JSON object")
        state = json_format.Parse(text, admin_pb2.State())
    except (json.JSONDecodeError, json_format.ParseError) as exc:
        raise ValueError(str(exc)) from exc
    if state.revision <= 0:
        raise ValueError("no revision: not a state this gateway wrote")
    return state


def state_document(state: admin_pb2.State) -> str:
    return json_format.MessageToJson(state, indent=1, preserving_proto_field_name=True)


def _write_atomically(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
