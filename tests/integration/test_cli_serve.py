"""`triton-gateway serve --config` as an operator runs it: serves, then drains on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.devfleet import LocalFleet
from gateway.devfleet.fleet import free_port
from tests.conftest import ROOT
from tests.support.models import simple_arrays, simple_inputs


def test_serve_from_a_config_file_then_stop_on_sigterm(fleet: LocalFleet, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    backends = "".join(
        f"  - {{name: {s.name}, address: '{s.address}'}}\n" for s in fleet.servers.values()
    )
    config.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\nbackends:\n{backends}"
        "metrics: {host: 127.0.0.1, port: 0}\n"
        "logging: {level: debug, format: json}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while not _ready(client):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "gateway did not become ready"
            time.sleep(0.05)
        a, b = simple_arrays()
        result = client.infer("simple", simple_inputs(a, b))
        assert np.array_equal(result.as_numpy("OUTPUT0"), a + b)
        with pytest.raises(InferenceServerException):
            client.infer("no_such_model", simple_inputs(a, b), headers={"x-request-id": "req-42"})
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "gateway_stopped"
    # The caller's request id labels the failure's log line: tgw-edge handed the call for a
    # model no route covers to the Python gateway, which answered it.
    (failure,) = [e for e in events if e["event"] == "request_failed"]
    assert failure["request_id"] == "req-42"
    assert failure["code"] == "NOT_FOUND"
    # tgw-edge served the request (one debug line per request, in the same log) and ended
    # with its gateway.
    assert any(
        e["event"] == "request" and e.get("process") == "tgw-edge" and e["model"] == "simple"
        for e in events
    )
    started = [e for e in events if e["event"] == "edge_started"]
    (supervised,) = [e for e in started if e.get("process") != "tgw-edge"]
    (own,) = [e for e in started if e.get("process") == "tgw-edge"]
    assert supervised["port"] == port
    assert own["listen"] == f"127.0.0.1:{port}"
    assert int(own["pid"]) == supervised["pid"]
    assert not Path(f"/proc/{supervised['pid']}").exists()


def _ready(client: grpcclient.InferenceServerClient) -> bool:
    try:
        return bool(client.is_server_ready())
    except InferenceServerException:
        return False
