"""The local fleet starts real servers, stops them without leftovers, and fails clearly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from gateway.devfleet import FleetError, LocalFleet, ServerSpec, TritonInstallation
from tests.conftest import MODEL_REPOSITORY, ROOT, TRITON_HOME


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def test_start_and_stop_leave_no_process_behind(
    triton_installation: TritonInstallation, tmp_path: Path
) -> None:
    fleet = LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path, [ServerSpec("solo", models=("simple",))]
    )
    with fleet:
        server = fleet.servers["solo"]
        assert grpcclient.InferenceServerClient(server.address).is_model_ready("simple")
        # The server and its Python-backend stub run in the server's own process group.
        group = server.process_group()
        assert server.pid in group
        assert len(group) >= 2
        assert server.log_path.is_file()
    assert _alive(group) == set()
    assert not server.is_running()


def test_a_killed_server_restarts_and_leaves_no_shared_memory_behind(
    triton_installation: TritonInstallation, tmp_path: Path
) -> None:
    fleet = LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path, [ServerSpec("solo", models=("simple",))]
    )
    with fleet:
        killed = fleet.servers["solo"]
        regions = set(Path("/dev/shm").glob(f"{killed.shm_prefix}*"))
        assert regions  # the Python backend maps its regions there
        os.kill(killed.pid, signal.SIGKILL)  # the server cannot clean up after itself
        assert killed.process is not None
        killed.process.wait()
        restarted = fleet.restart("solo")
        assert grpcclient.InferenceServerClient(restarted.address).is_model_ready("simple")
        assert restarted.shm_prefix != killed.shm_prefix
        assert not any(region.exists() for region in regions)
    assert not list(Path("/dev/shm").glob(f"{restarted.shm_prefix}*"))


def test_missing_triton_install_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match=r"tritonserver not found at .*make install"):
        TritonInstallation.locate(tmp_path)


def test_busy_port_is_a_clear_error(
    triton_installation: TritonInstallation, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        fleet = LocalFleet(
            triton_installation, MODEL_REPOSITORY, tmp_path, [ServerSpec("t", grpc_port=port)]
        )
        with pytest.raises(FleetError, match=f"port {port} .* already in use"):
            fleet.start()


def test_unknown_model_for_a_server_is_a_clear_error(
    triton_installation: TritonInstallation, tmp_path: Path
) -> None:
    fleet = LocalFleet(
        triton_installation, MODEL_REPOSITORY, tmp_path, [ServerSpec("t", models=("nope",))]
    )
    with pytest.raises(FleetError, match="unknown models"):
        fleet.start()


def test_cli_fleet_up_then_down(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_TRITON_HOME": str(TRITON_HOME)}
    base = [sys.executable, "-m", "gateway", "fleet"]
    port = _free_port()
    up = subprocess.run(
        [*base, "up", "--servers", "1", "--base-port", str(port), "--work-dir", str(tmp_path),
         "--models", str(MODEL_REPOSITORY), "--triton-home", str(TRITON_HOME)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    pid = int(up.stdout.split("pid ")[1].split()[0])
    assert f"127.0.0.1:{port}" in up.stdout
    assert grpcclient.InferenceServerClient(f"127.0.0.1:{port}").is_server_ready()
    down = subprocess.run(
        [*base, "down", "--work-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert "triton-0" in down.stdout
    assert _alive({pid}) == set()


def test_cli_reports_missing_install_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "fleet", "up", "--triton-home", str(tmp_path),
         "--work-dir", str(tmp_path / "w")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "tritonserver not found" in result.stderr
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
