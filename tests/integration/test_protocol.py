"""The rest of the protocol: server and model queries, the fleet-wide calls, health, reflection."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from tests.support.background import BackgroundGateway
from tests.support.metrics import requests_total
from tests.support.models import classifier_features, classifier_input, simple_arrays, simple_inputs
from tests.support.settings import gateway_settings


@pytest.fixture(scope="module")
def client(gateway_url: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(gateway_url)


@pytest.fixture(scope="module")
def channel(gateway_url: str) -> grpc.Channel:
    return grpc.insecure_channel(gateway_url)


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _direct(fleet: LocalFleet, name: str = "triton-a") -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(fleet.servers[name].address)


def test_server_live_ready_and_metadata(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    # Triton's own answer for the fleet: clients check for "triton" and its version.
    triton = _direct(fleet).get_server_metadata()
    assert (metadata.name, metadata.version) == ("triton", triton.version)
    # The extensions every backend and the gateway honour, in Triton's order.
    assert list(metadata.extensions) == [e for e in triton.extensions if e in metadata.extensions]
    assert "model_repository" in metadata.extensions
    assert "system_shared_memory" in metadata.extensions, "the gateway's own regions"
    assert "cuda_shared_memory" not in metadata.extensions


def test_model_metadata_and_config_match_triton(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet
) -> None:
    for model, version in (("simple", ""), ("classifier", "1"), ("classifier", "2")):
        assert client.get_model_metadata(model, version) == _direct(fleet).get_model_metadata(
            model, version
        )
        assert client.get_model_config(model, version) == _direct(fleet).get_model_config(
            model, version
        )
    metadata = client.get_model_metadata("classifier")
    assert metadata.versions == ["1", "2"]
    assert [t.name for t in metadata.inputs] == ["INPUT"]


def test_model_ready_by_version(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("simple")
    assert client.is_model_ready("classifier", "1")
    assert client.is_model_ready("classifier", "2")
    assert not client.is_model_ready("classifier", "3")
    assert not client.is_model_ready("no_such_model")


def test_metadata_of_unknown_model_is_tritons_not_found(
    client: grpcclient.InferenceServerClient,
) -> None:
    for call in (client.get_model_metadata, client.get_model_config):
        with pytest.raises(InferenceServerException) as info:
            call("no_such_model")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert info.value.message() == "Request for unknown model: 'no_such_model' is not found"


def test_repository_index_is_the_union_of_the_fleet(
    client: grpcclient.InferenceServerClient,
) -> None:
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [
        ("accumulator", "1", "READY"),
        ("classifier", "1", "READY"),
        ("classifier", "2", "READY"),
        ("identity", "1", "READY"),
        ("int8_add", "1", "READY"),
        ("repeat", "1", "READY"),
        ("simple", "1", "READY"),
        ("strings", "1", "READY"),
    ]


def test_statistics_add_up_over_the_fleet(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet
) -> None:
    a, b = simple_arrays()
    for _ in range(4):
        client.infer("simple", simple_inputs(a, b))
    via_gateway = client.get_inference_statistics("simple").model_stats[0]
    per_server = [_direct(fleet, name).get_inference_statistics("simple") for name in fleet.servers]
    assert via_gateway.inference_stats.success.count == sum(
        s.model_stats[0].inference_stats.success.count for s in per_server
    )
    assert via_gateway.last_inference == max(s.model_stats[0].last_inference for s in per_server)
    everything = client.get_inference_statistics()
    assert {(s.name, s.version) for s in everything.model_stats} >= {
        ("simple", "1"),
        ("classifier", "1"),
        ("classifier", "2"),
    }


def test_statistics_of_unknown_model_is_tritons_error(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_inference_statistics("no_such_model")
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "no_such_model" in info.value.message()


KEY = {"triton-grpc-protocol-tgw-key": "s3cret"}


def test_unload_and_load_across_the_fleet_moves_routes(
    fleet: LocalFleet, gateway: BackgroundGateway
) -> None:
    x = classifier_features()
    triton_b = _direct(fleet, "triton-b")
    settings = gateway_settings(
        fleet,
        security={"model_repository_key": "tgw-key=s3cret"},
    )
    with BackgroundGateway(Gateway(settings)) as keyed:
        client = grpcclient.InferenceServerClient(keyed.url)
        # The backends here restrict nothing: the gateway alone refuses a wrong key.
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model("classifier", headers={"triton-grpc-protocol-tgw-key": "wrong"})
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert _direct(fleet).is_model_ready("classifier")
        client.unload_model("classifier", headers=KEY)
        try:
            # The gateway returns once the model is gone everywhere, so nothing can route to it.
            assert not client.is_model_ready("classifier")
            assert not _direct(fleet).is_model_ready("classifier")
            # No backend has it now: the gateway's local fallback answers instead.
            port = keyed.gateway.metrics_port
            before = requests_total(port, path="fallback", model="classifier", code="OK")
            answer = client.infer("classifier", classifier_input(x))
            assert answer.get_response().model_version == "2"
            after = requests_total(port, path="fallback", model="classifier", code="OK")
            assert after == before + 1
            # Unload then load at once: the load must not race the unload.
            client.load_model("classifier", headers=KEY)
            for version in ("1", "2"):
                assert client.is_model_ready("classifier", version)
                # Fleet-wide: triton-b, which started without the model, has it now.
                assert triton_b.is_model_ready("classifier", version)
                response = client.infer("classifier", classifier_input(x), model_version=version)
                assert response.get_response().model_version == version
        finally:
            # Put the fleet back as the session fixture made it: classifier on triton-a only.
            client.load_model("classifier", headers=KEY)
            triton_b.unload_model("classifier")
            _wait_for(
                lambda: (
                    not triton_b.is_model_ready("classifier")
                    and {b.name for b in gateway.gateway.pool.table.candidates[("classifier", "")]}
                    == {"triton-a"}
                )
            )


@pytest.mark.parametrize("call", ["load_model", "unload_model"])
def test_fleet_changes_without_a_configured_key_are_refused_with_how_to_enable_them(
    client: grpcclient.InferenceServerClient, fleet: LocalFleet, call: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        getattr(client, call)("simple", headers=KEY)
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    message = info.value.message() or ""
    assert "security.model_repository_key" in message
    assert "GATEWAY_SECURITY__MODEL_REPOSITORY_KEY" in message
    assert _direct(fleet, "triton-b").is_model_ready("simple")


def test_cuda_shared_memory_is_unimplemented_with_a_reason(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_cuda_shared_memory_status()
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "CUDA region lives in the client's GPU memory" in info.value.message()


def test_malformed_request_bytes_are_answered_as_triton_answers_them(
    channel: grpc.Channel,
) -> None:
    raw_infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as info:
        raw_infer(b"\x0a\x40truncated", timeout=5)
    # Triton's own answer to bytes that are no ModelInferRequest.
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "Unable to parse request"


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_health_service_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
