//! tgw-edge: the HTTP/2 data plane of triton-gateway.
//!
//! The Python gateway polls the fleet, decides routes and serves everything this process does
//! not. It starts tgw-edge as a child and writes route snapshots (one JSON line each) to its
//! stdin. For the model-scoped unary calls (ModelInfer, ModelReady, ModelMetadata,
//! ModelConfig) tgw-edge reads the model name and version from the request bytes, picks a
//! backend of the current snapshot and forwards the bytes; everything else goes to the
//! gateway's private Unix socket (see `proxy`). Closing stdin drains in-flight calls and
//! exits, so the edge never outlives its gateway.

mod body;
mod faults;
mod grpc;
mod options;
mod proxy;
mod routes;
mod server;
mod shedding;
mod stats;
mod upstream;
mod wire;

use clap::Parser;
use options::Options;
use routes::{LoadPolicy, Loads, RouteTable, SharedRoutes};
use stats::Stats;
use std::io::{BufRead, Write};
use std::sync::Arc;
use tokio::sync::watch;

fn main() {
    let options = Options::parse();
    let limits = server::ConnectionLimits::from_options(&options);
    // The first snapshot arrives before serving, so the first call already has routes.
    let mut stdin = std::io::BufReader::new(std::io::stdin());
    let mut first = String::new();
    if !matches!(stdin.read_line(&mut first), Ok(n) if n > 0) {
        std::process::exit(0);
    }
    let policy = LoadPolicy {
        decay_s: options.latency_decay_ms / 1000.0,
        fault_penalty_s: options.fault_penalty_ms / 1000.0,
    };
    let loads = Loads::new(policy, options.seed.unwrap_or_else(time_seed));
    let routes = match RouteTable::parse(&first, &loads) {
        Ok(table) => SharedRoutes::new(table),
        Err(message) => {
            eprintln!("tgw-edge: bad route snapshot: {message}");
            std::process::exit(2);
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let updates = routes.clone();
    std::thread::spawn(move || {
        for line in stdin.lines() {
            let Ok(line) = line else { break };
            match RouteTable::parse(&line, &loads) {
                Ok(table) => updates.replace(table),
                Err(message) => eprintln!("tgw-edge: ignoring bad route snapshot: {message}"),
            }
        }
        let _ = stop_tx.send(true);
    });
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
            eprintln!("tgw-edge: cannot start its runtime: {error}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run(options, limits, routes, stop_rx));
}

async fn run(options: Options, limits: server::ConnectionLimits, routes: SharedRoutes, stop: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::bind(options.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tgw-edge: cannot listen on {}: {error}", options.listen);
            std::process::exit(3);
        }
    };
    let stats = Stats::new(options.buckets.clone());
    let window = options.upstream_stream_window_bytes;
    let edge = Arc::new(proxy::Edge {
        backends: upstream::backend_client(window),
        gateway: upstream::gateway_client(options.gateway_socket.clone(), window),
        routes,
        stats: stats.clone(),
        per_try: options.per_try(),
        shedder: shedding::Shedder::new(options.max_in_flight, options.max_in_flight_per_model),
        max_message_bytes: options.max_message_bytes,
    });
    tokio::spawn(report_periodically(stats.clone()));
    // Tell the parent the port is bound (it may have asked for port 0).
    match listener.local_addr() {
        Ok(address) => println!("listening {address}"),
        Err(error) => {
            eprintln!("tgw-edge: no local address: {error}");
            std::process::exit(3);
        }
    }
    let _ = std::io::stdout().flush();
    server::serve(listener, server::http2_builder(&options), limits, edge, stop).await;
    report(&stats);
}

/// Once a second, and soon after a backend fault (at most every 50 ms), so the gateway's
/// breakers learn of faults within milliseconds.
async fn report_periodically(stats: Arc<Stats>) {
    let period = std::time::Duration::from_secs(1);
    let mut next_tick = tokio::time::Instant::now() + period;
    loop {
        let woken = tokio::time::timeout_at(next_tick, stats.fault.notified()).await.is_ok();
        report(&stats);
        if woken {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        } else {
            next_tick = tokio::time::Instant::now() + period;
        }
    }
}

/// One report line on stdout, read by the gateway.
fn report(stats: &Stats) {
    if let Some(line) = stats.take_report() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Different gateways should not draw the same sequence; tests pass --seed for repeatability.
fn time_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ u64::from(std::process::id())
}
