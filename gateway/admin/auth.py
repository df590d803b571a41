"""The admin token: where it comes from, and the interceptor that asks every call for it."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import structlog

from gateway.settings import AdminSettings

log = structlog.get_logger(__name__)

TOKEN_FILE = "admin.token"
_PREFIX = "Bearer "


class AdminTokenError(Exception):
    """The configured token cannot be read."""


def read_token(path: Path) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise AdminTokenError(
            f"cannot read the admin token file {path}: {exc.strerror or exc}"
        ) from exc
    token = lines[0].strip() if lines else ""
    if not token:
        raise AdminTokenError(f"the admin token file {path} is empty")
    return token


def admin_token(settings: AdminSettings, state_dir: Path) -> str:
    """The configured token, else the token file's, else the one kept in the state folder
    (made there, owner-only, on first start)."""
    if settings.token is not None:
        return settings.token.get_secret_value()
    if settings.token_file is not None:
        return read_token(settings.token_file)
    path = state_dir / TOKEN_FILE
    if path.exists():
        return read_token(path)
    token = secrets.token_urlsafe(32)
    state_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    log.info("admin_token_created", path=str(path))
    return token


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every admin call needs ``authorization: Bearer <token>``: none is UNAUTHENTICATED, a
    wrong one PERMISSION_DENIED. Compared in constant time."""

    def __init__(self, token: str) -> None:
        self._expected = (_PREFIX + token).encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        sent = _authorization(details.invocation_metadata or ())
        if sent is not None and hmac.compare_digest(sent.encode(), self._expected):
            return await continuation(details)
        if sent is None:
            code = grpc.StatusCode.UNAUTHENTICATED
            message = "admin calls need the header 'authorization: Bearer <admin token>'"
        else:
            code = grpc.StatusCode.PERMISSION_DENIED
            message = "the admin token is not the one this gateway accepts"
        log.warning("admin_call_denied", method=details.method, code=code.name)

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(deny)


def _authorization(metadata: Any) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None
