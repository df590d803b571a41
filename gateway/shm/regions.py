"""System shared-memory regions registered by clients on this host, as Triton keeps them:
a name for (POSIX shared-memory key, offset, byte size), mapped read-write, with Triton's
statuses and messages for every refusal.

The gateway answers the region RPCs itself (a client beside it, a sidecar, registers its
regions here): a request naming a region gets its inputs read from it and sent to the backend
inline, and its outputs written back into it (see ``shm.inline``).

Triton (2.51, the fleet's) checks with unsigned 64-bit arithmetic: a request's offset and
byte size are int64 parameters it reads as ``size_t``, so -4 is 2**64 - 4 and sums wrap.
``locate`` and ``register`` do the same, so they refuse (and let through) what it does.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from dataclasses import dataclass

import grpc

from gateway.errors import GatewayError

_SHM_ROOT = "/dev/shm"
_U64 = 1 << 64
_PAGE = mmap.PAGESIZE
_MAX_MAPPING = 1 << 47
"""Above this length the kernel finds no room for a mapping (x86-64's user address space)."""
_MAX_FILE = (1 << 63) - 1
"""The largest file offset a mapping may reach (MAX_LFS_FILESIZE)."""


def unsigned(value: int) -> int:
    """An int64 parameter as Triton reads it, as ``size_t``."""
    return value % _U64


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def read(self, offset: int, byte_size: int) -> bytes:
        """``byte_size`` bytes at ``offset`` into the region (both as ``locate`` let them
        through)."""
        self._check_within(offset, byte_size)
        start = self.offset + offset
        try:
            return self.mapping[start : start + byte_size]
        except ValueError:  # unregistered while this call used it
            raise _gone(self.name) from None

    def write(self, offset: int, data: bytes) -> None:
        self._check_within(offset, len(data))
        start = self.offset + offset
        try:
            self.mapping[start : start + len(data)] = data
        except ValueError:
            raise _gone(self.name) from None

    def _check_within(self, offset: int, byte_size: int) -> None:
        """Beyond what ``locate`` checks: Triton bounds a region registered at offset O with
        byte size B by O + B, not B, and reads or writes past its own mapping there (memory
        that is not the region's); the gateway refuses those bytes instead."""
        if offset + byte_size > self.byte_size:
            raise _out_of_bounds(self.name)


class SharedMemoryRegions:
    def __init__(self, root: str = _SHM_ROOT) -> None:
        self._root = root
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Triton's checks, in its order: the name, the key, the file, the bounds, the
        mapping (``offset`` and ``byte_size`` are the request's uint64 fields)."""
        if name in self._regions:
            raise GatewayError(
                f"shared memory region '{name}' already in manager",
                code=grpc.StatusCode.ALREADY_EXISTS,
            )
        if any(region.key == key for region in self._regions.values()):
            # Triton reuses the descriptor of a region registered with the same key, which it
            # closed once that region was mapped: its size cannot be read.
            raise GatewayError(f"Invalid shared memory region: '{key}'")
        name_in_root = key.lstrip("/")
        if "/" in name_in_root or not name_in_root:  # shm_open refuses such names
            raise GatewayError(f"Unable to open shared memory region: '{key}'")
        try:
            descriptor = os.open(os.path.join(self._root, name_in_root), os.O_RDWR)
        except OSError:
            raise GatewayError(f"Unable to open shared memory region: '{key}'") from None
        try:
            size = os.fstat(descriptor).st_size
            if (offset + byte_size) % _U64 > size:
                raise GatewayError(
                    f"failed to register shared memory region '{name}': invalid args",
                    code=grpc.StatusCode.INVALID_ARGUMENT,
                )
            refused = _mapping_refusal(offset, byte_size)
            if refused is not None:
                raise GatewayError(
                    f"failed to register shared memory region '{name}': unable to process "
                    f"address space{os.strerror(refused)}",
                    code=grpc.StatusCode.INVALID_ARGUMENT,
                )
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

    def locate(self, name: str, offset: int, byte_size: int) -> Region:
        """The region a tensor names, its offset and byte size checked as Triton checks them
        (``offset`` and ``byte_size`` unsigned, see ``unsigned``)."""
        region = self.get(name)
        last = region.offset + region.byte_size - 1  # registered byte sizes are never 0
        if offset > last:
            raise GatewayError(
                f"Invalid offset for shared memory region: '{name}'",
                code=grpc.StatusCode.INVALID_ARGUMENT,
            )
        if (offset + byte_size - 1) % _U64 > last:
            raise _out_of_bounds(name)
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


def _mapping_refusal(offset: int, byte_size: int) -> int | None:
    """The errno mmap(2) fails with for Triton's mapping of ``byte_size`` bytes at
    ``offset`` of a file holding them, in the kernel's order; None: it maps."""
    if offset % _PAGE or byte_size == 0:
        return errno.EINVAL
    if byte_size > _MAX_MAPPING:
        return errno.ENOMEM
    if offset > _MAX_FILE - byte_size:
        return errno.EOVERFLOW
    return None


def _gone(name: str) -> GatewayError:
    return GatewayError(
        f"Unable to find shared memory region: '{name}'", code=grpc.StatusCode.NOT_FOUND
    )


def _out_of_bounds(name: str) -> GatewayError:
    return GatewayError(
        f"Invalid offset + byte size for shared memory region: '{name}'",
        code=grpc.StatusCode.INVALID_ARGUMENT,
    )
