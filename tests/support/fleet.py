"""Questions asked of a local fleet's servers directly, bypassing the gateway."""

from __future__ import annotations

import tritonclient.grpc as grpcclient

from gateway.devfleet import LocalFleet


def inference_count(fleet: LocalFleet, server: str, model: str) -> int:
    """Successful requests (not batch items) the server has run for ``model``."""
    client = grpcclient.InferenceServerClient(fleet.servers[server].address)
    stats = client.get_inference_statistics(model)
    return sum(s.inference_stats.success.count for s in stats.model_stats)
