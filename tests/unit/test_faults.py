# ruff: noqa: E501  (one row per line)
"""Whose fault a status is. The routed cases are shared with tgw-edge (fault_scopes.json).
Messages are Triton 2.51's own, taken from a real tritonserver; "" in the last column: a
client error (or the client's deadline), never a fault.
"""

import json
from pathlib import Path

import pytest

from gateway.balancing.faults import FaultScope, fault_scope

LONG = "a" * 300

# (code, details, routed model, routed version, scope) for a call the route table routed: one
# file read by these tests and by tgw-edge's (edge/src/faults.rs), so the two cannot drift.
CASES = [tuple(row) for row in json.loads((Path(__file__).parent / "fault_scopes.json").read_text())]
# A model name longer than any file name: still Triton's exact words, still a stale route.
CASES.append(("NOT_FOUND", f"Request for unknown model: '{LONG}' is not found", LONG, "", "model"))


@pytest.mark.parametrize(("code", "details", "model", "version", "scope"), CASES)
def test_fault_scope_of_a_routed_call(
    code: str, details: str, model: str, version: str, scope: str
) -> None:
    assert fault_scope(code, details, model, version) is FaultScope(scope)


# An unrouted call asks any backend about a model the routes do not know: NOT_FOUND is the
# answer the client needs, and a fault can only be the whole server's.
UNROUTED = [
    ("NOT_FOUND", "Request for unknown model: 'nope' is not found", "nope", "", ""),
    ("UNAVAILABLE", "'nope' version 1 is not at ready state", "nope", "1", "backend"),
    ("INTERNAL", "boom", "nope", "", "backend"),
    ("UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-k'", "nope", "", ""),
    ("INVALID_ARGUMENT", "requested model 'nope' is not available", "nope", "", ""),
]  # fmt: skip


@pytest.mark.parametrize(("code", "details", "model", "version", "scope"), UNROUTED)
def test_fault_scope_of_an_unrouted_call(
    code: str, details: str, model: str, version: str, scope: str
) -> None:
    assert fault_scope(code, details, model, version, routed=False) is FaultScope(scope)
