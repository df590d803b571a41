"""Merges answers from several backends into the one answer a single Triton would give."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2

_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
    }
)
# Fields that are points in time, not counts: the fleet's value is the latest one.
_TIMESTAMP_FIELDS = frozenset({"last_inference"})
# Repeated entries that describe the same bucket on every backend, merged by this key.
_BUCKET_KEYS = {"batch_stats": "batch_size"}


def merge_repository_index(
    responses: Iterable[service_pb2.RepositoryIndexResponse],
) -> service_pb2.RepositoryIndexResponse:
    """Union of model versions; a version READY anywhere is READY in the fleet."""
    merged: dict[tuple[str, str], service_pb2.RepositoryIndexResponse.ModelIndex] = {}
    for response in responses:
        for model in response.models:
            key = (model.name, model.version)
            current = merged.get(key)
            if current is None or (model.state == "READY" and current.state != "READY"):
                merged[key] = model
    # A backend that has a model in its repository but not loaded lists it without a version;
    # once any backend lists versions of that model, the bare entry says nothing more.
    versioned = {name for name, version in merged if version}
    ordered = sorted(
        (item for item in merged.items() if item[0][1] or item[0][0] not in versioned),
        key=lambda item: (item[0][0], _version_sort(item[0][1])),
    )
    return service_pb2.RepositoryIndexResponse(models=[model for _, model in ordered])


def merge_model_statistics(
    responses: Iterable[service_pb2.ModelStatisticsResponse],
) -> service_pb2.ModelStatisticsResponse:
    """Sum counts and durations per (model, version) over the fleet."""
    merged: dict[tuple[str, str], service_pb2.ModelStatistics] = {}
    for response in responses:
        for stats in response.model_stats:
            key = (stats.name, stats.version)
            if key not in merged:
                merged[key] = service_pb2.ModelStatistics(name=stats.name, version=stats.version)
            _accumulate(merged[key], stats)
    ordered = sorted(merged.items(), key=lambda item: (item[0][0], _version_sort(item[0][1])))
    return service_pb2.ModelStatisticsResponse(model_stats=[stats for _, stats in ordered])


def _accumulate(target: Message, source: Message) -> None:
    for field, value in source.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    _accumulate(getattr(target, field.name)[key], item)
            elif field.is_repeated:
                _accumulate_repeated(
                    getattr(target, field.name), value, _BUCKET_KEYS.get(field.name)
                )
            else:
                child = getattr(target, field.name)
                # Present even when empty (Triton sends `fail {}` for a model never called).
                child.SetInParent()
                _accumulate(child, value)
        elif field.type in _INTEGER_TYPES and not field.is_repeated:
            current = getattr(target, field.name)
            if field.name in _TIMESTAMP_FIELDS:
                setattr(target, field.name, max(current, value))
            else:
                setattr(target, field.name, current + value)
        elif not getattr(target, field.name):
            setattr(target, field.name, value)


def _accumulate_repeated(target: object, source: Iterable[Message], bucket_key: str | None) -> None:
    # ``target`` is a protobuf RepeatedCompositeFieldContainer (untyped in the stubs).
    for item in source:
        if bucket_key is not None:
            for existing in target:  # type: ignore[attr-defined]
                if getattr(existing, bucket_key) == getattr(item, bucket_key):
                    _accumulate_bucket(existing, item, bucket_key)
                    break
            else:
                target.add().CopyFrom(item)  # type: ignore[attr-defined]
        else:
            target.add().CopyFrom(item)  # type: ignore[attr-defined]


def _accumulate_bucket(target: Message, source: Message, bucket_key: str) -> None:
    for field, value in source.ListFields():
        if field.name == bucket_key:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            child = getattr(target, field.name)
            child.SetInParent()
            _accumulate(child, value)
        elif field.type in _INTEGER_TYPES:
            setattr(target, field.name, getattr(target, field.name) + value)


def _version_sort(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)
