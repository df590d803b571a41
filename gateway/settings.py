"""Gateway configuration: a YAML file overlaid by ``GATEWAY_*`` environment variables.

Validated once at start; everything downstream receives these frozen models, never raw dicts.
Nested fields are set from the environment with a double underscore, for example
``GATEWAY_SERVER__PORT=9001`` or ``GATEWAY_LOGGING__LEVEL=debug``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_MAX_PORT = 65535
ENV_PREFIX = "GATEWAY_"
"""Environment variables named ``GATEWAY_<SECTION>__<KEY>`` override the file."""
ENV_NESTED = "__"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> None:
    if (cert is None) != (key is None):
        raise ValueError("set cert_file and key_file together")
    for path in (cert, key, ca):
        if path is not None and not path.is_file():
            raise ValueError(f"{path} is not a readable file")


class TlsSettings(_Frozen):
    """TLS of a port the gateway serves: certificate chain and key (PEM); with a client CA,
    mutual TLS (clients must show a certificate that chains to it)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        _check_tls_files(self.cert_file, self.key_file, self.client_ca_file)
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.cert_file is not None and self.key_file is not None
        ca = self.client_ca_file.read_bytes() if self.client_ca_file is not None else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


class BackendTlsSettings(_Frozen):
    """TLS to the Triton backends (their ``--grpc-use-ssl``), for tgw-edge and the gateway's
    own calls (health polls, pushes, index)."""

    enabled: bool = False
    ca_file: Path | None = None
    """CA the backends' certificates must chain to; None: the system's trust store."""
    cert_file: Path | None = None
    """Client certificate for backends that ask for one (``--grpc-use-ssl-mutual``)."""
    key_file: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> BackendTlsSettings:
        _check_tls_files(self.cert_file, self.key_file, self.ca_file)
        return self

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """None: plain connections."""
        if not self.enabled:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


class ServerSettings(_Frozen):
    host: str = "0.0.0.0"
    """Address the gateway's gRPC server listens on."""
    port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port; 8001 like Triton so clients' defaults work; 0 picks a free port."""
    max_message_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Largest request or response message accepted, in bytes, on both hops."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    tls: TlsSettings = TlsSettings()
    """TLS of the public port (served by tgw-edge); none by default."""
    """How long in-flight calls may finish after SIGTERM before they are cancelled."""


class BackendSettings(_Frozen):
    name: str
    """Stable name used in logs, metrics and admin calls."""
    address: str
    """host:port of the Triton gRPC endpoint."""
    drained: bool = False
    """Send it no new requests (calls in flight finish); change it and save the config file
    to drain or restore a backend without a restart."""


class DnsDiscoverySettings(_Frozen):
    """Backends from DNS (``discovery.source: dns``)."""

    name: str
    """The name looked up: a Kubernetes headless service
    (``triton.inference.svc.cluster.local``) or, for SRV, the record's name
    (``_grpc._tcp.triton.inference.svc.cluster.local``)."""
    record: Literal["A/AAAA", "A", "AAAA", "SRV"] = "A/AAAA"
    """A/AAAA: one backend per address, on ``port``; SRV: one per record, on its port."""
    port: int = Field(default=8001, ge=1, le=65535)
    """The backends' gRPC port for address records."""
    resolver: str | None = None
    """host:port of the DNS server to ask; null: the system's (/etc/resolv.conf)."""
    interval_s: float = Field(default=5.0, gt=0)
    """Looked up again at least this often (sooner when the answer's TTL runs out)."""
    min_interval_s: float = Field(default=1.0, gt=0)
    """Never more often (a TTL of 0), and the first wait after a failed lookup (doubling up
    to interval_s; the last set keeps serving meanwhile)."""
    timeout_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> DnsDiscoverySettings:
        # Else the back-off would start above its cap, and the TTL clamp would be inverted.
        if self.min_interval_s > self.interval_s:
            raise ValueError(
                f"min_interval_s ({self.min_interval_s:g}) is above interval_s "
                f"({self.interval_s:g}): lower min_interval_s or raise interval_s"
            )
        return self

    @field_validator("resolver")
    @classmethod
    def _host_and_port(cls, resolver: str | None) -> str | None:
        if resolver is not None:
            host, _, port = resolver.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"resolver '{resolver}' must be host:port, e.g. 127.0.0.1:53")
        return resolver


class ConsulDiscoverySettings(_Frozen):
    """Backends from Consul's catalog (``discovery.source: consul``; the agent: ``consul``)."""

    service: str
    """The Triton servers' service name; its instances whose checks all pass are backends,
    named ``node/service ID``, at the service's address (else the node's) and port."""
    tag: str | None = None
    """Only the instances with this tag."""
    wait_s: float = Field(default=30.0, gt=0)
    """Longest wait of one blocking query (Consul answers at once when the set changes)."""
    retry_min_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)
    """Back-off between tries while Consul cannot be reached (the last set keeps serving)."""

    @model_validator(mode="after")
    def _ordered(self) -> ConsulDiscoverySettings:
        # Else the first wait would be retry_min_s and every later one the smaller cap.
        if self.retry_min_s > self.retry_max_s:
            raise ValueError(
                f"retry_min_s ({self.retry_min_s:g}) is above retry_max_s "
                f"({self.retry_max_s:g}): lower retry_min_s or raise retry_max_s"
            )
        return self


class ConsulSettings(_Frozen):
    """The Consul agent the gateway talks to (Consul discovery, the shared traffic state)."""

    address: str = "127.0.0.1:8500"
    """host:port of the agent's HTTP API (CONSUL_HTTP_ADDR is not read: set it here)."""
    scheme: Literal["http", "https"] = "http"
    token: SecretStr | None = None
    """ACL token (GATEWAY_CONSUL__TOKEN)."""
    datacenter: str | None = None
    ca_file: Path | None = None
    """CA of an https agent; null: the system's trust store."""

    @field_validator("address")
    @classmethod
    def _host_and_port(cls, address: str) -> str:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"consul.address '{address}' must be host:port, e.g. 127.0.0.1:8500")
        return address


class DiscoverySettings(_Frozen):
    """Where the backends come from: ``backends`` (static), DNS or Consul."""

    source: Literal["static", "dns", "consul"] = "static"
    dns: DnsDiscoverySettings | None = None
    consul: ConsulDiscoverySettings | None = None

    @model_validator(mode="after")
    def _configured(self) -> DiscoverySettings:
        if self.source == "dns" and self.dns is None:
            raise ValueError("discovery.source is dns: set discovery.dns.name")
        if self.source == "consul" and self.consul is None:
            raise ValueError("discovery.source is consul: set discovery.consul.service")
        # A block the chosen source never reads is a mistake (a source switched back, a typo
        # in source): refused, not silently ignored.
        for block, settings in (("dns", self.dns), ("consul", self.consul)):
            if settings is not None and self.source != block:
                raise ValueError(
                    f"discovery.{block} is set, but discovery.source is {self.source}: "
                    f"set discovery.source: {block} to use it, or remove discovery.{block}"
                )
        return self


class HealthSettings(_Frozen):
    poll_interval_s: float = Field(default=1.0, gt=0)
    """How often each backend is asked for readiness and its READY model versions."""
    poll_timeout_s: float = Field(default=2.0, gt=0)
    """Deadline of one health poll call."""
    startup_wait_s: float = Field(default=10.0, ge=0)
    """How long start-up waits for the first poll of every backend before serving."""


class EdgeSettings(_Frozen):
    """tgw-edge, the data plane: it serves the public port and makes every per-request
    decision; the gateway runs it, configures it and restarts it."""

    binary: Path | None = None
    """Path of tgw-edge; by default the one beside the Python interpreter, then PATH."""
    runtime_dir: Path | None = None
    """Owner-only folder of the control and hand-over sockets. By default
    <tmp>/triton-gateway-<uid>-<port>, found again after a restart so a restarted gateway
    re-attaches to the edge that kept serving (port 0: a fresh folder each start)."""
    hang_timeout_s: float = Field(default=10.0, gt=0)
    """An edge that sends no report for this long is killed and restarted."""
    max_restarts: int = Field(default=5, ge=1)
    """Edge restarts allowed within restart_window_s; past it the gateway exits non-zero."""
    restart_window_s: float = Field(default=60.0, gt=0)
    threads: int = Field(default=1, ge=1)
    """Worker threads of tgw-edge (one is enough for two cores)."""
    # Limits of the public port: what one client may hold or send (tgw-edge enforces them).
    max_connections: int = Field(default=10_000, ge=1)
    """Client connections open at once; more are closed as they arrive. Lowered at start to
    fit the file descriptor limit (which tgw-edge raises to its hard limit first)."""
    handshake_timeout_s: float = Field(default=10.0, gt=0)
    """A connection that sends no HTTP/2 preface and first call within this time is closed."""
    idle_timeout_s: float = Field(default=600.0, gt=0)
    """A connection with no call in progress for this long is closed (GOAWAY)."""
    max_concurrent_streams: int = Field(default=256, ge=1, le=2**31 - 1)
    """Calls one client connection may have open at once."""
    max_header_list_bytes: int = Field(default=65_536, ge=1024, le=2**31 - 1)
    """Largest request header block (decoded, CONTINUATION frames included); larger ones
    close the connection."""
    max_pending_accept_reset_streams: int = Field(default=20, ge=1)
    """Streams a client may open and reset before the edge accepts them (Rapid Reset)."""
    max_local_error_reset_streams: int = Field(default=1024, ge=1)
    """Streams the edge may reset for a client's protocol errors before it closes the
    connection."""
    max_send_buffer_bytes: int = Field(default=400 * 1024, ge=16 * 1024)
    """Answer bytes buffered per call towards a client that does not read."""
    keepalive_interval_s: float = Field(default=60.0, ge=0)
    """PING an idle client connection this often (0: never)..."""
    keepalive_timeout_s: float = Field(default=20.0, gt=0)
    """...and close it when the answer takes longer than this."""
    upstream_stream_window_bytes: int = Field(default=2 * 1024 * 1024, ge=65_535, le=2**31 - 1)
    """Flow-control window of one call on a backend connection: what a client that stops
    reading can hold buffered. The connection's own window is HTTP/2's largest, so a stalled
    call never stalls others on the same backend connection."""

    @field_validator("binary")
    @classmethod
    def _binary_exists(cls, binary: Path | None) -> Path | None:
        # Said when the settings are read (`check` too), not as "tgw-edge was not found".
        if binary is not None and not binary.is_file():
            raise ValueError(
                "no such file: give the path of tgw-edge, or unset edge.binary to use the one "
                "'make install' puts beside the Python interpreter"
            )
        return binary


class BreakerSettings(_Frozen):
    consecutive_failures: int = Field(default=5, ge=1)
    """Backend faults in a row that open a backend's breaker."""
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    """Share of backend faults over the window that opens the breaker..."""
    min_requests: int = Field(default=20, ge=1)
    """...once the window holds at least this many outcomes."""
    window_s: float = Field(default=10.0, gt=0)
    """Length of the failure-rate window."""
    base_ejection_s: float = Field(default=1.0, gt=0)
    """First time a backend stays out; doubles on each repeated ejection."""
    max_ejection_s: float = Field(default=30.0, gt=0)
    """Cap of the ejection time."""
    half_open_trials: int = Field(default=1, ge=1)
    """Requests let through to test a backend whose ejection time is over."""
    max_ejected_fraction: float = Field(default=0.5, ge=0, le=1)
    """Most of the live fleet breakers alone may eject; past it all live backends serve."""

    @model_validator(mode="after")
    def _ordered(self) -> BreakerSettings:
        # tgw-edge refuses such a policy: say so when the settings are read, not at start.
        if self.max_ejection_s < self.base_ejection_s:
            raise ValueError("max_ejection_s must not be below base_ejection_s")
        return self


class BalancingSettings(_Frozen):
    """Power of two choices on calls in flight x a peak-EWMA of latency per backend and model."""

    latency_decay_s: float = Field(default=5.0, gt=0)
    """Time constant of the latency estimate: how long a slow spell takes to be forgiven."""
    fault_penalty_s: float = Field(default=0.25, ge=0)
    """Least latency a backend fault counts as, so a backend failing fast never looks fast."""
    sequence_idle_s: float = Field(default=600.0, gt=0)
    """A sequence (requests with a sequence_id) stays on its backend until its END, or until
    idle this long (Triton drops idle sequences sooner, per model)."""


class RetrySettings(_Frozen):
    budget_ratio: float = Field(default=0.2, ge=0)
    """Retries may add at most this share of the requests over the window..."""
    min_per_second: float = Field(default=10.0, ge=0)
    """...or this many per second, whichever is more."""
    window_s: int = Field(default=10, ge=1)
    """Length of the retry-budget window."""
    max_attempts: int = Field(default=3, ge=1)
    """Tries of one call in all (first, retries and hedge); a sequence's request is sent once."""


class TimeoutSettings(_Frozen):
    """The per-try timeout, adaptive by default: ``multiplier`` x the model's observed latency
    ``quantile``, never below ``floor_s`` nor above ``cap_s`` (``cap_s`` until a model has
    answered 20 times). Past it the call moves to another backend: a hung backend costs this
    much, not the client's whole deadline."""

    floor_s: float = Field(default=0.1, gt=0)
    cap_s: float = Field(default=30.0, gt=0)
    multiplier: float = Field(default=3.0, ge=1)
    quantile: float = Field(default=0.99, gt=0, le=1)
    per_model_s: dict[str, float] = Field(default_factory=dict)
    """Fixed per-try timeouts by model name, in place of the adaptive one."""

    @model_validator(mode="after")
    def _ordered(self) -> TimeoutSettings:
        if self.cap_s < self.floor_s:
            raise ValueError("cap_s must not be below floor_s")
        if any(value <= 0 for value in self.per_model_s.values()):
            raise ValueError("per_model_s values must be positive")
        return self


class HedgingSettings(_Frozen):
    """A second copy of a slow ModelInfer (never one of a sequence) to another backend, after
    the model's observed latency ``quantile`` (within the delays), paid from the retry budget;
    the first answer wins and the other copy is cancelled."""

    enabled: bool = True
    quantile: float = Field(default=0.95, gt=0, le=1)
    min_delay_s: float = Field(default=0.01, gt=0)
    max_delay_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> HedgingSettings:
        if self.max_delay_s < self.min_delay_s:
            raise ValueError("max_delay_s must not be below min_delay_s")
        return self


class SheddingSettings(_Frozen):
    max_in_flight: int | None = Field(default=None, ge=1)
    """Routed calls in flight on the edge; past it: RESOURCE_EXHAUSTED at once."""
    max_in_flight_per_model: int | None = Field(default=None, ge=1)
    """The same cap for each model."""


class RepositorySettings(_Frozen):
    path: Path = Path("model_repository")
    """The canonical model repository (``<model>/config.pbtxt``, ``<model>/<version>/...``):
    watched for drops, validated, served by the fallback and, with ``push``, by the fleet."""
    push: bool = False
    """Load the repository's models on every backend (RepositoryModelLoad with the files, so
    backends need no shared disk; they must run Triton with --model-control-mode=explicit),
    roll out each change canary-first and give traffic only to what passed."""
    cpu_only_backends: bool = False
    """The backends have no GPU: push GPU instance groups as CPU instances, without GPU
    execution accelerators (Triton refuses KIND_GPU where it finds no GPU)."""
    settle_s: float = Field(default=1.0, ge=0)
    """A model directory is read once its files stayed unchanged this long."""
    rescan_interval_s: float = Field(default=10.0, gt=0)
    """Full rescans besides file-system events (a missed event is caught by the next)."""
    reconcile_interval_s: float = Field(default=5.0, gt=0)
    """How often each backend is compared with the repository besides on changes."""
    max_model_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    """Most bytes of one model's files (all its versions: they are pushed together)."""
    parallelism: int = Field(default=4, ge=1)
    """Backends loading a rollout at once after the canary passed."""
    load_timeout_s: float = Field(default=300.0, gt=0)
    """Longest one backend may take to load a pushed model."""
    call_timeout_s: float = Field(default=10.0, gt=0)
    """Timeout of the other calls of a rollout (readiness, golden requests, unload)."""
    golden_atol: float = Field(default=1e-4, ge=0)
    golden_rtol: float = Field(default=1e-3, ge=0)
    """A golden answer agrees where |got - expected| <= atol + rtol * |expected|."""
    drain_s: float = Field(default=2.0, ge=0)
    """After a removed version left the routes, calls already sent may finish this long
    before it is unloaded."""


class FallbackSettings(_Frozen):
    enabled: bool = True
    """Answer from local ONNX Runtime sessions (on ``repository.path``'s models) when no
    Triton backend can serve a request."""
    models: list[str] | None = None
    """Models the fallback may serve; None: every model of the repository."""
    preload: bool = False
    """Load sessions at start (memory now, no first-request delay) instead of on first use."""
    threads: int = Field(default=1, ge=1)
    """ONNX Runtime intra-op threads per session."""
    max_concurrency: int = Field(default=2, ge=1)
    """Fallback calls run at once."""
    max_queue: int = Field(default=64, ge=0)
    """Fallback calls that may wait for a free runner; beyond: RESOURCE_EXHAUSTED, at once."""
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Most tensor bytes one fallback call may decode (an upper bound read from the request
    before parsing it; typed contents count at their decoded width, BYTES elements with their
    per-object cost); beyond: RESOURCE_EXHAUSTED, at once."""
    max_total_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Most tensor bytes all fallback calls running or waiting may hold decoded together;
    beyond: RESOURCE_EXHAUSTED, at once."""
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    """ONNX Runtime execution providers in order; ones not installed are skipped."""


RESTRICTED_HEADER_PREFIX = "triton-grpc-protocol-"
"""Triton's restricted protocols expect header ``triton-grpc-protocol-<KEY>: <VALUE>``."""
_PROTOCOL_KEY = re.compile(r"([a-z0-9_.-]+)=([\x20-\x7e]+)")


@dataclass(frozen=True, slots=True)
class ProtocolKey:
    """One ``KEY=VALUE`` of ``--grpc-restricted-protocol``, as the header a call carries."""

    header: str
    """``triton-grpc-protocol-<KEY>``."""
    value: str

    @classmethod
    def parse(cls, text: str) -> ProtocolKey:
        match = _PROTOCOL_KEY.fullmatch(text)
        if match is None:
            # One line, and never the value itself: it is a secret.
            raise ValueError(
                "must be KEY=VALUE as in tritonserver --grpc-restricted-protocol="
                "model-repository:KEY=VALUE (KEY of lowercase letters, digits, '-', '_' or "
                "'.'; VALUE of printable ASCII, not empty)"
            )
        return cls(RESTRICTED_HEADER_PREFIX + match.group(1), match.group(2))

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((self.header, self.value),)


class SecuritySettings(_Frozen):
    """Who may change the fleet, and the key the gateway shows backends that restrict calls."""

    model_repository_key: SecretStr | None = None
    """KEY=VALUE: RepositoryModelLoad/Unload are allowed only with header
    ``triton-grpc-protocol-KEY: VALUE``, as Triton's ``--grpc-restricted-protocol=
    model-repository:KEY=VALUE`` asks; None: they are refused (env:
    GATEWAY_SECURITY__MODEL_REPOSITORY_KEY)."""
    backend_key: SecretStr | None = None
    """KEY=VALUE sent as header ``triton-grpc-protocol-KEY`` on the gateway's own calls to
    backends (health polls, index, statistics, load/unload), for backends that restrict those
    protocols; None: the same as model_repository_key."""

    @model_validator(mode="before")
    @classmethod
    def _secret_first(cls, data: Any) -> Any:
        # Wrapped before validation, so an error about a malformed key shows it masked.
        if isinstance(data, dict):
            return {
                key: SecretStr(value) if isinstance(value, str) else value
                for key, value in data.items()
            }
        return data

    @field_validator("model_repository_key", "backend_key")
    @classmethod
    def _key_value(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            ProtocolKey.parse(value.get_secret_value())
        return value

    def client_key(self) -> ProtocolKey | None:
        """What a fleet-changing call must carry; None: such calls are refused."""
        key = self.model_repository_key
        return None if key is None else ProtocolKey.parse(key.get_secret_value())

    def backend_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The header for the gateway's own calls to backends, or None."""
        key = self.backend_key or self.model_repository_key
        return None if key is None else ProtocolKey.parse(key.get_secret_value()).metadata


class AdminSettings(_Frozen):
    """The admin service (routes, drains, fleet loads) and ``triton-gateway ctl``'s defaults."""

    enabled: bool = True
    host: str = "127.0.0.1"
    """Localhost by default: only this machine may change routes."""
    port: int | None = Field(default=None, ge=0, le=65535)
    """None: the public port + 2 (8003 by default; a free port when the public one is 0)."""
    token: SecretStr | None = None
    """Bearer token every admin call must carry (env: GATEWAY_ADMIN__TOKEN)."""
    token_file: Path | None = None
    """A file holding the token (its first line), read at start. With neither set, the
    gateway makes one at ``<state_dir>/admin.token`` (owner-only), kept across restarts."""
    state_dir: Path | None = None
    """Where routes and drains are kept across restarts (``traffic.json``). None: the runtime
    folder (kept across restarts of the gateway for a fixed public port, a fresh temporary
    one for port 0)."""
    state_store: Literal["file", "consul"] = "file"
    """file: ``<state_dir>/traffic.json``, one gateway. consul: one key of Consul's KV store
    (the ``consul`` section's agent), shared by every replica: a change made through any
    replica's admin service reaches all of them; concurrent changes never overwrite each
    other."""
    state_key: str = "triton-gateway/traffic-state"
    """The Consul key of the shared state (replicas of one gateway share it)."""

    tls: TlsSettings = TlsSettings()
    """TLS of the admin port; none by default (it listens on localhost)."""

    def listen_port(self, public_port: int) -> int:
        if self.port is not None:
            return self.port
        return public_port + 2 if public_port else 0


class TrafficSettings(_Frozen):
    """Defaults of traffic routes (each route may set its own key and shadow tolerance)."""

    key_header: str = Field(default="x-gateway-routing-key", pattern=r"^[a-z0-9_.-]+$")
    """Request header holding a client's routing key (sticky variant)."""
    key_parameter: str = Field(default="gateway_routing_key", min_length=1)
    """String request parameter holding it, for clients that cannot set headers."""
    shadow_max_in_flight: int = Field(default=64, ge=1)
    """Shadow calls in flight at once on the edge; a copy past it is skipped and counted."""
    shadow_max_bytes_in_flight: int = Field(default=64 * 1024 * 1024, ge=1)
    """Request bytes of the shadow calls in flight; a copy past it is skipped and counted."""
    shadow_atol: float = Field(default=1e-4, ge=0)
    shadow_rtol: float = Field(default=1e-3, ge=0)


class RolloutPlanSettings(_Frozen):
    """One route's plan; unset keys: the defaults of ``rollout``."""

    steps: list[float] | None = None
    min_step_s: float | None = Field(default=None, ge=0)
    min_requests: int | None = Field(default=None, ge=1)
    unload_replaced: bool | None = None
    unload_rolled_back: bool | None = None

    @field_validator("steps")
    @classmethod
    def _ascending(cls, steps: list[float] | None) -> list[float] | None:
        return None if steps is None else _check_steps(steps)


def _check_steps(steps: list[float]) -> list[float]:
    if not steps or any(not 0 <= s <= 100 for s in steps) or steps != sorted(steps):
        raise ValueError("steps must be ascending percents within 0 and 100")
    if steps[-1] != 100:
        raise ValueError("the last step must be 100 (the candidate takes all traffic)")
    return steps


class RolloutSettings(_Frozen):
    """Progressive delivery: the default plan and gates of a rollout (see the README)."""

    automatic: bool = True
    """Start a rollout on its own when a new version of a model with a route has been rolled out
    to the fleet (the route's single weighted variant is the baseline)."""
    steps: list[float] = Field(default_factory=lambda: [0.0, 1.0, 5.0, 25.0, 50.0, 100.0])
    """Percent of the route's traffic on the candidate per step; 0 is the shadow step."""
    min_step_s: float = Field(default=60.0, ge=0)
    min_requests: int = Field(default=200, ge=1)
    """Each step lasts at least min_step_s and sees at least min_requests calls (compared
    copies at the shadow step) before it may pass."""
    max_fault_rate_increase: float = Field(default=0.01, ge=0, le=1)
    max_p99_ratio: float = Field(default=1.5, gt=0)
    min_agreement: float = Field(default=0.99, ge=0, le=1)
    min_argmax_agreement: float = Field(default=0.99, ge=0, le=1)
    max_non_finite_rate: float = Field(default=0.0, ge=0, le=1)
    """Share of compared outputs with NaN/Inf in the candidate's answer and none in the
    baseline's, at most (0: a single one rolls back)."""
    live_compare_percent: float = Field(default=10.0, ge=0, le=100)
    """At the steps with live traffic on the candidate, this share of its calls is copied to
    the baseline and the answers compared (the agreement gates); 0 turns live comparison
    off (then only the shadow step judges outputs)."""
    confidence_z: float = Field(default=2.576, gt=0)
    """Width of the bounds a gate fails early on (standard scores; 2.576: 99%)."""
    unload_replaced: bool = False
    """Once promoted, withhold the replaced version: it leaves the fleet even where the
    model's version policy would keep it (a version no route names any more is unloaded
    anyway when the policy leaves it out, e.g. Triton's default ``latest 1``)."""
    unload_rolled_back: bool = False
    """Once rolled back or aborted, take the candidate out of the route and withhold it (a
    new drop of that version, with other files, is served and rolled out again); otherwise it
    stays loaded at weight 0, for inspection."""
    settle_s: float = Field(default=2.0, ge=0)
    """A step's window opens this long after the step is set: calls of the step before (its
    shadow copies above all) are still finishing and would be counted against this one."""
    tick_s: float = Field(default=1.0, gt=0)

    plans: dict[str, RolloutPlanSettings] = Field(default_factory=dict)
    """Per route (the model name clients send): its own steps, min_step_s, min_requests,
    unload_replaced, unload_rolled_back."""

    @field_validator("steps")
    @classmethod
    def _ascending(cls, steps: list[float]) -> list[float]:
        return _check_steps(steps)


class MetricsSettings(_Frozen):
    enabled: bool = True
    """Serve Prometheus metrics over HTTP at /metrics."""
    host: str = "0.0.0.0"
    """Address of the metrics endpoint."""
    port: int = Field(default=8002, ge=0, le=65535)
    """Port of the metrics endpoint (8002, like Triton's); 0 picks a free one."""


class TracingSettings(_Frozen):
    enabled: bool = False
    """Open an OpenTelemetry span per call of the Python data path (extra: tracing)."""
    service_name: str = "triton-gateway"
    """service.name of the spans."""
    otlp_endpoint: str | None = None
    """OTLP/gRPC collector, e.g. http://localhost:4317; spans are dropped when unset."""


class LoggingSettings(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe level written; per-request lines are written at debug."""
    format: Literal["auto", "json", "console"] = "auto"
    """auto: console in a terminal, JSON otherwise."""


class GatewaySettings(BaseSettings):
    """Everything the gateway needs to start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, frozen=True, extra="forbid"
    )

    server: ServerSettings = ServerSettings()
    backends: list[BackendSettings] = Field(default_factory=list)
    """Static list of Triton backends (``discovery.source: static``)."""
    discovery: DiscoverySettings = DiscoverySettings()
    consul: ConsulSettings = ConsulSettings()
    health: HealthSettings = HealthSettings()
    edge: EdgeSettings = EdgeSettings()
    breaker: BreakerSettings = BreakerSettings()
    balancing: BalancingSettings = BalancingSettings()
    retry: RetrySettings = RetrySettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    hedging: HedgingSettings = HedgingSettings()
    shedding: SheddingSettings = SheddingSettings()
    repository: RepositorySettings = RepositorySettings()
    fallback: FallbackSettings = FallbackSettings()
    security: SecuritySettings = SecuritySettings()
    backend_tls: BackendTlsSettings = BackendTlsSettings()
    admin: AdminSettings = AdminSettings()
    traffic: TrafficSettings = TrafficSettings()
    rollout: RolloutSettings = RolloutSettings()
    metrics: MetricsSettings = MetricsSettings()
    tracing: TracingSettings = TracingSettings()
    logging: LoggingSettings = LoggingSettings()

    @field_validator("backends")
    @classmethod
    def _unique_backend_names(cls, backends: list[BackendSettings]) -> list[BackendSettings]:
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError("backend names must be unique")
        return backends

    @model_validator(mode="after")
    def _static_backends(self) -> GatewaySettings:
        # The pool follows one source: a list beside DNS or Consul would never be used.
        source = self.discovery.source
        if self.backends and source != "static":
            origin = "DNS" if source == "dns" else "Consul's catalog"
            raise ValueError(
                f"backends is set, but discovery.source is {source}: the backends come from "
                f"{origin}; remove backends, or set discovery.source: static"
            )
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> GatewaySettings:
        # Caught here (and by `check`), not as a port "in use" by the gateway itself at start.
        admin_port = self.admin.listen_port(self.server.port)
        if self.admin.enabled and admin_port > _MAX_PORT:
            raise ValueError(
                f"admin.port is not set, and server.port + 2 = {admin_port} is past {_MAX_PORT}: "
                "set admin.port"
            )
        ports = [("server.port", self.server.port)]
        if self.metrics.enabled:
            ports.append(("metrics.port", self.metrics.port))
        if self.admin.enabled:
            derived = " (server.port + 2)" if self.admin.port is None else ""
            ports.append((f"admin.port{derived}", admin_port))
        seen: dict[int, str] = {}
        for key, port in ports:
            if port == 0:
                continue  # a free port each, picked at start
            if port in seen:
                raise ValueError(f"{seen[port]} and {key} are both {port}: each needs its own port")
            seen[port] = key
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (passed as init values), as operators expect.
        return env_settings, init_settings


class DuplicateKeyError(ValueError):
    """A settings file sets one key twice: YAML would silently keep the last."""


def load_settings(path: Path | None = None, **overrides: Any) -> GatewaySettings:
    """Read the YAML file (if any), apply overrides, then the environment; validate once.
    A file that is not UTF-8 raises UnicodeDecodeError; one setting a key twice,
    DuplicateKeyError."""
    data: dict[str, Any] = {}
    if path is not None:
        text = path.read_bytes().decode("utf-8")
        _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader))
        loaded = yaml.safe_load(text) or {}
        if not isinstance(loaded, dict):
            raise ValueError("the top level must be a mapping of settings sections")
        data.update(loaded)
    data.update(overrides)
    return GatewaySettings(**data)


def _check_unique_keys(node: yaml.Node | None, where: str = "") -> None:
    """DuplicateKeyError naming the dotted key and both lines, for the first key set twice."""
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_unique_keys(item, f"{where}{index}.")
    elif isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else ""
            if name and name != "<<":
                line = key.start_mark.line + 1
                if name in lines:
                    raise DuplicateKeyError(
                        f"{where}{name}: set twice (lines {lines[name]} and {line}): keep one"
                    )
                lines[name] = line
            _check_unique_keys(value, f"{where}{name}.")
