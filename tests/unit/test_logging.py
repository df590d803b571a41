"""Log lines keep long strings short, whatever the call site passes."""

import io
import json
import sys
from typing import Any

import pytest
import structlog

from gateway.observability.logging import StderrLogger, configure_logging, truncate_strings
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


def test_lines_go_to_the_process_stderr_and_a_closed_stream_fails_nothing(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging(LoggingSettings(level="info", format="json"))
    # Whatever replaced sys.stderr (and closes it later) does not receive the lines.
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    structlog.get_logger("test").info("a_line")
    assert swapped.getvalue() == ""
    assert json.loads(capfd.readouterr().err)["event"] == "a_line"
    closed = io.StringIO()
    closed.close()
    StderrLogger(closed).info("dropped")  # raises nothing
