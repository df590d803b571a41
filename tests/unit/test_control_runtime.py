"""The runtime folder the gateway shares with tgw-edge, and the public port it lends it."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.control.errors import ControlError
from gateway.control.listener import PublicPortError, bind_public, bound_port
from gateway.control.runtime import (
    RuntimeDirError,
    RuntimeLock,
    default_runtime_dir,
    prepare_runtime_dir,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_missing_runtime_folder_is_created_owner_only(tmp_path: Path) -> None:
    wanted = tmp_path / "deeper" / "runtime"
    path, fresh = prepare_runtime_dir(wanted)
    assert (path, fresh) == (wanted, False)
    assert path.is_dir()
    assert _mode(path) == 0o700


def test_an_owner_only_folder_is_used_again_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "runtime"
    folder.mkdir(mode=0o700)
    (folder / "control.sock").touch()
    assert prepare_runtime_dir(folder) == (folder, False)
    assert (folder / "control.sock").exists()


def test_no_fixed_port_gets_a_fresh_owner_only_folder_to_remove() -> None:
    assert default_runtime_dir(0) is None
    path, fresh = prepare_runtime_dir(None)
    try:
        assert fresh
        assert path.is_dir()
        assert _mode(path) == 0o700
    finally:
        path.rmdir()


def test_the_default_folder_is_found_again_by_user_and_port() -> None:
    path = default_runtime_dir(8001)
    assert path is not None
    assert path == default_runtime_dir(8001)
    assert path.name == f"triton-gateway-{os.getuid()}-8001"
    assert path != default_runtime_dir(8002)


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o777])
def test_a_folder_others_can_open_is_refused_with_what_to_do(tmp_path: Path, mode: int) -> None:
    folder = tmp_path / "runtime"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(RuntimeDirError) as info:
        prepare_runtime_dir(folder)
    message = str(info.value)
    assert "\n" not in message
    assert str(folder) in message
    assert "open to other users" in message
    assert "chmod 700" in message
    # Left as it was: the gateway does not change a folder it did not create.
    assert _mode(folder) == mode


def test_a_file_or_a_link_in_place_of_the_folder_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(RuntimeDirError, match="is not a folder"):
        prepare_runtime_dir(file)
    # A link to an owner-only folder is refused too: whoever can replace the link could
    # point the sockets elsewhere.
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(RuntimeDirError, match="is not a folder"):
        prepare_runtime_dir(link)


def test_a_folder_that_cannot_be_created_is_one_actionable_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(RuntimeDirError) as info:
        prepare_runtime_dir(blocker / "runtime")
    assert "cannot create the runtime folder" in str(info.value)
    assert isinstance(info.value, ControlError)


def test_a_port_in_use_is_one_actionable_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PublicPortError) as info:
            bind_public("127.0.0.1", port)
    message = str(info.value)
    assert isinstance(info.value, ControlError)
    assert "\n" not in message
    assert f"cannot serve the public port on 127.0.0.1:{port}" in message
    assert "server.port" in message
    assert f"by pid {os.getpid()} " in message, "what holds it (this test's own socket)"


def test_the_public_port_listens_and_port_0_picks_a_free_one() -> None:
    listener = bind_public("127.0.0.1", 0)
    try:
        port = bound_port(listener)
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # accepted into the backlog: no edge has to run for a client to connect
        # Kept out of the gateway's own children: only the edge it is lent to inherits it.
        assert not listener.get_inheritable()
    finally:
        listener.close()


def test_a_second_gateway_cannot_hold_a_runtime_folder_held_by_a_live_one(
    tmp_path: Path,
) -> None:
    folder, _ = prepare_runtime_dir(tmp_path / "runtime")
    first = RuntimeLock.acquire(folder)
    try:
        assert (folder / "gateway.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(RuntimeDirError) as info:
            RuntimeLock.acquire(folder)
        message = str(info.value)
        assert "\n" not in message
        assert message == (
            f"another triton-gateway (pid {os.getpid()}) runs from the runtime folder {folder}: "
            "stop it, or give this one its own server.port (or edge.runtime_dir)"
        )
    finally:
        first.release()
    # Released (at stop, or by the kernel when the holder dies), the folder can be taken.
    RuntimeLock.acquire(folder).release()


_HOLDER = """
import subprocess, sys
from pathlib import Path
from gateway.control.runtime import RuntimeLock
lock = RuntimeLock.acquire(Path(sys.argv[1]))
# As the gateway starts tgw-edge: a child that outlives it. Even told to keep every
# descriptor, it must not keep the lock.
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE, close_fds=False)
print(child.pid, flush=True)
sys.stdin.read()
"""


def test_the_runtime_lock_dies_with_its_process_and_is_not_inherited(tmp_path: Path) -> None:
    folder, _ = prepare_runtime_dir(tmp_path / "runtime")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    child = 0
    try:
        assert holder.stdout is not None
        child = int(holder.stdout.readline())
        with pytest.raises(RuntimeDirError, match=f"pid {holder.pid}"):
            RuntimeLock.acquire(folder)
        holder.kill()  # no stop, no release: as a crash (or kill -9) ends it
        holder.wait()
        assert Path(f"/proc/{child}").exists(), "its child outlives it"
        RuntimeLock.acquire(folder).release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if child:
            os.kill(child, signal.SIGKILL)
