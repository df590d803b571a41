"""Model drops from a test: settings of a gateway that pushes a repository, dropping a
directory as the README says, steady load that counts every failure."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.settings import GatewaySettings, load_settings
from tests.support.background import BackgroundGateway
from tests.support.models import classifier_features, classifier_input

ROLLOUT_WAIT_S = 90.0


def pushing_settings(
    backends: dict[str, str],
    repository: Path,
    sections: dict[str, Any] | None = None,
    **repository_settings: object,
) -> GatewaySettings:
    """A gateway on free loopback ports pushing ``repository`` to ``backends`` (name: address);
    ``sections``: more settings sections."""
    return load_settings(
        **(sections or {}),
        server={"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 2},
        metrics={"host": "127.0.0.1", "port": 0},
        backends=[{"name": name, "address": address} for name, address in backends.items()],
        health={"poll_interval_s": 0.2, "poll_timeout_s": 1.0},
        repository={
            "path": str(repository),
            "push": True,
            "cpu_only_backends": True,
            **repository_settings,
        },
    )


def wait_idle(gateway: BackgroundGateway) -> None:
    manager = gateway.gateway.repository
    assert manager is not None
    gateway.run(manager.wait_idle(ROLLOUT_WAIT_S), timeout_s=ROLLOUT_WAIT_S + 5)


def drop(source: Path, target: Path) -> float:
    """Publish as the README says: copy under a dot name, then rename. Returns the rename's
    time (monotonic)."""
    staging = target.parent / f".{target.name}.partial"
    shutil.copytree(source, staging)
    renamed = time.monotonic()
    staging.rename(target)
    return renamed


def ready_on(server_address: str, model: str, version: str) -> bool:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server_address))
    try:
        return stub.ModelReady(
            service_pb2.ModelReadyRequest(name=model, version=version), timeout=5
        ).ready
    except grpc.RpcError:
        return False


def classify(url: str, version: str = "") -> grpcclient.InferResult:
    client = grpcclient.InferenceServerClient(url)
    return client.infer(
        "classifier", classifier_input(classifier_features(batch=2)), model_version=version
    )


class SteadyLoad:
    """Calls through the gateway from a thread until stopped; counts every failure."""

    def __init__(self, url: str, version: str = "", varied: bool = False) -> None:
        """``varied``: a different input on every call (else the same one)."""
        self.url = url
        self.version = version
        self.varied = varied
        self.sent = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        x = classifier_features(batch=2)
        while not self._stop.is_set():
            self.sent += 1
            if self.varied:
                x = classifier_features(batch=2, seed=self.sent)
            try:
                result = client.infer(
                    "classifier",
                    classifier_input(x),
                    model_version=self.version,
                    client_timeout=10,
                )
                served = result.get_response().model_version
                if served not in self.versions:
                    print(f"load: first answer from version {served} at {time.strftime('%X')}")
                self.versions[served] = self.versions.get(served, 0) + 1
            except Exception as exc:  # every failure counts, whatever its kind
                self.failures.append(str(exc))
            time.sleep(0.01)
