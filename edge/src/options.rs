//! Command-line options. The Python gateway passes them from its `edge:` settings; every limit
//! that guards the public port is here, with the default the README documents.

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

/// tgw-edge: the HTTP/2 data plane of triton-gateway.
///
/// Reads route snapshots (one JSON line each) on stdin, forwards routed KServe v2 calls to
/// Triton as bytes and hands every other call to the gateway. Closing stdin drains and exits.
#[derive(Parser, Debug, Clone)]
#[command(name = "tgw-edge", version, about, long_about = None)]
pub struct Options {
    /// Public address to serve on (HOST:PORT; port 0 picks one, printed as `listening ADDR`).
    #[arg(long)]
    pub listen: SocketAddr,

    /// The gateway's Unix socket: where calls without a route are handed over.
    #[arg(long)]
    pub gateway_socket: std::path::PathBuf,

    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,

    /// Upper bounds of the latency histogram buckets, comma-separated seconds.
    #[arg(long, value_delimiter = ',', default_value = "0.001,0.01,0.1,1")]
    pub buckets: Vec<f64>,

    /// Longest wait for a backend's answer before the call is handed to the gateway.
    #[arg(long)]
    pub per_try_timeout_ms: Option<u64>,

    /// Routed calls in flight at once; past it RESOURCE_EXHAUSTED at once.
    #[arg(long)]
    pub max_in_flight: Option<usize>,

    /// Routed calls in flight at once per model.
    #[arg(long)]
    pub max_in_flight_per_model: Option<usize>,

    /// Time constant of the latency estimate, in milliseconds.
    #[arg(long, default_value_t = 5000.0, value_parser = positive_f64)]
    pub latency_decay_ms: f64,

    /// Least latency a backend fault counts as, in milliseconds.
    #[arg(long, default_value_t = 250.0)]
    pub fault_penalty_ms: f64,

    /// Largest request message accepted (bytes); larger: RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub max_message_bytes: usize,

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
}

impl Options {
    pub fn per_try(&self) -> Option<Duration> {
        self.per_try_timeout_ms.map(Duration::from_millis)
    }

    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0).then(|| Duration::from_millis(self.keepalive_interval_ms))
    }
}

fn positive_f64(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 => Ok(value),
        Ok(_) => Err("must be positive".to_string()),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::Options;
    use clap::Parser;

    #[test]
    fn defaults_and_overrides_parse() {
        let options =
            Options::try_parse_from(["tgw-edge", "--listen", "127.0.0.1:0", "--gateway-socket", "/s"]).unwrap();
        assert_eq!(options.max_connections, 10_000);
        assert_eq!(options.buckets, vec![0.001, 0.01, 0.1, 1.0]);
        let options = Options::try_parse_from([
            "tgw-edge",
            "--listen",
            "127.0.0.1:0",
            "--gateway-socket",
            "/s",
            "--buckets",
            "0.5,2",
            "--max-connections",
            "7",
        ])
        .unwrap();
        assert_eq!(options.buckets, vec![0.5, 2.0]);
        assert_eq!(options.max_connections, 7);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Options::try_parse_from(["tgw-edge"]).is_err());
        assert!(Options::try_parse_from(["tgw-edge", "--listen", "x"]).is_err());
        let zero = [
            "tgw-edge",
            "--listen",
            "127.0.0.1:0",
            "--gateway-socket",
            "/s",
            "--latency-decay-ms",
            "0",
        ];
        assert!(Options::try_parse_from(zero).is_err());
    }
}
