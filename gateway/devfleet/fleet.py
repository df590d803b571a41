"""Starts, watches and stops real ``tritonserver`` processes on loopback ports.

Each server runs in its own process group so that stopping it also ends the Python-backend
stubs it spawned; readiness is awaited by asking the server, never by sleeping a fixed time.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.devfleet.errors import FleetError
from gateway.devfleet.installation import TritonInstallation
from gateway.devfleet.python_backend import build_repository, write_onnx_backend

LOOPBACK = "127.0.0.1"
STATE_FILE = "fleet.json"
_PR_SET_PDEATHSIG = 1
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server of the fleet: its name, gRPC port (0 picks a free one) and models."""

    name: str
    grpc_port: int = 0
    models: tuple[str, ...] | None = None
    """Models loaded at start; None loads every model of the repository."""
    extra_args: tuple[str, ...] = ()
    """More tritonserver arguments, e.g. ``--grpc-restricted-protocol=model-repository:k=v``."""
    tls: ServerTls | None = None
    """Serve gRPC over TLS (tritonserver ``--grpc-use-ssl``)."""


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A server's TLS: its certificate and key, and the CA that signed it (also what the fleet
    trusts when it waits for the server to be ready)."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def arguments(self) -> tuple[str, ...]:
        return (
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={self.cert_file}",
            f"--grpc-server-key={self.key_file}",
            f"--grpc-root-cert={self.ca_file}",
        )


@dataclass(slots=True)
class TritonServer:
    """A running (or stopped) tritonserver process of the fleet."""

    name: str
    grpc_port: int
    models: tuple[str, ...]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    pid: int = 0
    shm_prefix: str = ""
    """Name prefix of its Python backend's shared-memory regions in /dev/shm."""
    extra_args: tuple[str, ...] = ()
    """The spec's extra tritonserver arguments (kept for a restart)."""

    def remove_shared_memory(self) -> None:
        """Delete the regions a killed server could not (SIGKILL leaves them behind)."""
        if self.shm_prefix:
            for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def is_running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _is_tritonserver(self.pid)

    def process_group(self) -> set[int]:
        """PIDs still alive in this server's process group (the server and its stubs)."""
        return _group_members(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalFleet:
    """A set of local Triton servers serving one model repository.

    Usable as a context manager. ``detached=True`` lets the servers outlive this process (the
    ``fleet up`` command); otherwise they die with the thread that started them.
    """

    def __init__(
        self,
        installation: TritonInstallation,
        model_repository: Path,
        work_dir: Path,
        specs: Sequence[ServerSpec],
        *,
        ready_timeout_s: float = 60.0,
        stop_grace_s: float = 10.0,
        detached: bool = False,
    ) -> None:
        if len({spec.name for spec in specs}) != len(specs):
            raise FleetError("server names in a fleet must be unique")
        self._installation = installation
        self._source_repository = model_repository
        self._work_dir = work_dir.resolve()
        self._specs = list(specs)
        self._specs_tls = {spec.name: spec.tls for spec in specs if spec.tls is not None}
        self._ready_timeout_s = ready_timeout_s
        self._stop_grace_s = stop_grace_s
        self._detached = detached
        self._launches = 0
        self._model_names: list[str] = []
        self.servers: dict[str, TritonServer] = {}

    @property
    def repository(self) -> Path:
        return self._work_dir / "model_repository"

    @property
    def addresses(self) -> list[str]:
        return [server.address for server in self.servers.values()]

    def __enter__(self) -> LocalFleet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def prepare(self) -> None:
        """Build the Python-backend repository and backend folder (idempotent)."""
        self._work_dir.mkdir(parents=True, exist_ok=True)
        (self._work_dir / "logs").mkdir(exist_ok=True)
        self._model_names = build_repository(
            self._source_repository, self.repository, self._installation.model_site_packages
        )
        backend = self._work_dir / "backends" / "python"
        backend.mkdir(parents=True, exist_ok=True)
        for item in self._installation.python_backend_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, backend / item.name)
        # The backend looks for its stub next to libtriton_python.so under this exact name.
        shutil.copy2(self._installation.backend_stub, backend / "triton_python_backend_stub")
        _link_model_environment(self._installation.model_site_packages, backend)
        # Canonical ONNX configs pushed by the gateway (RepositoryModelLoad) load unchanged.
        write_onnx_backend(self._work_dir / "backends", self._installation.model_site_packages)

    def start(self) -> list[TritonServer]:
        """Start every server and wait until each is ready with its models loaded."""
        self.prepare()
        try:
            for spec in self._specs:
                self.servers[spec.name] = self._launch(spec)
            for server in self.servers.values():
                self._wait_ready(server)
        except BaseException:
            self.stop()
            raise
        if self._detached:
            self._write_state()
        return list(self.servers.values())

    def restart(self, name: str) -> TritonServer:
        """Start a stopped or killed server again on the same port with the same models."""
        old = self.servers[name]
        if old.is_running():
            raise FleetError(f"server {name} is still running")
        # A killed server's backend stubs outlive it for a moment and hold its port.
        _kill_group(old.pid)
        if old.process is not None:
            old.process.wait()
        old.remove_shared_memory()
        _wait_port_free(old.grpc_port, timeout_s=self._stop_grace_s)
        spec = ServerSpec(
            name=name,
            grpc_port=old.grpc_port,
            models=old.models,
            extra_args=old.extra_args,
            tls=self._specs_tls.get(name),
        )
        server = self._launch(spec)
        self.servers[name] = server
        self._wait_ready(server)
        return server

    def stop(self) -> None:
        """SIGTERM every server, SIGKILL what is left after the grace period, reap all."""
        for server in self.servers.values():
            _terminate(server.pid)
        deadline = time.monotonic() + self._stop_grace_s
        for server in self.servers.values():
            _wait_exit(server, deadline)
            _kill_group(server.pid)
            if server.process is not None:
                server.process.wait()
            server.remove_shared_memory()
        state = self._work_dir / STATE_FILE
        state.unlink(missing_ok=True)

    def _launch(self, spec: ServerSpec) -> TritonServer:
        self._launches += 1
        models = spec.models if spec.models is not None else tuple(self._model_names)
        unknown = sorted(set(models) - set(self._model_names))
        if unknown:
            raise FleetError(f"server {spec.name}: unknown models {unknown}")
        port = spec.grpc_port or free_port()
        ensure_port_free(port, spec.name)
        log_path = self._work_dir / "logs" / f"{spec.name}.log"
        shm_prefix = f"tgw_{os.getpid()}_{spec.name}_{self._launches}_"
        # If the test run or demo dies without cleaning up, the kernel ends the server rather
        # than leaving an orphan holding a port (parent-death signal). util-linux's setpriv sets
        # it in C; Python code between fork and exec (preexec_fn) was seen to crash the child
        # with SIGSEGV when the parent was busy with threads, so it is only the fallback.
        setpriv = None if self._detached else shutil.which("setpriv")
        wrapper = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        args = [
            *wrapper,
            str(self._installation.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._work_dir / 'backends'}",
            "--model-control-mode=explicit",
            *(f"--load-model={model}" for model in models),
            "--allow-http=false",
            "--allow-metrics=false",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={port}",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
            # Shared-memory names must not collide between servers on one machine, nor with
            # the regions a killed predecessor of the same name left in /dev/shm.
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            *spec.extra_args,
            *(spec.tls.arguments() if spec.tls is not None else ()),
        ]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = self._installation.library_path()
        env.pop("PYTHONPATH", None)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                # Only prctl runs between fork and exec: no lock is taken there.
                preexec_fn=None if self._detached or setpriv else _die_with_parent,  # noqa: PLW1509
            )
        return TritonServer(
            name=spec.name,
            grpc_port=port,
            models=models,
            log_path=log_path,
            process=process,
            pid=process.pid,
            shm_prefix=shm_prefix,
            extra_args=spec.extra_args,
        )

    def _wait_ready(self, server: TritonServer) -> None:
        deadline = time.monotonic() + self._ready_timeout_s
        tls = self._specs_tls.get(server.name)
        channel = (
            grpc.insecure_channel(server.address)
            if tls is None
            else grpc.secure_channel(
                server.address, grpc.ssl_channel_credentials(tls.ca_file.read_bytes())
            )
        )
        with channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while True:
                if not server.is_running():
                    code = server.process.returncode if server.process is not None else None
                    raise FleetError(
                        f"tritonserver {server.name} exited during start-up (exit status "
                        f"{code}; log {server.log_path}):\n{server.log_tail()}"
                    )
                if _server_ready(stub, server.models):
                    return
                if time.monotonic() > deadline:
                    raise FleetError(
                        f"tritonserver {server.name} not ready after {self._ready_timeout_s}s "
                        f"(log {server.log_path}):\n{server.log_tail()}"
                    )
                # Bounded poll of a condition; start-up takes about a second.
                time.sleep(0.05)

    def _write_state(self) -> None:
        state = {
            "servers": [
                {
                    "name": s.name,
                    "pid": s.pid,
                    "grpc_port": s.grpc_port,
                    "models": list(s.models),
                    "log": str(s.log_path),
                }
                for s in self.servers.values()
            ]
        }
        (self._work_dir / STATE_FILE).write_text(json.dumps(state, indent=2))


def detached_servers(work_dir: Path) -> list[TritonServer] | None:
    """The servers of a fleet started with ``detached=True``; None when none was. A state file
    this module did not write is a FleetError naming it."""
    state_path = work_dir / STATE_FILE
    if not state_path.is_file():
        return None
    try:
        state = json.loads(state_path.read_text())
        return [
            TritonServer(
                name=str(item["name"]),
                grpc_port=int(item["grpc_port"]),
                models=tuple(item["models"]),
                log_path=Path(item["log"]),
                pid=int(item["pid"]),
            )
            for item in state["servers"]
        ]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a state 'fleet up' wrote"
        raise FleetError(
            f"cannot read the fleet state {state_path} ({reason}): stop its tritonserver "
            "processes by hand if any run, then remove the file"
        ) from None


def is_running(server: TritonServer) -> bool:
    return _is_tritonserver(server.pid)


def stop_detached(work_dir: Path, stop_grace_s: float = 10.0) -> list[str] | None:
    """Stop a fleet started with ``detached=True`` from its state file; return stopped names
    (None: no fleet was started from ``work_dir``)."""
    state_path = work_dir / STATE_FILE
    servers = detached_servers(work_dir)
    if servers is None:
        return None
    running = [s for s in servers if _is_tritonserver(s.pid)]
    for server in running:
        _terminate(server.pid)
    deadline = time.monotonic() + stop_grace_s
    for server in running:
        _wait_exit(server, deadline)
        _kill_group(server.pid)
    state_path.unlink(missing_ok=True)
    return [s.name for s in running]


def _link_model_environment(site_packages: Path, backend: Path) -> None:
    """Make the model environment's packages (numpy<2 above all) importable by every
    Python-backend model, as the NGC image's own Python environment is.

    The stub's interpreter is isolated (PYTHONPATH is ignored) but appends the backend folder
    to ``sys.path`` before it imports a model's ``model.py``: links to the packages there let a
    model shipped with its own ``model.py`` (``import numpy`` first) run unchanged. The
    generated ONNX wrappers name the environment themselves as well.
    """
    for item in site_packages.iterdir():
        if item.name in {"bin", "__pycache__"} or item.name.endswith(".dist-info"):
            continue
        link = backend / item.name
        if link.is_symlink():
            link.unlink()  # from an earlier prepare
        elif link.exists():
            continue  # the backend's own files come first
        link.symlink_to(item.resolve(), target_is_directory=item.is_dir())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the gRPC server will: connections of a previous server lingering in TIME_WAIT
        # do not make the port busy, only a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def ensure_port_free(port: int, owner: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise FleetError(
                f"port {port} for server {owner} is already in use on {LOOPBACK}: "
                "stop whatever listens there or choose another port"
            ) from exc


def _wait_port_free(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Still busy: _launch reports the port clearly.


def _server_ready(stub: service_pb2_grpc.GRPCInferenceServiceStub, models: Iterable[str]) -> bool:
    try:
        if not stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=1.0).ready:
            return False
        return all(
            stub.ModelReady(service_pb2.ModelReadyRequest(name=m), timeout=1.0).ready
            for m in models
        )
    except grpc.RpcError:
        return False


def _die_with_parent() -> None:
    # Runs in the child between fork and exec (only where setpriv is missing).
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _is_tritonserver(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; only a live process counts as running.
    state = stat.rsplit(")", 1)[1].split()[0]
    return b"tritonserver" in cmdline and state != "Z"


def _group_members(pgid: int) -> set[int]:
    members: set[int] = set()
    if pgid <= 0:
        return members
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state, fields[2] the process group id.
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.add(int(entry.name))
    return members


def _terminate(pid: int) -> None:
    if pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _kill_group(pgid: int) -> None:
    if pgid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _wait_exit(server: TritonServer, deadline: float) -> None:
    while server.is_running() and time.monotonic() < deadline:
        if server.process is not None:
            try:
                server.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return
        else:
            time.sleep(0.05)
