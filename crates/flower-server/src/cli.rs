//! Command line and TOML configuration of `flower-server`.
//!
//! Every flag has a TOML key of the same name (kebab-case) in the file given
//! with `--config`; a flag on the command line wins over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flower_server::{
    parameters_from_npz, serve, ClientManager, DriverConfig, FlowerTransport, RoundDriver,
    ServeOptions, ServerError, TlsFiles,
};
use flower_strategy::StrategySpec;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{error, info, warn};

const AFTER_HELP: &str = "Strategies (--strategy NAME, options as --strategy-option KEY=VALUE or a [strategy.options] table in the TOML file):";

/// Flower grpc-bidi server: runs rounds of federated learning with stock
/// Python Flower clients and flower-rs clients.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "flower-server", version, args_override_self = true, after_long_help = long_help())]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Settings {
    /// TOML file with any of these settings (flags given here win).
    #[arg(long, value_name = "FILE.toml")]
    #[serde(skip)]
    config: Option<PathBuf>,

    /// Address to listen on [default: 0.0.0.0:8080].
    #[arg(long)]
    address: Option<SocketAddr>,
    /// Serve without TLS (otherwise the three --ssl-* files are required).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    insecure: Option<bool>,
    /// CA certificate (PEM).
    #[arg(long, value_name = "PEM")]
    ssl_ca_certfile: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long, value_name = "PEM")]
    ssl_certfile: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "PEM")]
    ssl_keyfile: Option<PathBuf>,
    /// Max gRPC message size in bytes, both ways [default: 2147483647].
    #[arg(long)]
    max_message_size: Option<usize>,
    /// HTTP/2 keepalive ping interval in seconds [default: 210].
    #[arg(long)]
    keepalive_secs: Option<u64>,
    /// Receive at most this many large (>= 1 MiB) client messages at once;
    /// the others wait in their HTTP/2 window. Bounds memory to about N x
    /// model size; 0 = no limit [default: 2].
    #[arg(long)]
    max_concurrent_uploads: Option<usize>,
    /// Refuse clients beyond this many simultaneous streams [default: no limit].
    #[arg(long)]
    max_clients: Option<usize>,

    /// Number of rounds [default: 1].
    #[arg(long)]
    rounds: Option<u64>,
    /// Per-reply timeout in seconds (Flower's round_timeout) [default: none].
    #[arg(long)]
    round_timeout: Option<f64>,
    /// Max seconds to wait for enough clients before the first round [default: 300].
    #[arg(long)]
    client_wait_timeout: Option<f64>,
    /// Max seconds to wait mid-run for enough clients after some left; then the run
    /// ends with the last completed round saved [default: 60].
    #[arg(long)]
    rejoin_wait_timeout: Option<f64>,
    /// Strategy name [default: fedavg].
    #[arg(long)]
    strategy: Option<String>,
    /// Strategy option KEY=VALUE (VALUE as JSON when it parses, else a string); repeatable.
    #[arg(long = "strategy-option", value_name = "KEY=VALUE")]
    #[serde(skip)]
    strategy_option: Vec<String>,
    /// Strategy options from the TOML file ([strategy-options] table).
    #[arg(skip)]
    strategy_options: BTreeMap<String, serde_json::Value>,
    /// Minimum clients sampled for fit [default: strategy's, 2 for FedAvg].
    #[arg(long)]
    min_fit_clients: Option<u64>,
    /// Minimum clients sampled for evaluate [default: strategy's].
    #[arg(long)]
    min_evaluate_clients: Option<u64>,
    /// Minimum connected clients before a round starts [default: strategy's].
    #[arg(long)]
    min_available_clients: Option<u64>,
    /// Fraction of available clients sampled for fit [default: 1.0].
    #[arg(long)]
    fraction_fit: Option<f64>,
    /// Fraction of available clients sampled for evaluate [default: 1.0].
    #[arg(long)]
    fraction_evaluate: Option<f64>,
    /// Initial model (.npz, arrays arr_0, arr_1, ... as np.savez writes).
    #[arg(long, value_name = "FILE.npz")]
    initial_parameters: Option<PathBuf>,
    /// Directory for history.json, model.npz and checkpoint.json.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Continue the run saved in --output-dir.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    resume: Option<bool>,
    /// Fold fit results in client-join order (deterministic) or in arrival
    /// order (least memory) [default: join].
    #[arg(long, value_parser = ["join", "arrival"])]
    aggregation_order: Option<String>,
    /// Seed for client sampling and strategy randomness [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Accept this bearer token (`authorization` or `x-authorization:
    /// Bearer <T>`); repeatable.
    #[arg(long = "token", value_name = "T")]
    token: Vec<String>,
    /// Accept the tokens in this file (one per line; SIGUSR1 re-reads it).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Read tokens from this Vault (KV v1), e.g. https://vault:8200.
    #[arg(long, value_name = "URL")]
    vault_addr: Option<String>,
    /// Vault login token.
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    vault_token: Option<String>,
    /// OIDC access token, exchanged for a Vault token through the JWT auth method.
    #[arg(long, env = "OIDC_ACCESS_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    oidc_access_token: Option<String>,
    /// Vault JWT auth mount path [default: jwt].
    #[arg(long)]
    vault_auth_path: Option<String>,
    /// Vault JWT role.
    #[arg(long)]
    vault_role: Option<String>,
    /// Vault KV v1 mount holding the tokens [default: secrets].
    #[arg(long)]
    vault_mount: Option<String>,
    /// Path under the mount listing the token secrets [default: federated].
    #[arg(long)]
    vault_secret_path: Option<String>,
    /// Use users/<sub>/deployments/<ID>/federated (sub from the OIDC token).
    #[arg(long, value_name = "ID")]
    deployment_id: Option<String>,
    /// Seconds between Vault token-list refreshes (0 disables) [default: 60].
    #[arg(long)]
    vault_refresh_interval: Option<f64>,
    /// Extra CA certificate (PEM) for an https Vault.
    #[arg(long, value_name = "PEM")]
    vault_ca_cert: Option<PathBuf>,
    /// Allow token authentication over a plaintext listener (tokens are then
    /// sent in the clear: for tests only).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    allow_insecure_auth: Option<bool>,

    /// Log as JSON lines.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    log_json: Option<bool>,
}

fn long_help() -> String {
    format!("{AFTER_HELP}\n\n{}", flower_strategy::catalog_help())
}

macro_rules! merge {
    ($cli:ident, $file:ident; $($field:ident),* $(,)?) => {
        $( if $cli.$field.is_none() { $cli.$field = $file.$field.take(); } )*
    };
}

impl Settings {
    fn load() -> Result<Settings, String> {
        let mut cli = Settings::parse();
        // clap gives bare flags as `Some(true)` only when present.
        if let Some(path) = cli.config.clone() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let mut file: Settings =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            merge!(cli, file; address, insecure, ssl_ca_certfile, ssl_certfile, ssl_keyfile,
                max_message_size, keepalive_secs, max_concurrent_uploads, max_clients, rounds, round_timeout,
                client_wait_timeout, rejoin_wait_timeout, strategy, min_fit_clients, min_evaluate_clients,
                min_available_clients, fraction_fit, fraction_evaluate, initial_parameters,
                output_dir, resume, seed, aggregation_order, log_json, token_file, vault_addr, vault_auth_path,
                vault_role, vault_mount, vault_secret_path, deployment_id, vault_refresh_interval,
                vault_ca_cert, allow_insecure_auth);
            if cli.token.is_empty() {
                cli.token = std::mem::take(&mut file.token);
            }
            for (k, v) in file.strategy_options {
                cli.strategy_options.entry(k).or_insert(v);
            }
        }
        for kv in std::mem::take(&mut cli.strategy_option) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--strategy-option {kv:?}: expected KEY=VALUE"))?;
            let value =
                serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
            cli.strategy_options.insert(k.trim().to_string(), value);
        }
        Ok(cli)
    }

    fn serve_options(&self) -> Result<ServeOptions, String> {
        let defaults = ServeOptions::default();
        let tls = match (
            self.insecure.unwrap_or(false),
            &self.ssl_ca_certfile,
            &self.ssl_certfile,
            &self.ssl_keyfile,
        ) {
            (true, None, None, None) => None,
            (true, ..) => return Err("--insecure cannot be combined with --ssl-* files".into()),
            (false, Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca_certfile: ca.clone(),
                certfile: cert.clone(),
                keyfile: key.clone(),
            }),
            _ => {
                return Err(
                    "refusing to start without TLS: give --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile, or --insecure"
                        .into(),
                )
            }
        };
        Ok(ServeOptions {
            address: self.address.unwrap_or(defaults.address),
            tls,
            max_message_size: self.max_message_size.unwrap_or(defaults.max_message_size),
            keepalive: self
                .keepalive_secs
                .map_or(defaults.keepalive, Duration::from_secs),
        })
    }

    fn strategy_spec(&self) -> StrategySpec {
        let mut options = self.strategy_options.clone();
        let mut put = |k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                options.insert(k.to_string(), v);
            }
        };
        put("min_fit_clients", self.min_fit_clients.map(Into::into));
        put(
            "min_evaluate_clients",
            self.min_evaluate_clients.map(Into::into),
        );
        put(
            "min_available_clients",
            self.min_available_clients.map(Into::into),
        );
        put("fraction_fit", self.fraction_fit.map(Into::into));
        put("fraction_evaluate", self.fraction_evaluate.map(Into::into));
        StrategySpec {
            name: self.strategy.clone().unwrap_or_else(|| "fedavg".into()),
            options,
        }
    }

    fn auth_flags(&self) -> Result<flower_auth::AuthFlags, String> {
        let refresh = self
            .vault_refresh_interval
            .map(|v| {
                Duration::try_from_secs_f64(v).map_err(|_| {
                    "--vault-refresh-interval must be a non-negative number of seconds".to_string()
                })
            })
            .transpose()?;
        Ok(flower_auth::AuthFlags {
            tokens: self.token.iter().map(|t| t.as_str().into()).collect(),
            token_file: self.token_file.clone(),
            vault_addr: self.vault_addr.clone(),
            vault_token: self.vault_token.as_deref().map(Into::into),
            oidc_access_token: self.oidc_access_token.as_deref().map(Into::into),
            vault_auth_path: self.vault_auth_path.clone(),
            vault_role: self.vault_role.clone(),
            vault_mount: self.vault_mount.clone(),
            vault_secret_path: self.vault_secret_path.clone(),
            deployment_id: self.deployment_id.clone(),
            vault_refresh_interval: refresh,
            vault_ca_cert: self.vault_ca_cert.clone(),
        })
    }

    fn driver_config(&self) -> Result<DriverConfig, String> {
        let secs = |v: f64, name: &str| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| format!("--{name} must be a non-negative number of seconds"))
        };
        Ok(DriverConfig {
            num_rounds: self.rounds.unwrap_or(1),
            round_timeout: self
                .round_timeout
                .map(|v| secs(v, "round-timeout"))
                .transpose()?,
            client_wait_timeout: secs(
                self.client_wait_timeout.unwrap_or(300.0),
                "client-wait-timeout",
            )?,
            rejoin_wait_timeout: secs(
                self.rejoin_wait_timeout.unwrap_or(60.0),
                "rejoin-wait-timeout",
            )?,
            seed: self.seed.unwrap_or(0),
            output_dir: self.output_dir.clone(),
            resume: self.resume.unwrap_or(false),
            aggregation_order: match self.aggregation_order.as_deref() {
                None | Some("join") => flower_server::AggregationOrder::JoinOrder,
                Some("arrival") => flower_server::AggregationOrder::Arrival,
                Some(other) => {
                    return Err(format!(
                        "--aggregation-order {other:?}: expected join or arrival"
                    ))
                }
            },
            ..DriverConfig::default()
        })
    }
}

pub(crate) fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("flower-server: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_json.unwrap_or(false));
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
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("flower-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    let serve_options = settings.serve_options()?;
    let driver_config = settings.driver_config()?;
    let spec = settings.strategy_spec();
    let initial = match &settings.initial_parameters {
        Some(path) => Some(
            parameters_from_npz(path, flower_core::NUMPY_TENSOR_TYPE).map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let common = flower_strategy::CommonOptions {
        seed: Some(driver_config.seed),
        initial_parameters: initial,
        ..Default::default()
    };
    let strategy = flower_strategy::build_strategy(&spec, common).map_err(|e| e.to_string())?;
    info!(
        strategy = strategy.name(),
        rounds = driver_config.num_rounds,
        "starting"
    );

    let manager = ClientManager::with_upload_limit(
        settings.max_clients,
        Some(settings.max_concurrent_uploads.unwrap_or(2)),
    );
    let transport = FlowerTransport::new(manager.clone());

    let auth = match settings
        .auth_flags()?
        .into_config()
        .map_err(|e| e.to_string())?
    {
        None => None,
        Some(config) => {
            flower_auth::ensure_secure_transport(
                serve_options.tls.is_some(),
                settings.allow_insecure_auth.unwrap_or(false),
            )
            .map_err(|_| {
                "refusing token authentication over a plaintext listener: use TLS, or --allow-insecure-auth for tests".to_string()
            })?;
            let (_store, manager) = flower_auth::token_store_from(&config)
                .await
                .map_err(|e| format!("authentication: {e}"))?;
            info!(
                source = manager.source_description(),
                tokens = manager.store().len(),
                "token authentication on"
            );
            Some(manager)
        }
    };
    if auth.is_none() {
        warn!("no --token, --token-file or --vault-addr: any client may join");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut stop_serving = stop_rx.clone();
    let stop = async move {
        let _ = stop_serving.wait_for(|s| *s).await;
    };
    let (addr, server): (
        _,
        futures::future::BoxFuture<'static, Result<(), ServerError>>,
    ) = match &auth {
        Some(manager) => {
            let (addr, fut) = serve(&serve_options, transport, manager.layer(), stop)
                .await
                .map_err(|e| e.to_string())?;
            (addr, Box::pin(fut))
        }
        None => {
            let (addr, fut) = serve(
                &serve_options,
                transport,
                tower::layer::util::Identity::new(),
                stop,
            )
            .await
            .map_err(|e| e.to_string())?;
            (addr, Box::pin(fut))
        }
    };
    println!("flower-server listening on {addr}");
    let server = tokio::spawn(server);

    let (interrupt_tx, interrupt_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = interrupt_tx.send(true);
    });

    let mut driver = RoundDriver::new(manager, strategy, driver_config);
    let outcome = driver.run(interrupt_rx).await;
    let _ = stop_tx.send(true);
    if let Some(manager) = &auth {
        manager.shutdown();
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => warn!("transport ended with an error: {e}"),
        Err(_) => warn!("transport did not stop within 5 s"),
        _ => {}
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
        Err(e) => Err(e.to_string()),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return futures::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => info!("SIGINT received: stopping"),
        _ = term.recv() => info!("SIGTERM received: stopping"),
    }
}
