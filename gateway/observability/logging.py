"""structlog set-up: JSON lines in production, readable console output in a terminal.

Every string a log line carries is truncated in one processor, so client-supplied strings
(model names, versions, request ids, Triton messages echoing them) cannot blow up log lines and
no call site has to remember to cut them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from gateway.settings import LoggingSettings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
MAX_VALUE_CHARS = 200
"""Longest string value a log line keeps (but those of ``LONG_VALUE_KEYS``)."""
MAX_LONG_VALUE_CHARS = 16_384
LONG_VALUE_KEYS = frozenset({"exception", "detail"})
"""Tracebacks and a backend's full error detail (which may hold its own traceback) are kept
longer: they are what an operator reads to fix the fault. Still bounded."""


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[truncated, {len(text)} chars]"


def truncate_strings(
    max_chars: int = MAX_VALUE_CHARS, max_long_chars: int = MAX_LONG_VALUE_CHARS
) -> structlog.typing.Processor:
    """A processor that truncates long strings, also inside lists, tuples, sets and dicts."""

    def shorten(value: Any, limit: int, depth: int = 0) -> Any:
        if isinstance(value, str):
            return truncate(value, limit)
        if depth >= 2:
            return value
        if isinstance(value, list | tuple | set | frozenset):
            return [shorten(item, limit, depth + 1) for item in value]
        if isinstance(value, dict):
            return {
                shorten(k, limit, depth + 1): shorten(v, limit, depth + 1) for k, v in value.items()
            }
        return value

    def processor(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            limit = max_long_chars if key in LONG_VALUE_KEYS else max_chars
            event_dict[key] = shorten(value, limit)
        return event_dict

    return processor


class StderrLogger:
    """Writes each rendered line to the process's own stderr, and never raises.

    ``sys.__stderr__``, not ``sys.stderr``: whoever swaps ``sys.stderr`` (a test harness
    capturing one command's output, an embedding application) may close what it swapped in,
    and a logger holding that object would raise ValueError into whatever request logs. A
    line that cannot be written (a closed or broken stderr) is dropped, as the standard
    library's handlers do: a log line must never fail a request.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file
        # Lines from the gRPC threads and the event loop do not interleave.
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            print(message, file=self._file, flush=True)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class StderrLoggerFactory:
    """One :class:`StderrLogger` shared by every bound logger."""

    def __init__(self) -> None:
        self._logger = StderrLogger(sys.__stderr__ or sys.stderr)

    def __call__(self, *args: Any) -> StderrLogger:
        return self._logger


def json_logs(settings: LoggingSettings) -> bool:
    """Whether lines are JSON: asked for, or "auto" with stderr not a terminal."""
    return settings.format == "json" or (settings.format == "auto" and not sys.stderr.isatty())


def configure_logging(settings: LoggingSettings) -> None:
    """Configure structlog once, from the composition root."""
    as_json = json_logs(settings)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        processors.append(structlog.processors.format_exc_info)
    # After the traceback is formatted, so it is bounded too.
    processors.append(truncate_strings())
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        # The level filter is compiled into the logger class, so a disabled debug call on the
        # request path costs one no-op method call.
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=StderrLoggerFactory(),
        cache_logger_on_first_use=True,
    )
