//! tgw-edge: the data-path fast lane of triton-gateway.
//!
//! The Python gateway stays the brain: it polls the fleet, decides routes and serves everything
//! this process does not. It starts tgw-edge as a child and writes route snapshots (one JSON line
//! each) to its stdin. For the model-scoped unary calls (ModelInfer, ModelReady, ModelMetadata,
//! ModelConfig) tgw-edge reads the model name and version from the request bytes, picks a backend
//! of the current snapshot (power of two choices on calls in flight x latency) and forwards the bytes over HTTP/2; everything else, and
//! every request no route covers, goes to the Python gateway unchanged, so answers (errors,
//! fallback, fan-out calls, health, reflection) stay the Python gateway's. Closing stdin drains
//! in-flight calls and exits, so the edge never outlives its gateway.

mod routes;
mod shedding;
mod stats;
mod wire;

use hyper::client::HttpConnector;
use hyper::header::HeaderValue;
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Client, Request, Response, Server, Uri};
use routes::{LoadPolicy, Loads, RouteTable, SharedRoutes};
use stats::{ObservedBody, Stats};
use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::Arc;

const SERVICE_PREFIX: &str = "/inference.GRPCInferenceService/";
const ROUTED_METHODS: [&str; 4] = ["ModelInfer", "ModelReady", "ModelMetadata", "ModelConfig"];

struct Edge {
    client: Client<HttpConnector>,
    routes: SharedRoutes,
    stats: Arc<Stats>,
    /// Longest wait for a backend's answer before the call goes to the gateway instead.
    per_try: Option<std::time::Duration>,
    shedder: shedding::Shedder,
    /// Largest request message accepted, as the gateway's `server.max_message_bytes`.
    max_message_bytes: usize,
}

impl Edge {
    async fn handle(self: Arc<Self>, mut request: Request<Body>) -> Result<Response<ObservedBody>, Infallible> {
        // Only tgw-edge may tell the gateway which backend already failed a call.
        request.headers_mut().remove("x-gateway-tried");
        let table = self.routes.current();
        let method = request
            .uri()
            .path()
            .strip_prefix(SERVICE_PREFIX)
            .filter(|method| ROUTED_METHODS.contains(method))
            .map(str::to_string);
        let method = match method {
            Some(method) => method,
            None => {
                let response = self.forward(request, &table.gateway).await;
                return Ok(response.map(ObservedBody::plain));
            }
        };
        let (parts, body) = request.into_parts();
        let bytes = match read_body(body, self.max_message_bytes).await {
            Ok(bytes) => bytes,
            Err((code, message)) => return Ok(grpc_error(code, &message).map(ObservedBody::plain)),
        };
        let sequence = wire::sequence_id(&bytes);
        let routed = wire::model_key(&bytes).and_then(|(name, version)| {
            table.choose(name, version, sequence.as_deref()).map(|b| (name, version, b))
        });
        let (name, version, target) = match routed {
            Some(found) => found,
            None => {
                let request = Request::from_parts(parts, Body::from(bytes));
                return Ok(self.forward(request, &table.gateway).await.map(ObservedBody::plain));
            }
        };
        // Load shedding: refused at once, counted, never queued.
        let admitted = match self.shedder.try_enter(name) {
            Some(admitted) => admitted,
            None => {
                self.stats.start(&method, name, version, "", None).finish("RESOURCE_EXHAUSTED", "");
                let message = format!("triton-gateway is at capacity for model '{name}': too many requests in flight");
                return Ok(grpc_error(8, &message).map(ObservedBody::plain));
            }
        };
        // Routed calls are counted here; the gateway counts what it serves itself.
        let (backend, address) = (target.name.as_str(), target.address.as_str());
        let pending = self.stats.start(&method, name, version, backend, Some(target.start(method == "ModelInfer")));
        let attempt = Request::from_parts(copy_parts(&parts), Body::from(bytes.clone()));
        let outcome = match self.per_try {
            Some(limit) => match tokio::time::timeout(limit, self.send(attempt, address)).await {
                Ok(result) => result,
                Err(_) => Err(format!("upstream {address}: no answer within the per-try timeout")),
            },
            None => self.send(attempt, address).await,
        };
        let answered = match outcome {
            // A backend that answered "not here" (UNAVAILABLE: the version is not READY any
            // more, or the server is shutting down; NOT_FOUND: the model left it since the last
            // route snapshot) before sending anything: another backend will likely serve it.
            Ok(response) if hand_over_status(response.headers()) => {
                let headers = response.headers();
                let code = stats::code_name(headers.get("grpc-status").map(|v| v.as_bytes()));
                Err((code, stats::message_of(headers).to_string()))
            }
            Ok(response) => Ok(response),
            // No answer from the backend at all (it died or refused).
            Err(_) => Err(("UNAVAILABLE", String::new())),
        };
        let (code, message) = match answered {
            Ok(response) => {
                let (head, body) = response.into_parts();
                let body = ObservedBody::observe(body, &head.headers, pending).holding(admitted);
                return Ok(Response::from_parts(head, body));
            }
            Err(failure) => failure,
        };
        pending.finish(code, &message);
        // Hand the call to the gateway, which picks another backend (within its retry budget)
        // or answers from its local fallback.
        drop(admitted);
        let mut parts = parts;
        if let Ok(value) = HeaderValue::from_str(backend) {
            // The gateway must not pick the same backend again.
            parts.headers.insert("x-gateway-tried", value);
        }
        let request = Request::from_parts(parts, Body::from(bytes));
        Ok(self.forward(request, &table.gateway).await.map(ObservedBody::plain))
    }

    /// Forward, turning a transport failure into a gRPC UNAVAILABLE answer.
    async fn forward(&self, request: Request<Body>, authority: &str) -> Response<Body> {
        match self.send(request, authority).await {
            Ok(response) => response,
            // A transport failure is a backend fault: UNAVAILABLE, like Triton's own clients see.
            Err(message) => grpc_error(14, &message),
        }
    }

    async fn send(&self, request: Request<Body>, authority: &str) -> Result<Response<Body>, String> {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|error| format!("bad upstream address {authority}: {error}"))?;
        self.client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|error| format!("upstream {authority}: {error}"))
    }
}

/// Whether a backend's trailers-only answer means "try another backend": UNAVAILABLE (14)
/// or NOT_FOUND (5) for a model the route table says it has.
fn hand_over_status(headers: &hyper::HeaderMap) -> bool {
    matches!(headers.get("grpc-status").map(|v| v.as_bytes()), Some(b"14") | Some(b"5"))
}

/// A unary request body (5-byte gRPC prefix + message), refused as soon as the message grows
/// past `max_message_bytes` with RESOURCE_EXHAUSTED, in the words grpc servers use: a hostile
/// or mistaken client cannot make the edge buffer without bound.
async fn read_body(mut body: Body, max_message_bytes: usize) -> Result<hyper::body::Bytes, (u32, String)> {
    use hyper::body::HttpBody;
    let limit = max_message_bytes.saturating_add(5);
    let mut chunks: Vec<hyper::body::Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|error| (1, format!("request body: {error}")))?;
        total += chunk.len();
        if total > limit {
            let message =
                format!("Received message larger than max (more than {} vs. {max_message_bytes})", total - 5);
            return Err((8, message));
        }
        chunks.push(chunk);
    }
    // One chunk (the usual case) is passed on without a copy.
    if chunks.len() == 1 {
        return Ok(chunks.pop().expect("one chunk"));
    }
    let mut collected = Vec::with_capacity(total);
    for chunk in &chunks {
        collected.extend_from_slice(chunk);
    }
    Ok(hyper::body::Bytes::from(collected))
}

/// The head of a request, to send it a second time.
fn copy_parts(parts: &hyper::http::request::Parts) -> hyper::http::request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// One report line on stdout, read by the gateway.
fn report(stats: &Stats) {
    use std::io::Write;
    if let Some(line) = stats.take_report() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// A trailers-only gRPC error response.
fn grpc_error(code: u32, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    let printable: String = message.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).collect();
    if let Ok(value) = HeaderValue::from_str(&printable) {
        headers.insert("grpc-message", value);
    }
    response
}

struct Options {
    listen: SocketAddr,
    threads: usize,
    buckets: Vec<f64>,
    per_try: Option<std::time::Duration>,
    max_in_flight: Option<usize>,
    max_in_flight_per_model: Option<usize>,
    policy: LoadPolicy,
    seed: u64,
    max_message_bytes: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut listen = None;
    let mut threads = 1usize;
    let mut buckets = vec![0.001, 0.01, 0.1, 1.0];
    let mut per_try = None;
    let mut max_in_flight = None;
    let mut max_in_flight_per_model = None;
    let mut max_message_bytes = 256 * 1024 * 1024;
    let mut policy = LoadPolicy { decay_s: 5.0, fault_penalty_s: 0.25 };
    // Different gateways should not draw the same sequence; tests pass --seed for repeatability.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            "--threads" => {
                threads = args.next().and_then(|v| v.parse().ok()).ok_or("--threads takes a number")?
            }
            "--buckets" => {
                let text = args.next().ok_or("--buckets takes comma-separated seconds")?;
                buckets = text
                    .split(',')
                    .map(|b| b.trim().parse::<f64>().map_err(|e| format!("--buckets {b}: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--per-try-timeout-ms" => {
                let ms: u64 = args.next().and_then(|v| v.parse().ok()).ok_or("--per-try-timeout-ms takes a number")?;
                per_try = Some(std::time::Duration::from_millis(ms));
            }
            "--max-in-flight" => {
                max_in_flight = Some(args.next().and_then(|v| v.parse().ok()).ok_or("--max-in-flight takes a number")?);
            }
            "--max-in-flight-per-model" => {
                max_in_flight_per_model =
                    Some(args.next().and_then(|v| v.parse().ok()).ok_or("--max-in-flight-per-model takes a number")?);
            }
            "--latency-decay-ms" => {
                let ms: f64 = args.next().and_then(|v| v.parse().ok()).ok_or("--latency-decay-ms takes a number")?;
                if ms <= 0.0 {
                    return Err("--latency-decay-ms must be positive".to_string());
                }
                policy.decay_s = ms / 1000.0;
            }
            "--fault-penalty-ms" => {
                let ms: f64 = args.next().and_then(|v| v.parse().ok()).ok_or("--fault-penalty-ms takes a number")?;
                policy.fault_penalty_s = ms / 1000.0;
            }
            "--max-message-bytes" => {
                max_message_bytes =
                    args.next().and_then(|v| v.parse().ok()).ok_or("--max-message-bytes takes a number")?;
            }
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).ok_or("--seed takes a number")?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let listen = listen.ok_or("--listen HOST:PORT is required")?;
    let listen = listen.parse().map_err(|e| format!("--listen {listen}: {e}"))?;
    Ok(Options {
        listen,
        threads: threads.max(1),
        buckets,
        per_try,
        max_in_flight,
        max_in_flight_per_model,
        policy,
        seed,
        max_message_bytes,
    })
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("tgw-edge: {message}");
            std::process::exit(2);
        }
    };
    // The first snapshot must arrive before serving: it names the gateway to fall back on.
    let mut stdin = std::io::BufReader::new(std::io::stdin());
    let mut first = String::new();
    if !matches!(stdin.read_line(&mut first), Ok(n) if n > 0) {
        std::process::exit(0);
    }
    let loads = Loads::new(options.policy, options.seed);
    let routes = match RouteTable::parse(&first, &loads) {
        Ok(table) => SharedRoutes::new(table),
        Err(message) => {
            eprintln!("tgw-edge: bad route snapshot: {message}");
            std::process::exit(2);
        }
    };
    let runtime = if options.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(options.threads).enable_all().build()
    }
    .expect("tokio runtime");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let updates = routes.clone();
    std::thread::spawn(move || {
        for line in stdin.lines() {
            let line = match line {
                Ok(line) => line,
                Err(_) => break,
            };
            match RouteTable::parse(&line, &loads) {
                Ok(table) => updates.replace(table),
                Err(message) => eprintln!("tgw-edge: ignoring bad route snapshot: {message}"),
            }
        }
        let _ = stop_tx.send(());
    });

    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder().http2_only(true).build(connector);
        let stats = Stats::new(options.buckets.clone());
        let shedder = shedding::Shedder::new(options.max_in_flight, options.max_in_flight_per_model);
        let edge = Arc::new(Edge {
            client,
            routes,
            stats: stats.clone(),
            per_try: options.per_try,
            shedder,
            max_message_bytes: options.max_message_bytes,
        });
        let reporter = stats.clone();
        tokio::spawn(async move {
            // Once a second, and soon after a backend fault (at most every 50 ms), so the
            // gateway's breakers learn of faults within milliseconds.
            let period = std::time::Duration::from_secs(1);
            let mut next_tick = tokio::time::Instant::now() + period;
            loop {
                let woken = tokio::time::timeout_at(next_tick, reporter.fault.notified()).await.is_ok();
                report(&reporter);
                if woken {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                } else {
                    next_tick = tokio::time::Instant::now() + period;
                }
            }
        });
        let make = make_service_fn(move |_| {
            let edge = edge.clone();
            async move { Ok::<_, Infallible>(service_fn(move |request| edge.clone().handle(request))) }
        });
        let server = match Server::try_bind(&options.listen) {
            Ok(builder) => builder.tcp_nodelay(true).http2_only(true).serve(make),
            Err(error) => {
                eprintln!("tgw-edge: cannot listen on {}: {error}", options.listen);
                std::process::exit(3);
            }
        };
        // Tell the parent the port is bound (it may have asked for port 0).
        println!("listening {}", server.local_addr());
        {
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        let graceful = server.with_graceful_shutdown(async {
            let _ = stop_rx.await;
        });
        if let Err(error) = graceful.await {
            eprintln!("tgw-edge: server error: {error}");
            std::process::exit(1);
        }
        report(&stats);
    });
}
