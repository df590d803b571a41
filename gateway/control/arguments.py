"""How tgw-edge is found and started: its binary and its command-line options.

Only what is fixed for the life of an edge process is passed here (the public port and its
limits, logging); per-request policy travels in snapshots and changes without a restart.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from gateway.observability.logging import json_logs as _json_logs
from gateway.settings import GatewaySettings

BINARY_NAME = "tgw-edge"


def find_edge_binary(configured: Path | None) -> Path | None:
    """The configured path, else the one installed beside this interpreter, else on PATH."""
    if configured is not None:
        return configured if configured.is_file() else None
    beside = Path(sys.executable).parent / BINARY_NAME
    if beside.is_file():
        return beside
    found = shutil.which(BINARY_NAME)
    return Path(found) if found else None


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def edge_arguments(settings: GatewaySettings) -> list[str]:
    """tgw-edge's command-line options for these settings (``tgw-edge --help`` lists them)."""
    edge = settings.edge
    arguments = [
        "--listen",
        f"{settings.server.host}:{settings.server.port}",
        "--threads",
        str(edge.threads),
        "--drain-grace-ms",
        _ms(settings.server.shutdown_grace_s),
        "--log-level",
        settings.logging.level,
        "--log-format",
        "json" if _json_logs(settings.logging) else "console",
        "--max-connections",
        str(edge.max_connections),
        "--handshake-timeout-ms",
        _ms(edge.handshake_timeout_s),
        "--idle-timeout-ms",
        _ms(edge.idle_timeout_s),
        "--max-concurrent-streams",
        str(edge.max_concurrent_streams),
        "--max-header-list-bytes",
        str(edge.max_header_list_bytes),
        "--max-pending-accept-reset-streams",
        str(edge.max_pending_accept_reset_streams),
        "--max-local-error-reset-streams",
        str(edge.max_local_error_reset_streams),
        "--max-send-buffer-bytes",
        str(edge.max_send_buffer_bytes),
        "--keepalive-interval-ms",
        "0" if edge.keepalive_interval_s == 0 else _ms(edge.keepalive_interval_s),
        "--keepalive-timeout-ms",
        _ms(edge.keepalive_timeout_s),
        "--upstream-stream-window-bytes",
        str(edge.upstream_stream_window_bytes),
    ]
    tls = settings.server.tls
    if tls.cert_file is not None and tls.key_file is not None:
        arguments += ["--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file)]
        if tls.client_ca_file is not None:
            arguments += ["--tls-client-ca", str(tls.client_ca_file)]
    backend = settings.backend_tls
    if backend.enabled:
        arguments.append("--backend-tls")
        if backend.ca_file is not None:
            arguments += ["--backend-ca", str(backend.ca_file)]
        if backend.cert_file is not None and backend.key_file is not None:
            arguments += ["--backend-cert", str(backend.cert_file)]
            arguments += ["--backend-key", str(backend.key_file)]
    return arguments
