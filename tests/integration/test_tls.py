"""TLS everywhere it is asked for: a real tritonserver serving gRPC over TLS behind the
gateway (tgw-edge and the control plane both connect with TLS), the public port with mutual
TLS, the admin port with TLS. Certificates from a throw-away CA (trustme)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import trustme
from tritonclient.utils import InferenceServerException

from gateway.app import Gateway
from gateway.cli import main
from gateway.devfleet import LocalFleet, ServerSpec, ServerTls, TritonInstallation
from tests.support.background import BackgroundGateway
from tests.support.models import MODEL_REPOSITORY, simple_arrays, simple_inputs
from tests.support.settings import gateway_settings
from tests.support.traffic import TOKEN


class Pki:
    def __init__(self, folder: Path) -> None:
        ca = trustme.CA()
        self.folder = folder
        self.ca = self._write("ca.pem", ca.cert_pem.bytes())
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = self._write("server.pem", server.cert_chain_pems[0].bytes())
        self.server_key = self._write("server.key", server.private_key_pem.bytes())
        client = ca.issue_cert("client@example.com")
        self.client_cert = self._write("client.pem", client.cert_chain_pems[0].bytes())
        self.client_key = self._write("client.key", client.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def tls_setup(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Pki, BackgroundGateway]]:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    tls = ServerTls(cert_file=pki.server_cert, key_file=pki.server_key, ca_file=pki.ca)
    specs = [ServerSpec("tls-a", models=("simple",), tls=tls)]
    with LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path_factory.mktemp("fleet"), specs
    ) as fleet:
        settings = gateway_settings(
            fleet,
            server={
                "tls": {
                    "cert_file": str(pki.server_cert),
                    "key_file": str(pki.server_key),
                    "client_ca_file": str(pki.ca),
                }
            },
            backend_tls={"enabled": True, "ca_file": str(pki.ca)},
            admin={
                "port": 0,
                "token": TOKEN,
                "state_dir": str(tmp_path_factory.mktemp("state")),
                "tls": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
            },
        )
        with BackgroundGateway(Gateway(settings)) as running:
            yield pki, running


def _client(pki: Pki, url: str, with_certificate: bool) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        url,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key) if with_certificate else None,
        certificate_chain=str(pki.client_cert) if with_certificate else None,
    )


def test_mutual_tls_clients_reach_a_tls_backend(
    tls_setup: tuple[Pki, BackgroundGateway],
) -> None:
    pki, running = tls_setup
    a, b = simple_arrays(batch=1, seed=21)
    result = _client(pki, running.url, with_certificate=True).infer("simple", simple_inputs(a, b))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    # The route exists only because the gateway's own health polls reached the TLS backend.
    assert running.gateway.pool.table.lookup("simple", "")


def test_clients_without_a_certificate_or_without_tls_are_refused(
    tls_setup: tuple[Pki, BackgroundGateway],
) -> None:
    pki, running = tls_setup
    a, b = simple_arrays(batch=1, seed=22)
    with pytest.raises(InferenceServerException):
        _client(pki, running.url, with_certificate=False).infer("simple", simple_inputs(a, b))
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(running.url).infer("simple", simple_inputs(a, b))


def test_the_admin_port_speaks_tls(
    tls_setup: tuple[Pki, BackgroundGateway], capsys: pytest.CaptureFixture[str]
) -> None:
    pki, running = tls_setup
    address = f"127.0.0.1:{running.gateway.admin_port}"
    base = ["ctl", "--address", address, "--token", TOKEN]
    assert main([*base, "--ca-file", str(pki.ca), "backends"]) == 0
    assert "tls-a" in capsys.readouterr().out
    with grpc.insecure_channel(address) as plain:
        with pytest.raises(grpc.RpcError) as refused:
            plain.unary_unary("/tgw.admin.v1.GatewayAdmin/ListRoutes")(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
