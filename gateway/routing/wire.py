"""Reads the model name and version straight from serialized request bytes.

Every model-scoped request of the protocol (ModelInfer, ModelReady, ModelMetadata, ModelConfig,
ModelStatistics, ...) keeps the model name in field 1 and the version in field 2, so the gateway
routes without parsing tensors and forwards the original bytes untouched.
"""

from __future__ import annotations

from collections.abc import Iterator

from gateway.errors import UnparsableRequestError

_WIRE_VARINT = 0
_WIRE_FIXED64 = 1
_WIRE_LENGTH_DELIMITED = 2
_WIRE_FIXED32 = 5


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it; InvalidRequestError if malformed."""
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise UnparsableRequestError
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def read_model_key(data: bytes) -> tuple[str, str]:
    """Return (field 1, field 2) as strings; raise InvalidRequestError on malformed bytes.

    Its own loop rather than ``_fields``: this runs for every request and builds no list.
    """
    name = version = ""
    pos = 0
    end = len(data)
    while pos < end:
        tag, pos = read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == _WIRE_LENGTH_DELIMITED:
            length, pos = read_varint(data, pos)
            stop = pos + length
            if stop > end:
                raise UnparsableRequestError
            if field in (1, 2):
                try:
                    text = data[pos:stop].decode()
                except UnicodeDecodeError as exc:
                    # Triton's protobuf parse refuses invalid UTF-8 in a string field too.
                    raise UnparsableRequestError from exc
                if field == 1:
                    # Triton's core gets the name as a C string: it ends at the first NUL.
                    name = text.split("\0", 1)[0]
                else:
                    version = text
            pos = stop
        elif wire == _WIRE_VARINT:
            _, pos = read_varint(data, pos)
        elif wire == _WIRE_FIXED64:
            pos += 8
        elif wire == _WIRE_FIXED32:
            pos += 4
        else:
            raise UnparsableRequestError
        if field == 0 or pos > end:
            raise UnparsableRequestError
    return name, version


def iter_fields(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, start, stop) of each field in ``data[start:end]``, without copying.

    For a length-delimited field start..stop is its payload; for the others, its value bytes.
    """
    pos = start
    end = len(data) if end is None else end
    while pos < end:
        tag, pos = read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == _WIRE_LENGTH_DELIMITED:
            length, pos = read_varint(data, pos)
            stop = pos + length
        elif wire == _WIRE_VARINT:
            begin = pos
            _, stop = read_varint(data, pos)
            pos = begin
        elif wire == _WIRE_FIXED64:
            stop = pos + 8
        elif wire == _WIRE_FIXED32:
            stop = pos + 4
        else:
            raise UnparsableRequestError
        if stop > end:
            raise UnparsableRequestError
        yield field, wire, pos, stop
        pos = stop


def _fields(data: bytes) -> list[tuple[int, int, int, int]]:
    """Top-level (field, wire type, start, stop) of every field."""
    return list(iter_fields(data))


def read_sequence_id(data: bytes) -> str | None:
    """The ``sequence_id`` request parameter (int or string) as text, or None.

    Requests of one sequence must all reach the backend holding its state (Triton's sequence
    batcher), so the router pins them; the value itself is opaque here.
    """
    for field, _, start, stop in _fields(data):
        if field != 4:  # ModelInferRequest.parameters: map<string, InferParameter>
            continue
        entry = data[start:stop]
        key = value = None
        for entry_field, _, s, e in _fields(entry):
            if entry_field == 1:
                key = entry[s:e]
            elif entry_field == 2:
                value = entry[s:e]
        if key != b"sequence_id" or value is None:
            continue
        for param_field, wire, s, e in _fields(value):
            # InferParameter: int64_param = 2, string_param = 3, uint64_param = 5
            if param_field in (2, 5) and wire == _WIRE_VARINT:
                number, _ = read_varint(value, s)
                return str(number) if number else None
            if param_field == 3 and wire == _WIRE_LENGTH_DELIMITED:
                return value[s:e].decode(errors="replace") or None
    return None
