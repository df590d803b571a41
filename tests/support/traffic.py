"""Traffic routes from a test: a gateway's admin stub, its inference channel, stamped answers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2

from gateway._protos.tgw.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway.app import Gateway
from gateway.devfleet import LocalFleet
from gateway.settings import GatewaySettings
from tests.support.background import BackgroundGateway
from tests.support.models import classifier_features
from tests.support.settings import gateway_settings

INFER = "/inference.GRPCInferenceService/ModelInfer"
TOKEN = "test-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
WINDOW = 64


class Routed:
    """A gateway with its admin stub and an inference channel."""

    def __init__(self, running: BackgroundGateway) -> None:
        self.running = running
        gateway = running.gateway
        self.admin_channel = grpc.insecure_channel(f"127.0.0.1:{gateway.admin_port}")
        self.admin = admin_pb2_grpc.GatewayAdminStub(self.admin_channel)
        self.channel = grpc.insecure_channel(running.url)
        self.infer = self.channel.unary_unary(INFER)

    def close(self) -> None:
        self.admin_channel.close()
        self.channel.close()

    def split(self, name: str, weights: dict[str, int], **route: object) -> admin_pb2.Route:
        current = self.route(name)
        message = admin_pb2.Route(
            name=name,
            variants=[admin_pb2.Variant(version=v, weight=w) for v, w in weights.items()],
            **route,  # type: ignore[arg-type]
        )
        request = admin_pb2.SetRouteRequest(
            route=message, expected_revision=current.revision if current else 0
        )
        result: admin_pb2.Route = self.admin.SetRoute(request, metadata=AUTH, timeout=10)
        self.running.run(self.running.gateway.edge.sync(5.0))  # type: ignore[union-attr]
        return result

    def route(self, name: str) -> admin_pb2.Route | None:
        try:
            found: admin_pb2.Route = self.admin.GetRoute(
                admin_pb2.GetRouteRequest(name=name), metadata=AUTH, timeout=10
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return found

    def unroute(self, name: str) -> None:
        current = self.route(name)
        if current is not None:
            request = admin_pb2.DeleteRouteRequest(name=name, expected_revision=current.revision)
            self.admin.DeleteRoute(request, metadata=AUTH, timeout=10)
            self.running.run(self.running.gateway.edge.sync(5.0))  # type: ignore[union-attr]

    def stamps(
        self, request: bytes, metadata: tuple[tuple[str, str], ...] = ()
    ) -> tuple[service_pb2.ModelInferResponse, dict[str, str]]:
        answer, call = self.infer.with_call(request, metadata=metadata, timeout=10)
        trailers = {k: v for k, v in call.trailing_metadata() if isinstance(v, str)}
        return service_pb2.ModelInferResponse.FromString(answer), trailers

    def variants_of(self, requests: list[tuple[bytes, tuple[tuple[str, str], ...]]]) -> list[str]:
        """The stamped variant of each request's answer, sent WINDOW at a time."""
        found: list[str] = []
        for start in range(0, len(requests), WINDOW):
            futures = [
                self.infer.future(body, metadata=metadata, timeout=30)
                for body, metadata in requests[start : start + WINDOW]
            ]
            for future in futures:
                future.result()
                trailers = dict(future.trailing_metadata())
                found.append(str(trailers.get("x-gateway-variant", "")))
        return found


def classifier_request(model: str = "classifier", version: str = "", key: str = "") -> bytes:
    x = classifier_features(batch=1, seed=3)
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="INPUT", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    if key:
        request.parameters["gateway_routing_key"].string_param = key
    return request.SerializeToString()


def routed_settings(
    fleet: LocalFleet, state_dir: Path, **sections: dict[str, object]
) -> GatewaySettings:
    """Settings with a known admin token and its own state folder."""
    return gateway_settings(
        fleet,
        admin={"port": 0, "token": TOKEN, "state_dir": str(state_dir)},
        health={"poll_interval_s": 0.2},
        **sections,
    )


@contextmanager
def routed_gateway(fleet: LocalFleet, state_dir: Path) -> Iterator[Routed]:
    """A gateway of its own in front of ``fleet``, with its admin stub and channels."""
    with BackgroundGateway(Gateway(routed_settings(fleet, state_dir))) as running:
        client = Routed(running)
        try:
            yield client
        finally:
            client.close()


def bucket(salt: str, key: str) -> int:
    """The bucket tgw-edge puts a routing key in, computed here independently from the
    protocol's definition (sha256 of salt, 0x00, key; first 8 bytes big-endian; mod 10,000)
    so the tests check the edge against it rather than against itself."""
    digest = hashlib.sha256(salt.encode() + b"\x00" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000
