"""The gateway's error tree: every error carries the gRPC status it maps to.

One interceptor (``server.interceptor``) turns these into statuses; anything else becomes
INTERNAL with a fixed message, so tracebacks never reach clients.
"""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequestError(GatewayError):
    """The request cannot be understood (malformed bytes, bad field)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class UnparsableRequestError(InvalidRequestError):
    """Bytes that are no message of the method's type: INTERNAL "Unable to parse request",
    Triton's own answer for a request it cannot parse."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self) -> None:
        super().__init__("Unable to parse request")


class ModelNotFoundError(GatewayError):
    """No backend serves the model (or the version); worded exactly as Triton words it."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, model_name: str, model_version: str = "") -> None:
        version = f" version {model_version}" if model_version else ""
        super().__init__(f"Request for unknown model: '{model_name}'{version} is not found")
        self.model_name = model_name
        self.model_version = model_version


class NoBackendAvailableError(GatewayError):
    """The model exists in the fleet but no backend can take the request now."""

    code = grpc.StatusCode.UNAVAILABLE


class OverloadedError(GatewayError):
    """A load-shedding cap is reached: refused at once rather than queued."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UpstreamError(GatewayError):
    """A backend answered with a non-OK status: passed to the client unchanged."""

    def __init__(
        self, code: grpc.StatusCode, message: str, backend: str, *, backend_fault: bool = False
    ) -> None:
        super().__init__(message, code=code)
        self.backend = backend
        self.backend_fault = backend_fault
        """The backend, not the request, is at fault: retry elsewhere, count on its breaker."""


class FleetChangeRefusedError(GatewayError):
    """RepositoryModelLoad/Unload without the configured key, or with none configured: refused
    with the status Triton gives a restricted protocol called without its header."""

    code = grpc.StatusCode.UNAVAILABLE


class FleetChangeError(GatewayError):
    """A fleet change failed on one backend and was not applied to the ones after it; the
    message names the backend, never the server's paths (the full detail is logged)."""

    def __init__(
        self, code: grpc.StatusCode, message: str, backend: str, changed: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, code=code)
        self.backend = backend
        self.changed = changed
        """The backends changed before it failed."""


class UnsupportedMethodError(GatewayError):
    """A protocol method the gateway deliberately does not offer."""

    code = grpc.StatusCode.UNIMPLEMENTED
