//! The edge's HTTP/2 client to the gateway (a Unix socket only the gateway's user can open, so
//! no other local process can reach the hand-over path and skip the edge's checks); the one to
//! the backends is `backend_client`.
//!
//! It keeps one connection. Its window is the largest HTTP/2 allows while
//! each stream's stays small: a client that stops reading its answers holds at most one
//! stream window of buffered bytes and never stalls the other calls sharing the connection.

use crate::body::Outgoing;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The HTTP/2 connection window: 2^31 - 1, the protocol's largest.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

pub type GatewayClient = Client<UnixConnector, Outgoing>;

/// `stream_window_bytes`: the flow-control window of one stream.
fn builder(stream_window_bytes: u32) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .http2_only(true)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_initial_stream_window_size(stream_window_bytes)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .http2_adaptive_window(false)
        // Answers as large as a message may be, plus room for their trailers.
        .http2_max_header_list_size(1 << 20)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(10))
        .http2_keep_alive_while_idle(true)
        .pool_idle_timeout(None::<Duration>);
    builder
}

pub fn gateway_client(socket: PathBuf, stream_window_bytes: u32) -> GatewayClient {
    builder(stream_window_bytes).build(UnixConnector { path: Arc::new(socket) })
}

/// Connects to the gateway's Unix socket, whatever the URI names.
#[derive(Clone)]
pub struct UnixConnector {
    path: Arc<PathBuf>,
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send>>;

impl tower_service::Service<http::Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path.as_path()).await?)) })
    }
}
