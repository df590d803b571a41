"""A gateway's start and its settings file, as an operator meets them: a second gateway on the
same port or a taken admin port stops with one line and leaves nothing behind (nor breaks the
gateway already serving), and the settings file keeps being applied however it is replaced.

These gateways have no Triton backend: what is checked is answered by the gateway itself
(ServerMetadata, handed over by tgw-edge to the Python server through the runtime folder's
socket), by its settings or by its log (backends it cannot reach, what a reload applied).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from tritonclient.grpc import service_pb2

from gateway.app import Gateway
from gateway.devfleet.fleet import free_port
from gateway.settings import load_settings
from load_tests import loadgen
from tests.support.background import BackgroundGateway
from tests.support.metrics import wait_until

ROOT = Path(__file__).resolve().parents[2]
SERVER_METADATA = "/inference.GRPCInferenceService/ServerMetadata"


def _settings(runtime: Path, state: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": free_port(), "shutdown_grace_s": 1},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"port": free_port(), "state_dir": str(state)},
        "edge": {"runtime_dir": str(runtime)},
        "health": {"startup_wait_s": 0},
        "backends": [],
        "repository": {"path": str(state / "no-repository")},
        "logging": {"level": "info", "format": "json"},
    }
    for section, overrides in sections.items():
        settings[section] = {**settings.get(section, {}), **overrides}
    return settings


@pytest.fixture
def runtime() -> Iterator[Path]:
    # Short: a Unix socket's path must fit in 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="tgw-start-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _events(log: Path) -> list[dict[str, Any]]:
    """The control plane's own JSON log events (not tgw-edge's)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line) if line.startswith("{") else None
            if isinstance(event, dict) and event.get("process") != "tgw-edge":
                found.append(event)
    return found


def _events_named(log: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in _events(log) if e["event"] == name]


def _wait_event(log: Path, process: subprocess.Popen[bytes], name: str) -> list[dict[str, Any]]:
    """Every ``name`` event so far, once there is one (bounded wait)."""
    deadline = time.monotonic() + 60
    while not (found := _events_named(log, name)):
        assert process.poll() is None, f"the gateway exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {name} in {log}"
        time.sleep(0.05)
    return found


def _server_name(address: str) -> str | None:
    """ServerMetadata through the public port: tgw-edge hands it to the gateway."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            SERVER_METADATA,
            request_serializer=service_pb2.ServerMetadataRequest.SerializeToString,
            response_deserializer=service_pb2.ServerMetadataResponse.FromString,
        )
        try:
            answer: service_pb2.ServerMetadataResponse = call(
                service_pb2.ServerMetadataRequest(), timeout=5
            )
        except grpc.RpcError:
            return None
    return str(answer.name)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_second_gateway_on_the_same_port_leaves_the_first_serving(
    tmp_path: Path, runtime: Path
) -> None:
    # No metrics or admin port, whose clash would stop the second one early: only the
    # runtime folder's owner stops it before it touches the first one's socket (or edge).
    settings = _settings(
        runtime, tmp_path / "state", metrics={"enabled": False}, admin={"enabled": False}
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(settings))
    address = f"127.0.0.1:{settings['server']['port']}"
    log = tmp_path / "first.log"
    with log.open("wb") as sink:
        first = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stderr=sink,
        )
    edges: set[int] = set()
    try:
        (started,) = _wait_event(log, first, "gateway_started")
        edges.add(started["edge_pid"])
        assert _server_name(address) == "triton"

        second = _serve(config)
        assert second.returncode == 2
        assert "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1] == (
            f"triton-gateway: another triton-gateway (pid {first.pid}) runs from the runtime "
            f"folder {runtime}: stop it, or give this one its own server.port (or "
            "edge.runtime_dir)"
        )
        # The first one's hand-over socket is still its own: calls it is handed are answered,
        # also by the edge it starts after losing this one (which connects afresh).
        assert _server_name(address) == "triton"
        os.kill(started["edge_pid"], signal.SIGKILL)
        assert wait_until(lambda: len(_events_named(log, "edge_started")) >= 2, timeout_s=30)
        edges |= {e["pid"] for e in _events_named(log, "edge_started")}
        assert _server_name(address) == "triton"
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(30)
        for pid in edges:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("section", "what"), [("admin", "the admin service"), ("server", "the public port")]
)
def test_a_taken_port_stops_the_start_with_one_line_and_nothing_left_running(
    tmp_path: Path, runtime: Path, section: str, what: str
) -> None:
    settings = _settings(runtime, tmp_path / "state")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(settings))
    taken = settings[section]["port"]
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        done = _serve(config)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    command = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    assert done.stderr.strip().splitlines()[-1] == (
        f"triton-gateway: cannot serve {what} on 127.0.0.1:{taken}: Address already in use by "
        f"pid {os.getpid()} ({command}); stop it or set {section}.port"
    )
    # Nothing it started is left: no tgw-edge on the public port, no port, no socket.
    for port in (settings[name]["port"] for name in ("server", "metrics", "admin")):
        assert _port_is_free(port), port
    assert not (runtime / "gateway.sock").exists()


@contextlib.contextmanager
def _serving(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``triton-gateway serve`` logging JSON into ``log``, once started; stopped (and its edge
    with it) on the way out."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stderr=sink,
        )
    edge = 0
    try:
        (started,) = _wait_event(log, process, "gateway_started")
        edge = started["edge_pid"]
        yield process
        assert process.poll() is None, f"the gateway exited: {log.read_text()[-2000:]}"
    finally:
        process.terminate()
        process.wait(30)
        if edge and _alive(edge):
            os.kill(edge, signal.SIGKILL)


def test_backends_that_cannot_be_reached_are_logged_at_start_with_address_and_reason(
    tmp_path: Path, runtime: Path
) -> None:
    refused = f"127.0.0.1:{free_port()}"  # nothing listens there
    unresolvable = "triton.no-such-host.invalid:8001"  # .invalid never resolves (RFC 2606)
    settings = _settings(
        runtime,
        tmp_path / "state",
        metrics={"enabled": False},
        admin={"enabled": False},
        health={"startup_wait_s": 5, "poll_timeout_s": 2},
    )
    settings["backends"] = [
        {"name": "refused", "address": refused},
        {"name": "unresolvable", "address": unresolvable},
    ]
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(settings))
    log = tmp_path / "gateway.log"
    with _serving(config, log):
        events = _events(log)
    names = [e["event"] for e in events]
    # Said before the gateway reports itself started: the first poll of each is at start.
    unreachable = {
        e["backend"]: e
        for e in events[: names.index("gateway_started")]
        if e["event"] == "backend_unreachable"
    }
    assert set(unreachable) == {"refused", "unresolvable"}
    assert unreachable["refused"]["address"] == refused
    assert "Connection refused" in unreachable["refused"]["reason"]
    assert unreachable["unresolvable"]["address"] == unresolvable
    # gRPC's resolvers word it differently ("DNS resolution failed", "errors resolving").
    reason = unreachable["unresolvable"]["reason"]
    assert "resolv" in reason.lower() and "triton.no-such-host.invalid" in reason


def test_a_reload_logs_the_keys_it_applied_and_those_needing_a_restart(
    tmp_path: Path, runtime: Path
) -> None:
    settings = _settings(
        runtime, tmp_path / "state", metrics={"enabled": False}, admin={"enabled": False}
    )
    folder = tmp_path / "config"  # watched: nothing else is written there
    folder.mkdir()
    config = folder / "gateway.yaml"
    config.write_text(yaml.safe_dump(settings))
    log = tmp_path / "gateway.log"
    with _serving(config, log) as process:
        settings["retry"] = {"max_attempts": 2}  # a policy: applied at once
        settings["health"] = {**settings["health"], "poll_interval_s": 3.0}  # read at start
        saved = folder / ".gateway.yaml.new"
        saved.write_text(yaml.safe_dump(settings))
        os.replace(saved, config)
        # Logged right after config_reloaded, by the same reload.
        needs_restart = _wait_event(log, process, "config_needs_restart")
        reloaded = _events_named(log, "config_reloaded")
    assert [(e["applied"], e["needs_restart"]) for e in reloaded] == [
        (["retry.max_attempts"], ["health.poll_interval_s"])
    ]
    assert [e["keys"] for e in needs_restart] == [["health.poll_interval_s"]]


def _configmap(mount: Path, generation: int, attempts: int) -> None:
    """A ConfigMap's files as the kubelet writes them: a new folder, ``..data`` swapped to
    it in one rename, the old one removed."""
    new = mount / f"..2024_{generation}"
    new.mkdir(parents=True)
    (new / "gateway.yaml").write_text(yaml.safe_dump(_retry(attempts)))
    old = (mount / "..data").resolve() if (mount / "..data").exists() else None
    (mount / "..data_tmp").symlink_to(new.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    if old is not None:
        shutil.rmtree(old)


def _retry(attempts: int) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "metrics": {"enabled": False},
        "admin": {"enabled": False},
        "health": {"startup_wait_s": 0},
        "repository": {"path": "/nonexistent"},
        "retry": {"max_attempts": attempts},
    }


def test_a_replaced_settings_file_is_applied_save_after_save(tmp_path: Path) -> None:
    mount = tmp_path / "config"
    _configmap(mount, 0, attempts=1)
    config = mount / "gateway.yaml"
    config.symlink_to("..data/gateway.yaml")
    with BackgroundGateway(Gateway(load_settings(config), config_path=config)) as running:

        def attempts() -> int:
            return running.gateway.settings.retry.max_attempts

        assert attempts() == 1
        for generation, wanted in ((1, 2), (2, 3)):
            _configmap(mount, generation, wanted)
            assert wait_until(lambda wanted=wanted: attempts() == wanted, timeout_s=15)
        for wanted in (4, 5):  # `sed -i` and editors: a new file renamed over the path
            fresh = mount / ".gateway.yaml.new"
            fresh.write_text(yaml.safe_dump(_retry(wanted)))
            os.replace(fresh, config)
            assert wait_until(lambda wanted=wanted: attempts() == wanted, timeout_s=15)


def test_loadgen_for_a_model_the_fleet_does_not_know_is_one_line(
    gateway_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", gateway_url, "--model", "nosuch", "--max-requests", "5", "--quiet"]
    assert loadgen.main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert [line for line in captured.err.splitlines() if line.startswith("loadgen:")] == [
        f"loadgen: cannot read the metadata of model 'nosuch' from {gateway_url}: NOT_FOUND: "
        "Request for unknown model: 'nosuch' is not found"
    ]
    assert "sent" not in captured.out, "no summary of a run that did not start"
