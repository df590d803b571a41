"""The folder the gateway and its edge share: the control socket and the hand-over socket.

It is found again after a restart (same user, same public port), so a control plane that
restarts re-attaches to the edge that kept serving. Only its owner may use it: whoever can open
these sockets can reconfigure the data plane or skip its checks.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from gateway.control.errors import ControlError


class RuntimeDirError(ControlError):
    """The runtime folder cannot be used safely."""


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
