"""Log lines keep long strings short, whatever the call site passes."""

import io
import json
import sys
from typing import Any

import pytest
import structlog

from gateway.observability.logging import configure_logging, truncate_strings
from gateway.settings import LoggingSettings


def test_long_strings_are_truncated_with_a_marker() -> None:
    processor = truncate_strings(max_chars=10)
    event = processor(
        None,
        "info",
        {"event": "x", "model": "m" * 50, "short": "ok", "models": ["n" * 50], "count": 3},
    )
    assert event["model"] == "mmmmmmmmmm...[truncated, 50 chars]"
    assert event["short"] == "ok"
    assert event["models"] == ["nnnnnnnnnn...[truncated, 50 chars]"]
    assert event["count"] == 3


def test_the_configured_chain_truncates_every_value() -> None:
    configure_logging(LoggingSettings(level="info", format="json"))
    event: Any = {"event": "request_failed", "model": "a" * 5000, "request_id": "r" * 5000}
    for processor in structlog.get_config()["processors"]:
        event = processor(None, "warning", event)
    line = json.loads(event)
    assert line["model"].startswith("a" * 200)
    assert line["model"].endswith("...[truncated, 5000 chars]")
    assert len(line["request_id"]) < 250


def test_lines_go_to_the_current_stderr_and_a_closed_one_fails_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure_logging(LoggingSettings(level="info", format="json"))
    log = structlog.get_logger("test")
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    log.info("first_line")
    first.close()
    # A closed stream (swapped out by whoever owned it) drops the line, raising nothing.
    log.info("dropped_line")
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    log.info("second_line")
    assert json.loads(second.getvalue())["event"] == "second_line"
