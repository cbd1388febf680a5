//! The library's entry point: [`Server::builder`] → [`ServerBuilder::bind`]
//! → [`Server::run`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), flower_server::ServerError> {
//! use flower_server::{DriverConfig, Server, TlsFiles};
//! use flower_strategy::{FedAvg, FedAvgOptions};
//!
//! let server = Server::builder()
//!     .address("127.0.0.1:8080".parse().unwrap())
//!     .tls(TlsFiles::new("ca.pem", "server.pem", "server.key"))
//!     .auth(flower_auth::AuthConfig::builder().token("s3cret-token-0123").build()?)
//!     .strategy(FedAvg::new(FedAvgOptions::with_min_clients(2))?)
//!     .driver(DriverConfig { num_rounds: 3, ..DriverConfig::default() })
//!     .output_dir("output")
//!     .bind()
//!     .await?;
//! println!("listening on {}", server.local_addr());
//! let outcome = server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! println!("{} rounds", outcome.completed_rounds);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flower_auth::{AuthConfig, AuthManager};
use flower_strategy::Strategy;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::grpc::serve::serve;
use crate::grpc::transport::FlowerTransport;
use crate::msg_grid::{MsgDriver, MsgSetup};
use crate::{
    ClientManager, DirectoryStore, DriverConfig, Metrics, RoundDriver, RunObserver, RunOutcome,
    RunStore, ServeOptions, ServerError, TlsFiles, Transport,
};

/// How long [`Server::run`] waits for the listener to stop after the run.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Configures a [`Server`]. Every setting has a documented default
/// ([`ServeOptions::default`], [`DriverConfig::default`]); a strategy and
/// either TLS files or an explicit [`ServerBuilder::insecure`] are required.
#[must_use]
pub struct ServerBuilder {
    serve: ServeOptions,
    insecure: bool,
    auth: Option<AuthConfig>,
    allow_insecure_auth: bool,
    strategy: Option<Box<dyn Strategy>>,
    msg: Option<MsgSetup>,
    driver: DriverConfig,
    store: Option<Arc<dyn RunStore>>,
    grpc_bidi: bool,
    transports: Vec<Box<dyn Transport>>,
    metrics: Option<Metrics>,
    observers: Vec<Arc<dyn RunObserver>>,
}

/// The run a [`Server`] drives: legacy rounds or a message-API strategy.
#[derive(Debug)]
enum Driver {
    Legacy(RoundDriver),
    Msg(MsgDriver),
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("serve", &self.serve)
            .field("insecure", &self.insecure)
            .field("auth", &self.auth.is_some())
            .field(
                "strategy",
                &self.strategy.as_ref().map(|s| s.name().to_owned()),
            )
            .field(
                "msg_strategy",
                &self.msg.as_ref().map(|m| m.strategy.name().to_owned()),
            )
            .field("driver", &self.driver)
            .field("store", &self.store)
            .field("grpc_bidi", &self.grpc_bidi)
            .field("metrics", &self.metrics)
            .field("observers", &self.observers.len())
            .field(
                "transports",
                &self.transports.iter().map(|t| t.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ServerBuilder {
    fn new() -> Self {
        ServerBuilder {
            serve: ServeOptions::default(),
            insecure: false,
            auth: None,
            allow_insecure_auth: false,
            strategy: None,
            msg: None,
            driver: DriverConfig::default(),
            store: None,
            grpc_bidi: true,
            transports: Vec::new(),
            metrics: None,
            observers: Vec::new(),
        }
    }

    /// Reports to `metrics` (default: a private registry nobody reads).
    /// Serve it with [`metrics::serve`](crate::metrics::serve) — before
    /// `bind`, so that `/readyz` answers 503 until the listeners are up.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Tells `observer` about every phase of the run (e.g.
    /// [`LogProgress`](crate::metrics::LogProgress) for progress lines).
    pub fn observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Also accepts clients through `transport` (e.g. the Fleet API for
    /// SuperNodes), over the same client registry and rounds.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transports.push(Box::new(transport));
        self
    }

    /// Whether to serve the grpc-bidi port (default true). Turn it off when
    /// another [`transport`](Self::transport) is the only way in.
    pub fn grpc_bidi(mut self, on: bool) -> Self {
        self.grpc_bidi = on;
        self
    }

    /// Address to listen on (default `0.0.0.0:8080`; port 0 picks a free one).
    pub fn address(mut self, address: SocketAddr) -> Self {
        self.serve.address = address;
        self
    }

    /// Serves TLS with these PEM files.
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.serve.tls = Some(files);
        self
    }

    /// Serves plaintext. Without this or [`tls`](Self::tls), `bind` refuses.
    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// All listener settings at once (address, TLS, limits, keepalive).
    pub fn serve_options(mut self, options: ServeOptions) -> Self {
        self.serve = options;
        self
    }

    /// Accepts only clients with a token from this source (static, file or
    /// Vault). Refused over plaintext unless
    /// [`allow_insecure_auth`](Self::allow_insecure_auth).
    pub fn auth(mut self, config: AuthConfig) -> Self {
        self.auth = Some(config);
        self
    }

    /// Allows token authentication over a plaintext listener (tokens then
    /// travel in the clear: for tests only).
    pub fn allow_insecure_auth(mut self, allow: bool) -> Self {
        self.allow_insecure_auth = allow;
        self
    }

    /// The strategy (required).
    pub fn strategy(mut self, strategy: impl Strategy + 'static) -> Self {
        self.strategy = Some(Box::new(strategy));
        self
    }

    /// The strategy, already boxed (e.g. from `flower_strategy::build_strategy`).
    pub fn boxed_strategy(mut self, strategy: Box<dyn Strategy>) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Runs a message-API strategy ([`flower_strategy::msg`]) instead of a
    /// legacy one: for nodes whose transport carries message-API messages
    /// (the Fleet API's SuperNodes); a grpc-bidi client sampled by it fails
    /// its exchanges. The driver settings apply (rounds, round timeout as
    /// the reply timeout, bounded node waits, sampling seed, fold order);
    /// resuming is refused. Replaces any [`strategy`](Self::strategy).
    pub fn msg_strategy(mut self, setup: MsgSetup) -> Self {
        self.msg = Some(setup);
        self.strategy = None;
        self
    }

    /// Round settings (rounds, timeouts, waits, seed, resume, fold order).
    pub fn driver(mut self, config: DriverConfig) -> Self {
        self.driver = config;
        self
    }

    /// Writes `history.json`, `model.npz` and `checkpoint.json` into `dir`
    /// after every round (a [`DirectoryStore`]).
    pub fn output_dir(self, dir: impl Into<PathBuf>) -> Self {
        self.store(Arc::new(DirectoryStore::new(dir)))
    }

    /// Persists the run in `store` after every round.
    pub fn store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Loads the tokens, binds the listener and starts serving: clients can
    /// connect from now on; rounds start with [`Server::run`].
    pub async fn bind(self) -> Result<Server, ServerError> {
        let strategy = match (self.strategy, self.msg) {
            (Some(s), _) => Ok(s),
            (None, Some(m)) => Err(m),
            (None, None) => return Err(ServerError::Config("no strategy given".into())),
        };
        match (&self.serve.tls, self.insecure) {
            (Some(_), true) => {
                return Err(ServerError::Config(
                    "insecure cannot be combined with TLS files".into(),
                ))
            }
            (None, false) => {
                return Err(ServerError::Config(
                    "refusing to start without TLS: give TLS files, or choose insecure explicitly"
                        .into(),
                ))
            }
            _ => {}
        }
        let auth = match &self.auth {
            None => {
                warn!("no token source: any client may join");
                None
            }
            Some(config) => {
                flower_auth::ensure_secure_transport(
                    self.serve.tls.is_some(),
                    self.allow_insecure_auth,
                )
                .map_err(|_| {
                    ServerError::Config(
                        "refusing token authentication over a plaintext listener: use TLS, or allow insecure auth for tests"
                            .into(),
                    )
                })?;
                let (_store, manager) = flower_auth::token_store_from(config).await?;
                info!(
                    source = manager.source_description(),
                    tokens = manager.store().len(),
                    "token authentication on"
                );
                Some(manager)
            }
        };
        let metrics = self.metrics.unwrap_or_default();
        if let (Some(auth), Some(config)) = (&auth, &self.auth) {
            auth_metrics(&metrics, auth, config);
        }

        let manager = ClientManager::with_metrics(
            self.serve.max_clients,
            self.serve.max_concurrent_uploads,
            metrics.clone(),
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop = move || -> BoxFuture<'static, ()> {
            let mut rx = stop_rx.clone();
            Box::pin(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
        };
        let mut serving = Vec::new();
        let mut local_addr = None;
        if self.grpc_bidi {
            let transport = FlowerTransport::new(manager.clone());
            // With tokens, every call goes through flower-auth's layer (a
            // wrong or missing token is refused before the call reaches the
            // transport); without, through the identity layer.
            let (addr, fut): (_, BoxFuture<'static, Result<(), ServerError>>) = match &auth {
                Some(auth) => {
                    let (addr, fut) = serve(&self.serve, transport, auth.layer(), stop()).await?;
                    (addr, Box::pin(fut))
                }
                None => {
                    let identity = tower::layer::util::Identity::new();
                    let (addr, fut) = serve(&self.serve, transport, identity, stop()).await?;
                    (addr, Box::pin(fut))
                }
            };
            local_addr = Some(addr);
            serving.push(("grpc-bidi", fut));
        }
        let mut transport_addrs = Vec::new();
        for transport in self.transports {
            let name = transport.name();
            let bound = transport.bind(manager.clone(), stop()).await?;
            info!(transport = name, address = %bound.local_addr, "listening on {}", bound.local_addr);
            transport_addrs.push((name, bound.local_addr));
            local_addr.get_or_insert(bound.local_addr);
            serving.push((name, bound.serve));
        }
        let local_addr =
            local_addr.ok_or_else(|| ServerError::Config("no transport to serve".into()))?;
        let serving = serving
            .into_iter()
            .map(|(name, fut)| (name, tokio::spawn(fut)))
            .collect();
        let name = match &strategy {
            Ok(s) => s.name().to_owned(),
            Err(m) => format!("{} (message API)", m.strategy.name()),
        };
        let rounds = self.driver.num_rounds;
        let driver = match strategy {
            Ok(strategy) => {
                let mut d = RoundDriver::new(manager.clone(), strategy, self.driver)
                    .with_observer(Arc::new(metrics.clone()));
                for observer in self.observers {
                    d = d.with_observer(observer);
                }
                if let Some(store) = self.store {
                    d = d.with_store(store);
                }
                Driver::Legacy(d)
            }
            Err(setup) => {
                let mut d = MsgDriver::new(manager.clone(), setup, self.driver)
                    .with_observer(Arc::new(metrics.clone()));
                for observer in self.observers {
                    d = d.with_observer(observer);
                }
                if let Some(store) = self.store {
                    d = d.with_store(store);
                }
                Driver::Msg(d)
            }
        };
        info!(strategy = name, rounds, "server ready");
        // Listening, and the token source (if any) loaded.
        metrics.set_ready(true);
        Ok(Server {
            local_addr,
            transport_addrs,
            manager,
            driver,
            auth,
            stop: stop_tx,
            serving,
        })
    }
}

/// A bound flower-rs server: clients can join; [`run`](Self::run) drives
/// the rounds and then stops the listener.
pub struct Server {
    local_addr: SocketAddr,
    transport_addrs: Vec<(&'static str, SocketAddr)>,
    manager: ClientManager,
    driver: Driver,
    auth: Option<AuthManager>,
    stop: watch::Sender<bool>,
    serving: Vec<(&'static str, JoinHandle<Result<(), ServerError>>)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("clients", &self.manager)
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with every default.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    /// The bound address (with the real port when port 0 was asked for) of
    /// the grpc-bidi port, or of the first other transport when grpc-bidi is
    /// off.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The addresses of the transports added with
    /// [`ServerBuilder::transport`], by name.
    pub fn transport_addrs(&self) -> &[(&'static str, SocketAddr)] {
        &self.transport_addrs
    }

    /// The connected clients (e.g. to wait until some have joined).
    pub fn clients(&self) -> &ClientManager {
        &self.manager
    }

    /// The token manager, when authentication is on.
    pub fn auth(&self) -> Option<&AuthManager> {
        self.auth.as_ref()
    }

    /// Runs the rounds, tells every client to disconnect and stops the
    /// listener. `shutdown` completing ends the run early, keeping the last
    /// completed round saved, with [`ServerError::Interrupted`].
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunOutcome, ServerError> {
        let outcome = match &mut self.driver {
            Driver::Legacy(d) => d.run(shutdown).await,
            Driver::Msg(d) => d.run(shutdown).await,
        };
        self.manager.metrics().set_ready(false);
        let _ = self.stop.send(true);
        if let Some(auth) = &self.auth {
            auth.shutdown();
        }
        for (name, serving) in self.serving {
            match tokio::time::timeout(STOP_GRACE, serving).await {
                Ok(Ok(Err(e))) => {
                    warn!(transport = name, error = %crate::error_chain(&e), "transport ended with an error")
                }
                Ok(Err(e)) => warn!(transport = name, error = %e, "transport task failed"),
                Err(_) => warn!(
                    transport = name,
                    "transport did not stop within {STOP_GRACE:?}"
                ),
                Ok(Ok(Ok(()))) => {}
            }
        }
        outcome
    }
}

/// Token-source metrics, read at scrape time from the manager's store.
fn auth_metrics(metrics: &Metrics, auth: &AuthManager, config: &AuthConfig) {
    use flower_auth::{RefusalReason, TokenSourceConfig};
    let source = match &config.source {
        TokenSourceConfig::Static(_) => "static",
        TokenSourceConfig::File(_) => "file",
        TokenSourceConfig::Vault(_) => "vault",
        _ => "other",
    };
    let label = move || vec![("source", source.to_string())];
    let store = auth.store();
    metrics.gauge_fn(
        "flower_auth_tokens",
        "Tokens in the current accepted set",
        move || vec![(label(), store.len() as f64)],
    );
    let store = auth.store();
    metrics.gauge_fn(
        "flower_auth_seconds_since_reload",
        "Seconds since the token set was last loaded successfully",
        move || vec![(label(), store.stats().since_last_success().as_secs_f64())],
    );
    let store = auth.store();
    metrics.counter_fn(
        "flower_auth_reloads",
        "Token reloads, by outcome (a failed reload keeps the previous set)",
        move || {
            let stats = store.stats();
            vec![
                (
                    vec![
                        ("source", source.to_string()),
                        ("outcome", "ok".to_string()),
                    ],
                    stats.reloads() as f64,
                ),
                (
                    vec![
                        ("source", source.to_string()),
                        ("outcome", "error".to_string()),
                    ],
                    stats.reload_failures() as f64,
                ),
            ]
        },
    );
    let store = auth.store();
    metrics.counter_fn(
        "flower_vault_errors",
        "Failed reloads from Vault (0 for other token sources)",
        move || {
            let failures = if source == "vault" {
                store.stats().reload_failures()
            } else {
                0
            };
            vec![(Vec::new(), failures as f64)]
        },
    );
    let store = auth.store();
    metrics.counter_fn(
        "flower_auth_refusals",
        "Calls refused by token authentication, by reason",
        move || {
            RefusalReason::ALL
                .iter()
                .map(|r| {
                    (
                        vec![("reason", r.as_str().to_string())],
                        store.stats().refusals(*r) as f64,
                    )
                })
                .collect()
        },
    );
}
