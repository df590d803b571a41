"""Draining one backend by saving the config file: no new requests reach it; undrain restores.

The control plane reads the file and takes the backend out of its routes; tgw-edge, which
serves every routed call, follows the snapshot it is pushed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import yaml
from tritonclient.grpc import service_pb2

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from gateway.settings import load_settings
from tests.conftest import MODEL_REPOSITORY
from tests.support.background import BackgroundGateway
from tests.support.fleet import inference_count
from tests.support.metrics import value, wait_until
from tests.support.models import classifier_features

INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVED_BY_FALLBACK = ("x-gateway-served-by", "fallback")


def _write(path: Path, fleet: LocalFleet, drained: set[str], **sections: Any) -> None:
    config = {
        "server": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "repository": {"path": str(MODEL_REPOSITORY)},
        "health": {"poll_interval_s": 0.2},
        "backends": [
            {"name": s.name, "address": s.address, "drained": s.name in drained}
            for s in fleet.servers.values()
        ],
    }
    config.update(sections)
    path.write_text(yaml.safe_dump(config))


def _classifier_request() -> bytes:
    x = classifier_features(batch=1, seed=5)
    request = service_pb2.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="INPUT", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def test_drain_and_restore_a_backend_by_config_reload(fleet: LocalFleet, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    _write(config, fleet, drained=set())
    gateway = Gateway(load_settings(config), config_path=config)
    with (
        BackgroundGateway(gateway) as running,
        grpc.insecure_channel(running.url) as channel,
    ):
        pool = running.gateway.pool
        port = running.gateway.metrics_port
        infer = channel.unary_unary(INFER)
        request = _classifier_request()

        def routes() -> set[str]:
            return {b.name for b in pool.table.candidates.get(("simple", ""), ())}

        def classifier_by_fallback() -> bool:
            """One classifier call through the public port (only triton-a serves classifier):
            whether the local fallback answered it rather than the fleet."""
            _, call = infer.with_call(request, timeout=10)
            return SERVED_BY_FALLBACK in (call.trailing_metadata() or ())

        assert wait_until(lambda: routes() == {"triton-a", "triton-b"})
        assert not classifier_by_fallback()
        _write(config, fleet, drained={"triton-b"})
        assert wait_until(lambda: routes() == {"triton-a"})
        assert value(port, "triton_gateway_backend_drained", {"backend": "triton-b"}) == 1
        _write(config, fleet, drained=set())
        assert wait_until(lambda: routes() == {"triton-a", "triton-b"})
        assert value(port, "triton_gateway_backend_drained", {"backend": "triton-b"}) == 0
        # After a broken save (rejected, the last good state serves) the watch goes on.
        config.write_text("backends: [ {name: oops\n")
        _write(config, fleet, drained={"triton-a"})
        assert wait_until(lambda: routes() == {"triton-b"})
        # The data plane follows: classifier, which only triton-a has, no longer reaches it
        # (the local fallback answers) while its calls to triton-a stay where they were.
        assert wait_until(classifier_by_fallback)
        ran_on_a = inference_count(fleet, "triton-a", "classifier")
        for _ in range(5):
            assert classifier_by_fallback()
        assert inference_count(fleet, "triton-a", "classifier") == ran_on_a
        # Undrained, triton-a serves classifier again.
        _write(config, fleet, drained=set())
        assert wait_until(lambda: not classifier_by_fallback())
        assert inference_count(fleet, "triton-a", "classifier") > ran_on_a


def test_a_saved_policy_reaches_the_edge_without_a_restart(
    fleet: LocalFleet, tmp_path: Path
) -> None:
    config = tmp_path / "gateway.yaml"
    _write(config, fleet, drained=set())
    gateway = Gateway(load_settings(config), config_path=config)
    with BackgroundGateway(gateway) as running:
        port = running.gateway.metrics_port
        edge = running.gateway.edge
        assert edge is not None
        pid = edge.pid

        def served() -> float:
            return value(port, "triton_gateway_edge_snapshot_version", {})

        assert wait_until(lambda: served() > 0)
        before = served()
        _write(
            config,
            fleet,
            drained=set(),
            timeouts={"per_model_s": {"classifier": 7}},
            hedging={"enabled": False},
        )
        # The edge applied a new snapshot carrying it: same process, nothing refused.
        assert wait_until(lambda: served() > before)
        settings = running.gateway.settings
        assert settings.timeouts.per_model_s == {"classifier": 7}
        assert not settings.hedging.enabled
        assert edge.pid == pid
        assert edge.snapshots_refused == 0
        assert value(port, "triton_gateway_edge_snapshots_refused_total", {}) == 0
        # A policy the edge could not apply is refused when read; the last good one stays.
        _write(config, fleet, drained=set(), timeouts={"floor_s": 5, "cap_s": 1})
        _write(config, fleet, drained={"triton-b"}, timeouts={"per_model_s": {"classifier": 7}})
        assert wait_until(lambda: running.gateway.pool.is_drained("triton-b"))
        assert running.gateway.settings.timeouts.floor_s == settings.timeouts.floor_s
        assert edge.snapshots_refused == 0
