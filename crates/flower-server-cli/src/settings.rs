//! Command line and TOML settings of `flower-server`, and their mapping onto
//! the library's option structs.
//!
//! Every flag has a TOML key of the same name (kebab-case) in the file given
//! with `--config`; a flag on the command line wins over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use flower_server::listener::ListenerOptions;
use flower_server::{AggregationOrder, DriverConfig, ServeOptions, TlsFiles};
use flower_strategy::StrategySpec;
use serde::{Deserialize, Serialize};

const AFTER_HELP: &str = "Choosing a strategy: --strategy NAME and --strategy-option KEY=VALUE (repeatable), or in the TOML file `strategy = \"NAME\"` and a [strategy-options] table. --strategy-api picks the catalog: `legacy` (the default; grpc-bidi clients and legacy-format SuperNodes) or `message` (SuperNodes running message-API ClientApps). A name in both catalogs (fedavg, fedadam, ...) takes the legacy options below under `legacy` and the message-API options further below under `message`.";

/// Flower grpc-bidi server: runs rounds of federated learning with stock
/// Python Flower clients and flower-rs clients.
#[derive(Debug, Default, Parser, Serialize, Deserialize)]
#[command(name = "flower-server", version, args_override_self = true, after_long_help = long_help())]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Settings {
    /// TOML file with any of these settings (flags given here win).
    #[arg(long, value_name = "FILE.toml")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,

    /// Address to listen on
    #[arg(long)]
    pub(crate) address: Option<SocketAddr>,
    /// Serve without TLS (otherwise the three --ssl-* files are required).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) insecure: Option<bool>,
    /// CA certificate (PEM).
    #[arg(long, value_name = "PEM")]
    pub(crate) ssl_ca_certfile: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long, value_name = "PEM")]
    pub(crate) ssl_certfile: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, value_name = "PEM")]
    pub(crate) ssl_keyfile: Option<PathBuf>,
    /// Max gRPC message size in bytes, both ways
    #[arg(long)]
    pub(crate) max_message_size: Option<usize>,
    /// HTTP/2 keepalive ping interval in seconds
    #[arg(long)]
    pub(crate) keepalive_secs: Option<u64>,
    /// Receive at most this many large (>= 1 MiB) client messages at once;
    /// the others wait in their HTTP/2 window. Bounds memory to about N x
    /// model size; 0 = no limit
    #[arg(long)]
    pub(crate) max_concurrent_uploads: Option<usize>,
    /// Refuse clients beyond this many simultaneous streams
    #[arg(long)]
    pub(crate) max_clients: Option<usize>,

    /// Number of rounds
    #[arg(long)]
    pub(crate) rounds: Option<u64>,
    /// Per-reply deadline in seconds (Flower's round_timeout): the whole reply
    /// must arrive within it, not counting time spent waiting at the upload gate
    #[arg(long)]
    pub(crate) round_timeout: Option<f64>,
    /// Max seconds to wait for enough clients before the first round
    #[arg(long)]
    pub(crate) client_wait_timeout: Option<f64>,
    /// Max seconds to wait mid-run for enough clients after some left; then the run
    /// ends with the last completed round saved
    #[arg(long)]
    pub(crate) rejoin_wait_timeout: Option<f64>,
    /// Strategy name
    #[arg(long)]
    pub(crate) strategy: Option<String>,
    /// Strategy option KEY=VALUE (VALUE as JSON when it parses, else a string); repeatable.
    #[arg(long = "strategy-option", value_name = "KEY=VALUE")]
    #[serde(skip)]
    pub(crate) strategy_option: Vec<String>,
    /// Strategy options from the TOML file ([strategy-options] table).
    #[arg(skip)]
    pub(crate) strategy_options: BTreeMap<String, serde_json::Value>,
    /// Minimum clients sampled for fit
    #[arg(long)]
    pub(crate) min_fit_clients: Option<u64>,
    /// Minimum clients sampled for evaluate
    #[arg(long)]
    pub(crate) min_evaluate_clients: Option<u64>,
    /// Minimum connected clients before a round starts
    #[arg(long)]
    pub(crate) min_available_clients: Option<u64>,
    /// Fraction of available clients sampled for fit
    #[arg(long)]
    pub(crate) fraction_fit: Option<f64>,
    /// Fraction of available clients sampled for evaluate
    #[arg(long)]
    pub(crate) fraction_evaluate: Option<f64>,
    /// Initial model (.npz, arrays arr_0, arr_1, ... as np.savez writes).
    #[arg(long, value_name = "FILE.npz")]
    pub(crate) initial_parameters: Option<PathBuf>,
    /// Directory for history.json, model.npz and checkpoint.json.
    #[arg(long)]
    pub(crate) output_dir: Option<PathBuf>,
    /// Continue the run saved in --output-dir.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) resume: Option<bool>,
    /// Fold fit results in client-join order (deterministic) or in arrival
    /// order (least memory)
    #[arg(long, value_parser = ["join", "arrival"])]
    pub(crate) aggregation_order: Option<String>,
    /// Seed of client sampling (which clients a round picks). DP noise is
    /// never seeded by it: noise always comes from the OS
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Accept this bearer token (`authorization` or `x-authorization:
    /// Bearer <T>`); repeatable. Visible in `ps`: prefer the environment
    /// variable (one token) or --token-file.
    #[arg(
        long = "token",
        value_name = "T",
        env = "FLOWER_SERVER_TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Vec<String>,
    /// Accept the tokens in this file (one per line; SIGUSR1 re-reads it).
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Read tokens from this Vault (KV v1), e.g. https://vault:8200.
    #[arg(long, value_name = "URL")]
    pub(crate) vault_addr: Option<String>,
    /// Vault login token.
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub(crate) vault_token: Option<String>,
    /// OIDC access token, exchanged for a Vault token through the JWT auth method.
    #[arg(long, env = "OIDC_ACCESS_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub(crate) oidc_access_token: Option<String>,
    /// Vault JWT auth mount path
    #[arg(long)]
    pub(crate) vault_auth_path: Option<String>,
    /// Vault JWT role.
    #[arg(long)]
    pub(crate) vault_role: Option<String>,
    /// Vault KV v1 mount holding the tokens
    #[arg(long)]
    pub(crate) vault_mount: Option<String>,
    /// Path under the mount listing the token secrets
    #[arg(long)]
    pub(crate) vault_secret_path: Option<String>,
    /// Use `users/<sub>/deployments/<ID>/federated` (sub from the OIDC token).
    #[arg(long, value_name = "ID")]
    pub(crate) deployment_id: Option<String>,
    /// Seconds between Vault token-list refreshes (0 disables)
    #[arg(long)]
    pub(crate) vault_refresh_interval: Option<f64>,
    /// Extra CA certificate (PEM) for an https Vault.
    #[arg(long, value_name = "PEM")]
    pub(crate) vault_ca_cert: Option<PathBuf>,
    /// Allow token authentication over a plaintext listener (tokens are then
    /// sent in the clear: for tests only).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) allow_insecure_auth: Option<bool>,

    // --- Hardening (issue 15): connection limits, uploads, auth. ---
    /// Most connections open at once, per port (lowered to what the open
    /// file limit allows); connections beyond it are closed at once
    /// [default: 20000]
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Seconds a new connection has to complete its TLS handshake and HTTP/2
    /// preface (Fleet port: to send each request's headers) [default: 10]
    #[arg(long, value_name = "SECS")]
    pub(crate) handshake_timeout: Option<f64>,
    /// TCP keepalive idle time in seconds; 0 = off [default: 60]
    #[arg(long, value_name = "SECS")]
    pub(crate) tcp_keepalive_secs: Option<u64>,
    /// Seconds a client's reply in progress may go without 64 KiB arriving
    /// before its stream is cut (the reply fails) [default: 30]
    #[arg(long, value_name = "SECS")]
    pub(crate) upload_idle_timeout: Option<f64>,
    /// Refuse every token once no token reload has succeeded for this many
    /// seconds (fail closed; tokens come back with the next successful
    /// reload); 0 = no bound. Applies to periodic reloads (Vault)
    /// [default: 3600 with periodic reloads]
    #[arg(long, value_name = "SECS")]
    pub(crate) max_token_staleness: Option<f64>,
    /// Require TLS client certificates signed by --ssl-ca-certfile (mutual
    /// TLS on the grpc-bidi port).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) require_client_certificate: Option<bool>,
    // --- end of hardening flags ---
    /// Serve Flower's Fleet API (stock `flower-supernode` 1.40+) on this
    /// address, with the same TLS files (or --insecure). Without --address,
    /// the Fleet API is the only way in; with it, both ports serve one
    /// federation.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) fleet_api_address: Option<SocketAddr>,
    /// The app the SuperNodes run: the .fab file `flwr build` writes
    /// (required with --fleet-api-address).
    #[arg(long, value_name = "FILE.fab")]
    pub(crate) fab: Option<PathBuf>,
    /// Override a key of the FAB's [tool.flwr.app.config], as `flwr run
    /// --run-config` does (KEY=VALUE in TOML syntax; unknown keys are
    /// refused); repeatable.
    #[arg(long = "run-config", value_name = "KEY=VALUE")]
    pub(crate) run_config: Vec<String>,
    /// Content keys of the SuperNodes' messages: `modern` (arrays/config,
    /// for `@app.train` ClientApps) or `legacy` (fitins.*/evaluateins.*, for
    /// `ClientApp(client_fn=...)` NumPyClient apps).
    #[arg(long, value_parser = ["modern", "legacy"])]
    pub(crate) fleet_message_format: Option<String>,
    /// MiB of pushed SuperNode replies kept in memory; past it, further
    /// reply objects go to unlinked files in --fleet-spill-dir until their
    /// reply is aggregated (0: no limit, never spill).
    #[arg(long, value_name = "MIB")]
    pub(crate) fleet_reply_memory: Option<u64>,
    /// Directory for spilled reply objects (the system's temporary
    /// directory by default).
    #[arg(long, value_name = "DIR")]
    pub(crate) fleet_spill_dir: Option<PathBuf>,
    /// SuperNode request bodies of 1 MiB or more (pushed chunks) read at
    /// once; more readers take replies in faster and hold more memory.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) fleet_body_readers: Option<u64>,
    /// Admit only SuperNodes whose public key is authorized
    /// (--authorized-keys and/or --vault-node-keys-path), as flwr's
    /// --enable-supernode-auth; otherwise SuperNodes self-register.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) enable_supernode_auth: Option<bool>,
    /// Authorized SuperNode public keys (OpenSSH or PEM, one per line;
    /// SIGUSR1 re-reads it; a key removed deactivates its node).
    #[arg(long, value_name = "FILE")]
    pub(crate) authorized_keys: Option<PathBuf>,
    /// Vault path (under --vault-mount) listing authorized SuperNode public
    /// keys, one per secret (value under the `token` key); same login as
    /// the token options.
    #[arg(long, value_name = "PATH")]
    pub(crate) vault_node_keys_path: Option<String>,

    // --- Drop-in SuperLink: Control and Runtime APIs (flower-superlink) ---
    /// Serve Flower's Control API (`flwr run`, `flwr ls`, `flwr log`,
    /// `flwr stop`) and the Runtime API of ServerApp processes on this
    /// address. Implied when --fleet-api-address is given without --fab:
    /// the server then waits for runs submitted with `flwr run`.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) control_api_address: Option<SocketAddr>,
    /// Allow a non-loopback --control-api-address (TLS required). The
    /// Control API has no account authentication: anyone who reaches it can
    /// start runs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) allow_remote_control: Option<bool>,
    /// How ServerApps run: `subprocess` (this server starts
    /// `flower-superexec`, which starts `flwr-serverapp` per run) or
    /// `process` (the operator runs `flower-superexec --runtime-api-address
    /// <control address>`).
    #[arg(long, value_parser = ["subprocess", "process"])]
    pub(crate) isolation: Option<String>,
    /// The SuperExec program started in `subprocess` isolation.
    #[arg(long, value_name = "PROGRAM")]
    pub(crate) superexec_program: Option<PathBuf>,
    /// Also serve the Fleet API over gRPC (`flwr.proto.Fleet`) on this
    /// address, for `flower-supernode` 1.13 to 1.39 (same TLS, same link
    /// state; 1.40+ SuperNodes use --fleet-api-address).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) fleet_grpc_address: Option<SocketAddr>,
    /// Keep runs (descriptions, statuses, logs) in this SQLite file, so a
    /// restart still lists finished runs (`:memory:` or none: in memory).
    #[arg(long, value_name = "FILE")]
    pub(crate) database: Option<PathBuf>,
    // --- end of drop-in SuperLink flags ---
    /// Which catalog --strategy names: `legacy` (Flower's
    /// flwr.server.strategy: grpc-bidi clients, legacy-format SuperNodes) or
    /// `message` (flwr.serverapp.strategy, for SuperNodes running
    /// message-API ClientApps: options by their message-API names, e.g.
    /// fraction_train; needs --fleet-api-address without --address, the
    /// modern message format and --initial-parameters; no --resume). With
    /// `message`, --fraction-fit/--fraction-evaluate/--min-*-clients set
    /// fraction_train/fraction_evaluate/min_*_nodes
    #[arg(long, value_parser = ["legacy", "message"])]
    pub(crate) strategy_api: Option<String>,

    /// FOR TESTS ONLY: seed the DP wrappers' noise so runs repeat. Anyone
    /// who knows the seed can subtract the noise; it is logged loudly and
    /// never written to disk.
    #[arg(long, value_name = "N")]
    pub(crate) insecure_dp_noise_seed: Option<u64>,

    /// Log as JSON lines.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) log_json: Option<bool>,

    // Operators' view (metrics, progress, plots): keep these together.
    /// Serve Prometheus metrics (/metrics), /healthz and /readyz over plain
    /// HTTP on this address; off unless given. Keep it on a private network.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) metrics_address: Option<SocketAddr>,
    /// Progress on stderr: one line per round phase (`lines`), plus a live
    /// bar (`bar`), or nothing (`off`). `auto`: the bar when stderr is a
    /// terminal and --log-json is off, else lines.
    #[arg(long, value_parser = ["auto", "bar", "lines", "off"])]
    pub(crate) progress: Option<String>,
    /// After the run, render history.json into history.png and history.svg
    /// in --output-dir (for an earlier run: `flower-server plot OUTPUT_DIR`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) plot: Option<bool>,
}

fn long_help() -> String {
    format!(
        "{AFTER_HELP}\n\n{}\n{}",
        flower_strategy::catalog_help(),
        flower_strategy::msg_catalog_help()
    )
}

impl Settings {
    /// The Fleet API's spill set-up from --fleet-reply-memory and
    /// --fleet-spill-dir.
    pub(crate) fn fleet_spill(&self) -> Result<Option<flower_fleet::SpillConfig>, String> {
        let defaults = flower_fleet::SpillConfig::default();
        let memory_limit = match self.fleet_reply_memory {
            None => defaults.memory_limit,
            Some(0) => return Ok(None),
            Some(mib) => usize::try_from(mib)
                .ok()
                .and_then(|m| m.checked_mul(1 << 20))
                .ok_or_else(|| format!("--fleet-reply-memory {mib}: too large"))?,
        };
        let dir = self.fleet_spill_dir.clone().unwrap_or(defaults.dir);
        if !dir.is_dir() {
            return Err(format!(
                "--fleet-spill-dir {}: not a directory",
                dir.display()
            ));
        }
        Ok(Some(flower_fleet::SpillConfig { memory_limit, dir }))
    }

    /// --fleet-body-readers, or the library's default.
    pub(crate) fn fleet_body_readers(&self) -> usize {
        self.fleet_body_readers
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(flower_fleet::FleetOptions::DEFAULT_LARGE_BODY_READERS)
    }
}

/// Each flag's default, read from the library's `Default` impls (the only
/// copy), shown in `--help` as `[default: ...]`.
fn defaults() -> Vec<(&'static str, String)> {
    let serve = ServeOptions::default();
    let driver = DriverConfig::default();
    let secs = |d: Duration| d.as_secs_f64().to_string();
    vec![
        ("address", serve.address.to_string()),
        (
            "fleet_message_format",
            match flower_fleet::ContentOptions::default().format {
                flower_fleet::MessageFormat::Legacy => "legacy",
                _ => "modern",
            }
            .into(),
        ),
        (
            "fleet_reply_memory",
            (flower_fleet::SpillConfig::DEFAULT_MEMORY_LIMIT >> 20).to_string(),
        ),
        (
            "fleet_body_readers",
            flower_fleet::FleetOptions::DEFAULT_LARGE_BODY_READERS.to_string(),
        ),
        ("max_message_size", serve.max_message_size.to_string()),
        ("keepalive_secs", serve.keepalive.as_secs().to_string()),
        (
            "max_concurrent_uploads",
            serve.max_concurrent_uploads.unwrap_or(0).to_string(),
        ),
        (
            "max_clients",
            serve
                .max_clients
                .map_or_else(|| "no limit".into(), |n| n.to_string()),
        ),
        ("rounds", driver.num_rounds.to_string()),
        (
            "control_api_address",
            flower_superlink::SuperLinkOptions::default()
                .address
                .to_string(),
        ),
        ("isolation", "subprocess".into()),
        ("superexec_program", "flower-superexec".into()),
        (
            "round_timeout",
            driver.round_timeout.map_or_else(|| "none".into(), secs),
        ),
        ("client_wait_timeout", secs(driver.client_wait_timeout)),
        ("rejoin_wait_timeout", secs(driver.rejoin_wait_timeout)),
        ("strategy", DEFAULT_STRATEGY.into()),
        ("strategy_api", "legacy".into()),
        ("progress", "auto".into()),
        (
            "aggregation_order",
            aggregation_order_name(driver.aggregation_order).into(),
        ),
        ("seed", driver.seed.to_string()),
        (
            "vault_auth_path",
            flower_auth::vault::DEFAULT_JWT_AUTH_PATH.into(),
        ),
        (
            "vault_mount",
            flower_auth::vault::DEFAULT_VAULT_MOUNT.into(),
        ),
        (
            "vault_secret_path",
            flower_auth::vault::DEFAULT_VAULT_SECRET_PATH.into(),
        ),
        (
            "vault_refresh_interval",
            flower_auth::vault::DEFAULT_VAULT_REFRESH_INTERVAL
                .as_secs()
                .to_string(),
        ),
    ]
}

const DEFAULT_STRATEGY: &str = "fedavg";
/// The legacy catalog's names of the sampling flags (see `spec_with`).
const LEGACY_SAMPLING_OPTIONS: [&str; 5] = [
    "min_fit_clients",
    "min_evaluate_clients",
    "min_available_clients",
    "fraction_fit",
    "fraction_evaluate",
];
/// The message-API catalog's names of the same flags.
const MSG_SAMPLING_OPTIONS: [&str; 5] = [
    "min_train_nodes",
    "min_evaluate_nodes",
    "min_available_nodes",
    "fraction_train",
    "fraction_evaluate",
];

fn aggregation_order_name(order: AggregationOrder) -> &'static str {
    match order {
        AggregationOrder::Arrival => "arrival",
        _ => "join",
    }
}

/// Fills the `null`s and empty lists of `cli` from `file` (both serialized
/// `Settings`): a flag given on the command line wins over the file.
fn merge_json(cli: &mut serde_json::Value, file: serde_json::Value) {
    let (Some(cli), serde_json::Value::Object(file)) = (cli.as_object_mut(), file) else {
        return;
    };
    for (key, value) in file {
        match cli.get_mut(&key) {
            Some(serde_json::Value::Object(mine)) => {
                if let serde_json::Value::Object(theirs) = value {
                    for (k, v) in theirs {
                        mine.entry(k).or_insert(v);
                    }
                }
            }
            Some(slot) if slot.is_null() || slot.as_array().is_some_and(Vec::is_empty) => {
                *slot = value;
            }
            Some(_) => {}
            None => {
                cli.insert(key, value);
            }
        }
    }
}

impl Settings {
    /// The command line with every default shown in its help.
    fn command() -> clap::Command {
        let mut command = <Settings as CommandFactory>::command();
        for (id, default) in defaults() {
            command = command.mut_arg(id, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} [default: {default}]"))
            });
        }
        command
    }

    pub(crate) fn load() -> Result<Settings, String> {
        let matches = Self::command().get_matches();
        let mut cli = Settings::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        if let Some(path) = cli.config.clone() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let file: Settings =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut merged = serde_json::to_value(&cli).map_err(|e| e.to_string())?;
            let file = serde_json::to_value(&file).map_err(|e| e.to_string())?;
            merge_json(&mut merged, file);
            let mut from_both: Settings =
                serde_json::from_value(merged).map_err(|e| format!("{}: {e}", path.display()))?;
            // What the file may not hold (secrets, the file name itself).
            from_both.config = cli.config.take();
            from_both.vault_token = cli.vault_token.take();
            from_both.oidc_access_token = cli.oidc_access_token.take();
            from_both.strategy_option = std::mem::take(&mut cli.strategy_option);
            cli = from_both;
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

    /// The listener settings; `insecure` is true for a plaintext listener.
    pub(crate) fn serve_options(&self) -> Result<(ServeOptions, bool), String> {
        let defaults = ServeOptions::default();
        let insecure = self.insecure.unwrap_or(false);
        let tls = match (
            insecure,
            &self.ssl_ca_certfile,
            &self.ssl_certfile,
            &self.ssl_keyfile,
        ) {
            (true, None, None, None) => None,
            (true, ..) => return Err("--insecure cannot be combined with --ssl-* files".into()),
            (false, Some(ca), Some(cert), Some(key)) => Some(TlsFiles::new(ca, cert, key)),
            _ => {
                return Err(
                    "refusing to start without TLS: give --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile, or --insecure"
                        .into(),
                )
            }
        };
        let require_client_certificate = self.require_client_certificate.unwrap_or(false);
        if require_client_certificate && tls.is_none() {
            return Err("--require-client-certificate needs TLS (the --ssl-* files)".into());
        }
        let max_concurrent_uploads = match self.max_concurrent_uploads {
            None => defaults.max_concurrent_uploads,
            Some(0) => None,
            Some(n) => Some(n),
        };
        Ok((
            ServeOptions {
                address: self.address.unwrap_or(defaults.address),
                tls,
                max_message_size: self.max_message_size.unwrap_or(defaults.max_message_size),
                keepalive: self
                    .keepalive_secs
                    .map_or(defaults.keepalive, Duration::from_secs),
                max_clients: self.max_clients.or(defaults.max_clients),
                max_concurrent_uploads,
                upload_idle_timeout: match self.upload_idle_timeout {
                    None => defaults.upload_idle_timeout,
                    Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
                    Some(s) => {
                        return Err(format!(
                            "--upload-idle-timeout must be > 0 seconds, not {s}"
                        ))
                    }
                },
                listener: self.listener_options(&defaults.listener)?,
                require_client_certificate,
            },
            insecure,
        ))
    }

    fn listener_options(&self, defaults: &ListenerOptions) -> Result<ListenerOptions, String> {
        let handshake_timeout = match self.handshake_timeout {
            None => defaults.handshake_timeout,
            Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s),
            Some(s) => return Err(format!("--handshake-timeout must be > 0 seconds, not {s}")),
        };
        if self.max_connections == Some(0) {
            return Err("--max-connections must be at least 1".into());
        }
        Ok(ListenerOptions {
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            handshake_timeout,
            tcp_keepalive: match self.tcp_keepalive_secs {
                None => defaults.tcp_keepalive,
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
            },
        })
    }

    pub(crate) fn strategy_spec(&self) -> StrategySpec {
        self.spec_with(LEGACY_SAMPLING_OPTIONS)
    }

    /// True with `--strategy-api message`.
    pub(crate) fn message_api(&self) -> bool {
        self.strategy_api.as_deref() == Some("message")
    }

    /// The message-API strategy spec: `--strategy-option`s, and the
    /// sampling flags under their message-API names.
    pub(crate) fn msg_strategy_spec(&self) -> StrategySpec {
        self.spec_with(MSG_SAMPLING_OPTIONS)
    }

    /// `--strategy` with its `--strategy-option`s, the sampling flags
    /// (`--min-fit-clients`, `--min-evaluate-clients`,
    /// `--min-available-clients`, `--fraction-fit`, `--fraction-evaluate`,
    /// in that order) set under the catalog's option `names`.
    fn spec_with(&self, names: [&str; 5]) -> StrategySpec {
        let mut options = self.strategy_options.clone();
        let flags: [Option<serde_json::Value>; 5] = [
            self.min_fit_clients.map(Into::into),
            self.min_evaluate_clients.map(Into::into),
            self.min_available_clients.map(Into::into),
            self.fraction_fit.map(Into::into),
            self.fraction_evaluate.map(Into::into),
        ];
        for (name, value) in names.into_iter().zip(flags) {
            if let Some(value) = value {
                options.insert(name.to_string(), value);
            }
        }
        StrategySpec {
            name: self
                .strategy
                .clone()
                .unwrap_or_else(|| DEFAULT_STRATEGY.into()),
            options,
        }
    }

    pub(crate) fn auth_flags(&self) -> Result<flower_auth::AuthFlags, String> {
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
            max_token_staleness: self
                .max_token_staleness
                .map(|v| {
                    Duration::try_from_secs_f64(v).map_err(|_| {
                        "--max-token-staleness must be a non-negative number of seconds".to_string()
                    })
                })
                .transpose()?,
        })
    }

    pub(crate) fn driver_config(&self) -> Result<DriverConfig, String> {
        let defaults = DriverConfig::default();
        let secs = |v: Option<f64>, default: Duration, name: &str| match v {
            None => Ok(default),
            Some(v) => Duration::try_from_secs_f64(v)
                .map_err(|_| format!("--{name} must be a non-negative number of seconds")),
        };
        Ok(DriverConfig {
            num_rounds: self.rounds.unwrap_or(defaults.num_rounds),
            round_timeout: match self.round_timeout {
                None => defaults.round_timeout,
                Some(v) => Some(secs(Some(v), Duration::ZERO, "round-timeout")?),
            },
            client_wait_timeout: secs(
                self.client_wait_timeout,
                defaults.client_wait_timeout,
                "client-wait-timeout",
            )?,
            rejoin_wait_timeout: secs(
                self.rejoin_wait_timeout,
                defaults.rejoin_wait_timeout,
                "rejoin-wait-timeout",
            )?,
            seed: self.seed.unwrap_or(defaults.seed),
            resume: self.resume.unwrap_or(defaults.resume),
            aggregation_order: match self.aggregation_order.as_deref() {
                None => defaults.aggregation_order,
                Some("join") => AggregationOrder::JoinOrder,
                Some("arrival") => AggregationOrder::Arrival,
                Some(other) => {
                    return Err(format!(
                        "--aggregation-order {other:?}: expected join or arrival"
                    ))
                }
            },
            ..defaults
        })
    }
}
