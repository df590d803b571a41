"""Maps the ``GatewayError`` tree to gRPC statuses, in one place, for every method.

Unknown exceptions become INTERNAL with a fixed message; the traceback goes to the log only.
Every log line of a call carries its request id: the caller's ``x-request-id`` when it sent
one, else one made here. Wrapped handlers are built once per method and cached, so a call
allocates no new handler.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from gateway.errors import GatewayError
from gateway.server.drain import DrainGate

log = structlog.get_logger(__name__)

INTERNAL_MESSAGE = "internal error in triton-gateway"
SHUTTING_DOWN = "triton-gateway is shutting down"

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


RequestIds = Callable[[], str]


def counter_request_ids(prefix: str) -> RequestIds:
    """Cheap unique ids (no randomness per call): ``prefix-1``, ``prefix-2``, ..."""
    numbers = itertools.count(1)
    return lambda: f"{prefix}-{next(numbers)}"


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, request_ids: RequestIds, gate: DrainGate) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._request_ids = request_ids
        self._gate = gate

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            # Unknown method: gRPC answers UNIMPLEMENTED; not cached, so junk names cannot
            # grow the cache.
            return None
        wrapped = _wrap(method, handler, self._request_ids, self._gate)
        self._wrapped[method] = wrapped
        return wrapped


def _wrap(
    method: str, handler: grpc.RpcMethodHandler, request_ids: RequestIds, gate: DrainGate
) -> grpc.RpcMethodHandler:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary(method, handler.unary_unary, request_ids, gate),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _streaming(method, handler.stream_stream, request_ids, gate),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _bind_request_id(context: grpc.aio.ServicerContext, request_ids: RequestIds) -> None:
    # Each call runs in its own task, so the bound id cannot leak into another call.
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            structlog.contextvars.bind_contextvars(request_id=value)
            return
    structlog.contextvars.bind_contextvars(request_id=request_ids())


def _unary(
    method: str,
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    request_ids: RequestIds,
    gate: DrainGate,
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _bind_request_id(context, request_ids)
        if not gate.enter():
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method, exc)
        finally:
            gate.leave()

    return mapped


def _streaming(
    method: str,
    behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
    request_ids: RequestIds,
    gate: DrainGate,
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def mapped(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        _bind_request_id(context, request_ids)
        if not gate.enter():
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        try:
            async for response in behavior(requests, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, method, exc)
        finally:
            gate.leave()

    return mapped


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    """End the call with the error's status (raises inside grpc; never returns normally)."""
    if not isinstance(exc, GatewayError):
        log.exception("internal_error", method=method)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        return
    log.warning(
        "request_failed",
        method=method,
        code=exc.code.name,
        message=exc.message,
        backend=getattr(exc, "backend", None),
    )
    await context.abort(exc.code, exc.message)
