"""The order in which Triton's core walks a request's inputs.

Triton keeps a request's inputs in a ``std::unordered_map<std::string, Input>`` filled in the
request's order, and checks them (batch sizes, datatypes, shapes, byte sizes) and lists them
in its messages in that map's iteration order — which GCC's libstdc++ (Triton's C++ library)
fixes from the names' hashes: ``std::hash<std::string>`` (``_Hash_bytes``, a 64-bit
MurmurHash2 with libstdc++'s seed), a prime number of buckets, and a new key placed first in
the whole list when its bucket is empty, else first in its bucket. Two inputs come out in
reverse order; more, in an order only the hashes tell. The local fallback answers a bad
request with the input Triton would name, so it walks them the same way.

The bucket counts are libstdc++'s for a map grown one key at a time (13 up to 13 keys, then 29,
59, ...); past the last listed count the order is no longer exact (thousands of inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

_SEED = 0xC70F6907
_MUL = 0xC6A4A7935BD1E995
_MASK = (1 << 64) - 1
_BUCKET_COUNTS = (13, 29, 59, 127, 257, 541, 1109, 2357)
"""libstdc++'s bucket counts as one key after another is added: rehashed to the next when the
keys would outnumber the buckets (a maximum load factor of 1)."""


def _shift_mix(value: int) -> int:
    return value ^ (value >> 47)


def std_hash(data: bytes) -> int:
    """libstdc++'s ``std::_Hash_bytes(data, len, 0xc70f6907)`` on a 64-bit machine."""
    length = len(data)
    aligned = length & ~7
    value = (_SEED ^ (length * _MUL)) & _MASK
    for at in range(0, aligned, 8):
        word = int.from_bytes(data[at : at + 8], "little")
        value ^= (_shift_mix((word * _MUL) & _MASK) * _MUL) & _MASK
        value = (value * _MUL) & _MASK
    if length & 7:
        value ^= int.from_bytes(data[aligned:], "little")
        value = (value * _MUL) & _MASK
    value = (_shift_mix(value) * _MUL) & _MASK
    return _shift_mix(value)


class _Map:
    """The node list of a libstdc++ hash table: ``following`` links each node to the next
    (``None`` before the first), ``before`` names each bucket's node before its first."""

    def __init__(self) -> None:
        self.following: dict[str | None, str | None] = {None: None}
        self.before: dict[int, str | None] = {}
        self.hashes: dict[str, int] = {}
        self.buckets = _BUCKET_COUNTS[0]

    def nodes(self) -> list[str]:
        found: list[str] = []
        node = self.following[None]
        while node is not None:
            found.append(node)
            node = self.following[node]
        return found

    def place(self, key: str) -> None:
        """``_M_insert_bucket_begin``: first in its bucket, or first of all in an empty one."""
        bucket = self.hashes[key] % self.buckets
        if bucket in self.before:
            before = self.before[bucket]
            self.following[key] = self.following[before]
            self.following[before] = key
            return
        first = self.following[None]
        self.following[key] = first
        self.following[None] = key
        if first is not None:
            self.before[self.hashes[first] % self.buckets] = key
        self.before[bucket] = None

    def rehash(self, buckets: int) -> None:
        """``_M_rehash_aux``: the nodes taken in list order into the new buckets."""
        old = self.nodes()
        self.buckets = buckets
        self.following = {None: None}
        self.before = {}
        first_bucket = 0
        for key in old:
            bucket = self.hashes[key] % buckets
            if bucket not in self.before:
                self.following[key] = self.following[None]
                self.following[None] = key
                self.before[bucket] = None
                if self.following[key] is not None:
                    self.before[first_bucket] = key
                first_bucket = bucket
            else:
                before = self.before[bucket]
                self.following[key] = self.following[before]
                self.following[before] = key


def map_order(names: Sequence[str]) -> list[str]:
    """``names`` (a request's, in its order) as a libstdc++ unordered_map filled with them
    iterates them; a repeated name keeps its first place (``emplace`` leaves it)."""
    table = _Map()
    for name in names:
        if name in table.hashes:
            continue
        count = len(table.hashes) + 1
        if count > table.buckets:
            larger = [b for b in _BUCKET_COUNTS if b >= count]
            if larger:
                table.rehash(larger[0])
        table.hashes[name] = std_hash(name.encode("utf-8"))
        table.place(name)
    return table.nodes()
