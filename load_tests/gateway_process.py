"""Starts ``triton-gateway serve`` as its own process for load runs, and waits until ready."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import yaml
from tritonclient.grpc import service_pb2

from gateway.devfleet.fleet import free_port

ROOT = Path(__file__).resolve().parent.parent


def start_gateway(
    backends: Iterable[tuple[str, str]],
    workdir: Path,
    *,
    poll_interval_s: float = 1.0,
    name: str = "gateway",
    log_level: str = "warning",
    metrics_port: int = 0,
    port: int = 0,
    admin_port: int = 0,
    sections: dict[str, dict[str, Any]] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """A gateway (tgw-edge on a free loopback port, the Python control plane behind it) in
    front of ``(name, address)`` backends; ``sections`` override settings sections
    (``{"timeouts": {"per_model_s": {"simple": 0.3}}}``). The same ``port`` again re-attaches
    to the edge a killed gateway left serving there."""
    port = port or free_port()
    config = workdir / f"{name}.yaml"
    settings: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port},
        "backends": [{"name": n, "address": a} for n, a in backends],
        "health": {"poll_interval_s": poll_interval_s},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "logging": {"level": log_level, "format": "json"},
        # Its own free port: the default (public port + 2) may be taken on a busy machine.
        "admin": {"port": admin_port or free_port()},
    }
    for section, overrides in (sections or {}).items():
        settings[section] = {**settings.get(section, {}), **overrides}
    config.write_text(yaml.safe_dump(settings))
    log = workdir / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT,
        stderr=log.open("wb"),
    )
    address = f"127.0.0.1:{port}"
    if not wait_ready(address, process):
        # SIGTERM: a gateway stopped so stops its edge too (one killed would leave it serving).
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        raise RuntimeError(f"gateway did not become ready; see {log}")
    return process, address


def wait_ready(address: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=service_pb2.ServerReadyRequest.SerializeToString,
            response_deserializer=service_pb2.ServerReadyResponse.FromString,
        )
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if ready(service_pb2.ServerReadyRequest(), timeout=1).ready:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    return False
