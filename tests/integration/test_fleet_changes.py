"""Fleet changes need the key, in Triton's own restricted-protocol scheme, and go canary-first.

The backends here run ``--grpc-restricted-protocol=model-repository:tgw-key=s3cret``, as a
production fleet would: the gateway polls them with the key and passes a keyed client's
load/unload on; anything else is refused in Triton's own words.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.backends.triton import TritonBackend
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from tests.support.background import BackgroundGateway
from tests.support.metrics import value
from tests.support.models import MODEL_REPOSITORY, simple_arrays, simple_inputs
from tests.support.settings import gateway_settings

RESTRICTED = "--grpc-restricted-protocol=model-repository:tgw-key=s3cret"
HEADER = "triton-grpc-protocol-tgw-key"
KEY = {HEADER: "s3cret"}
REFUSED = f"This protocol is restricted, expecting header '{HEADER}'"


@pytest.fixture(scope="module")
def restricted_fleet(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    specs = [
        ServerSpec(name, models=("simple",), extra_args=(RESTRICTED,))
        for name in ("canary", "second")
    ]
    with LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path_factory.mktemp("restricted"), specs
    ) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def keyed(restricted_fleet: LocalFleet) -> Iterator[str]:
    """A gateway with the key, in front of the restricted fleet; yields its address."""
    settings = gateway_settings(
        restricted_fleet,
        security={"model_repository_key": "tgw-key=s3cret"},
        health={"poll_interval_s": 0.1},
    )
    with BackgroundGateway(Gateway(settings)) as gateway:
        yield gateway.url


def _stub(address: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))


def _index(fleet: LocalFleet, server: str) -> dict[str, str]:
    """Model name → state of its first version, asked of the server directly with the key."""
    index = _stub(fleet.servers[server].address).RepositoryIndex(
        service_pb2.RepositoryIndexRequest(), metadata=tuple(KEY.items()), timeout=10
    )
    return {m.name: m.state for m in index.models if m.version}


def test_restricted_backends_are_polled_with_the_key_and_serve(keyed: str) -> None:
    client = grpcclient.InferenceServerClient(keyed)
    a, b = simple_arrays()
    assert np.array_equal(client.infer("simple", simple_inputs(a, b)).as_numpy("OUTPUT0"), a + b)
    # The fan-out index carries the key too.
    index = client.get_model_repository_index()
    assert ("simple", "1", "READY") in {(m.name, m.version, m.state) for m in index.models}


@pytest.mark.parametrize(
    "headers",
    [{}, {HEADER: "wrong"}, {"tgw-key": "s3cret"}, {HEADER: "s3cret-and-more"}],
    ids=["none", "wrong-value", "unprefixed", "longer-value"],
)
@pytest.mark.parametrize("call", ["load_model", "unload_model"])
def test_fleet_changes_without_the_key_are_refused_as_triton_refuses_them(
    keyed: str, restricted_fleet: LocalFleet, headers: dict[str, str], call: str
) -> None:
    direct = grpcclient.InferenceServerClient(restricted_fleet.servers["second"].address)
    answers = []
    for target in (grpcclient.InferenceServerClient(keyed), direct):
        with pytest.raises(InferenceServerException) as info:
            getattr(target, call)("simple", headers=headers)
        answers.append((info.value.status(), info.value.message()))
    assert answers[0] == answers[1] == ("StatusCode.UNAVAILABLE", REFUSED)
    assert _index(restricted_fleet, "canary")["simple"] == "READY"
    assert _index(restricted_fleet, "second")["simple"] == "READY"


def test_a_client_with_the_key_loads_and_unloads_on_restricted_backends(
    keyed: str, restricted_fleet: LocalFleet
) -> None:
    client = grpcclient.InferenceServerClient(keyed)
    client.load_model("identity", headers=KEY)
    try:
        assert _index(restricted_fleet, "canary")["identity"] == "READY"
        assert _index(restricted_fleet, "second")["identity"] == "READY"
        assert client.is_model_ready("identity")
    finally:
        client.unload_model("identity", headers=KEY)
    assert _index(restricted_fleet, "canary")["identity"] == "UNAVAILABLE"
    assert _index(restricted_fleet, "second")["identity"] == "UNAVAILABLE"
    assert not client.is_model_ready("identity")


def test_a_failing_load_stops_at_the_canary_and_names_no_server_path(
    keyed: str, restricted_fleet: LocalFleet
) -> None:
    config = {
        "name": "broken",
        "backend": "python",
        "input": [{"name": "I", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "O", "data_type": "TYPE_FP32", "dims": [1]}],
    }
    files = {"file:1/model.py": b"raise RuntimeError('broken on purpose')\n"}
    client = grpcclient.InferenceServerClient(keyed)
    with pytest.raises(InferenceServerException) as info:
        client.load_model("broken", config=json.dumps(config), files=files, headers=KEY)
    # Triton's status; the message names the failing backend and what was left alone.
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    message = info.value.message() or ""
    assert "failed on backend canary (1 of 2)" in message
    assert "broken on purpose" in message
    assert "left untouched: second" in message
    assert "/tmp" not in message and "model.py" not in message
    # The second backend was never asked (a pushed model is not in Triton's index: its log
    # says what it was asked to load).
    assert "broken" in restricted_fleet.servers["canary"].log_path.read_text()
    assert "broken" not in restricted_fleet.servers["second"].log_path.read_text()
    assert not client.is_model_ready("broken")


def test_a_backend_refusing_the_index_poll_stays_up_with_its_last_models(
    restricted_fleet: LocalFleet,
) -> None:
    address = restricted_fleet.servers["canary"].address

    def backend(metadata: tuple[tuple[str, str], ...] | None) -> TritonBackend:
        return TritonBackend(
            "canary",
            address,
            max_message_bytes=1 << 20,
            control_metadata=metadata,
        )

    async def polls() -> None:
        keyed = backend(tuple(KEY.items()))
        first = await keyed.poll_health(5.0)
        assert first.ready and ("simple", "1") in first.models
        # The key is gone (or the server now restricts the poll): up, last models kept.
        keyed.health, keyed.last_models = first, first.models  # as the pool records a poll
        keyed.control_metadata = None
        assert await keyed.poll_health(5.0) == first
        # Never told its models: still up, with none routed to it, rather than down.
        fresh = backend(None)
        later = await fresh.poll_health(5.0)
        assert later.ready and not later.models
        await keyed.close()
        await fresh.close()

    asyncio.run(polls())


def test_a_gateway_without_the_key_keeps_restricted_backends_up(
    restricted_fleet: LocalFleet,
) -> None:
    settings = gateway_settings(restricted_fleet)
    with BackgroundGateway(Gateway(settings)) as gateway:
        port = gateway.gateway.metrics_port
        assert {b.name for b in gateway.gateway.pool.ready_backends} == {"canary", "second"}
        assert value(port, "triton_gateway_backend_up", {"backend": "canary"}) == 1
        assert value(port, "triton_gateway_backend_up", {"backend": "second"}) == 1
