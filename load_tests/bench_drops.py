"""Model drops under load, with the shipped repository settings: how long from the rename to
the first answer, how many requests fail on the way, how long a failed rollout takes to undo.

    .venv/bin/python -m load_tests.bench_drops

Starts two empty local Triton servers and a gateway process (the shipped settings, with
``repository.push`` on and ``cpu_only_backends`` for the local servers), copies `classifier`
and `simple` into a fresh repository, then, one after another, each under steady load
(closed loop, one client thread per model, every failure counted):

1. start:       the gateway pushes the repository to the empty fleet.
2. new model:   `identity` renamed into the repository: first answer, first from the fleet.
3. new version: `classifier/3` renamed in under load: first answer from version 3.
4. refused:     `simple`'s config changed to a runtime no server has: time to roll back.
5. removal:     `classifier/3` deleted under load: time until no backend has it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.devfleet.fleet import free_port
from load_tests.gateway_process import start_gateway

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "model_repository"
STEP_TIMEOUT_S = 120.0
FALLBACK = ("x-gateway-served-by", "fallback")


def classifier_request(version: str = "") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="classifier", model_version=version)
    request.inputs.add(name="INPUT", datatype="FP32", shape=[2, 8])
    request.raw_input_contents.append(np.ones((2, 8), dtype=np.float32).tobytes())
    return request


def simple_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        request.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
    return request


class Load:
    """One closed-loop client thread; counts answers by version and every failure."""

    def __init__(self, address: str, request: service_pb2.ModelInferRequest) -> None:
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        self._request = request
        self.sent = 0
        self.failed = 0
        self.by_fallback = 0
        self.versions: dict[str, int] = {}
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sent += 1
            try:
                answer, call = self._stub.ModelInfer.with_call(self._request, timeout=10)
            except grpc.RpcError:
                self.failed += 1
                continue
            if FALLBACK in tuple(call.trailing_metadata() or ()):
                self.by_fallback += 1
            version = answer.model_version
            self.versions[version] = self.versions.get(version, 0) + 1
            self.first_seen.setdefault(version, time.monotonic())
            time.sleep(0.005)

    def row(self, step: str) -> tuple[str, str]:
        return (
            f"{step}: requests sent / failed / answered by the fallback",
            f"{self.sent} / {self.failed} / {self.by_fallback}",
        )


def metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found += sample.value
    return found


def ready_on(address: str, model: str, version: str) -> bool:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    try:
        return bool(
            stub.ModelReady(
                service_pb2.ModelReadyRequest(name=model, version=version), timeout=5
            ).ready
        )
    except grpc.RpcError:
        return False


def wait(condition: Callable[[], bool], what: str) -> float:
    """Seconds until ``condition`` holds (polled every 20 ms)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > STEP_TIMEOUT_S:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def rename_in(source: Path, target: Path) -> float:
    staging = target.parent / f".{target.name}.partial"
    shutil.copytree(source, staging)
    renamed = time.monotonic()
    staging.rename(target)
    return renamed


class Bench:
    """The steps of one run, against one gateway and fleet; each adds rows to ``rows``."""

    def __init__(
        self, address: str, metrics_port: int, servers: list[str], repository: Path
    ) -> None:
        self.address = address
        self.metrics_port = metrics_port
        self.servers = servers
        self.repository = repository
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
        self.rows: list[tuple[str, str]] = []

    def rollbacks(self, model: str) -> float:
        key = "triton_gateway_model_rollouts_total"
        return metric(self.metrics_port, key, model=model, outcome="rolled_back")

    def start(self, started: float) -> None:
        wait(
            lambda: (
                all(ready_on(s, "classifier", "2") for s in self.servers)
                and all(ready_on(s, "simple", "1") for s in self.servers)
            ),
            "the first rollout",
        )
        self.rows.append(
            (
                "start: gateway start -> both models on both servers",
                f"{time.monotonic() - started:.2f} s",
            )
        )

    def new_model(self) -> None:
        request = service_pb2.ModelInferRequest(model_name="identity")
        request.inputs.add(name="INPUT", datatype="FP32", shape=[4])
        request.raw_input_contents.append(np.ones(4, dtype=np.float32).tobytes())
        answers: dict[str, float] = {}

        def from_fleet() -> bool:
            try:
                _, call = self.stub.ModelInfer.with_call(request, timeout=10)
            except grpc.RpcError:
                return False
            answers.setdefault("any", time.monotonic())
            return FALLBACK not in tuple(call.trailing_metadata() or ())

        renamed = rename_in(SOURCE / "identity", self.repository / "identity")
        wait(from_fleet, "identity from the fleet")
        self.rows.append(
            ("new model: rename -> first answer (fallback)", f"{answers['any'] - renamed:.2f} s")
        )
        self.rows.append(
            (
                "new model: rename -> first answer from the fleet",
                f"{time.monotonic() - renamed:.2f} s",
            )
        )

    def new_version(self) -> None:
        model_dir = self.repository / "classifier"
        with Load(self.address, classifier_request()) as load:
            wait(lambda: load.sent > 50, "load")
            renamed = rename_in(model_dir / "2", model_dir / "3")
            wait(lambda: "3" in load.first_seen, "version 3 answering")
            seen = load.first_seen["3"] - renamed
            wait(lambda: load.versions.get("3", 0) > 100, "load on version 3")
        self.rows.append(
            ("new version: rename -> first unversioned answer from it", f"{seen:.2f} s")
        )
        self.rows.append(load.row("new version"))

    def refused(self) -> None:
        config = self.repository / "simple" / "config.pbtxt"
        original = config.read_text()
        before = self.rollbacks("simple")
        with Load(self.address, simple_request()) as load:
            wait(lambda: load.sent > 50, "load")
            config.write_text(
                original.replace('platform: "onnxruntime_onnx"', 'backend: "no_such"')
            )
            took = wait(lambda: self.rollbacks("simple") > before, "the rollback")
            sent = load.sent
            wait(lambda: load.sent > sent + 50, "load after the rollback")
        config.write_text(original)
        self.rows.append(("refused by the canary: config saved -> rolled back", f"{took:.2f} s"))
        self.rows.append(load.row("refused"))

    def removal(self) -> None:
        with Load(self.address, classifier_request()) as load:
            wait(lambda: load.sent > 50, "load")
            shutil.rmtree(self.repository / "classifier" / "3")
            took = wait(
                lambda: not any(ready_on(s, "classifier", "3") for s in self.servers),
                "version 3 unloaded",
            )
            sent = load.sent
            wait(lambda: load.sent > sent + 50, "load after the removal")
        self.rows.append(("removal: rmdir -> unloaded from every server", f"{took:.2f} s"))
        self.rows.append(load.row("removal"))


def run(workdir: Path) -> list[tuple[str, str]]:
    repository = workdir / "model_repository"
    repository.mkdir()
    for name in ("classifier", "simple"):
        shutil.copytree(SOURCE / name, repository / name)
    installation = TritonInstallation.locate(ROOT / ".triton")
    specs = [ServerSpec("triton-0", models=()), ServerSpec("triton-1", models=())]
    with LocalFleet(installation, SOURCE, workdir / "fleet", specs) as fleet:
        servers = list(fleet.servers.values())
        metrics_port = free_port()
        started = time.monotonic()
        process, address = start_gateway(
            [(s.name, s.address) for s in servers],
            workdir,
            metrics_port=metrics_port,
            sections={
                "repository": {"path": str(repository), "push": True, "cpu_only_backends": True}
            },
        )
        try:
            bench = Bench(address, metrics_port, [s.address for s in servers], repository)
            bench.start(started)
            bench.new_model()
            bench.new_version()
            bench.refused()
            bench.removal()
        finally:
            process.terminate()
            process.wait(30)
    return bench.rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tgw-drops-") as tmp:
        rows = run(Path(tmp))
    print("| step | figure |\n|---|---|")
    for step, figure in rows:
        print(f"| {step} | {figure} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
