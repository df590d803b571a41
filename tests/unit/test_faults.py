# ruff: noqa: E501  (one row per line: the table is copied to the Rust tests as it is)
"""Whose fault a status is. The table is shared with tgw-edge (edge/src/stats.rs): keep the rows
plain strings so they can be copied across. Messages are Triton 2.51's own, taken from a real
tritonserver; "" in the last column: a client error (or the client's deadline), never a fault.
"""

import pytest

from gateway.balancing.faults import FaultScope, fault_scope

LONG = "a" * 300

# (code, details, routed model, routed version, scope) for a call the route table routed.
CASES = [
    ("UNAVAILABLE", "failed to connect to all addresses; last error: ECONNREFUSED", "simple", "", "backend"),
    ("UNAVAILABLE", "Socket closed", "simple", "", "backend"),
    ("UNAVAILABLE", "'simple' version 1 is not at ready state", "simple", "1", "model"),
    ("UNAVAILABLE", "Request for unknown model: 'simple' version 1 is not at ready state", "simple", "1", "model"),
    ("UNAVAILABLE", "'other' version 1 is not at ready state", "simple", "1", "backend"),
    ("UNAVAILABLE", "Exceeds maximum queue size", "simple", "", "model"),
    ("UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-infer-key'", "simple", "", ""),
    ("RESOURCE_EXHAUSTED", "", "simple", "", "model"),
    ("INTERNAL", "Failed to process the request(s) for model instance 'simple_0_0'", "simple", "", "model"),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", "simple", "", ""),
    ("CANCELLED", "Cancelled", "simple", "", ""),
    ("INVALID_ARGUMENT", "[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [1,8]", "simple", "", ""),
    # Stale routes: the routed model or version is gone from the backend.
    ("NOT_FOUND", "Request for unknown model: 'simple' has no available versions", "simple", "", "model"),
    ("NOT_FOUND", "Request for unknown model: 'simple' has no available versions", "simple", "1", "model"),
    ("NOT_FOUND", "Request for unknown model: 'simple' is not found", "simple", "", "model"),
    ("NOT_FOUND", "Request for unknown model: 'classifier' version 2 is not found", "classifier", "2", "model"),
    ("NOT_FOUND", f"Request for unknown model: '{LONG}' is not found", LONG, "", "model"),
    # NOT_FOUND for anything else the request names is the client's.
    ("NOT_FOUND", "Unable to find shared memory region: 'nosuch_region'", "simple", "", ""),
    ("NOT_FOUND", "Unable to find shared memory region: 'simple'", "simple", "", ""),
    ("NOT_FOUND", "Request for unknown model: 'other' has no available versions", "simple", "", ""),
    ("NOT_FOUND", "Request for unknown model: 'classifier' version 3 is not found", "classifier", "2", ""),
    ("NOT_FOUND", "Request for unknown model: 'classifier' version 2 is not found", "classifier", "", ""),
    ("NOT_FOUND", "Request for unknown model: 'simple' is not found.", "simple", "", ""),
    ("NOT_FOUND", "", "simple", "", ""),
]  # fmt: skip


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
