"""Whose fault a backend fault is: the whole server's, or one model's on it.

A server that does not answer (connection refused or reset, a per-try timeout, shutting down)
fails every model: its breaker takes the backend out of every route. A server that answers
with a fault about one model (the model's queue is full, its execution failed, the version is
not READY there any more) is fine for its other models: only that backend+model pair leaves
the routes. Triton names the model it speaks of in quotes ("'simple' version 1 is not at ready
state"), which is what tells its UNAVAILABLE from the transport's. tgw-edge classifies the same
way (``fault_scope`` in ``edge/src/stats.rs``); the shared cases are in the unit tests of both.
"""

from __future__ import annotations

from enum import Enum

# Codes Triton returns about one model: its queue is full, its execution failed, or (for a
# backend the route table lists for the model) the model left it since the last health poll.
_MODEL_CODES = frozenset({"RESOURCE_EXHAUSTED", "INTERNAL", "NOT_FOUND"})
_QUEUE_FULL = "maximum queue size"


class FaultScope(Enum):
    BACKEND = "backend"
    MODEL = "model"


def fault_scope(code: str, details: str, model: str) -> FaultScope:
    """The scope of a backend fault with status ``code`` (its name) and message ``details``."""
    if code in _MODEL_CODES:
        return FaultScope.MODEL
    if code == "UNAVAILABLE" and (f"'{model}'" in details or _QUEUE_FULL in details):
        return FaultScope.MODEL
    return FaultScope.BACKEND
