"""The settings file is followed through every way it is saved: in place, renamed over (sed -i,
editors), swapped behind a Kubernetes ConfigMap's ``..data`` link, or replaced in the folder
a link leads to; each save is seen once, by its file-system event (the periodic re-check is
set far beyond the test)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config_watch import content_changes, content_digest

_EVENT_WAIT_S = 10.0


def _watched_inodes() -> set[int]:
    """Inodes this process has inotify watches on (Linux's /proc/self/fdinfo)."""
    inodes: set[int] = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("inotify "):
                    fields = dict(part.split(":", 1) for part in line.split()[1:])
                    inodes.add(int(fields["ino"], 16))
    return inodes


class Follower:
    """Runs ``content_changes`` on a file; each change seen puts the file's text in a queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: asyncio.Queue[str] = asyncio.Queue()
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for _ in content_changes(self.path, content_digest(self.path), recheck_s=3600):
            await self.seen.put(self.path.read_text())

    async def watching(self, folder: Path) -> None:
        """Until ``folder`` is watched (the watch is set up in a worker thread's start)."""
        inode = os.stat(folder).st_ino
        deadline = asyncio.get_running_loop().time() + _EVENT_WAIT_S
        while inode not in _watched_inodes():
            assert not self._task.done(), self._task
            assert asyncio.get_running_loop().time() < deadline, f"{folder} is not watched"
            await asyncio.sleep(0.01)

    async def next(self) -> str:
        return await asyncio.wait_for(self.seen.get(), _EVENT_WAIT_S)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def follow() -> AsyncIterator[list[Follower]]:
    followers: list[Follower] = []
    yield followers
    for follower in followers:
        await follower.close()


def _rename_over(path: Path, text: str) -> None:
    """As sed -i and most editors save: a new file renamed over the old one."""
    fresh = path.with_name(f".{path.name}.new")
    fresh.write_text(text)
    os.replace(fresh, path)


def _configmap_swap(folder: Path, generation: int, text: str) -> None:
    """As the kubelet updates a mounted ConfigMap: a new timestamped folder, ``..data``
    swapped to it in one rename, the old folder removed."""
    new = folder / f"..2024_{generation}"
    new.mkdir()
    (new / "gateway.yaml").write_text(text)
    old = (folder / "..data").resolve()
    (folder / "..data_tmp").symlink_to(new.name)
    os.replace(folder / "..data_tmp", folder / "..data")
    shutil.rmtree(old)


async def test_a_file_renamed_over_is_followed_save_after_save(
    tmp_path: Path, follow: list[Follower]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("retry: {max_attempts: 1}\n")
    follower = Follower(config)
    follow.append(follower)
    await follower.watching(tmp_path)
    for attempts in (2, 3, 4):
        _rename_over(config, f"retry: {{max_attempts: {attempts}}}\n")
        assert await follower.next() == f"retry: {{max_attempts: {attempts}}}\n"
    config.write_text("retry: {max_attempts: 5}\n")  # in place, as before
    assert await follower.next() == "retry: {max_attempts: 5}\n"
    assert follower.seen.empty()


async def test_a_configmap_swapped_behind_its_links_is_followed_swap_after_swap(
    tmp_path: Path, follow: list[Follower]
) -> None:
    mount = tmp_path / "config"
    first = mount / "..2024_0"
    first.mkdir(parents=True)
    (first / "gateway.yaml").write_text("retry: {max_attempts: 1}\n")
    (mount / "..data").symlink_to(first.name)
    config = mount / "gateway.yaml"
    config.symlink_to("..data/gateway.yaml")
    follower = Follower(config)
    follow.append(follower)
    await follower.watching(mount)
    for generation in (1, 2, 3):
        _configmap_swap(mount, generation, f"retry: {{max_attempts: {generation + 1}}}\n")
        assert await follower.next() == f"retry: {{max_attempts: {generation + 1}}}\n"
    # An operator's `sed -i` on the mounted path replaces the link itself: still followed.
    _rename_over(config, "retry: {max_attempts: 9}\n")
    assert await follower.next() == "retry: {max_attempts: 9}\n"


async def test_a_link_to_a_file_elsewhere_follows_that_files_folder_too(
    tmp_path: Path, follow: list[Follower]
) -> None:
    here, there, later = tmp_path / "here", tmp_path / "there", tmp_path / "later"
    for folder in (here, there, later):
        folder.mkdir()
    (there / "real.yaml").write_text("retry: {max_attempts: 1}\n")
    config = here / "gateway.yaml"
    config.symlink_to(there / "real.yaml")
    follower = Follower(config)
    follow.append(follower)
    await follower.watching(there)
    _rename_over(there / "real.yaml", "retry: {max_attempts: 2}\n")
    assert await follower.next() == "retry: {max_attempts: 2}\n"
    # The link swapped to a file in a third folder: that folder is followed from then on.
    (later / "real.yaml").write_text("retry: {max_attempts: 3}\n")
    (here / "link.new").symlink_to(later / "real.yaml")
    os.replace(here / "link.new", config)
    assert await follower.next() == "retry: {max_attempts: 3}\n"
    await follower.watching(later)
    _rename_over(later / "real.yaml", "retry: {max_attempts: 4}\n")
    assert await follower.next() == "retry: {max_attempts: 4}\n"
