//! `flower-server`: a Flower grpc-bidi server that stock Python Flower
//! clients (and flower-rs clients) join over TLS.
//!
//! Settings (flags, or the same keys in a `--config` TOML file) map onto
//! `flower_server::Server::builder()`; this binary adds only logging, signal
//! handling and exit codes.

mod progress;
mod settings;

use std::process::ExitCode;

use std::sync::Arc;

use flower_fleet::{FleetApi, FleetApp, FleetOptions, MessageFormat};
use flower_server::{error_chain, read_npz_named, DirectoryStore, MsgSetup, Server, ServerError};
use settings::Settings;
use tracing::{error, info};

/// jemalloc returns freed model-sized buffers to the OS; glibc's malloc
/// keeps them once its dynamic mmap threshold has grown past a chunk. Its
/// background thread purges freed pages after a second (`.cargo/config.toml`
/// sets the decay at build time).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "plot") {
        return plot_command();
    }
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flower-server: {e}");
            return ExitCode::from(2);
        }
    };
    let log_json = settings.log_json.unwrap_or(false);
    let mode = progress::Mode::resolve(settings.progress.as_deref(), log_json);
    let bar = (mode == progress::Mode::Bar).then(progress::new_bar);
    init_logging(log_json, bar.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flower-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings, mode, bar)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("flower-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `flower-server plot OUTPUT_DIR`: renders a finished (or running) run's
/// `history.json` into `history.png` and `history.svg` next to it.
fn plot_command() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let dir = match args.as_slice() {
        [flag] if flag == "-h" || flag == "--help" => {
            println!("Usage: flower-server plot OUTPUT_DIR\n\nRenders OUTPUT_DIR/history.json into OUTPUT_DIR/history.png and history.svg\n(loss, clients per round and every aggregated metric, fit vs evaluate).");
            return ExitCode::SUCCESS;
        }
        [dir] => std::path::PathBuf::from(dir),
        _ => {
            eprintln!("usage: flower-server plot OUTPUT_DIR");
            return ExitCode::from(2);
        }
    };
    match flower_plot::plot_output_dir(&dir) {
        Ok(files) => {
            println!("plot: {}", files.png.display());
            println!("plot: {}", files.svg.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flower-server plot: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool, bar: Option<indicatif::ProgressBar>) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(progress::BarWriter::new(bar));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(
    settings: Settings,
    mode: progress::Mode,
    bar: Option<indicatif::ProgressBar>,
) -> Result<(), String> {
    if settings.control_api_address.is_some()
        || (settings.fleet_api_address.is_some() && settings.fab.is_none())
    {
        return run_superlink(settings).await;
    }
    let chain = |e: ServerError| error_chain(&e);
    if settings.plot.unwrap_or(false) && settings.output_dir.is_none() {
        return Err("--plot needs --output-dir (the plot is written next to history.json)".into());
    }
    let (serve_options, insecure) = settings.serve_options()?;
    // Before any socket is opened: room for --max-connections.
    flower_server::listener::raise_fd_limit();
    let driver_config = settings.driver_config()?;
    let (initial, array_names) = match &settings.initial_parameters {
        Some(path) => {
            let (parameters, names) =
                read_npz_named(path, flower_core::NUMPY_TENSOR_TYPE).map_err(chain)?;
            (Some(parameters), Some(names))
        }
        None => (None, None),
    };
    let grpc_bidi = settings.address.is_some() || settings.fleet_api_address.is_none();
    let mut builder = Server::builder();
    if settings.message_api() {
        let setup = msg_setup(&settings, grpc_bidi, initial, array_names.as_deref())?;
        info!(
            strategy = setup.strategy.name(),
            api = "message",
            rounds = driver_config.num_rounds,
            "starting"
        );
        builder = builder.msg_strategy(setup);
    } else {
        if let Some(seed) = settings.insecure_dp_noise_seed {
            tracing::warn!(
                seed,
                "--insecure-dp-noise-seed: DP noise is predictable from this seed; for tests only"
            );
        }
        let common = flower_strategy::CommonOptions {
            // DP noise from the OS unless the explicitly insecure test flag is given.
            seed: settings.insecure_dp_noise_seed,
            initial_parameters: initial,
            ..Default::default()
        };
        let strategy = flower_strategy::build_strategy(&settings.strategy_spec(), common)
            .map_err(|e| e.to_string())?;
        info!(
            strategy = strategy.name(),
            rounds = driver_config.num_rounds,
            "starting"
        );
        builder = builder.boxed_strategy(strategy);
    }

    // The grpc-bidi port serves unless only the Fleet API was asked for.
    builder = builder
        .serve_options(serve_options.clone())
        .grpc_bidi(grpc_bidi)
        .driver(driver_config)
        .allow_insecure_auth(settings.allow_insecure_auth.unwrap_or(false));
    if insecure {
        builder = builder.insecure();
    }
    // Served before binding, so that /readyz says 503 until the listeners
    // are up and the token source is loaded.
    let metrics = flower_server::Metrics::new();
    let endpoint = match settings.metrics_address {
        Some(address) => Some(
            flower_server::metrics::serve(address, metrics.clone())
                .await
                .map_err(chain)?,
        ),
        None => None,
    };
    builder = builder.metrics(metrics.clone());
    if mode != progress::Mode::Off {
        builder = builder.observer(Arc::new(flower_server::metrics::LogProgress));
    }
    if let Some(bar) = bar {
        builder = builder.observer(Arc::new(progress::BarProgress::new(bar)));
    }
    if let Some(dir) = &settings.output_dir {
        let mut store = DirectoryStore::new(dir);
        if let Some(names) = &array_names {
            store = store.with_array_names(names.clone());
        }
        builder = builder.store(Arc::new(store));
    }
    let auth_flags = settings.auth_flags()?;
    if grpc_bidi {
        if let Some(auth) = auth_flags
            .clone()
            .into_config()
            .map_err(|e| e.to_string())?
        {
            builder = builder.auth(auth);
        }
    }
    let node_keys = match settings.fleet_api_address {
        None => {
            if settings.fab.is_some() || !settings.run_config.is_empty() {
                return Err("--fab and --run-config need --fleet-api-address".into());
            }
            None
        }
        Some(address) => {
            let (fleet, node_keys) =
                fleet_options(&settings, address, &serve_options, insecure, array_names).await?;
            builder = builder.transport(FleetApi::new(fleet));
            node_keys
        }
    };
    if let Some(manager) = &node_keys {
        node_key_metrics(&metrics, manager);
    }
    let server = builder.bind().await.map_err(|e| match e {
        ServerError::Auth(e) => format!("authentication: {e}"),
        ServerError::Config(why) => why,
        other => chain(other),
    })?;
    if grpc_bidi {
        println!("flower-server listening on {}", server.local_addr());
    }
    for (name, addr) in server.transport_addrs() {
        println!("flower-server {name} listening on {addr}");
    }
    if let Some(endpoint) = &endpoint {
        println!(
            "flower-server metrics on http://{}/metrics",
            endpoint.local_addr()
        );
    }

    let outcome = server.run(wait_for_signal()).await;
    if let Some(manager) = &node_keys {
        manager.shutdown();
    }
    if let Some(endpoint) = endpoint {
        endpoint.stop().await;
    }
    // A plot of whatever was completed, even when the run ended early.
    if let (Some(dir), true) = (&settings.output_dir, settings.plot.unwrap_or(false)) {
        match flower_plot::plot_output_dir(dir) {
            Ok(files) => println!("plot: {}", files.png.display()),
            Err(e) => tracing::warn!(error = %error_chain(&e), "no plot"),
        }
    }
    match outcome {
        Ok(outcome) => {
            info!(rounds = outcome.completed_rounds, "done");
            if let Some(dir) = &settings.output_dir {
                println!("history: {}", dir.join("history.json").display());
                println!("model: {}", dir.join("model.npz").display());
            }
            Ok(())
        }
        Err(ServerError::Interrupted) => {
            Err("interrupted by signal; the last completed round is saved".into())
        }
        Err(e @ ServerError::TooFewClients { .. }) => Err(format!(
            "ending run: {e}; the last completed round is saved"
        )),
        Err(e) => Err(chain(e)),
    }
}

/// The Fleet API's settings: the FAB and its run config (validated as
/// Flower does), the message format, TLS as the grpc port's, and the node
/// keys (their manager is returned so it lives as long as the run).
async fn fleet_options(
    settings: &Settings,
    address: std::net::SocketAddr,
    serve_options: &flower_server::ServeOptions,
    insecure: bool,
    array_names: Option<Vec<String>>,
) -> Result<(FleetOptions, Option<flower_auth::node::NodeKeyManager>), String> {
    let fab_path = settings
        .fab
        .as_ref()
        .ok_or("--fleet-api-address needs --fab FILE (the app `flwr build` writes)")?;
    let fab = flower_fab::Fab::from_file(fab_path)
        .map_err(|e| format!("--fab {}: {}", fab_path.display(), error_chain(&e)))?;
    let run_config = flower_fab::RunConfig::from_args(&fab, &settings.run_config)
        .map_err(|e| format!("--run-config: {}", error_chain(&e)))?;
    info!(
        fab_id = %fab.fab_id(),
        fab_version = fab.fab_version(),
        fab_hash = fab.hash_str(),
        "serving app"
    );
    let app = FleetApp::from_fab(&fab, &run_config);
    let mut fleet = FleetOptions::new(app)
        .address(address)
        .listener(serve_options.listener.clone())
        .spill(settings.fleet_spill()?)
        .large_body_readers(settings.fleet_body_readers());
    fleet = match (&serve_options.tls, insecure) {
        (Some(tls), _) => fleet.tls(tls.clone()),
        (None, _) => fleet.insecure(),
    };
    if let Some(format) = settings.fleet_message_format.as_deref() {
        fleet = fleet.message_format(match format {
            "legacy" => MessageFormat::Legacy,
            _ => MessageFormat::Modern,
        });
    }
    if let Some(names) = array_names {
        fleet = fleet.array_keys(names);
    }
    if let Some(address) = settings.fleet_grpc_address {
        fleet = fleet.grpc_address(address);
    }
    let keys_config = flower_auth::node::NodeKeysConfig::from_flags(
        &settings.auth_flags()?,
        settings.authorized_keys.clone(),
        settings.vault_node_keys_path.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let enable = settings.enable_supernode_auth.unwrap_or(false);
    let manager = match (enable, keys_config) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(
                "--authorized-keys / --vault-node-keys-path need --enable-supernode-auth".into(),
            )
        }
        (true, None) => return Err(
            "--enable-supernode-auth needs --authorized-keys FILE and/or --vault-node-keys-path"
                .into(),
        ),
        (true, Some(config)) => {
            let manager = flower_auth::node::NodeKeyManager::start(&config)
                .await
                .map_err(|e| format!("SuperNode keys: {}", error_chain(&e)))?;
            info!(
                source = manager.source_description(),
                keys = manager.keys().len(),
                "SuperNode authentication on"
            );
            fleet = fleet.supernode_auth(manager.keys());
            Some(manager)
        }
    };
    Ok((fleet, manager))
}

/// The drop-in SuperLink: the Fleet API for SuperNodes, and the Control and
/// Runtime APIs for `flwr run` and the ServerApps it starts, until a signal.
async fn run_superlink(settings: Settings) -> Result<(), String> {
    use flower_superlink::{SuperExecOptions, SuperLink, SuperLinkOptions};
    if settings.fab.is_some() || !settings.run_config.is_empty() {
        return Err(
            "--control-api-address serves runs submitted with `flwr run`; \
             it cannot be combined with --fab/--run-config"
                .into(),
        );
    }
    if settings.strategy.is_some() {
        return Err(
            "--strategy runs the Rust round driver over --fab; runs submitted with \
             `flwr run` use the FAB's ServerApp"
                .into(),
        );
    }
    let fleet_address = settings
        .fleet_api_address
        .ok_or("the Control API needs --fleet-api-address (where SuperNodes connect)")?;
    let (serve_options, insecure) = settings.serve_options()?;
    let mut options = SuperLinkOptions::default()
        .allow_remote_control(settings.allow_remote_control.unwrap_or(false));
    if let Some(address) = settings.control_api_address {
        options = options.address(address);
    }
    if let Some(tls) = &serve_options.tls {
        options = options.tls(tls.clone());
    }
    options = options.superexec(match settings.isolation.as_deref() {
        Some("process") => None,
        _ => {
            let mut superexec = SuperExecOptions::default();
            if let Some(program) = &settings.superexec_program {
                superexec.program = program.clone();
            }
            superexec.root_certificates = settings.ssl_ca_certfile.clone();
            Some(superexec)
        }
    });
    if let Some(path) = &settings.database {
        let store = flower_superlink::SqliteStore::open(path)
            .map_err(|e| format!("--database {}: {}", path.display(), error_chain(&e)))?;
        options = options.store(std::sync::Arc::new(store));
    }
    // Refuse a reachable Control API before anything binds.
    options.check_access().map_err(|e| error_chain(&e))?;
    let mut fleet = FleetOptions::default()
        .address(fleet_address)
        .listener(serve_options.listener.clone())
        .spill(settings.fleet_spill()?)
        .large_body_readers(settings.fleet_body_readers());
    fleet = match (&serve_options.tls, insecure) {
        (Some(tls), _) => fleet.tls(tls.clone()),
        (None, _) => fleet.insecure(),
    };
    if let Some(address) = settings.fleet_grpc_address {
        fleet = fleet.grpc_address(address);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopper = |mut rx: tokio::sync::watch::Receiver<bool>| {
        use futures::FutureExt;
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
        .boxed()
    };
    let fleet = FleetApi::serve_runs(fleet, stopper(stop_rx.clone()))
        .await
        .map_err(|e| error_chain(&e))?;
    let superlink = SuperLink::start(options, fleet.link.clone(), stopper(stop_rx))
        .await
        .map_err(|e| error_chain(&e))?;
    println!("flower-server fleet-api listening on {}", fleet.local_addr);
    if let Some(addr) = fleet.grpc_addr {
        println!("flower-server fleet-grpc listening on {addr}");
    }
    println!(
        "flower-server control-api listening on {}",
        superlink.local_addr
    );
    let serve_fleet = tokio::spawn(fleet.serve);
    let serve_control = tokio::spawn(superlink.serve);
    wait_for_signal().await;
    let _ = stop_tx.send(true);
    let _ = serve_control.await;
    let _ = serve_fleet.await;
    Ok(())
}

/// The message-API run of `--strategy-api message`: the strategy, its
/// configs and the initial model as an ArrayRecord keyed by the `.npz`
/// names. Refused where message-API messages cannot reach every client.
fn msg_setup(
    settings: &Settings,
    grpc_bidi: bool,
    initial: Option<flower_core::Parameters>,
    names: Option<&[String]>,
) -> Result<MsgSetup, String> {
    if grpc_bidi {
        return Err(
            "--strategy-api message runs SuperNodes only: give --fleet-api-address \
                    without --address (grpc-bidi clients take legacy strategies)"
                .into(),
        );
    }
    if settings.fleet_message_format.as_deref() == Some("legacy") {
        return Err("--strategy-api message needs the modern --fleet-message-format".into());
    }
    if settings.insecure_dp_noise_seed.is_some() {
        return Err(
            "--insecure-dp-noise-seed applies to legacy strategies only \
                    (message-API DP noise always comes from the OS)"
                .into(),
        );
    }
    let (Some(initial), Some(names)) = (initial, names) else {
        return Err(
            "--strategy-api message needs --initial-parameters FILE.npz (a \
                    message-API ClientApp cannot provide the initial model)"
                .into(),
        );
    };
    let initial_arrays = names
        .iter()
        .zip(initial.tensors)
        .map(|(name, npy)| {
            flower_strategy::msg::Array::from_npy(npy)
                .map(|a| (name.clone(), a))
                .map_err(|e| format!("--initial-parameters array {name:?}: {e}"))
        })
        .collect::<Result<flower_strategy::msg::ArrayRecord, String>>()?;
    let built = flower_strategy::build_msg_strategy(&settings.msg_strategy_spec())
        .map_err(|e| e.to_string())?;
    Ok(MsgSetup {
        strategy: built.strategy,
        initial_arrays,
        train_config: built.train_config,
        evaluate_config: built.evaluate_config,
    })
}

/// Reload metrics of the SuperNode key sources (their set's size is the
/// Fleet API's `flower_fleet_authorized_keys`).
fn node_key_metrics(metrics: &flower_server::Metrics, manager: &flower_auth::node::NodeKeyManager) {
    let keys = manager.clone();
    metrics.gauge_fn(
        "flower_fleet_keys_seconds_since_reload",
        "Seconds since the authorized SuperNode keys were last loaded successfully",
        move || vec![(Vec::new(), keys.stats().since_last_success().as_secs_f64())],
    );
    let keys = manager.clone();
    metrics.counter_fn(
        "flower_fleet_key_reloads",
        "Reloads of the authorized SuperNode keys, by outcome",
        move || {
            let stats = keys.stats();
            vec![
                (vec![("outcome", "ok".to_string())], stats.reloads() as f64),
                (
                    vec![("outcome", "error".to_string())],
                    stats.reload_failures() as f64,
                ),
            ]
        },
    );
}

/// Completes on SIGINT or SIGTERM (never, when the handlers cannot be set).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => info!("SIGINT received: stopping"),
        _ = term.recv() => info!("SIGTERM received: stopping"),
    }
}
