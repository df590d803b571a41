//! The public port: accepts connections within a cap, serves each with hyper's HTTP/2 server
//! under the configured limits, and closes connections that never start or sit idle.
//!
//! The HTTP/2 protocol guards (CONTINUATION floods, PING and SETTINGS floods whose acks are
//! never read, Rapid Reset) live in h2 itself: it reads no further frame while an ack is
//! waiting to be written, so a peer that does not read cannot make the edge buffer; what is
//! configurable is passed through from [`Options`].

use crate::options::Options;
use crate::proxy::Edge;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// How long a connection told to go away (GOAWAY) may take to finish before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Descriptors kept free for upstream connections, the gateway socket and the runtime.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Connection limits of the public port.
#[derive(Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// The configured cap, lowered to fit the descriptor limit (raised first where allowed).
    pub fn from_options(options: &Options) -> Self {
        let descriptors = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
        let fitting = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(1);
        let max_connections = options
            .max_connections
            .min(usize::try_from(fitting).unwrap_or(usize::MAX));
        if max_connections < options.max_connections {
            eprintln!(
                "tgw-edge: max connections lowered to {max_connections} to fit the file descriptor limit ({descriptors})"
            );
        }
        ConnectionLimits {
            max_connections,
            handshake_timeout: Duration::from_millis(options.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(options.idle_timeout_ms),
        }
    }
}

/// The HTTP/2 server settings of every client connection.
pub fn http2_builder(options: &Options) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.max_concurrent_streams)
        .max_header_list_size(options.max_header_list_bytes)
        .max_pending_accept_reset_streams(options.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(options.max_local_error_reset_streams)
        .max_send_buf_size(options.max_send_buffer_bytes)
        .keep_alive_interval(options.keepalive_interval())
        .keep_alive_timeout(Duration::from_millis(options.keepalive_timeout_ms))
        .auto_date_header(false);
    builder
}

/// Calls in progress on one connection and when it was last busy; read by its watchdog.
struct Activity {
    started: Instant,
    calls: AtomicUsize,
    /// Milliseconds after `started` when the last call ended (0: no call yet).
    last_call_ms: AtomicU64,
}

impl Activity {
    fn enter(self: &Arc<Self>) -> ActiveCall {
        self.calls.fetch_add(1, Ordering::Relaxed);
        ActiveCall(self.clone())
    }

    /// When the connection may be closed if nothing happens before then.
    fn close_at(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.calls.load(Ordering::Relaxed) > 0 {
            return None;
        }
        match self.last_call_ms.load(Ordering::Relaxed) {
            0 => Some(self.started + limits.handshake_timeout),
            ms => Some(self.started + Duration::from_millis(ms) + limits.idle_timeout),
        }
    }
}

/// A call in progress; it holds its connection open until its response body is done.
pub struct ActiveCall(Arc<Activity>);

impl Drop for ActiveCall {
    fn drop(&mut self) {
        let elapsed = self.0.started.elapsed().as_millis().max(1);
        self.0
            .last_call_ms
            .store(u64::try_from(elapsed).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.0.calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `listener` until `stop` turns true, then lets open connections finish their calls.
/// Each call is answered by `edge`; its error resets the stream (RST_STREAM INTERNAL_ERROR).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    builder: http2::Builder<TokioExecutor>,
    limits: ConnectionLimits,
    edge: Arc<Edge>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // Out of descriptors or a connection reset before accept: keep serving the rest.
            Err(error) => {
                eprintln!("tgw-edge: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // At the cap the newcomer is closed at once: a clear refusal instead of a hang.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Only a client on this host may use its shared memory through the gateway.
        let local = peer.ip().is_loopback();
        let (builder, limits, edge, stop) = (builder.clone(), limits.clone(), edge.clone(), stop.clone());
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(stream), builder, limits, edge, stop, local).await,
                Some(acceptor) => {
                    // The TLS handshake counts against the handshake timeout too.
                    let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        serve_connection(TokioIo::new(stream), builder, limits, edge, stop, local).await;
                    }
                }
            }
            drop(slot);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    builder: http2::Builder<TokioExecutor>,
    limits: ConnectionLimits,
    edge: Arc<Edge>,
    mut stop: watch::Receiver<bool>,
    local: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        started: Instant::now(),
        calls: AtomicUsize::new(0),
        last_call_ms: AtomicU64::new(0),
    });
    let calls = activity.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let call = calls.enter();
        edge.clone().handle(request, call, local)
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    // Set once the connection was told to go away (GOAWAY): it is dropped at this instant if
    // its peer has not finished by then.
    let mut drop_at: Option<Instant> = None;
    let mut draining = false;
    loop {
        let wake = match drop_at {
            Some(at) => at,
            // Busy, or draining (calls in flight get the gateway's whole drain time): look
            // again after a full idle period.
            None => activity
                .close_at(&limits)
                .filter(|_| !draining)
                .unwrap_or_else(|| Instant::now() + limits.idle_timeout),
        };
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stop.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(wake) => {
                if drop_at.is_some() {
                    return;
                }
                if !draining && activity.close_at(&limits).is_some_and(|at| at <= Instant::now()) {
                    connection.as_mut().graceful_shutdown();
                    drop_at = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
}
