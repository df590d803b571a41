"""Model operations on one backend: what it serves, push (RepositoryModelLoad with the config
and every file as request parameters, so the backend needs no access to the gateway's disk),
unload, and the proof that it serves a pushed model right (READY, then golden requests).

Triton replaces every version of a model pushed this way, lists it in RepositoryIndex only on
some versions and forgets it on restart: what a backend serves is read back from the content
digest inside the config it loaded (ModelConfig) and from ModelReady per version, never from
the index alone.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2

from gateway.backends.triton import TritonBackend
from gateway.repository.content import CONTENT_PARAMETER, ModelContent, pushed_config_json
from gateway.repository.golden import Tolerance, golden_case, mismatch


class PushError(Exception):
    """A push or check that failed on one backend, in one line."""


class PushesRefusedError(PushError):
    """The backend takes no model loads at all (Triton not in EXPLICIT model-control mode):
    nothing on it changed."""


NO_EXPLICIT_LOADS = "explicit model load / unload is not allowed"
"""How Triton refuses RepositoryModelLoad outside --model-control-mode=explicit."""


@dataclass(frozen=True, slots=True)
class Served:
    """What a backend serves of one model: the content digest it was pushed (None: not one
    of the gateway's pushes, or nothing) and its READY versions."""

    digest: str | None
    ready: frozenset[str]


@dataclass(frozen=True, slots=True)
class PushSettings:
    cpu_only: bool
    load_timeout_s: float
    call_timeout_s: float
    tolerance: Tolerance


async def served(backend: TritonBackend, content: ModelContent | str, timeout_s: float) -> Served:
    """The model's content digest on the backend and which of its versions are READY."""
    name = content if isinstance(content, str) else content.name
    try:
        answer = await backend.stub.ModelConfig(
            service_pb2.ModelConfigRequest(name=name),
            timeout=timeout_s,
            metadata=backend.control_metadata,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
            if exc.code() is grpc.StatusCode.UNAVAILABLE and "not found" not in (
                exc.details() or ""
            ):
                raise PushError(f"{backend.name}: {exc.details()}") from exc
            return Served(digest=None, ready=frozenset())
        raise PushError(f"{backend.name}: ModelConfig {name}: {exc.details()}") from exc
    parameter = answer.config.parameters.get(CONTENT_PARAMETER)
    digest = parameter.string_value if parameter is not None else None
    versions = content.versions if isinstance(content, ModelContent) else ()
    ready = await backend.ready_among(frozenset((name, v) for v in versions), timeout_s)
    return Served(digest=digest or None, ready=frozenset(v for _, v in ready))


def load_request(
    content: ModelContent, *, cpu_only: bool
) -> service_pb2.RepositoryModelLoadRequest:
    """The whole model, config and files, read now and checked against the recorded sha256:
    a file changed since validation is a new drop, not something to push."""
    request = service_pb2.RepositoryModelLoadRequest(model_name=content.name)
    request.parameters["config"].string_param = pushed_config_json(content, cpu_only=cpu_only)
    for item in content.files:
        data = (content.directory / item.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != item.sha256:
            raise PushError(f"{content.directory / item.path} changed since it was validated")
        request.parameters[f"file:{item.path}"].bytes_param = data
    return request


async def push(
    backend: TritonBackend, request: service_pb2.RepositoryModelLoadRequest, timeout_s: float
) -> None:
    try:
        await backend.stub.RepositoryModelLoad(
            request, timeout=timeout_s, metadata=backend.control_metadata
        )
    except grpc.aio.AioRpcError as exc:
        if NO_EXPLICIT_LOADS in (exc.details() or ""):
            raise PushesRefusedError(
                f"{backend.name} takes no model loads ({_one_line(exc)}): run it with "
                "--model-control-mode=explicit, or set repository.push to false"
            ) from exc
        raise PushError(f"{backend.name} refused the load: {_one_line(exc)}") from exc


async def unload(backend: TritonBackend, name: str, timeout_s: float) -> None:
    try:
        await backend.stub.RepositoryModelUnload(
            service_pb2.RepositoryModelUnloadRequest(model_name=name),
            timeout=timeout_s,
            metadata=backend.control_metadata,
        )
    except grpc.aio.AioRpcError as exc:
        raise PushError(f"{backend.name} refused the unload of {name}: {_one_line(exc)}") from exc


async def prove(backend: TritonBackend, content: ModelContent, settings: PushSettings) -> None:
    """Every served version READY with this content, and answering its golden request like
    the local ONNX Runtime session; PushError says what is wrong."""
    state = await served(backend, content, settings.call_timeout_s)
    if state.digest != content.digest:
        raise PushError(f"{backend.name} serves other content of {content.name} after the push")
    missing = sorted(set(content.served_versions) - state.ready, key=int)
    if missing:
        raise PushError(f"{backend.name}: {content.name} versions {missing} not READY")
    for version in content.served_versions:
        case = await asyncio.to_thread(golden_case, content, version)
        if case is None:
            continue
        try:
            response = await backend.stub.ModelInfer(
                case.request, timeout=settings.call_timeout_s, metadata=backend.control_metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise PushError(
                f"{backend.name}: golden request to {content.name} {version} failed: "
                f"{_one_line(exc)}"
            ) from exc
        wrong = mismatch(case, response, settings.tolerance)
        if wrong is not None:
            raise PushError(
                f"{backend.name}: {content.name} {version} answers unlike the local session: "
                f"{wrong}"
            )


def _one_line(exc: grpc.aio.AioRpcError) -> str:
    details = (exc.details() or "").strip().splitlines()
    return f"{exc.code().name}: {details[0] if details else ''}"
