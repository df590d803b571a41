"""The snapshot the control plane sends the edge: the fleet as the health polls see it, the
routes, the policy from the settings, and what ServerMetadata answers.

Built whole each time (never a delta), so applying one twice is harmless and an edge that
restarts needs nothing but the latest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from gateway._protos.tgw.control.v1 import control_pb2
from gateway.backends.pool import BackendPool
from gateway.backends.triton import TritonBackend
from gateway.control.client import duration
from gateway.settings import GatewaySettings

SERVER_NAME = "triton"
"""What Triton calls itself in ServerMetadata; clients check it."""
GATEWAY_EXTENSIONS = frozenset(
    {
        "classification",
        "sequence",
        "model_repository",
        "model_repository(unload_dependents)",
        "schedule_policy",
        "model_configuration",
        "binary_tensor_data",
        "parameters",
        "statistics",
        "system_shared_memory",
    }
)
"""Extensions the gateway honours. System shared memory is the gateway's own (regions on its
host, tensors sent inline); CUDA shared memory is left out: a client's GPU memory cannot
reach the backends' GPUs through it."""


def policy(settings: GatewaySettings) -> control_pb2.Policy:
    breaker, retry = settings.breaker, settings.retry
    timeouts, hedging, shedding = settings.timeouts, settings.hedging, settings.shedding
    return control_pb2.Policy(
        balancing=control_pb2.Balancing(
            latency_decay=duration(settings.balancing.latency_decay_s),
            fault_penalty=duration(settings.balancing.fault_penalty_s),
        ),
        breaker=control_pb2.Breaker(
            consecutive_failures=breaker.consecutive_failures,
            failure_rate=breaker.failure_rate,
            min_requests=breaker.min_requests,
            window=duration(breaker.window_s),
            base_ejection=duration(breaker.base_ejection_s),
            max_ejection=duration(breaker.max_ejection_s),
            half_open_trials=breaker.half_open_trials,
            max_ejected_fraction=breaker.max_ejected_fraction,
        ),
        retry=control_pb2.Retry(
            budget_ratio=retry.budget_ratio,
            min_per_second=retry.min_per_second,
            window=duration(retry.window_s),
            max_attempts=retry.max_attempts,
        ),
        timeouts=control_pb2.Timeouts(
            floor=duration(timeouts.floor_s),
            cap=duration(timeouts.cap_s),
            multiplier=timeouts.multiplier,
            quantile=timeouts.quantile,
            per_model={model: duration(s) for model, s in timeouts.per_model_s.items()},
        ),
        hedging=control_pb2.Hedging(
            enabled=hedging.enabled,
            quantile=hedging.quantile,
            min_delay=duration(hedging.min_delay_s),
            max_delay=duration(hedging.max_delay_s),
        ),
        shedding=control_pb2.Shedding(
            max_in_flight=shedding.max_in_flight or 0,
            max_in_flight_per_model=shedding.max_in_flight_per_model or 0,
        ),
        max_message_bytes=settings.server.max_message_bytes,
        sequence_idle=duration(settings.balancing.sequence_idle_s),
    )


def server_identity(pool: BackendPool) -> control_pb2.ServerIdentity:
    """Triton's answer for the fleet: the oldest Triton version among the ready backends (what
    every backend honours) and the extensions all of them and the gateway honour."""
    servers = [b.health.server for b in pool.backends if b.health.ready and b.health.server]
    if not servers:
        return control_pb2.ServerIdentity(name=SERVER_NAME)
    version = min((s.version for s in servers), key=_version_order)
    extensions = set(GATEWAY_EXTENSIONS)
    for server in servers:
        extensions &= set(server.extensions)
    ordered = [e for e in servers[0].extensions if e in extensions]
    return control_pb2.ServerIdentity(name=SERVER_NAME, version=version, extensions=ordered)


def build(
    settings: GatewaySettings,
    pool: BackendPool,
    fallback_models: Iterable[str],
    traffic_routes: Iterable[control_pb2.TrafficRoute] = (),
    model_sha256: Callable[[str, str], str] = lambda model, version: "",
) -> control_pb2.Snapshot:
    """The current snapshot (version 0: the supervisor numbers it). ``model_sha256``: the
    sha256 of a model version's file, stamped on its answers ("" when unknown)."""
    backends = [
        control_pb2.Backend(
            name=b.name,
            address=b.address,
            ready=b.health.ready,
            drained=pool.is_drained(b.name),
        )
        for b in pool.backends
    ]
    routes = [
        control_pb2.Route(
            model=model,
            version=version,
            backends=[b.name for b in holders],
            unordered=any(_unordered(b, model, version, pool) for b in holders),
            name_version="" if version else pool.table.name_version.get(model, ""),
            serves_version=_served(model, version, pool),
            model_sha256=model_sha256(model, _served(model, version, pool)),
        )
        for (model, version), holders in sorted(pool.table.candidates.items())
    ]
    known: dict[str, set[str]] = {}
    for backend in pool.backends:
        for model, version in backend.last_models:
            known.setdefault(model, set()).add(version)
    return control_pb2.Snapshot(
        backends=backends,
        routes=routes,
        policy=policy(settings),
        server=server_identity(pool),
        known_models=[
            control_pb2.KnownModel(name=name, versions=sorted(versions))
            for name, versions in sorted(known.items())
        ],
        fallback_models=sorted(fallback_models),
        traffic_routes=traffic_routes,
    )


def _served(model: str, version: str, pool: BackendPool) -> str:
    # An unversioned request is answered by the fleet's latest version.
    return version or pool.table.latest_version.get(model, "")


def _unordered(backend: TritonBackend, model: str, version: str, pool: BackendPool) -> bool:
    # The unversioned route serves the fleet's latest version.
    version = version or pool.table.latest_version.get(model, "")
    return (model, version) in backend.health.unordered


def _version_order(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))
