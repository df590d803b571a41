"""System shared-memory regions registered by clients on this host, as Triton keeps them:
a name for (POSIX shared-memory key, offset, byte size), mapped read-write, with Triton's
statuses and messages for every refusal.

The gateway answers the region RPCs itself (a client beside it, a sidecar, registers its
regions here): a request naming a region gets its inputs read from it and sent to the backend
inline, and its outputs written back into it (see ``shm.inline``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass

import grpc

from gateway.errors import GatewayError

_SHM_ROOT = "/dev/shm"


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def read(self, offset: int, byte_size: int) -> bytes:
        start = self.offset + offset
        try:
            return self.mapping[start : start + byte_size]
        except ValueError:  # unregistered while this call used it
            raise _gone(self.name) from None

    def write(self, offset: int, data: bytes) -> None:
        start = self.offset + offset
        try:
            self.mapping[start : start + len(data)] = data
        except ValueError:
            raise _gone(self.name) from None

    def holds(self, offset: int, byte_size: int) -> bool:
        return offset >= 0 and byte_size >= 0 and offset + byte_size <= self.byte_size


class SharedMemoryRegions:
    def __init__(self, root: str = _SHM_ROOT) -> None:
        self._root = root
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if name in self._regions:
            raise GatewayError(
                f"shared memory region '{name}' already in manager",
                code=grpc.StatusCode.ALREADY_EXISTS,
            )
        path = os.path.join(self._root, key.lstrip("/"))
        if "/" in key.lstrip("/") or not key.lstrip("/"):
            raise GatewayError(f"Unable to open shared memory region: '{key}'")
        try:
            descriptor = os.open(path, os.O_RDWR)
        except OSError:
            raise GatewayError(f"Unable to open shared memory region: '{key}'") from None
        try:
            size = os.fstat(descriptor).st_size
            if offset < 0 or byte_size <= 0 or offset + byte_size > size:
                raise GatewayError(f"Invalid shared memory region: '{key}'")
            mapping = mmap.mmap(descriptor, size, mmap.MAP_SHARED)
        except OSError:
            raise GatewayError(f"Unable to open shared memory region: '{key}'") from None
        finally:
            os.close(descriptor)  # the mapping keeps the memory
        self._regions[name] = Region(name, key, offset, byte_size, mapping)

    def get(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise _gone(name)
        return region

    def status(self, name: str) -> list[Region]:
        """Every region ("" for all), or the one named."""
        if not name:
            return list(self._regions.values())
        region = self._regions.get(name)
        if region is None:
            raise GatewayError(
                f"Unable to find system shared memory region: '{name}'",
                code=grpc.StatusCode.NOT_FOUND,
            )
        return [region]

    def unregister(self, name: str) -> None:
        """The one named ("" for all); an unknown name is no error (as Triton)."""
        names = list(self._regions) if not name else [name]
        for each in names:
            region = self._regions.pop(each, None)
            if region is not None:
                with contextlib.suppress(BufferError):  # a view still open: freed with it
                    region.mapping.close()

    def close(self) -> None:
        self.unregister("")


def _gone(name: str) -> GatewayError:
    return GatewayError(
        f"Unable to find shared memory region: '{name}'", code=grpc.StatusCode.NOT_FOUND
    )
