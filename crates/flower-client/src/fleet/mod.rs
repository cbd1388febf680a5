//! A Rust SuperNode: joins a stock `flower-superlink` 1.42 (or flower-rs's
//! own `flower-server --fleet-api-address`) over Flower's HTTP Fleet API and
//! answers its messages with a Rust [`ClientApp`].
//!
//! The node speaks the same protocol, at the same cadence, as flwr's
//! `flower-supernode` (`supernode/fleet_http_connection.py`,
//! `start_client_internal.py`):
//!
//! * **Join**: RegisterNode (only with an ephemeral key, i.e. without
//!   [`SuperNodeOptions::auth_private_key`]), then ActivateNode with a
//!   30 s heartbeat interval; a heartbeat right away and then every
//!   `(30 - 5) * U(0.7, 0.9)` s.
//! * **Loop**: PullMessages every 3 s while idle. For a message: GetRun and
//!   GetFab the first time a run is seen (the FAB is *not executed*: it only
//!   gives the run config; the node logs that it serves the run's app with
//!   its Rust ClientApp); PullObject for every object of the message's tree,
//!   two in flight, retried while the SuperLink reports it not yet
//!   available; ConfirmMessageReceived; the handler (on Tokio's blocking
//!   pool); PushMessages with the reply's tree; PushObject for the objects
//!   the SuperLink asks for, two in flight, children before parents.
//! * **Leave** (on the shutdown signal): DeactivateNode, and UnregisterNode
//!   for a self-registered node.
//!
//! Retry rules are flwr's: connection errors, timeouts and HTTP
//! 502/503/504 are retried with exponential back-off (1 s doubling to
//! 20 s, unbounded unless [`SuperNodeOptions::max_retries`] /
//! [`SuperNodeOptions::max_wait_time`] say otherwise); 401 stops the node
//! ([`ClientError::NodeUnauthorized`]); 403 (run not running) drops the
//! message at hand; TLS handshake failures and any other status stop the
//! node. One departure: when a SuperLink that restarted without its state
//! no longer knows the node (401 on a call after joining, or a heartbeat
//! answered `success = false`), the node joins again (at most
//! [`MAX_REJOINS`] times in a row) instead of exiting.
//!
//! Every request is signed ([`NodeSigner`]): with an ephemeral P-384 key by
//! default, or an OpenSSH ECDSA key, which, as in flwr, requires TLS.

mod node;
mod transport;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use flower_auth::node::NodeSigner;
use flower_fab::UserConfig;

use crate::app::ClientApp;
use crate::ClientError;

pub use node::SuperNodeSummary;

/// flwr's `HEARTBEAT_DEFAULT_INTERVAL` (seconds), sent in ActivateNode and
/// every heartbeat.
pub const HEARTBEAT_INTERVAL: f64 = 30.0;
/// How long the node waits between PullMessages calls while idle (flwr: 3 s).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(3);
/// Longest back-off between retries of a failed call (flwr's
/// `MAX_RETRY_DELAY`).
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(20);
/// Rejoins allowed in a row without a successful call in between.
pub const MAX_REJOINS: u32 = 3;
/// Most objects moved at once per message, each way (flwr: 2).
pub const OBJECT_CONCURRENCY: usize = 2;

/// How to run a Rust SuperNode; the flags of the stock `flower-supernode`
/// map onto it one to one.
///
/// ```
/// use flower_client::fleet::SuperNodeOptions;
/// let options = SuperNodeOptions::new("127.0.0.1:9092")
///     .root_certificates("certificates/ca.pem")
///     .node_config("examples=30 factor=2.0")
///     .expect("valid --node-config");
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct SuperNodeOptions {
    pub(crate) superlink: String,
    pub(crate) insecure: bool,
    pub(crate) root_certificates: Option<PathBuf>,
    pub(crate) private_key: Option<PathBuf>,
    pub(crate) signer: Option<NodeSigner>,
    pub(crate) node_config: UserConfig,
    pub(crate) max_retries: Option<u32>,
    pub(crate) max_wait_time: Option<Duration>,
    pub(crate) poll_interval: Duration,
    pub(crate) call_timeout: Duration,
}

impl SuperNodeOptions {
    /// A node for the SuperLink at `superlink` (`host:port`, no scheme),
    /// over HTTPS with the system's roots (flwr's default), with an
    /// ephemeral key and an empty node config.
    pub fn new(superlink: impl Into<String>) -> Self {
        SuperNodeOptions {
            superlink: superlink.into(),
            insecure: false,
            root_certificates: None,
            private_key: None,
            signer: None,
            node_config: UserConfig::new(),
            max_retries: None,
            max_wait_time: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            call_timeout: Duration::from_secs(30),
        }
    }

    /// `--insecure`: plain HTTP.
    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// `--root-certificates`: HTTPS trusting the CA certificates (PEM) of
    /// this file instead of the system's.
    pub fn root_certificates(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_certificates = Some(path.into());
        self
    }

    /// `--auth-supernode-private-key`: sign with this OpenSSH ECDSA private
    /// key (registered beforehand with `flwr supernode register`) instead
    /// of an ephemeral one. Refused together with [`insecure`](Self::insecure).
    pub fn auth_private_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.private_key = Some(path.into());
        self
    }

    /// Signs with `signer` (an ephemeral signer self-registers, any other
    /// is expected to be registered already). Overrides
    /// [`auth_private_key`](Self::auth_private_key).
    pub fn signer(mut self, signer: NodeSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// `--node-config`: space-separated `key=value` pairs with TOML values
    /// (`"examples=30 factor=2.0 name='a b'"`), or a `.toml` file.
    ///
    /// # Errors
    /// [`ClientError::InvalidOptions`] when the text does not parse.
    pub fn node_config(mut self, config: &str) -> Result<Self, ClientError> {
        self.node_config = UserConfig::parse_args(&[config])
            .map_err(|e| ClientError::InvalidOptions(format!("--node-config: {e}")))?;
        Ok(self)
    }

    /// Sets the node config from an already parsed [`UserConfig`].
    pub fn node_config_values(mut self, config: UserConfig) -> Self {
        self.node_config = config;
        self
    }

    /// `--max-retries`: give up a failing call after this many retries
    /// (default: never).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// `--max-wait-time`: give up a failing call after retrying this long
    /// (default: never).
    pub fn max_wait_time(mut self, wait: Duration) -> Self {
        self.max_wait_time = Some(wait);
        self
    }

    /// Pause between PullMessages calls while idle (default 3 s, flwr's).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

/// Runs a SuperNode until `shutdown` resolves (then it deactivates and, if
/// self-registered, unregisters the node) or a fatal error.
///
/// # Errors
/// Invalid options ([`ClientError::InvalidOptions`], an unusable key
/// [`ClientError::NodeKey`], an explicit key with `--insecure`
/// [`ClientError::InsecureCredentials`]); a refused authentication
/// ([`ClientError::NodeUnauthorized`]); a TLS handshake failure
/// ([`ClientError::Tls`]); an unexpected HTTP status
/// ([`ClientError::FleetStatus`]); retries exhausted
/// ([`ClientError::RetriesExhausted`]).
pub async fn run_supernode<A, F>(
    options: SuperNodeOptions,
    app: A,
    shutdown: F,
) -> Result<SuperNodeSummary, ClientError>
where
    A: ClientApp + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let signer = match (&options.signer, &options.private_key) {
        (Some(signer), _) => signer.clone(),
        (None, Some(path)) => NodeSigner::from_openssh_file(path).map_err(ClientError::NodeKey)?,
        (None, None) => NodeSigner::ephemeral(),
    };
    if options.insecure && !signer.is_ephemeral() {
        // flwr exits with SUPERNODE_STARTED_WITHOUT_TLS_BUT_NODE_AUTH_ENABLED.
        return Err(ClientError::InsecureCredentials);
    }
    let security = if options.insecure {
        transport::Security::Insecure
    } else {
        let pem = match &options.root_certificates {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ClientError::InvalidOptions(format!(
                    "cannot read root certificates {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        transport::Security::Tls(transport::tls_config(pem.as_deref())?)
    };
    let transport = transport::Transport::new(&options.superlink, security, signer)?;
    node::Node::new(options, transport).run(app, shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM: the shutdown signal of a stock
/// SuperNode.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
