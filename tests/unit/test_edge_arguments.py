"""The gateway's settings reach tgw-edge as options the installed binary accepts."""

from __future__ import annotations

import subprocess

from gateway.control.arguments import edge_arguments, find_edge_binary
from gateway.settings import load_settings


def _flags(arguments: list[str]) -> list[str]:
    return [argument for argument in arguments if argument.startswith("--")]


def test_every_edge_limit_becomes_an_option_the_binary_knows() -> None:
    binary = find_edge_binary(None)
    assert binary is not None, "tgw-edge is not installed: run 'make install'"
    settings = load_settings()
    arguments = edge_arguments(settings)
    usage = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=True)
    for flag in _flags(arguments):
        assert f"{flag} " in usage.stdout, flag
    # Every limit of the edge section is passed on, none silently dropped.
    # (binary and runtime_dir say how to start it; the rest of the section is the supervisor's)
    limits = set(type(settings.edge).model_fields) - {
        "binary",
        "runtime_dir",
        "hang_timeout_s",
        "max_restarts",
        "restart_window_s",
    }
    passed = {flag.removeprefix("--").replace("-", "_") for flag in _flags(arguments)}
    for limit in limits:
        stem = limit.removesuffix("_s")
        assert stem in passed or f"{stem}_ms" in passed, limit


def test_seconds_become_milliseconds() -> None:
    arguments = edge_arguments(load_settings(edge={"handshake_timeout_s": 2.5}))
    assert arguments[arguments.index("--handshake-timeout-ms") + 1] == "2500"
    # Per-request policy travels in snapshots, never as options fixed at start.
    assert "--per-try-timeout-ms" not in arguments
    assert "--max-in-flight" not in arguments
