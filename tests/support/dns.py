"""A real DNS server for the discovery tests: dnsmasq on loopback (installed by ``make test``
into .tools/), answering only for the records a test gives it — no upstream, no /etc/hosts."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.support.tools import free_port, tool

TTL_S = 1
"""The records' TTL: the discovery looks up again this often."""


class DnsServer:
    """dnsmasq serving ``hosts`` (name -> addresses) and ``srv`` (record name -> (target,
    port) pairs). ``serve`` replaces the records: dnsmasq reads them at start, so it is
    restarted (lookups fail meanwhile, as with a DNS server that restarts)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port(socket.SOCK_DGRAM)
        self.address = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def serve(
        self,
        hosts: dict[str, list[str]] | None = None,
        srv: dict[str, list[tuple[str, int]]] | None = None,
    ) -> None:
        lines = [
            f"port={self.port}",
            "listen-address=127.0.0.1",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "local=/test/",  # answered from these records only: NXDOMAIN or no data otherwise
            "pid-file=",
            f"local-ttl={TTL_S}",
            "host-record=probe.test,127.0.0.1",
        ]
        for name, addresses in (hosts or {}).items():
            # One address per line: a line holds at most one of each family.
            lines.extend(f"host-record={name},{address}" for address in addresses)
        for name, targets in (srv or {}).items():
            lines.extend(f"srv-host={name},{target},{port}" for target, port in targets)
        config = self.folder / "dnsmasq.conf"
        config.write_text("\n".join(lines) + "\n")
        self.stop()
        self._process = subprocess.Popen(
            [tool("dnsmasq"), "--keep-in-foreground", f"--conf-file={config}"],
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "dnsmasq.log").open("ab"),
        )
        self._wait_answering()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None

    def _wait_answering(self) -> None:
        query = dns.message.make_query("probe.test", "A")
        deadline = time.monotonic() + 10
        while True:
            assert self._process is not None and self._process.poll() is None, (
                self.folder / "dnsmasq.log"
            ).read_text()
            try:
                answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
                if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                    return
            except (dns.exception.Timeout, OSError):
                pass
            assert time.monotonic() < deadline, "dnsmasq did not answer"
            time.sleep(0.05)

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
