"""A real Consul agent for the tests: ``consul agent -dev`` (built by ``make test`` into
.tools/ from the Go module proxy), on loopback ports of its own, with its HTTP API driven
through py-consul's plain client."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import consul  # type: ignore[import-untyped]

from tests.support.tools import free_port, tool


class ConsulServer:
    """One dev agent (server and client in one, state in memory)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.http_port = free_port()
        self.address = f"127.0.0.1:{self.http_port}"
        self.node = f"tests-{self.http_port}"
        self._ports = {"server": free_port(), "serf_lan": free_port()}
        self._process: subprocess.Popen[bytes] | None = None
        self.client: Any = consul.Consul(host="127.0.0.1", port=self.http_port)

    def start(self) -> ConsulServer:
        ports = (
            f"ports {{ http = {self.http_port} server = {self._ports['server']} "
            f"serf_lan = {self._ports['serf_lan']} serf_wan = -1 dns = -1 grpc = -1 "
            "grpc_tls = -1 }"
        )
        self._process = subprocess.Popen(
            [
                tool("consul"),
                "agent",
                "-dev",
                "-bind=127.0.0.1",
                "-client=127.0.0.1",
                f"-node={self.node}",
                f"-hcl={ports}",
            ],
            stdout=(self.folder / "consul.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self._process.poll() is None, (self.folder / "consul.log").read_text()[-2000:]
            try:
                if self.client.status.leader():
                    return self
            except Exception:  # not listening yet
                pass
            assert time.monotonic() < deadline, "consul did not elect itself leader"
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(20)
            self._process = None

    def register(self, service_id: str, service: str, address: str, *, passing: bool) -> None:
        """A service instance with a TTL check, passing or critical from the start."""
        host, _, port = address.rpartition(":")
        self.client.agent.service.register(
            service,
            service_id=service_id,
            address=host,
            port=int(port),
            check=consul.Check.ttl("300s"),
        )
        self.set_check(service_id, passing=passing)

    def set_check(self, service_id: str, *, passing: bool) -> None:
        check = f"service:{service_id}"
        if passing:
            self.client.agent.check.ttl_pass(check)
        else:
            self.client.agent.check.ttl_fail(check)

    def deregister(self, service_id: str) -> None:
        self.client.agent.service.deregister(service_id)

    def __enter__(self) -> ConsulServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
