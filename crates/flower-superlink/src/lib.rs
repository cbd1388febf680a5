//! `flower-server` as a drop-in Flower SuperLink (flwr 1.42) for users who
//! type `flwr run`: the **Control API** (`flwr run`, `flwr ls`, `flwr log`,
//! `flwr stop`) and the **Runtime API** that stock `flower-superexec` and
//! `flwr-serverapp` use to run the user's Python ServerApp, both on one
//! HTTP address, over the link state of a `flower-fleet` Fleet API
//! ([`FleetApi::serve_runs`](flower_fleet::FleetApi::serve_runs)).
//!
//! * [`SuperLink::start`] with [`SuperLinkOptions`]: binds the address,
//!   starts `flower-superexec` (flwr's default `subprocess` isolation) and
//!   serves until the stop future completes.
//! * [`runs`]: the run registry (status, task token, logs), sans I/O.
//! * [`relay`]: the ServerApp's message exchange with the nodes, sans I/O.
//! * [`RunStore`]: where runs are kept across restarts ([`SqliteStore`]).
//!
//! Endpoints: Control `start-run`, `list-runs`, `stop-run`, `stream-logs`
//! (account endpoints answer flwr's "no account authentication"); Runtime
//! `acquire-task`, `send-task-heartbeat`, `pull-task-input`,
//! `push-task-output`, `push-logs`, `get-nodes`, `push-messages`,
//! `push-object`, `pull-messages`, `pull-object`,
//! `confirm-message-received`. Access: the open-source SuperLink has no
//! account authentication on the Control API, so [`SuperLink::start`]
//! refuses a non-loopback address unless TLS is on and
//! [`SuperLinkOptions::allow_remote_control`] is set.
#![forbid(unsafe_code)]

mod error;
pub mod relay;
pub mod runs;
mod server;
mod sqlite;
mod superexec;
mod time;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flower_fleet::FleetLink;
use flower_server::TlsFiles;
use futures::future::BoxFuture;
use futures::FutureExt;
use rand::RngCore;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use error::SuperLinkError;
pub use sqlite::SqliteStore;

use crate::runs::RunRecord;

/// Where runs outlive the process (see [`SqliteStore`]). Calls are short
/// and synchronous; they happen on state changes, not per message.
pub trait RunStore: Send + Sync + std::fmt::Debug {
    /// Every stored run.
    fn load_runs(&self) -> Result<Vec<RunRecord>, SuperLinkError>;
    /// Inserts or replaces a run (its description and logs).
    fn save_run(&self, run: &RunRecord) -> Result<(), SuperLinkError>;
}

/// How the server starts Flower's SuperExec, which starts one
/// `flwr-serverapp` process per run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SuperExecOptions {
    /// The program (default `flower-superexec`, found on `PATH`).
    pub program: PathBuf,
    /// CA certificate the SuperExec trusts when the Runtime API uses TLS.
    pub root_certificates: Option<PathBuf>,
    /// Wait before restarting a SuperExec that exited (default 2 s).
    pub restart_delay: Duration,
}

impl Default for SuperExecOptions {
    fn default() -> Self {
        SuperExecOptions {
            program: PathBuf::from("flower-superexec"),
            root_certificates: None,
            restart_delay: Duration::from_secs(2),
        }
    }
}

/// Settings of the Control and Runtime APIs. The `Default` values are the
/// only copy of these defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[must_use]
pub struct SuperLinkOptions {
    /// Address of both APIs (default `127.0.0.1:9093`, flwr's Control API
    /// port, loopback only).
    pub address: SocketAddr,
    /// TLS certificate and key (PEM).
    pub tls: Option<TlsFiles>,
    /// Allow a non-loopback address (only with TLS): anyone who reaches it
    /// can start runs, as with flwr's open-source SuperLink.
    pub allow_remote_control: bool,
    /// Start and supervise `flower-superexec` (flwr's `subprocess`
    /// isolation); `None` when the operator runs it (`process` isolation).
    pub superexec: Option<SuperExecOptions>,
    /// A run whose ServerApp sends no heartbeat for this long fails
    /// (default 60 s: flwr's 30 s heartbeat, twice).
    pub task_patience: Duration,
    /// Largest request body (default: the largest FAB plus 1 MiB).
    pub max_request_bytes: usize,
    /// Where runs are kept across restarts (default: memory only).
    pub store: Option<Arc<dyn RunStore>>,
}

impl Default for SuperLinkOptions {
    fn default() -> Self {
        SuperLinkOptions {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 9093)),
            tls: None,
            allow_remote_control: false,
            superexec: Some(SuperExecOptions::default()),
            task_patience: Duration::from_secs(60),
            max_request_bytes: flower_fab::FAB_MAX_SIZE + (1 << 20),
            store: None,
        }
    }
}

impl SuperLinkOptions {
    /// The address of both APIs.
    pub fn address(mut self, address: SocketAddr) -> Self {
        self.address = address;
        self
    }

    /// Serves TLS with these PEM files.
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// Allows a non-loopback address (with TLS only).
    pub fn allow_remote_control(mut self, allow: bool) -> Self {
        self.allow_remote_control = allow;
        self
    }

    /// How (or whether) to start `flower-superexec`.
    pub fn superexec(mut self, superexec: Option<SuperExecOptions>) -> Self {
        self.superexec = superexec;
        self
    }

    /// Keeps runs in `store`.
    pub fn store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Refuses a reachable Control API without TLS and explicit consent
    /// ([`SuperLink::start`] checks it too; call it to fail before binding
    /// anything else).
    pub fn check_access(&self) -> Result<(), SuperLinkError> {
        if self.address.ip().is_loopback() {
            return Ok(());
        }
        if self.tls.is_none() || !self.allow_remote_control {
            return Err(SuperLinkError::RemoteControl(self.address));
        }
        Ok(())
    }
}

/// The Control and Runtime APIs, started.
#[must_use]
pub struct SuperLink {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// Serves until the stop future completes (the SuperExec is then
    /// stopped).
    pub serve: BoxFuture<'static, ()>,
}

impl std::fmt::Debug for SuperLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuperLink")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl SuperLink {
    /// Binds the Control and Runtime APIs over `fleet`'s link state, loads
    /// stored runs, and returns the serving future (which also supervises
    /// the SuperExec).
    pub async fn start(
        options: SuperLinkOptions,
        fleet: FleetLink,
        stop: BoxFuture<'static, ()>,
    ) -> Result<SuperLink, SuperLinkError> {
        options.check_access()?;
        let tls = match &options.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(
                flower_fleet::tls_config(files).map_err(SuperLinkError::Tls)?,
            )),
            None => None,
        };
        let (seed_runs, seed_relay) = {
            let mut rng = rand::thread_rng();
            (rng.next_u64(), rng.next_u64())
        };
        let mut runs = runs::Runs::new(seed_runs);
        if let Some(store) = &options.store {
            let records = store.load_runs()?;
            let count = records.len();
            let failed = runs.restore(records, time::unix_now());
            info!(runs = count, "runs restored");
            for run_id in failed {
                warn!(
                    run_id,
                    "run was active when the server stopped: marked failed"
                );
                if let Some(record) = runs.get(run_id) {
                    store.save_run(record)?;
                }
            }
        }
        let relay = relay::Relay::new(fleet.limits().clone(), seed_relay);
        let core = server::Core::new(
            runs,
            relay,
            fleet,
            options.max_request_bytes,
            options.store.clone(),
        );
        let bind_error = |source| SuperLinkError::Bind {
            address: options.address,
            source,
        };
        let listener = TcpListener::bind(options.address)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        info!(address = %local_addr, tls = tls.is_some(), "control and runtime api listening on {local_addr}");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let superexec = options.superexec.clone().map(|opts| {
            let address = runtime_address(local_addr);
            superexec::supervise(opts, address, tls.is_none(), stop_rx.clone())
        });
        let housekeeping = housekeeping(core.clone(), options.task_patience, stop_rx.clone());
        let accept = server_loop(listener, tls, core, stop, stop_rx);
        let serve = async move {
            let housekeeping = tokio::spawn(housekeeping);
            let superexec = superexec.map(tokio::spawn);
            accept.await;
            let _ = stop_tx.send(true);
            let _ = housekeeping.await;
            if let Some(s) = superexec {
                let _ = s.await;
            }
        };
        Ok(SuperLink {
            local_addr,
            serve: serve.boxed(),
        })
    }
}

/// The address SuperExec dials: a wildcard bind is reached on loopback.
fn runtime_address(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        let ip = match local.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, local.port())
    } else {
        local
    }
}

async fn housekeeping(
    core: Arc<server::Core>,
    patience: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => core.tick(patience.as_secs_f64()),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop` completes; open connections end
/// gracefully (5 s) when it does.
async fn server_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    core: Arc<server::Core>,
    mut stop: BoxFuture<'static, ()>,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "control api accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let core = core.clone();
        let stop_rx = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(core, stream, stop_rx).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_connection(core, s, stop_rx).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(
    core: Arc<server::Core>,
    io: S,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handler = hyper::service::service_fn(move |request| {
        let core = core.clone();
        async move { Ok::<_, std::convert::Infallible>(core.handle(request).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), handler);
    let mut conn = std::pin::pin!(conn);
    let stopped = tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "control connection ended");
            }
            false
        }
        _ = stop.wait_for(|s| *s) => true,
    };
    if stopped {
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    }
}

/// `e` and its sources, joined with `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
