//! Command-line options. The Python gateway passes them from its `edge:` settings; every limit
//! that guards the public port is here, with the default the README documents.

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

/// tgw-edge: the HTTP/2 data plane of triton-gateway.
///
/// Routes KServe v2 calls to Triton as bytes, as the snapshots the control plane applies over
/// the control socket say, and hands every other call to the gateway. Keeps serving its last
/// good snapshot while the control plane is away; stops on the control plane's Shutdown, or on
/// SIGTERM/SIGINT, after draining calls in flight.
#[derive(Parser, Debug, Clone)]
#[command(name = "tgw-edge", version, about, long_about = None)]
pub struct Options {
    /// Public address to serve on (HOST:PORT; port 0 picks one, printed as `listening ADDR`).
    #[arg(long)]
    pub listen: SocketAddr,

    /// An inherited, already listening socket to serve on instead of binding `--listen` (the
    /// control plane keeps it open across edge restarts, so clients that connect while no edge
    /// runs wait in its backlog instead of being refused).
    #[arg(long)]
    pub listen_fd: Option<i32>,

    /// The gateway's Unix socket: where calls without a route are handed over.
    #[arg(long)]
    pub gateway_socket: std::path::PathBuf,

    /// The control socket this edge serves the control protocol on (owner-only).
    #[arg(long)]
    pub control_socket: std::path::PathBuf,

    /// An opaque digest of the settings this edge was started with, returned by the control
    /// protocol's Describe (a control plane with other settings replaces the edge).
    #[arg(long, default_value = "")]
    pub settings_digest: String,

    /// How long calls in flight may finish after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 10_000)]
    pub drain_grace_ms: u64,

    /// Least severe log level written on stderr; per-request lines are debug.
    #[arg(long, value_enum, default_value_t = crate::log::Level::Info)]
    pub log_level: crate::log::Level,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = crate::log::Format::Json)]
    pub log_format: crate::log::Format,

    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,

    /// Seed of the balancer's random draws (default: time and pid).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Client connections open at once; more are closed as they arrive. Kept below the file
    /// descriptor limit (raised to its hard limit at start).
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,

    /// A connection that has not sent the HTTP/2 preface and a first request within this
    /// time is closed.
    #[arg(long, default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// A connection with no call in progress for this long is closed (GOAWAY).
    #[arg(long, default_value_t = 600_000)]
    pub idle_timeout_ms: u64,

    /// Streams (calls) a client may have open on one connection.
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Largest header block (HPACK-decoded bytes, CONTINUATION frames included) of a request.
    #[arg(long, default_value_t = 65_536)]
    pub max_header_list_bytes: u32,

    /// Streams a client may reset before the edge accepts them (Rapid Reset guard).
    #[arg(long, default_value_t = 20)]
    pub max_pending_accept_reset_streams: usize,

    /// Streams the edge may reset for a client's protocol errors before closing the connection.
    #[arg(long, default_value_t = 1024)]
    pub max_local_error_reset_streams: usize,

    /// Bytes buffered per stream towards a client that does not read.
    #[arg(long, default_value_t = 400 * 1024)]
    pub max_send_buffer_bytes: usize,

    /// HTTP/2 PING sent to an idle client connection this often (0: never) ...
    #[arg(long, default_value_t = 60_000)]
    pub keepalive_interval_ms: u64,

    /// ... and the connection closed when its answer takes longer than this.
    #[arg(long, default_value_t = 20_000)]
    pub keepalive_timeout_ms: u64,

    /// Flow-control window of one upstream stream (bytes): what a client that stops reading
    /// can hold buffered. The upstream connection's window is the largest HTTP/2 allows, so a
    /// stalled stream never stalls the others sharing that connection.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub upstream_stream_window_bytes: u32,

    /// Serve the public port over TLS with this certificate chain (PEM); with `--tls-key`.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Mutual TLS: clients must show a certificate that chains to this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Connect to the backends over TLS.
    #[arg(long)]
    pub backend_tls: bool,

    /// The CA (PEM) backend certificates must chain to (default: the system's trust store).
    #[arg(long, requires = "backend_tls")]
    pub backend_ca: Option<std::path::PathBuf>,

    /// A client certificate (PEM) shown to backends that ask for one; with `--backend-key`.
    #[arg(long, requires_all = ["backend_tls", "backend_key"])]
    pub backend_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of `--backend-cert`.
    #[arg(long, requires = "backend_cert")]
    pub backend_key: Option<std::path::PathBuf>,
}

impl Options {
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0).then(|| Duration::from_millis(self.keepalive_interval_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::Options;
    use clap::Parser;

    const REQUIRED: [&str; 7] = [
        "tgw-edge",
        "--listen",
        "127.0.0.1:0",
        "--gateway-socket",
        "/g",
        "--control-socket",
        "/c",
    ];

    #[test]
    fn defaults_and_overrides_parse() {
        let options = Options::try_parse_from(REQUIRED).unwrap();
        assert_eq!(options.max_connections, 10_000);
        assert_eq!(options.log_level, crate::log::Level::Info);
        let options =
            Options::try_parse_from(
                REQUIRED
                    .iter()
                    .copied()
                    .chain(["--max-connections", "7", "--log-level", "debug"]),
            )
            .unwrap();
        assert_eq!(options.max_connections, 7);
        assert_eq!(options.log_level, crate::log::Level::Debug);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Options::try_parse_from(["tgw-edge"]).is_err());
        assert!(Options::try_parse_from(["tgw-edge", "--listen", "x"]).is_err());
        assert!(Options::try_parse_from(REQUIRED.iter().copied().chain(["--threads", "0"])).is_err());
        assert!(Options::try_parse_from(REQUIRED.iter().copied().chain(["--listen-fd", "x"])).is_err());
        assert!(Options::try_parse_from(REQUIRED.iter().copied().chain(["--log-level", "loud"])).is_err());
    }
}
