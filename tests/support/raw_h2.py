"""Raw HTTP/2 (h2c, prior knowledge) gRPC calls over plain sockets, for hostile-client tests.

:class:`H2Client` drives well-formed HTTP/2 through the ``h2`` state machine while letting the
caller write any gRPC body, length prefix or header it likes; :class:`RawConnection` writes
hand-made frames (CONTINUATION, PING and SETTINGS floods) that no state machine would send and
reads the peer's frames back with ``hyperframe``. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Self

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hpack import Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STATUS_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}
ERROR_CODES = {
    0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
    4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
    8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
    12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED",
}  # fmt: skip
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
LARGE_WINDOW = 16 * 1024 * 1024
MAX_HEADER_LIST = 1024 * 1024


def grpc_frame(message: bytes, *, compressed: bool = False, declared: int | None = None) -> bytes:
    """The 5-byte gRPC prefix and the message; ``declared`` lies about the length."""
    length = len(message) if declared is None else declared
    return struct.pack(">BI", 1 if compressed else 0, length) + message


def split_grpc_messages(body: bytes) -> list[bytes]:
    """The complete gRPC messages of a response body (a trailing partial one is dropped)."""
    messages, offset = [], 0
    while offset + 5 <= len(body):
        (length,) = struct.unpack(">I", body[offset + 1 : offset + 5])
        if offset + 5 + length > len(body):
            break
        messages.append(body[offset + 5 : offset + 5 + length])
        offset += 5 + length
    return messages


def request_headers(
    authority: str, path: str, metadata: Iterable[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        *metadata,
    ]


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One HTTP/2 frame, as it goes on the wire."""
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id)
    return header + payload


def settings_payload(values: dict[int, int]) -> bytes:
    return b"".join(struct.pack(">HI", key, value) for key, value in values.items())


@dataclass
class GrpcAnswer:
    """What the server did with one call: its gRPC status, or what happened instead."""

    status: int | None = None
    message: str = ""
    elapsed_s: float | None = None
    """Seconds from the last request byte sent to the status (or reset, close, give-up)."""
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset_code: int | None = None
    goaway_code: int | None = None
    closed: bool = False
    timed_out: bool = False

    @property
    def code(self) -> str:
        """The status name (``OK``, ``INVALID_ARGUMENT``), else the transport outcome."""
        if self.status is not None:
            return STATUS_NAMES.get(self.status, str(self.status))
        if self.reset_code is not None:
            return f"RST_STREAM {ERROR_CODES.get(self.reset_code, self.reset_code)}"
        if self.goaway_code is not None:
            return f"GOAWAY {ERROR_CODES.get(self.goaway_code, self.goaway_code)}"
        if self.closed:
            return "CONNECTION_CLOSED"
        return "NO_ANSWER" if self.timed_out else "INCOMPLETE"

    @property
    def messages(self) -> list[bytes]:
        return split_grpc_messages(self.body)

    def describe(self, limit: int = 160) -> str:
        message = self.message if len(self.message) <= limit else self.message[:limit] + "..."
        return f"{self.code}: {message}" if message else self.code


@dataclass
class _Stream:
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset_code: int | None = None
    sent_at: float = 0.0
    done_at: float | None = None


def _header_dict(headers: Sequence[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    def text(value: bytes | str) -> str:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    return {text(name): text(value) for name, value in headers}


class _SocketOwner:
    """Owns one client socket; closing (or leaving the ``with`` block) closes it."""

    sock: socket.socket
    closed: bool

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed = True


class H2Client(_SocketOwner):
    """One h2c connection speaking gRPC with whatever bytes and headers the caller chooses.

    ``initial_window=0`` makes a client that never lets the server send response data (it
    also stops acknowledging data); ``rcvbuf`` shrinks the socket's receive buffer.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 10.0,
        initial_window: int | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._reads_frozen = initial_window == 0
        self.sock = _connect(address, timeout_s, rcvbuf)
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config)
        window = LARGE_WINDOW if initial_window is None else initial_window
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            },
        )
        self.conn.decoder.max_header_list_size = MAX_HEADER_LIST
        self.conn.initiate_connection()
        if not self._reads_frozen:
            self.conn.increment_flow_control_window(LARGE_WINDOW)
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self.goaway_code: int | None = None
        self._incoming = bytearray()
        self._flush()

    # Sending.

    def start(
        self,
        path: str,
        metadata: Iterable[tuple[str, str]] = (),
        *,
        end_stream: bool = False,
    ) -> int:
        """Send the request headers of a new call; returns its stream id."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = request_headers(self.address, path, metadata)
        self.streams[stream_id] = _Stream(sent_at=time.perf_counter())
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        self._flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Send body bytes as the server's flow-control windows allow (bounded wait)."""
        deadline = time.monotonic() + self.timeout_s
        view = memoryview(data)
        while view:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                if time.monotonic() > deadline or self.closed:
                    raise TimeoutError("the server's flow-control window stayed shut")
                self.pump(0.1)
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream_id, bytes(chunk), end_stream=end_stream and not view)
            self._flush()
        if end_stream and not data:
            self.conn.end_stream(stream_id)
            self._flush()
        self.streams[stream_id].sent_at = time.perf_counter()

    def call(
        self,
        path: str,
        body: bytes | None,
        metadata: Iterable[tuple[str, str]] = (),
        timeout_s: float | None = None,
    ) -> GrpcAnswer:
        """One call: headers, then ``body`` with END_STREAM (None: END_STREAM on the headers)."""
        try:
            stream_id = self.start(path, metadata, end_stream=body is None)
            if body is not None:
                self.send(stream_id, body, end_stream=True)
        except (OSError, TimeoutError, h2.exceptions.H2Error):
            return GrpcAnswer(closed=True, goaway_code=self.goaway_code)
        return self.answer(stream_id, timeout_s)

    # Receiving.

    def answer(self, stream_id: int, timeout_s: float | None = None) -> GrpcAnswer:
        """Wait (bounded) until the call has a status, was reset, or the connection closed."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        stream = self.streams[stream_id]
        while not self._finished(stream) and time.monotonic() < deadline:
            self.pump(min(0.2, max(0.0, deadline - time.monotonic())))
        return self._answer_of(stream)

    def wait_messages(self, stream_id: int, count: int, timeout_s: float) -> list[bytes]:
        """The response messages received so far, waiting (bounded) until there are ``count``."""
        deadline = time.monotonic() + timeout_s
        stream = self.streams[stream_id]
        while (
            len(split_grpc_messages(bytes(stream.body))) < count
            and not self._finished(stream)
            and time.monotonic() < deadline
        ):
            self.pump(min(0.2, max(0.0, deadline - time.monotonic())))
        return split_grpc_messages(bytes(stream.body))

    def pump(self, timeout_s: float) -> None:
        """Read what the server sent within ``timeout_s`` and act on it."""
        if self.closed:
            return
        self.sock.settimeout(max(timeout_s, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except OSError:
            self._lost()
            return
        if not data:
            self._lost()
            return
        self._incoming.extend(data)
        while len(self._incoming) >= 9:
            size = 9 + int.from_bytes(self._incoming[:3], "big")
            if len(self._incoming) < size:
                break
            one = bytes(self._incoming[:size])
            del self._incoming[:size]
            # One frame at a time: a frame h2 refuses (Triton sends a second status block on
            # a stream it has already ended) must not take the events before it along.
            try:
                events = self.conn.receive_data(one)
            except h2.exceptions.StreamClosedError:
                continue
            except h2.exceptions.H2Error:
                self._lost()
                return
            for event in events:
                self._on_event(event)
        self._flush()

    def _on_event(self, event: h2.events.Event) -> None:
        now = time.perf_counter()
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers = _header_dict(event.headers)
        elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
            stream.trailers = _header_dict(event.headers)
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            stream.body.extend(event.data)
            if not self._reads_frozen:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
            stream.done_at = now
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset_code = int(event.error_code or 0)
            stream.done_at = now
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_code = int(event.error_code or 0)
            self._lost()

    def _lost(self) -> None:
        now = time.perf_counter()
        self.closed = True
        for stream in self.streams.values():
            if stream.done_at is None:
                stream.done_at = now

    def _finished(self, stream: _Stream) -> bool:
        return stream.ended or stream.reset_code is not None or self.closed

    def _answer_of(self, stream: _Stream) -> GrpcAnswer:
        # A trailers-only answer carries grpc-status in its (only) headers block.
        status_block = stream.trailers or (stream.headers if stream.ended else {})
        raw_status = status_block.get("grpc-status")
        answer = GrpcAnswer(
            status=int(raw_status) if raw_status is not None and raw_status.isdigit() else None,
            message=urllib.parse.unquote(status_block.get("grpc-message", "")),
            headers=stream.headers,
            trailers=stream.trailers,
            body=bytes(stream.body),
            reset_code=stream.reset_code,
        )
        if stream.done_at is not None:
            answer.elapsed_s = stream.done_at - stream.sent_at
        if answer.status is None and stream.reset_code is None and self.closed:
            answer.closed = True
            answer.goaway_code = self.goaway_code
        answer.timed_out = not self._finished(stream)
        if answer.timed_out:
            answer.elapsed_s = time.perf_counter() - stream.sent_at
        return answer

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.sock.settimeout(self.timeout_s)
            try:
                self.sock.sendall(data)
            except OSError:
                self._lost()


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def error_code(self) -> int | None:
        """The error code of a GOAWAY or RST_STREAM frame."""
        if self.kind == GOAWAY and len(self.payload) >= 8:
            return int(struct.unpack(">I", self.payload[4:8])[0])
        if self.kind == RST_STREAM and len(self.payload) >= 4:
            return int(struct.unpack(">I", self.payload[:4])[0])
        return None


class RawConnection(_SocketOwner):
    """A socket that has sent the client preface and an empty SETTINGS frame, then writes
    whatever frames it is given and parses what comes back."""

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 5.0,
        rcvbuf: int | None = None,
        settings: dict[int, int] | None = None,
    ) -> None:
        self.sock = _connect(address, timeout_s, rcvbuf)
        self.timeout_s = timeout_s
        self._buffer = bytearray()
        self.frames_received = 0
        self.bytes_received = 0
        self.goaway_code: int | None = None
        self.resets: dict[int, int] = {}
        self.closed = False
        self.reset_by_peer = False
        self.send(PREFACE + frame(SETTINGS, 0, 0, settings_payload(settings or {})))

    def send(self, data: bytes, timeout_s: float | None = None) -> bool:
        """Write all of ``data``; False when the peer stopped reading (timeout) or is gone."""
        self.sock.settimeout(self.timeout_s if timeout_s is None else timeout_s)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            return False
        except OSError as error:
            self.closed = True
            self.reset_by_peer = error.errno in (errno.ECONNRESET, errno.EPIPE)
            return False
        return True

    @staticmethod
    def header_block(address: str, path: str) -> bytes:
        return bytes(Encoder().encode(request_headers(address, path)))

    def read(self, timeout_s: float, max_bytes: int = 64 * 1024 * 1024) -> list[Frame]:
        """The frames that arrive within ``timeout_s`` (at most ``max_bytes`` read)."""
        deadline = time.monotonic() + timeout_s
        frames: list[Frame] = []
        read = 0
        while not self.closed and read < max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(262144)
            except TimeoutError:
                break
            except OSError as error:
                self.closed = True
                self.reset_by_peer = error.errno == errno.ECONNRESET
                break
            if not data:
                self.closed = True
                break
            read += len(data)
            self.bytes_received += len(data)
            self._buffer.extend(data)
            frames.extend(self._parse())
        return frames

    def _parse(self) -> list[Frame]:
        frames = []
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            kind, flags = self._buffer[3], self._buffer[4]
            stream_id = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            parsed = Frame(kind, flags, stream_id, bytes(self._buffer[9 : 9 + length]))
            del self._buffer[: 9 + length]
            frames.append(parsed)
            self.frames_received += 1
            if parsed.kind == GOAWAY:
                self.goaway_code = parsed.error_code
            elif parsed.kind == RST_STREAM and parsed.error_code is not None:
                self.resets[parsed.stream_id] = parsed.error_code
        return frames

    def outcome(self) -> str:
        """What the peer did to the connection, in words."""
        if self.goaway_code is not None:
            return f"GOAWAY {ERROR_CODES.get(self.goaway_code, self.goaway_code)}"
        if self.resets:
            code = next(iter(self.resets.values()))
            return f"RST_STREAM {ERROR_CODES.get(code, code)}"
        if self.reset_by_peer:
            return "TCP reset"
        return "closed" if self.closed else "open"


def peer_closed(sock: socket.socket) -> bool:
    """Whether the peer closed (or reset) ``sock``; never blocks. Pending data is discarded."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _connect(address: str, timeout_s: float, rcvbuf: int | None) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Before connect, so the advertised TCP window is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout_s)
    try:
        sock.connect((host, int(port)))
    except OSError:
        sock.close()
        raise
    return sock
