//! tgw-edge: the data plane of triton-gateway.
//!
//! Every per-request decision for the model-scoped calls is made here, once: route lookup,
//! sequence affinity, the choice of a backend, breakers, retries, per-try timeouts, hedging and
//! load shedding (see `proxy`). The Python gateway is the control plane: it applies snapshots
//! over the control socket (`control`, typed by `protos/tgw/control/v1/control.proto`) and
//! answers what only it can (the local fallback, fan-out calls, calls no route covers) on its
//! own Unix socket.
//!
//! Neither process takes the other down: the edge keeps serving its last good snapshot when
//! the control plane dies or hangs (nothing here waits on it), and stops only when told to
//! (the control protocol's Shutdown, SIGTERM or SIGINT), after draining calls in flight.

mod attempt;
mod backend_client;
mod balancer;
mod body;
mod compare;
mod compression;
mod control;
mod faults;
mod fleet;
mod grpc;
mod log;
mod metrics;
mod observed;
mod options;
mod policy;
mod proxy;
mod report;
mod server;
mod shadow;
mod shedding;
mod snapshot;
mod stamp;
mod stream;
mod tls;
mod traffic;
mod upstream;
mod version;
mod wire;

use clap::Parser;
use options::Options;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Exit codes, one per reason the edge could not start (the control plane reports them).
const EXIT_RUNTIME: i32 = 1;
const EXIT_PUBLIC_PORT: i32 = 3;
const EXIT_CONTROL_SOCKET: i32 = 4;
const EXIT_TLS: i32 = 5;

fn main() {
    let options = Options::parse();
    log::init(options.log_level, options.log_format);
    let limits = server::ConnectionLimits::from_options(&options);
    let runtime = if options.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(options.threads))
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            log::error(
                "edge_not_started",
                &[("reason", &format!("cannot start its runtime: {error}"))],
            );
            std::process::exit(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(run(options, limits));
    std::process::exit(code);
}

async fn run(options: Options, limits: server::ConnectionLimits) -> i32 {
    let listener = match public_listener(&options).await {
        Ok(listener) => listener,
        Err(reason) => {
            log::error("edge_not_started", &[("reason", &reason)]);
            return EXIT_PUBLIC_PORT;
        }
    };
    let address = listener
        .local_addr()
        .map_or_else(|_| options.listen.to_string(), |a| a.to_string());
    let control_listener = match control::bind(&options.control_socket).await {
        Ok(listener) => listener,
        Err(reason) => {
            log::error("edge_not_started", &[("reason", &reason)]);
            return EXIT_CONTROL_SOCKET;
        }
    };
    let (acceptor, backend_tls) = match tls_settings(&options) {
        Ok(found) => found,
        Err(reason) => {
            log::error("edge_not_started", &[("reason", &reason)]);
            return EXIT_TLS;
        }
    };
    let window = options.upstream_stream_window_bytes;
    let (ready, mut first_snapshot) = watch::channel(false);
    let metrics = Arc::new(metrics::Metrics::new());
    let edge = Arc::new(proxy::Edge {
        backend_scheme: if options.backend_tls { "https" } else { "http" },
        backends: backend_client::BackendClient::new(
            window,
            options.backend_tls.then_some(backend_tls),
            metrics.backend_calls_drained.clone(),
        ),
        gateway: upstream::gateway_client(options.gateway_socket.clone(), window),
        fleet: Arc::new(fleet::Fleet::new(options.seed.unwrap_or_else(time_seed))),
        shared: Arc::new(attempt::Shared {
            metrics,
            outcomes: Arc::default(),
        }),
        shedder: shedding::Shedder::default(),
        ready,
        shadows: Arc::default(),
    });
    let (shutdown, mut shutdown_asked) = watch::channel(None::<Duration>);
    let identity = control::Identity {
        listen_address: address.clone(),
        gateway_socket: options.gateway_socket.display().to_string(),
        started: std::time::Instant::now(),
        settings_digest: options.settings_digest.clone(),
    };
    let service = control::ControlService::new(edge.clone(), identity, shutdown.clone());
    tokio::spawn(control::serve(control_listener, service));
    tokio::spawn(stop_on_signals(shutdown, Duration::from_millis(options.drain_grace_ms)));
    tokio::spawn(keep_timers_warm());
    log::info(
        "edge_started",
        &[
            ("listen", &address),
            ("pid", &std::process::id().to_string()),
            ("control_socket", &options.control_socket.display().to_string()),
        ],
    );
    // Accept clients only once the first snapshot is in: every call then has routes. Until
    // then connections wait in the listen backlog.
    tokio::select! {
        _ = first_snapshot.wait_for(|ready| *ready) => {}
        _ = shutdown_asked.changed() => return stopped(&options),
    }
    let (stop, stopping) = watch::channel(false);
    let mut serving = tokio::spawn(server::serve(
        listener,
        acceptor,
        server::http2_builder(&options),
        limits,
        edge,
        stopping,
    ));
    let grace = tokio::select! {
        _ = &mut serving => return stopped(&options),
        asked = shutdown_asked.wait_for(Option::is_some) => asked.ok().and_then(|grace| *grace).unwrap_or_default(),
    };
    log::info("edge_draining", &[("grace_ms", &grace.as_millis().to_string())]);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(grace, serving).await;
    stopped(&options)
}

/// The public port's TLS acceptor (None: plain HTTP/2) and the backends' client configuration.
fn tls_settings(options: &Options) -> Result<(Option<tokio_rustls::TlsAcceptor>, rustls::ClientConfig), String> {
    let acceptor = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            cert,
            key,
            options.tls_client_ca.as_deref(),
        )?)),
        _ => None,
    };
    let backends = if options.backend_tls {
        let identity = options.backend_cert.as_deref().zip(options.backend_key.as_deref());
        tls::client_config(options.backend_ca.as_deref(), identity)?
    } else {
        tls::unused_client_config()
    };
    Ok((acceptor, backends))
}

/// The public listener: the inherited socket when one is given, else a fresh bind.
async fn public_listener(options: &Options) -> Result<tokio::net::TcpListener, String> {
    let Some(fd) = options.listen_fd else {
        return tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|error| format!("cannot listen on {}: {error}", options.listen));
    };
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: the fd was handed to this process for this purpose alone (--listen-fd) and is
    // owned from here on; anything but a listening socket is refused below.
    let socket = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let usable = match socket.is_listener() {
        Ok(true) => socket.set_nonblocking(true),
        Ok(false) => Err(std::io::Error::other("not a listening socket")),
        Err(error) => Err(error),
    };
    usable
        .and_then(|()| tokio::net::TcpListener::from_std(socket.into()))
        .map_err(|error| format!("cannot serve on inherited socket {fd}: {error}"))
}

fn stopped(options: &Options) -> i32 {
    let _ = std::fs::remove_file(&options.control_socket);
    log::info("edge_stopped", &[]);
    0
}

/// SIGTERM or SIGINT drain as the control plane's Shutdown does.
async fn stop_on_signals(shutdown: watch::Sender<Option<Duration>>, grace: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        log::warning("signals_not_handled", &[]);
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    shutdown.send_replace(Some(grace));
}

/// Every call arms timers (its per-try timeout, its hedge). Arming one earlier than the timer
/// driver's next wake-up wakes the driver through its eventfd: two extra system calls and an
/// extra turn of the event loop per call on an otherwise idle runtime. A tick shorter than any
/// call's timer keeps the next wake-up close, so arming never wakes it (200 cheap wake-ups a
/// second instead of two per call).
async fn keep_timers_warm() {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Shorter than the least hedge delay and per-try timeout the settings allow by default.
const TIMER_TICK: Duration = Duration::from_millis(5);

/// Different edges should not draw the same sequence; tests pass --seed for repeatability.
fn time_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ u64::from(std::process::id())
}
