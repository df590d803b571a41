"""The gateway's settings reach tgw-edge as options the installed binary accepts."""

from __future__ import annotations

import subprocess

from gateway.server.edge import edge_arguments, find_edge_binary
from gateway.settings import load_settings


def _flags(arguments: list[str]) -> list[str]:
    return [argument for argument in arguments if argument.startswith("--")]


def test_every_edge_limit_becomes_an_option_the_binary_knows() -> None:
    binary = find_edge_binary(None)
    assert binary is not None, "tgw-edge is not installed: run 'make install'"
    settings = load_settings(
        retry={"per_try_timeout_s": 0.25},
        shedding={"max_in_flight": 10, "max_in_flight_per_model": 5},
    )
    arguments = edge_arguments(settings)
    usage = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=True)
    for flag in _flags(arguments):
        assert f"{flag} " in usage.stdout, flag
    # Every limit of the edge section is passed on, none silently dropped.
    limits = set(type(settings.edge).model_fields) - {"mode", "binary"}
    passed = {flag.removeprefix("--").replace("-", "_") for flag in _flags(arguments)}
    for limit in limits:
        stem = limit.removesuffix("_s")
        assert stem in passed or f"{stem}_ms" in passed, limit


def test_seconds_become_milliseconds_and_caps_appear_only_when_set() -> None:
    arguments = edge_arguments(load_settings(edge={"handshake_timeout_s": 2.5}))
    assert arguments[arguments.index("--handshake-timeout-ms") + 1] == "2500"
    assert "--max-in-flight" not in arguments
    assert "--per-try-timeout-ms" not in arguments
