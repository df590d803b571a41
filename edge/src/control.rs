//! The control protocol's server side (`protos/tgw/control/v1/control.proto`): the control
//! plane describes the edge, applies snapshots (ACK/NACK), watches reports, reads metrics and
//! asks it to stop, over a Unix socket only the edge's user can open.
//!
//! Nothing here waits on the control plane: a watcher that stops reading misses reports (their
//! counters are cumulative), and a control plane that is gone leaves the last good snapshot
//! serving.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub mod proto {
    tonic::include_proto!("tgw.control.v1");
}

use proto::edge_control_server::{EdgeControl, EdgeControlServer};

/// Shortest report interval a watcher may ask for.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// What the control service needs of the data plane.
pub trait Controlled: Send + Sync + 'static {
    /// Apply a snapshot whole, or say why not (the current one keeps serving).
    fn apply(&self, snapshot: proto::Snapshot) -> Result<(), String>;
    /// The version of the snapshot served now (0 before the first).
    fn serving_version(&self) -> u64;
    fn report(&self) -> proto::EdgeReport;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
}

/// Who this edge is, for Describe.
#[derive(Clone)]
pub struct Identity {
    pub listen_address: String,
    pub gateway_socket: String,
    pub started: Instant,
    pub settings_digest: String,
}

pub struct ControlService<P> {
    plane: Arc<P>,
    identity: Identity,
    /// Set to the drain grace when the control plane asks the edge to stop.
    shutdown: watch::Sender<Option<Duration>>,
}

impl<P: Controlled> ControlService<P> {
    pub fn new(plane: Arc<P>, identity: Identity, shutdown: watch::Sender<Option<Duration>>) -> Self {
        ControlService {
            plane,
            identity,
            shutdown,
        }
    }
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<proto::EdgeReport, Status>> + Send>>;

#[tonic::async_trait]
impl<P: Controlled> EdgeControl for ControlService<P> {
    async fn describe(&self, _: Request<proto::DescribeRequest>) -> Result<Response<proto::EdgeDescription>, Status> {
        Ok(Response::new(proto::EdgeDescription {
            edge_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            listen_address: self.identity.listen_address.clone(),
            gateway_socket: self.identity.gateway_socket.clone(),
            snapshot_version: self.plane.serving_version(),
            uptime_seconds: self.identity.started.elapsed().as_secs_f64(),
            settings_digest: self.identity.settings_digest.clone(),
        }))
    }

    async fn apply(&self, request: Request<proto::Snapshot>) -> Result<Response<proto::ApplyResult>, Status> {
        let snapshot = request.into_inner();
        let version = snapshot.version;
        let result = self.plane.apply(snapshot);
        if let Err(reason) = &result {
            crate::log::warning(
                "snapshot_refused",
                &[("version", &version.to_string()), ("reason", reason)],
            );
        }
        Ok(Response::new(proto::ApplyResult {
            version,
            accepted: result.is_ok(),
            reason: result.err().unwrap_or_default(),
            serving_version: self.plane.serving_version(),
        }))
    }

    type WatchStream = ReportStream;

    async fn watch(&self, request: Request<proto::WatchRequest>) -> Result<Response<ReportStream>, Status> {
        let interval = request
            .into_inner()
            .interval
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::from_secs(1))
            .max(MIN_INTERVAL);
        // Room for one report: a reader that falls behind gets the newest next time it reads.
        let (sender, receiver) = mpsc::channel(1);
        let plane = self.plane.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match sender.try_send(Ok(plane.report())) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        ))))
    }

    async fn metrics(&self, _: Request<proto::MetricsRequest>) -> Result<Response<proto::MetricsText>, Status> {
        Ok(Response::new(proto::MetricsText {
            text: self.plane.metrics(),
        }))
    }

    async fn shutdown(
        &self,
        request: Request<proto::ShutdownRequest>,
    ) -> Result<Response<proto::ShutdownResult>, Status> {
        let grace = request
            .into_inner()
            .grace
            .and_then(|d| Duration::try_from(d).ok())
            .unwrap_or(Duration::ZERO);
        self.shutdown.send_replace(Some(grace));
        Ok(Response::new(proto::ShutdownResult {}))
    }
}

/// Binds the control socket at `path`, owner-only. A socket file left by an edge that died is
/// replaced; one that a live edge answers on is not (two edges must not fight over one fleet).
pub async fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(format!("{} is in use by another running tgw-edge", path.display()));
        }
        std::fs::remove_file(path).map_err(|error| format!("cannot remove stale {}: {error}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|error| format!("cannot listen on {}: {error}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|error| format!("cannot restrict {}: {error}", path.display()))?;
    Ok(listener)
}

/// Serves the control service on `listener` until the process ends.
pub async fn serve<P: Controlled>(listener: UnixListener, service: ControlService<P>) {
    let service = EdgeControlServer::new(service);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                crate::log::warning("control_accept_failed", &[("error", &error.to_string())]);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
