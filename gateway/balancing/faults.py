"""Whose fault a failed call is: the client's, the whole server's, or one model's on it.

A status the request itself caused (an input or a shared-memory region it names is wrong, a
version string that is no number, a protocol the caller may not use) is the client's: it is
returned unchanged, never retried, never counted against a breaker or the retry budget, and
never answered by the fallback. A server that does not answer (connection refused or reset,
shutting down) fails every model: its breaker takes the backend out of every route. A server
that answers with a fault about one model (the model's queue is full, its execution failed, the
version is not READY there any more) is fine for its other models: only that backend+model pair
leaves the routes. Triton names the model it speaks of in quotes ("'simple' version 1 is not at
ready state"), which is what tells its UNAVAILABLE from the transport's.

NOT_FOUND is the client's unless its message says that the routed model or version is gone from
the backend, in Triton's exact words (a stale route): any other NOT_FOUND ("Unable to find shared
memory region: 'r'") names something the request brought. tgw-edge classifies the same way
(``fault_scope`` in ``edge/src/stats.rs``); the shared cases are one table in
``tests/unit/test_faults.py``.
"""

from __future__ import annotations

from enum import Enum

_MODEL_CODES = frozenset({"RESOURCE_EXHAUSTED", "INTERNAL"})
_BACKEND_CODES = frozenset({"UNAVAILABLE", *_MODEL_CODES})
_QUEUE_FULL = "maximum queue size"
_UNKNOWN_MODEL = "Request for unknown model: '"
RESTRICTED_PROTOCOL = "This protocol is restricted, expecting header "
"""How Triton refuses a call of a protocol restricted by ``--grpc-restricted-protocol`` that
lacks its header (status UNAVAILABLE): the caller is refused, the server is fine."""


class FaultScope(Enum):
    NONE = ""
    """Not the backend's fault: a client error, or the client's own deadline or cancellation."""
    BACKEND = "backend"
    MODEL = "model"


def fault_scope(
    code: str, details: str, model: str, version: str, *, routed: bool = True
) -> FaultScope:
    """Whose fault a backend's status ``code`` (its name) with message ``details`` is.

    ``model`` and ``version`` are the routed key ("" for the latest version). ``routed``: the
    route table listed the backend for the model; an unrouted call (a model the routes do not
    know, asked of any backend for Triton's own answer) has no route to be stale and no model
    breaker, so only the server can be at fault.
    """
    if code == "NOT_FOUND":
        stale = routed and _stale_route(details, model, version)
        return FaultScope.MODEL if stale else FaultScope.NONE
    if code not in _BACKEND_CODES or details.startswith(RESTRICTED_PROTOCOL):
        # DEADLINE_EXCEEDED here is the client's deadline: a per-try timeout is the caller's
        # to count (tgw-edge reports its own as UNAVAILABLE).
        return FaultScope.NONE
    if not routed:
        return FaultScope.BACKEND
    if code in _MODEL_CODES:
        return FaultScope.MODEL
    if f"'{model}'" in details or _QUEUE_FULL in details:
        return FaultScope.MODEL
    return FaultScope.BACKEND


def _stale_route(details: str, model: str, version: str) -> bool:
    """Triton's words for a model (version) it does not have, naming the routed key exactly."""
    if not details.startswith(_UNKNOWN_MODEL):
        return False
    rest = details[len(_UNKNOWN_MODEL) :]
    if rest in (f"{model}' is not found", f"{model}' has no available versions"):
        return True
    return bool(version) and rest == f"{model}' version {version} is not found"
