"""Keeps one tgw-edge running, attached and current — and says so loudly when it cannot.

- At start it re-attaches to an edge that outlived a previous control plane (same runtime
  folder, same public port: its client connections are never dropped), or starts one in a
  session of its own, so a signal to the gateway's process group does not reach it.
- Every change of routes or policy is pushed as a whole snapshot with a higher version; the
  edge ACKs or NACKs it (the reason is logged as an error; the last good snapshot keeps
  serving).
- Reports stream back every ``report_interval_s``. When the stream breaks the edge is checked:
  dead, it is logged as an error at once and restarted; silent past ``hang_timeout_s``, it is
  killed and restarted. More than ``max_restarts`` failed starts within ``restart_window_s``
  end the gateway (``failed`` is set): better no process than a port that looks served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import structlog

from gateway._protos.tgw.control.v1 import control_pb2
from gateway.control.client import EdgeControlClient
from gateway.control.errors import ControlError

log = structlog.get_logger(__name__)

_START_WAIT_S = 10.0
_POLL_S = 0.02
_CALL_TIMEOUT_S = 2.0
_REAP_WAIT_S = 0.2
_REPLACE_GRACE_S = 5.0
_LATE_S = 0.1
"""A wake-up later than this is this process's own pause, not the edge's silence."""


class EdgeError(ControlError):
    """tgw-edge could not be started or kept running."""


SnapshotSource = Callable[[], control_pb2.Snapshot]
"""Builds the current snapshot (its version is set here)."""


class EdgeSupervisor:
    def __init__(
        self,
        binary: Path,
        arguments: Sequence[str],
        runtime_dir: Path,
        snapshot: SnapshotSource,
        bind_public: Callable[[], socket.socket],
        *,
        on_report: Callable[[control_pb2.EdgeReport], None] = lambda report: None,
        on_up: Callable[[bool], None] = lambda up: None,
        on_restart: Callable[[], None] = lambda: None,
        clock: Callable[[], float],
        report_interval_s: float = 0.25,
        hang_timeout_s: float = 10.0,
        max_restarts: int = 5,
        restart_window_s: float = 60.0,
    ) -> None:
        self._binary = binary
        self._arguments = list(arguments)
        self._settings_digest = hashlib.sha256(
            "\0".join([str(binary), *arguments]).encode()
        ).hexdigest()
        self.control_socket = runtime_dir / "control.sock"
        self.gateway_socket = runtime_dir / "gateway.sock"
        self._snapshot = snapshot
        self._bind_public = bind_public
        self._listener: socket.socket | None = None
        """The public port, kept open across edge restarts (None while attached to an edge
        another control plane started: that edge holds it)."""
        self._on_report = on_report
        self._on_up = on_up
        self._on_restart = on_restart
        self._clock = clock
        self._report_interval_s = report_interval_s
        self._hang_timeout_s = hang_timeout_s
        self._max_restarts = max_restarts
        self._restart_window_s = restart_window_s
        self.client = EdgeControlClient(self.control_socket)
        self._process: asyncio.subprocess.Process | None = None
        self.pid = 0
        self.port = 0
        self.up = False
        self.restarts = 0
        self.snapshots_refused = 0
        self._version = 0
        self._dirty = asyncio.Event()
        self.applied_version = 0
        """The last snapshot version this control plane pushed and the edge accepted."""
        self._applied = asyncio.Event()
        self._stopping = False
        self._restart_times: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        """Set with the reason when no edge can be kept running."""

    async def start(self) -> int:
        """Attach to a running edge or start one; push the first snapshot; returns the port."""
        if not await self._attach():
            await self._spawn()
        await self._push(required=True)
        self._tasks = [
            asyncio.create_task(self._supervise(), name="edge-supervisor"),
            asyncio.create_task(self._publish_changes(), name="edge-snapshots"),
        ]
        return self.port

    def publish(self) -> None:
        """Routes or policy changed: push a new snapshot soon (changes coalesce)."""
        self._dirty.set()

    async def sync(self, timeout_s: float) -> bool:
        """Publish, and wait until the edge serves a snapshot built after this call (routes
        withdrawn before it are then gone from every new request); False on timeout."""
        target = self._version + 1
        self.publish()
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.applied_version < target:
            self._applied.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._applied.wait(), remaining)
            except TimeoutError:
                return False
        return True

    async def stop(self, grace_s: float) -> None:
        """Ask the edge to drain within ``grace_s`` and exit; kill it if it does not."""
        self._stopping = True
        # New connections are refused from now on rather than left in a backlog no edge reads.
        self._close_listener()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._process is None and not self.pid:
            await self.client.close()  # a start that failed before any edge ran
            return
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.client.shutdown(grace_s, _CALL_TIMEOUT_S)
        if not await self._wait_gone(grace_s + 2.0):
            log.warning("edge_killed", pid=self.pid, reason="did not stop within its grace")
            self._kill()
            await self._wait_gone(2.0)
        self._set_up(False)
        await self.client.close()
        log.info("edge_stopped", pid=self.pid)

    # -- start, attach, restart --------------------------------------------------------------

    async def _attach(self) -> bool:
        if not self.control_socket.exists():
            return False
        try:
            description = await self.client.describe(1.0)
        except grpc.aio.AioRpcError:
            return False
        if description.settings_digest != self._settings_digest:
            # Started with other settings (public port, limits, binary): replace it; its
            # clients reconnect to the new one.
            log.warning(
                "edge_replaced",
                pid=description.pid,
                reason="it runs with other settings than the configuration's",
            )
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.client.shutdown(_REPLACE_GRACE_S, _CALL_TIMEOUT_S)
            self.pid = description.pid
            if not await self._wait_gone(_REPLACE_GRACE_S + 2.0):
                self._kill()
                await self._wait_gone(2.0)
            self.pid = 0
            return False
        self._adopt(description)
        log.info(
            "edge_reattached",
            pid=self.pid,
            port=self.port,
            snapshot_version=description.snapshot_version,
            uptime_s=round(description.uptime_seconds, 1),
        )
        return True

    def _adopt(self, description: control_pb2.EdgeDescription) -> None:
        self.pid = description.pid
        self.port = int(description.listen_address.rsplit(":", 1)[1])
        self._version = max(self._version, description.snapshot_version)
        self._set_up(True)

    async def _spawn(self) -> None:
        # A stale socket of an edge that died; a live edge would have answered _attach.
        self.control_socket.unlink(missing_ok=True)
        if self._listener is None:
            self._listener = self._bind_public()
        listen_fd = self._listener.fileno()
        process = await asyncio.create_subprocess_exec(
            str(self._binary),
            *self._arguments,
            "--listen-fd",
            str(listen_fd),
            "--settings-digest",
            self._settings_digest,
            "--control-socket",
            str(self.control_socket),
            "--gateway-socket",
            str(self.gateway_socket),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            pass_fds=(listen_fd,),
            # Its own session: Ctrl-C or a signal to the gateway's group does not reach it; the
            # gateway stops it with the control protocol's Shutdown.
            start_new_session=True,
        )
        self._process = process
        deadline = self._clock() + _START_WAIT_S
        while True:
            if process.returncode is not None:
                raise EdgeError(
                    f"tgw-edge exited with code {process.returncode} at start; its log line "
                    "'edge_not_started' says why"
                )
            try:
                description = await self.client.describe(0.5)
            except grpc.aio.AioRpcError:
                if self._clock() > deadline:
                    self._kill()
                    raise EdgeError(
                        f"tgw-edge did not answer on {self.control_socket} within "
                        f"{_START_WAIT_S:.0f} s"
                    ) from None
                await asyncio.sleep(_POLL_S)
                continue
            self._adopt(description)
            log.info("edge_started", pid=self.pid, port=self.port)
            return

    async def _restart(self) -> None:
        """Start a new edge, or set ``failed`` when starts keep failing."""
        while not self._stopping:
            now = self._clock()
            self._restart_times = [
                t for t in self._restart_times if now - t < self._restart_window_s
            ]
            if len(self._restart_times) >= self._max_restarts:
                reason = (
                    f"tgw-edge was restarted {len(self._restart_times)} times within "
                    f"{self._restart_window_s:.0f} s and keeps dying"
                )
                log.error("edge_given_up", reason=reason)
                if not self.failed.done():
                    self.failed.set_result(reason)
                return
            self._restart_times.append(now)
            self.restarts += 1
            self._on_restart()
            try:
                await self._spawn()
                await self._push(required=True)
                return
            except (EdgeError, grpc.aio.AioRpcError) as exc:
                log.error("edge_restart_failed", error=str(exc))
                await asyncio.sleep(0.2)

    # -- supervision ---------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._stopping:
            reason = await self._until_lost()
            if self._stopping:
                return
            self._set_up(False)
            code = self._process.returncode if self._process is not None else None
            log.error("edge_died", pid=self.pid, reason=reason, exit_code=code)
            await self._restart()
            if self.failed.done():
                return

    async def _until_lost(self) -> str:
        """Read reports until the edge is gone or silent too long; returns why."""
        last_report = self._clock()

        async def reports() -> None:
            nonlocal last_report
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for report in self.client.watch(self._report_interval_s):
                    last_report = self._clock()
                    self._on_report(report)

        while True:
            reading = asyncio.create_task(reports())
            try:
                while not reading.done():
                    asleep_from = self._clock()
                    await asyncio.wait({reading}, timeout=self._report_interval_s)
                    # Silence counts only while this process could read: woken this much later
                    # than asked, it was stopped (SIGSTOP, a suspended host) or its loop was
                    # blocked, and the reports waiting unread are no sign of a hung edge.
                    late = self._clock() - asleep_from - self._report_interval_s
                    if late > _LATE_S:
                        last_report = min(self._clock(), last_report + late)
                    if self._clock() - last_report > self._hang_timeout_s:
                        log.error("edge_unresponsive", pid=self.pid, silent_s=self._hang_timeout_s)
                        self._kill()
                        await self._wait_gone(2.0)
                        return f"no report for {self._hang_timeout_s:g} s (killed)"
            finally:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            # A dead edge ends the stream a moment before its exit is reaped.
            if await self._wait_gone(_REAP_WAIT_S):
                return "its control stream ended and the process is gone"
            # The stream broke but the process lives (a restart of the stream): read again.
            await asyncio.sleep(self._report_interval_s)

    # -- snapshots -----------------------------------------------------------------------------

    async def _publish_changes(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self.up:
                continue  # a restart pushes the current snapshot itself
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._push(required=False)

    async def _push(self, *, required: bool) -> None:
        """Send the current snapshot; a refusal is an error in the log (and at start, fatal)."""
        snapshot = self._snapshot()
        self._version += 1
        snapshot.version = self._version
        result = await self.client.apply(snapshot, _CALL_TIMEOUT_S)
        if result.accepted:
            self.applied_version = snapshot.version
            self._applied.set()
            return
        self.snapshots_refused += 1
        log.error(
            "edge_snapshot_refused",
            version=result.version,
            serving_version=result.serving_version,
            reason=result.reason,
        )
        if result.serving_version >= self._version:
            # Another control plane pushed newer ones: continue after them.
            self._version = result.serving_version
            self._dirty.set()
        elif required:
            raise EdgeError(f"tgw-edge refused the configuration: {result.reason}")

    # -- process helpers -----------------------------------------------------------------------

    def _alive(self) -> bool:
        if self._process is not None:
            return self._process.returncode is None
        if not self.pid:
            return False  # none started nor attached (os.kill(0, ...) is the process group)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._process is not None:
                self._process.kill()
            elif self.pid:
                os.kill(self.pid, signal.SIGKILL)

    async def _wait_gone(self, timeout_s: float) -> bool:
        if self._process is not None:
            try:
                await asyncio.wait_for(self._process.wait(), timeout_s)
            except TimeoutError:
                return False
            return True
        deadline = self._clock() + timeout_s
        while self._alive():
            if self._clock() > deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self._on_up(up)
