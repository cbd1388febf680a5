//! [`FleetApi`]: the Fleet service as a [`Transport`] of `flower-server`,
//! configured by [`FleetOptions`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flower_auth::node::AuthorizedNodeKeys;
use flower_message::{Limits, ObjectId};
use flower_proto as pb;
use flower_server::listener::{server_tls_config, HardenedListener, ListenerOptions, Protocol};
use flower_server::{BoundTransport, ClientManager, ServerError, TlsFiles, Transport};
use futures::future::BoxFuture;
use futures::FutureExt;
use rand::RngCore;
use tracing::{info, warn};

use crate::convert::{ContentOptions, MessageFormat};
use crate::http::{self, NodeAuth, Service};
use crate::node::{unix_now, RunInfo, Shared};
use crate::state::{LinkState, SpillConfig, StateConfig};
use crate::FleetError;

/// The Flower app the SuperNodes run: a FAB (the zip `flwr build` writes)
/// and the run's config overrides, as `GetRun`/`GetFab` serve them.
#[derive(Debug, Clone)]
pub struct FleetApp {
    /// The FAB's bytes, served as they are.
    pub fab: Bytes,
    /// `sha256(fab)` in hex (the SuperNode checks it).
    pub fab_hash: String,
    /// `<publisher>/<project.name>` from the FAB's `pyproject.toml`.
    pub fab_id: String,
    /// `project.version` from the FAB's `pyproject.toml`.
    pub fab_version: String,
    /// `Run.override_config`: every key must exist in the FAB's
    /// `[tool.flwr.app.config]` (a SuperNode dies on an unknown key).
    pub override_config: BTreeMap<String, pb::Scalar>,
}

impl FleetApp {
    /// An app from the FAB's bytes and the id and version read from its
    /// `pyproject.toml`, with no config overrides.
    pub fn new(fab: Bytes, fab_id: impl Into<String>, fab_version: impl Into<String>) -> Self {
        // An object id is exactly the hex SHA-256 of the bytes.
        let fab_hash = ObjectId::of(&fab).to_string();
        FleetApp {
            fab,
            fab_hash,
            fab_id: fab_id.into(),
            fab_version: fab_version.into(),
            override_config: BTreeMap::new(),
        }
    }

    /// The app of a FAB read by `flower-fab` (hash, `fab_id`, version from
    /// its `pyproject.toml`), with `run_config`'s overrides (already checked
    /// against the FAB's defaults, as a SuperNode requires).
    pub fn from_fab(fab: &flower_fab::Fab, run_config: &flower_fab::RunConfig) -> Self {
        FleetApp {
            fab: fab.content().clone(),
            fab_hash: fab.hash_str().to_owned(),
            fab_id: fab.fab_id(),
            fab_version: fab.fab_version().to_owned(),
            override_config: run_config
                .override_scalars()
                .into_iter()
                .map(|(k, v)| (k, pb::Scalar::from(v)))
                .collect(),
        }
    }

    /// Adds config overrides.
    #[must_use]
    pub fn override_config(mut self, overrides: BTreeMap<String, pb::Scalar>) -> Self {
        self.override_config = overrides;
        self
    }
}

/// Settings of the Fleet API. The `Default` values are the only copy of
/// these defaults.
#[derive(Clone)]
#[non_exhaustive]
#[must_use]
pub struct FleetOptions {
    /// Address to bind (default `0.0.0.0:9092`, Flower's Fleet API port;
    /// port 0 picks a free port).
    pub address: SocketAddr,
    /// TLS certificate and key (PEM), as for the grpc-bidi port.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP (`--insecure`); without it or `tls`, bind refuses.
    pub insecure: bool,
    /// The app (FAB) the SuperNodes run; required.
    pub app: Option<FleetApp>,
    /// The run's id (default: random).
    pub run_id: Option<u64>,
    /// Record layout and reply keys (default: message API, arrays `"0"`,
    /// `"1"`, ..., loss from `loss` or `eval_loss`).
    pub content: ContentOptions,
    /// Only keys in `authorized_keys` may connect, and only as pre-registered
    /// nodes (flwr's `--enable-supernode-auth`; default off: SuperNodes
    /// self-register with any key, every request still signed).
    pub enable_supernode_auth: bool,
    /// The authorized node keys; a key removed from them deactivates its
    /// node and fails its pending exchange.
    pub authorized_keys: Option<AuthorizedNodeKeys>,
    /// Largest request body (default 8 MiB: a 5 MiB chunk object plus
    /// room for large config records).
    pub max_request_bytes: usize,
    /// Bounds on reply object trees.
    pub limits: Limits,
    /// Connection-level limits (connection cap, TLS handshake and header
    /// read timeout, TCP keepalive), as on the grpc-bidi port.
    pub listener: ListenerOptions,
    /// Housekeeping period: silent nodes, expired instructions and push
    /// sessions (default 1 s).
    pub tick: Duration,
    /// Also serve the Fleet API over gRPC (`flwr.proto.Fleet`, for
    /// SuperNodes of flwr 1.13 to 1.39) on this address, with the same TLS
    /// and link state (default: none).
    pub grpc_address: Option<SocketAddr>,
    /// When pushed reply contents spill to disk (default: past
    /// [`SpillConfig::DEFAULT_MEMORY_LIMIT`], in the temporary directory;
    /// `None`: never).
    pub spill: Option<SpillConfig>,
    /// Request bodies of 1 MiB or more (pushed chunks) read at once, after
    /// their signature checks (default
    /// [`FleetOptions::DEFAULT_LARGE_BODY_READERS`]; at least 1). SuperNodes
    /// push two objects at a time each: without a bound every node's
    /// chunks would be in memory together.
    pub large_body_readers: usize,
}

impl std::fmt::Debug for FleetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetOptions")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field("insecure", &self.insecure)
            .field("app", &self.app.as_ref().map(|a| &a.fab_id))
            .field("run_id", &self.run_id)
            .field("content", &self.content)
            .field("enable_supernode_auth", &self.enable_supernode_auth)
            .field(
                "authorized_keys",
                &self.authorized_keys.as_ref().map(AuthorizedNodeKeys::len),
            )
            .field("max_request_bytes", &self.max_request_bytes)
            .field("grpc_address", &self.grpc_address)
            .field("listener", &self.listener)
            .field("spill", &self.spill)
            .field("large_body_readers", &self.large_body_readers)
            .finish_non_exhaustive()
    }
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            address: SocketAddr::from(([0, 0, 0, 0], 9092)),
            tls: None,
            insecure: false,
            app: None,
            run_id: None,
            content: ContentOptions::default(),
            enable_supernode_auth: false,
            authorized_keys: None,
            max_request_bytes: 8 << 20,
            limits: Limits::default(),
            listener: ListenerOptions::default(),
            tick: Duration::from_secs(1),
            grpc_address: None,
            spill: Some(SpillConfig::default()),
            large_body_readers: Self::DEFAULT_LARGE_BODY_READERS,
        }
    }
}

impl FleetOptions {
    /// Large request bodies read at once by default.
    pub const DEFAULT_LARGE_BODY_READERS: usize = 2;

    /// Defaults serving `app`.
    pub fn new(app: FleetApp) -> Self {
        FleetOptions {
            app: Some(app),
            ..FleetOptions::default()
        }
    }

    /// The address to bind.
    pub fn address(mut self, address: SocketAddr) -> Self {
        self.address = address;
        self
    }

    /// Serves TLS with these PEM files.
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// Serves plain HTTP.
    pub fn insecure(mut self) -> Self {
        self.insecure = true;
        self
    }

    /// The run's id.
    pub fn run_id(mut self, run_id: u64) -> Self {
        self.run_id = Some(run_id);
        self
    }

    /// The message format.
    pub fn message_format(mut self, format: MessageFormat) -> Self {
        self.content.format = format;
        self
    }

    /// The array names of `Modern` instructions (the initial `.npz` keys).
    pub fn array_keys(mut self, keys: Vec<String>) -> Self {
        self.content.array_keys = Some(keys);
        self
    }

    /// Admits only `keys`, as pre-registered nodes.
    pub fn supernode_auth(mut self, keys: AuthorizedNodeKeys) -> Self {
        self.enable_supernode_auth = true;
        self.authorized_keys = Some(keys);
        self
    }

    /// Also serves gRPC Fleet (flwr ≤ 1.39 SuperNodes) on `address`.
    pub fn grpc_address(mut self, address: SocketAddr) -> Self {
        self.grpc_address = Some(address);
        self
    }

    /// The largest request body.
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// The connection-level limits.
    pub fn listener(mut self, listener: ListenerOptions) -> Self {
        self.listener = listener;
        self
    }

    /// Where and past what memory pushed reply contents spill (`None`:
    /// they never do).
    pub fn spill(mut self, spill: Option<SpillConfig>) -> Self {
        self.spill = spill;
        self
    }

    /// Large request bodies read at once (0 is taken as 1).
    pub fn large_body_readers(mut self, readers: usize) -> Self {
        self.large_body_readers = readers.max(1);
        self
    }
}

/// Flower's Fleet API for stock SuperNodes (flwr ≥ 1.40, protobuf over
/// HTTP/1.1), as a `flower-server` [`Transport`]:
///
/// ```no_run
/// # async fn demo(fab: bytes::Bytes, strategy: Box<dyn flower_strategy::Strategy>) -> Result<(), flower_server::ServerError> {
/// use flower_fleet::{FleetApi, FleetApp, FleetOptions};
/// use flower_server::Server;
///
/// let app = FleetApp::new(fab, "flwrlabs/my-app", "1.0.0");
/// let fleet = FleetApi::new(FleetOptions::new(app).insecure());
/// let server = Server::builder()
///     .boxed_strategy(strategy)
///     .insecure()
///     .grpc_bidi(false)
///     .transport(fleet)
///     .bind()
///     .await?;
/// # let _ = server; Ok(()) }
/// ```
///
/// Every SuperNode that activates becomes a client of the round driver
/// ([`FleetNode`](crate::FleetNode)); one run per server process.
#[derive(Debug)]
pub struct FleetApi {
    options: FleetOptions,
}

impl FleetApi {
    /// The Fleet API with `options`.
    pub fn new(options: FleetOptions) -> Self {
        FleetApi { options }
    }

    /// Serves the Fleet API with no round driver and no initial run: runs
    /// are registered on the returned [`FleetLink`] (`LinkState::add_run`)
    /// and instructions queued on it, as the Control and Runtime APIs of a
    /// SuperLink do. `options.app` is ignored. The accept loop ends when
    /// `stop` completes.
    pub async fn serve_runs(
        options: FleetOptions,
        stop: BoxFuture<'static, ()>,
    ) -> Result<FleetServer, FleetError> {
        let tls = Self::tls(&options)?;
        let (shared, local_addr, grpc_addr, serve) = start(&options, tls, None, None, stop).await?;
        Ok(FleetServer {
            link: FleetLink { shared },
            local_addr,
            grpc_addr,
            serve: serve.boxed(),
        })
    }

    fn tls(options: &FleetOptions) -> Result<Option<Arc<rustls::ServerConfig>>, FleetError> {
        let tls = match (&options.tls, options.insecure) {
            (Some(files), _) => Some(http::tls::config(files)?),
            (None, true) => None,
            (None, false) => {
                return Err(FleetError::Config(
                    "neither TLS files nor insecure (plain HTTP) chosen".into(),
                ))
            }
        };
        if options.enable_supernode_auth && options.authorized_keys.is_none() {
            return Err(FleetError::Config(
                "supernode authentication needs authorized keys".into(),
            ));
        }
        Ok(tls)
    }

    fn prepare(
        options: &FleetOptions,
    ) -> Result<(FleetApp, Option<Arc<rustls::ServerConfig>>), FleetError> {
        let app = options
            .app
            .clone()
            .ok_or_else(|| FleetError::Config("no app (FAB) to serve".into()))?;
        Ok((app, Self::tls(options)?))
    }
}

/// The link state behind a running Fleet API, shared with the services
/// that create runs and queue instructions (see [`FleetApi::serve_runs`]).
#[derive(Debug, Clone)]
pub struct FleetLink {
    shared: Arc<Shared>,
}

impl FleetLink {
    /// Runs `f` on the link state (under its lock: keep `f` short).
    pub fn with_state<R>(&self, f: impl FnOnce(&mut LinkState) -> R) -> R {
        self.shared.with_state(f)
    }

    /// The bounds on object trees the Fleet API enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }
}

/// A Fleet API started by [`FleetApi::serve_runs`].
#[must_use]
pub struct FleetServer {
    /// Its link state.
    pub link: FleetLink,
    /// The bound address.
    pub local_addr: SocketAddr,
    /// The bound gRPC Fleet address, if asked for.
    pub grpc_addr: Option<SocketAddr>,
    /// Serves until the stop future completes (then every run is finished).
    pub serve: BoxFuture<'static, ()>,
}

impl std::fmt::Debug for FleetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetServer")
            .field("local_addr", &self.local_addr)
            .field("grpc_addr", &self.grpc_addr)
            .finish_non_exhaustive()
    }
}

/// Binds the Fleet API over a new link state: with `clients`, active nodes
/// become round-driver clients; with `run`, that run is registered as
/// running. Returns the state, the bound address (and gRPC address) and the
/// serving future.
async fn start(
    options: &FleetOptions,
    tls: Option<Arc<rustls::ServerConfig>>,
    clients: Option<ClientManager>,
    run: Option<RunInfo>,
    stop: BoxFuture<'static, ()>,
) -> Result<
    (
        Arc<Shared>,
        SocketAddr,
        Option<SocketAddr>,
        impl std::future::Future<Output = ()>,
    ),
    FleetError,
> {
    let seed = rand::thread_rng().next_u64();
    let mut config = StateConfig::new(run.as_ref().map_or(0, |r| r.run.run_id));
    config.enable_supernode_auth = options.enable_supernode_auth;
    config.limits = options.limits.clone();
    config.spill = options.spill.clone();
    let mut state = LinkState::new(config, seed);
    if let Some(run) = run {
        state.add_run(run.run, run.fab);
    }
    let shared = Shared::new(
        state,
        clients,
        options.content.clone(),
        options.limits.clone(),
    );
    fleet_metrics(&shared, options.authorized_keys.as_ref());
    let service = Arc::new(Service {
        shared: shared.clone(),
        auth: NodeAuth {
            authorized: options.authorized_keys.clone(),
        },
        max_request_bytes: options.max_request_bytes,
        large_bodies: tokio::sync::Semaphore::new(options.large_body_readers.max(1)),
    });
    let listener = HardenedListener::bind(
        options.address,
        options.listener.clone(),
        tls.clone(),
        Protocol::Http1,
    )
    .await
    .map_err(|e| match e {
        ServerError::Bind { address, source } => FleetError::Bind { address, source },
        other => FleetError::Config(flower_server::error_chain(&other)),
    })?;
    let local_addr = listener.local_addr();
    info!(
        address = %local_addr,
        tls = tls.is_some(),
        "fleet api listening on {local_addr}"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let housekeeping = housekeeping(shared.clone(), options.tick, stop_rx.clone());
    let revocations = options
        .authorized_keys
        .clone()
        .map(|keys| revocations(shared.clone(), keys, stop_rx.clone()));
    let grpc = match options.grpc_address {
        Some(address) => {
            let (addr, serve) =
                grpc_server(options, address, service.clone(), stop_rx.clone()).await?;
            info!(address = %addr, "fleet api (grpc, flwr <= 1.39) listening on {addr}");
            Some((addr, serve))
        }
        None => None,
    };
    let grpc_addr = grpc.as_ref().map(|(a, _)| *a);
    let accept = http::accept_loop(listener, options.listener.handshake_timeout, service, stop);
    let state = shared.clone();
    let serve = async move {
        let housekeeping = tokio::spawn(housekeeping);
        let revocations = revocations.map(tokio::spawn);
        let grpc = grpc.map(|(_, serve)| tokio::spawn(serve));
        accept.await;
        let _ = stop_tx.send(true);
        if let Some(g) = grpc {
            let _ = g.await;
        }
        // Fail what is still waiting: the driver must not hang.
        state.with_state(LinkState::finish_run);
        let _ = housekeeping.await;
        if let Some(r) = revocations {
            let _ = r.await;
        }
    };
    Ok((shared, local_addr, grpc_addr, serve))
}

/// Binds the gRPC Fleet service over the HTTP service's handlers; it
/// serves until `stop` turns true.
async fn grpc_server(
    options: &FleetOptions,
    address: SocketAddr,
    service: Arc<Service>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, BoxFuture<'static, ()>), FleetError> {
    // The same hardened listener as the other ports (connection cap,
    // handshake timeout, fd back-off), doing TLS with ALPN `h2`.
    let tls = match &options.tls {
        Some(files) => Some(
            server_tls_config(files, &[b"h2"], false)
                .map_err(|e| FleetError::Tls(flower_server::error_chain(&e)))?,
        ),
        None => None,
    };
    let listener = HardenedListener::bind(address, options.listener.clone(), tls, Protocol::Http2)
        .await
        .map_err(|e| match e {
            ServerError::Bind { address, source } => FleetError::Bind { address, source },
            other => FleetError::Config(flower_server::error_chain(&other)),
        })?;
    let local = listener.local_addr();
    let incoming = listener.incoming();
    let fleet = pb::fleet_server::FleetServer::new(crate::grpc::GrpcFleet::new(service))
        .max_decoding_message_size(options.max_request_bytes)
        .max_encoding_message_size(pb::GRPC_MAX_MESSAGE_LENGTH);
    let mut builder = tonic::transport::Server::builder();
    let router = builder.add_service(fleet);
    let serve = async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            warn!(error = %e, "grpc fleet api ended");
        }
    };
    Ok((local, serve.boxed()))
}

fn run_info(app: &FleetApp, run_id: u64) -> RunInfo {
    let now = chrono_like_now();
    RunInfo {
        run: pb::Run {
            run_id,
            fab_id: app.fab_id.clone(),
            fab_version: app.fab_version.clone(),
            override_config: app.override_config.clone(),
            fab_hash: app.fab_hash.clone(),
            pending_at: now.clone(),
            starting_at: now.clone(),
            running_at: now,
            status: Some(pb::RunStatus {
                status: "running".into(),
                sub_status: String::new(),
                details: String::new(),
            }),
            // The SuperNode keeps one Context per series.
            series_id: run_id,
            ..pb::Run::default()
        },
        fab: pb::Fab {
            hash_str: app.fab_hash.clone(),
            content: app.fab.clone(),
            verifications: BTreeMap::new(),
        },
    }
}

/// Unix seconds as text (the SuperNode does not read the `*_at` fields).
fn chrono_like_now() -> String {
    format!("{:.6}", unix_now())
}

impl Transport for FleetApi {
    fn name(&self) -> &'static str {
        "fleet-api"
    }

    fn bind(
        self: Box<Self>,
        clients: ClientManager,
        stop: BoxFuture<'static, ()>,
    ) -> BoxFuture<'static, Result<BoundTransport, ServerError>> {
        async move {
            let options = self.options;
            let config_error = |e| match e {
                FleetError::Config(m) => ServerError::Config(m),
                FleetError::Bind { address, source } => ServerError::Bind { address, source },
                other => ServerError::Tls(Box::new(other)),
            };
            let (app, tls) = Self::prepare(&options).map_err(config_error)?;
            let random_run_id = rand::thread_rng().next_u64();
            // Below 2^63: the same number in every language's integers.
            let run_id = options.run_id.unwrap_or(random_run_id >> 1);
            let run = run_info(&app, run_id);
            let (_, local_addr, _, serve) = start(&options, tls, Some(clients), Some(run), stop)
                .await
                .map_err(config_error)?;
            info!(run_id, fab_id = %app.fab_id, "fleet api serving one run");
            Ok(BoundTransport {
                local_addr,
                serve: async move {
                    serve.await;
                    Ok(())
                }
                .boxed(),
            })
        }
        .boxed()
    }
}

async fn housekeeping(
    shared: Arc<Shared>,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => shared.with_state(|s| s.tick(unix_now())),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn revocations(
    shared: Arc<Shared>,
    keys: AuthorizedNodeKeys,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut removals = keys.subscribe_removals();
    loop {
        let removed = tokio::select! {
            r = removals.recv() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match removed {
            Ok(removed) => {
                for key in removed.iter() {
                    if let Some(node_id) = shared.with_state(|s| s.revoke_key(key.sec1_bytes())) {
                        warn!(
                            node_id,
                            key = key.fingerprint(),
                            "node key revoked; node removed"
                        );
                    }
                }
            }
            Err(RecvError::Lagged(_)) => {
                // Missed some swaps: drop every node whose key is gone.
                let current: std::collections::HashSet<Vec<u8>> = keys
                    .snapshot()
                    .keys()
                    .map(|k| k.sec1_bytes().to_vec())
                    .collect();
                shared.with_state(|s| {
                    for key in s.node_keys() {
                        if !current.contains(&key) {
                            s.revoke_key(&key);
                        }
                    }
                });
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// The Fleet API's scrape-time metrics. Weak references: the metrics
/// outlive a run's state without keeping it alive.
fn fleet_metrics(shared: &Arc<Shared>, keys: Option<&AuthorizedNodeKeys>) {
    let metrics = shared.metrics().clone();
    let weak = Arc::downgrade(shared);
    metrics.gauge_fn(
        "flower_fleet_nodes_online",
        "SuperNodes online (active, heartbeating)",
        move || {
            let n = weak.upgrade().map_or(0, |s| s.nodes_online());
            vec![(Vec::new(), n as f64)]
        },
    );
    let weak = Arc::downgrade(shared);
    metrics.gauge_fn(
        "flower_fleet_objects",
        "Objects (messages, arrays) held in the Fleet API's object store",
        move || {
            let n = weak
                .upgrade()
                .map_or(0, |s| s.read_state(|state| state.store().len()));
            vec![(Vec::new(), n as f64)]
        },
    );
    let weak = Arc::downgrade(shared);
    metrics.gauge_fn(
        "flower_fleet_object_bytes",
        "Bytes of content in the Fleet API's object store",
        move || {
            let n = weak
                .upgrade()
                .map_or(0, |s| s.read_state(|state| state.store().content_bytes()));
            vec![(Vec::new(), n as f64)]
        },
    );
    let weak = Arc::downgrade(shared);
    metrics.counter_fn(
        "flower_fleet_node_auth_refusals",
        "Fleet requests refused by node authentication, by reason",
        move || {
            let Some(shared) = weak.upgrade() else {
                return Vec::new();
            };
            shared
                .refusals()
                .samples()
                .map(|(reason, n)| (vec![("reason", reason.to_string())], n as f64))
                .collect()
        },
    );
    if let Some(keys) = keys.cloned() {
        metrics.gauge_fn(
            "flower_fleet_authorized_keys",
            "SuperNode public keys in the current authorized set",
            move || vec![(Vec::new(), keys.len() as f64)],
        );
    }
}
