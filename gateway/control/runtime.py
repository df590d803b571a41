"""The folder the gateway and its edge share: the control socket and the hand-over socket.

It is found again after a restart (same user, same public port), so a control plane that
restarts re-attaches to the edge that kept serving. Only its owner may use it: whoever can open
these sockets can reconfigure the data plane or skip its checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from gateway.control.errors import ControlError

LOCK_FILE = "gateway.lock"


class RuntimeDirError(ControlError):
    """The runtime folder cannot be used safely."""


class RuntimeLock:
    """One gateway process's hold on a runtime folder (``flock`` on ``gateway.lock``, which
    names its pid): a second gateway started for the same folder stops before it touches the
    first one's sockets. The kernel lets go when the process ends, however it ends; the edge
    does not inherit it, so a restarted gateway re-attaches to the edge its predecessor left."""

    def __init__(self, folder: Path, descriptor: int) -> None:
        self.folder = folder
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, folder: Path) -> RuntimeLock:
        path = folder / LOCK_FILE
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RuntimeDirError(f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            os.close(descriptor)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise RuntimeDirError(
                f"another triton-gateway{pid} runs from the runtime folder {folder}: stop it, "
                "or give this one its own server.port (or edge.runtime_dir)"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        return cls(folder, descriptor)

    def release(self) -> None:
        if self._descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(self._descriptor)
            self._descriptor = None


def default_runtime_dir(port: int) -> Path | None:
    """Where the gateway serving on ``port`` keeps its sockets; None for port 0 (no fixed
    port: nothing to re-attach to, a fresh folder each start)."""
    if port == 0:
        return None
    return Path(tempfile.gettempdir()) / f"triton-gateway-{os.getuid()}-{port}"


def prepare_runtime_dir(path: Path | None) -> tuple[Path, bool]:
    """The folder, created owner-only when missing; (path, whether it is a fresh temporary
    one to remove at stop). An existing folder must be a real folder of this user that no one
    else can open."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="triton-gateway-")), True
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RuntimeDirError(f"cannot create the runtime folder {path}: {exc}") from exc
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeDirError(
            f"the runtime folder {path} is not a folder: remove it or set edge.runtime_dir"
        )
    if info.st_uid != os.getuid():
        raise RuntimeDirError(
            f"the runtime folder {path} belongs to another user: set "
            "edge.runtime_dir to a folder of yours"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise RuntimeDirError(
            f"the runtime folder {path} is open to other users: chmod 700 it "
            "or set edge.runtime_dir"
        )
    return path, False
