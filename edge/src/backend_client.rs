//! The edge's HTTP/2 client to the Triton backends, on the `h2` crate directly: one
//! connection per backend address, shared by every call to it.
//!
//! Why not hyper's client: it sends a request's HEADERS and its DATA in two writes (a new
//! stream gets no send capacity until its HEADERS are out, and hyper waits for capacity before
//! it hands over the body), and it moves each request through a dispatch channel and one or
//! two spawned tasks. Here a buffered message is queued with its HEADERS in the caller's own
//! task, so both leave in one write, and the answer is awaited where it was asked for.
//!
//! Flow control as before: the connection window is the largest HTTP/2 allows while each
//! stream's stays small, so an answer nobody reads holds at most one stream window. A routed
//! stream's messages are sent as send capacity allows, one batch buffered at most.
//!
//! A unary call is never cancelled on the backend. Triton (2.51 here; server issues 7368 and
//! 8034 report it up to r25.01) can crash with SIGSEGV when a ModelInfer call is cancelled
//! while its answer completes, and a proxy cancels calls routinely: a hedge that lost, a
//! per-try timeout, a client gone. So deadlines are kept by the edge, not sent to the backend
//! (Triton would cancel on expiry), and a call the edge no longer wants has its answer read to
//! the end and dropped on a task of its own. Only one still unanswered after `DRAIN_LIMIT` is
//! reset: a backend silent that long is not answering.

use crate::body::Outgoing;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use rustls_pki_types::ServerName;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// The HTTP/2 connection window: 2^31 - 1, the protocol's largest.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// Answers as large as a message may be, plus room for their trailers.
const MAX_HEADER_LIST_BYTES: u32 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection is pinged this often and dropped when a ping goes unanswered this long
/// (a backend that hangs or vanished without a FIN).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the answer of a unary call nobody waits for any more is still read.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A unary call that went out and whose connection broke before its answer: the backend may
/// have died of this very call (a request that crashes its server), unlike a connection that
/// could not be made or a stream the backend refused.
#[derive(Debug)]
pub struct LostMidCall(h2::Error);

impl std::fmt::Display for LostMidCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for LostMidCall {}

/// Whether `error` (from [`BackendClient::request`]) is a [`LostMidCall`].
pub fn lost_mid_call(error: &Error) -> bool {
    error.is::<LostMidCall>()
}

/// Whether a routed stream's `error` (its answer or a frame of it) is its connection breaking:
/// the backend may have died of a message on it.
pub fn stream_connection_broke(error: &Error) -> bool {
    error.downcast_ref::<h2::Error>().is_some_and(h2::Error::is_io)
}

/// Cheap to clone: every clone shares the connections.
#[derive(Clone)]
pub struct BackendClient {
    inner: Arc<Inner>,
}

struct Inner {
    stream_window_bytes: u32,
    /// Counts the unary calls given up on and read to their end.
    drained: IntCounter,
    /// Set when backends are reached over TLS (`https`).
    tls: Option<TlsConnector>,
    connections: Mutex<HashMap<Box<str>, Slot>>,
    next_generation: AtomicU64,
}

/// One backend's connection, or the attempt to make it that every caller meanwhile awaits.
#[derive(Clone)]
struct Slot {
    generation: u64,
    ready: Shared<BoxFuture<'static, Result<SendRequest<Bytes>, Arc<str>>>>,
}

impl BackendClient {
    /// `tls`: how backends are checked when reached over TLS; None for plain HTTP/2.
    /// `drained` counts the unary calls given up on whose answer was read to the end.
    pub fn new(stream_window_bytes: u32, tls: Option<rustls::ClientConfig>, drained: IntCounter) -> BackendClient {
        let tls = tls.map(|mut config| {
            config.alpn_protocols = vec![b"h2".to_vec()];
            TlsConnector::from(Arc::new(config))
        });
        BackendClient {
            inner: Arc::new(Inner {
                stream_window_bytes,
                drained,
                tls,
                connections: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
            }),
        }
    }

    /// Sends `request` (its URI names the backend's address) and waits for the answer's
    /// head. A connection found closed before the request goes out is made anew.
    pub async fn request(&self, request: Request<Outgoing>) -> Result<Response<BackendBody>, Error> {
        let (parts, body) = request.into_parts();
        let head = Request::from_parts(parts, ());
        let address = head.uri().authority().ok_or("a backend request without an address")?;
        let mut sender = self.ready_sender(address.as_str()).await?;
        let (answer, stream) = sender.send_request(head, body.is_end_stream())?;
        let unary = matches!(body, Outgoing::Buffered(_));
        send_body(body, stream);
        if !unary {
            // A stream's end is the client's to decide, and reaches the backend as it is.
            let response = answer.await?;
            return Ok(response.map(|recv| BackendBody::new(recv, None)));
        }
        let drained = &self.inner.drained;
        let mut awaited = Unanswered {
            answer: Some(answer),
            drained,
        };
        let response = std::future::poll_fn(|cx| awaited.poll(cx)).await;
        // Answered or failed: nothing left to read if this call is dropped now.
        awaited.answer = None;
        let response = response.map_err(|error| -> Error {
            if error.is_io() {
                Box::new(LostMidCall(error))
            } else {
                Box::new(error)
            }
        })?;
        Ok(response.map(|recv| BackendBody::new(recv, Some(drained.clone()))))
    }

    /// A sender ready for one more stream on the backend's connection (made when missing).
    async fn ready_sender(&self, address: &str) -> Result<SendRequest<Bytes>, Error> {
        for _ in 0..2 {
            let slot = self.slot(address);
            let sender = match slot.ready.await {
                Ok(sender) => sender,
                Err(reason) => {
                    self.forget(address, slot.generation);
                    return Err(reason.to_string().into());
                }
            };
            match sender.ready().await {
                Ok(sender) => return Ok(sender),
                // Closed since it was made: forget it and connect again.
                Err(_) => self.forget(address, slot.generation),
            }
        }
        Err(format!("the connection to {address} keeps closing").into())
    }

    fn slot(&self, address: &str) -> Slot {
        let mut connections = self.inner.connections.lock().expect("connections lock");
        if let Some(slot) = connections.get(address) {
            return slot.clone();
        }
        let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
        let connecting = connect(self.clone(), address.to_owned(), generation).boxed().shared();
        let slot = Slot {
            generation,
            ready: connecting,
        };
        connections.insert(address.into(), slot.clone());
        slot
    }

    /// Drops the backend's connection of `generation` from the map (a newer one stays).
    fn forget(&self, address: &str, generation: u64) {
        let mut connections = self.inner.connections.lock().expect("connections lock");
        if connections
            .get(address)
            .is_some_and(|slot| slot.generation == generation)
        {
            connections.remove(address);
        }
    }
}

/// Connects, speaks HTTP/2 (over TLS when set), and drives the connection on its own task;
/// the map forgets it when it ends.
async fn connect(client: BackendClient, address: String, generation: u64) -> Result<SendRequest<Bytes>, Arc<str>> {
    let failed = |reason: String| -> Arc<str> { format!("cannot connect to {address}: {reason}").into() };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address))
        .await
        .map_err(|_| failed(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|error| failed(error.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut builder = h2::client::Builder::new();
    builder
        .enable_push(false)
        .initial_window_size(client.inner.stream_window_bytes)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST_BYTES);
    let (sender, driver) = match &client.inner.tls {
        None => {
            let (sender, connection) = builder
                .handshake(tcp)
                .await
                .map_err(|error| failed(error.to_string()))?;
            (sender, drive(connection).boxed())
        }
        Some(tls) => {
            let host = address.rsplit_once(':').map_or(address.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|error| failed(error.to_string()))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|error| failed(error.to_string()))?;
            let (sender, connection) = builder
                .handshake(stream)
                .await
                .map_err(|error| failed(error.to_string()))?;
            (sender, drive(connection).boxed())
        }
    };
    tokio::spawn(async move {
        driver.await;
        client.forget(&address, generation);
    });
    Ok(sender)
}

/// Runs the connection until it ends or a keepalive ping goes unanswered.
async fn drive<T>(mut connection: h2::client::Connection<T, Bytes>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(mut ping_pong) = connection.ping_pong() else {
        let _ = connection.await;
        return;
    };
    let keepalive = async move {
        loop {
            tokio::time::sleep(KEEPALIVE_INTERVAL).await;
            match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping_pong.ping(Ping::opaque())).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
        }
    };
    tokio::select! {
        _ = connection => {}
        () = keepalive => {}
    }
}

/// Queues a buffered message with its HEADERS (no capacity wait: it leaves in the same write);
/// pipes a routed stream's messages as capacity allows, on a task of its own.
fn send_body(body: Outgoing, mut stream: SendStream<Bytes>) {
    match body {
        Outgoing::Buffered(Some(bytes)) => {
            let _ = stream.send_data(bytes, true);
        }
        Outgoing::Buffered(None) => {}
        Outgoing::Routed(messages) => {
            tokio::spawn(pipe(messages, stream));
        }
        // Bodies passed through unread go to the gateway only, never to a backend.
        Outgoing::Streamed(_) => stream.send_reset(h2::Reason::INTERNAL_ERROR),
    }
}

/// A routed stream's messages to the backend; the sender dropped is the client's half-close.
/// Messages already waiting go out together (up to `BATCH_BYTES`), so a pipelining client
/// costs one wake-up per batch, not per message. Ends early when the backend resets the
/// stream.
async fn pipe(mut messages: mpsc::Receiver<Bytes>, mut stream: SendStream<Bytes>) {
    loop {
        if wait_capacity(&mut stream).await.is_err() {
            return;
        }
        let mut next = tokio::select! {
            next = messages.recv() => next,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        let mut batched = 0usize;
        loop {
            let Some(message) = next else {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            };
            batched += message.len();
            if stream.send_data(message, false).is_err() {
                return;
            }
            if batched >= BATCH_BYTES {
                break;
            }
            next = match messages.try_recv() {
                Ok(message) => Some(message),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
    }
}

/// Bytes of a stream's waiting messages queued at once before waiting for them to leave.
const BATCH_BYTES: usize = 64 * 1024;

/// Waits until what was queued left (some send capacity is free again), so at most one batch
/// is buffered per stream whatever the backend reads.
async fn wait_capacity(stream: &mut SendStream<Bytes>) -> Result<(), ()> {
    stream.reserve_capacity(1);
    while stream.capacity() == 0 {
        match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(()),
        }
    }
    Ok(())
}

/// A unary call's answer still to come; dropped, it is read to the end on a task of its own
/// instead of being cancelled.
struct Unanswered<'a> {
    answer: Option<ResponseFuture>,
    drained: &'a IntCounter,
}

impl Unanswered<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<RecvStream>, h2::Error>> {
        match &mut self.answer {
            Some(answer) => answer.poll_unpin(cx),
            None => Poll::Ready(Err(h2::Error::from(h2::Reason::INTERNAL_ERROR))),
        }
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(answer) = self.answer.take() {
            drain(self.drained, async move {
                if let Ok(response) = answer.await {
                    read_to_end(response.into_body()).await;
                }
            });
        }
    }
}

/// Runs `reading` on a task of its own for at most `DRAIN_LIMIT` (dropping it then resets
/// the stream). Outside a runtime (the edge is shutting down) the stream is simply dropped.
fn drain(drained: &IntCounter, reading: impl std::future::Future<Output = ()> + Send + 'static) {
    drained.inc();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(DRAIN_LIMIT, reading).await;
        });
    }
}

/// Reads an answer nobody waits for to its end, giving its window back as it comes.
async fn read_to_end(mut recv: RecvStream) {
    while let Some(Ok(data)) = recv.data().await {
        let _ = recv.flow_control().release_capacity(data.len());
    }
    let _ = recv.trailers().await;
}

/// A backend's answer body: its DATA (the window given back as it is read), then its
/// trailers. A unary call's body dropped before its end is read to the end elsewhere.
pub struct BackendBody {
    /// None once the whole answer was read (or handed to be drained).
    recv: Option<RecvStream>,
    data_done: bool,
    /// A unary call's (its answer is drained when dropped before its end): what counts it.
    drained: Option<IntCounter>,
}

impl BackendBody {
    fn new(recv: RecvStream, drained: Option<IntCounter>) -> BackendBody {
        BackendBody {
            recv: Some(recv),
            data_done: false,
            drained,
        }
    }
}

impl Drop for BackendBody {
    fn drop(&mut self) {
        if let (Some(recv), Some(drained)) = (self.recv.take(), &self.drained) {
            if !recv.is_end_stream() {
                drain(drained, read_to_end(recv));
            }
        }
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        let frame = match recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Some(Ok(Frame::trailers(trailers))),
            Poll::Ready(Ok(None)) => None,
            Poll::Ready(Err(error)) => Some(Err(error.into())),
            Poll::Pending => return Poll::Pending,
        };
        // The stream is over: nothing to drain when dropped.
        this.recv = None;
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.recv.as_ref().is_none_or(RecvStream::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    //! Against a real HTTP/2 server on loopback (the `h2` crate's): what reaches the backend
    //! when the edge gives up on a unary call. No timers: a call is given up on once the
    //! server holds it, so the tests need no clock at all.
    use super::*;
    use h2::server::SendResponse;
    use http::HeaderMap;
    use tokio::net::TcpListener;

    type Held = (Request<RecvStream>, SendResponse<Bytes>);

    /// A server that hands every request it receives to the test.
    async fn server() -> (String, mpsc::UnboundedReceiver<Held>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (held, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut connection = h2::server::handshake(tcp).await.expect("handshake");
            while let Some(Ok(request)) = connection.accept().await {
                let _ = held.send(request);
            }
        });
        (address, requests)
    }

    fn call(address: &str) -> Request<Outgoing> {
        Request::post(format!("http://{address}/inference.GRPCInferenceService/ModelInfer"))
            .body(Outgoing::Buffered(Some(Bytes::from_static(b"\0\0\0\0\0"))))
            .expect("request")
    }

    /// Whether the backend's stream was reset: asked once a later call on the same
    /// connection arrived, so any reset sent before it has arrived too.
    fn reset(respond: &mut SendResponse<Bytes>) -> Option<h2::Reason> {
        match respond.poll_reset(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(Ok(reason)) => Some(reason),
            Poll::Ready(Err(_)) | Poll::Pending => None,
        }
    }

    fn trailers() -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        trailers
    }

    fn answer(respond: &mut SendResponse<Bytes>) {
        let head = Response::builder().body(()).expect("head");
        let mut stream = respond.send_response(head, false).expect("answer head");
        stream
            .send_data(Bytes::from_static(b"\0\0\0\0\0"), false)
            .expect("answer data");
        stream.send_trailers(trailers()).expect("answer trailers");
    }

    /// Another call on the same connection, once the server holds it (any reset sent for an
    /// earlier call has arrived by then); its status comes once the test answers it.
    async fn next_call(
        client: &BackendClient,
        address: &str,
        requests: &mut mpsc::UnboundedReceiver<Held>,
    ) -> (
        tokio::task::JoinHandle<Result<http::StatusCode, Error>>,
        SendResponse<Bytes>,
    ) {
        // A reset, if one were sent, leaves before the next call's HEADERS.
        tokio::task::yield_now().await;
        let client = client.clone();
        let request = call(address);
        let later = tokio::spawn(async move { client.request(request).await.map(|response| response.status()) });
        let (_, held) = requests.recv().await.expect("the next call");
        (later, held)
    }

    #[tokio::test]
    async fn a_call_given_up_before_its_answer_is_not_reset_on_the_backend() {
        let (address, mut requests) = server().await;
        let drained = IntCounter::new("drained", "drained").expect("counter");
        let client = BackendClient::new(65_535, None, drained.clone());
        let given_up = client.request(call(&address));
        let (_, mut first) = tokio::select! {
            _ = given_up => panic!("answered before the server answered"),
            held = requests.recv() => held.expect("the first call"),
        };
        let (later, mut second) = next_call(&client, &address, &mut requests).await;
        assert_eq!(
            reset(&mut first),
            None,
            "the call given up on was cancelled on the backend"
        );
        assert_eq!(drained.get(), 1);
        answer(&mut first);
        answer(&mut second);
        assert_eq!(later.await.expect("joined").expect("answered"), http::StatusCode::OK);
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_is_read_to_its_end() {
        let (address, mut requests) = server().await;
        let drained = IntCounter::new("drained", "drained").expect("counter");
        let client = BackendClient::new(65_535, None, drained.clone());
        let asked = {
            let client = client.clone();
            let request = call(&address);
            tokio::spawn(async move { client.request(request).await })
        };
        let (_, mut first) = requests.recv().await.expect("the first call");
        let head = Response::builder().body(()).expect("head");
        let mut stream = first.send_response(head, false).expect("answer head");
        let response = asked.await.expect("joined").expect("head answered");
        drop(response); // before its DATA and trailers
        let (later, mut second) = next_call(&client, &address, &mut requests).await;
        assert_eq!(
            reset(&mut first),
            None,
            "the answer dropped was cancelled on the backend"
        );
        assert_eq!(drained.get(), 1);
        stream
            .send_data(Bytes::from_static(b"\0\0\0\0\0"), false)
            .expect("rest of the answer");
        stream.send_trailers(trailers()).expect("its trailers");
        answer(&mut second);
        assert_eq!(later.await.expect("joined").expect("answered"), http::StatusCode::OK);
    }
}
