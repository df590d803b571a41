import pytest

from gateway.balancing.faults import FaultScope, fault_scope

# The same cases are checked for tgw-edge in edge/src/stats.rs.
CASES = [
    ("UNAVAILABLE", "failed to connect to all addresses; last error: ECONNREFUSED", "backend"),
    ("UNAVAILABLE", "Socket closed", "backend"),
    ("UNAVAILABLE", "'simple' version 1 is not at ready state", "model"),
    ("UNAVAILABLE", "'other' version 1 is not at ready state", "backend"),
    ("UNAVAILABLE", "Exceeds maximum queue size", "model"),
    ("RESOURCE_EXHAUSTED", "", "model"),
    ("INTERNAL", "Failed to process the request(s) for model instance 'simple_0_0'", "model"),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", "backend"),
    ("NOT_FOUND", "Request for unknown model: 'simple' has no available versions", "model"),
]


@pytest.mark.parametrize(("code", "details", "scope"), CASES)
def test_fault_scope(code: str, details: str, scope: str) -> None:
    assert fault_scope(code, details, "simple") is FaultScope(scope)
