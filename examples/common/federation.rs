//! The server side of the examples: a flower-rs server run in-process
//! (listener + round driver + token authentication), FedAvg with weighted
//! accuracy, throwaway TLS certificates, and a printout of the results.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use flower_auth::AuthConfig;
use flower_core::{ndarrays_to_parameters, Config, NdArray, Scalar};
use flower_server::{
    serve, AggregationOrder, ClientManager, DriverConfig, FlowerTransport, History, RoundDriver,
    RunOutcome, ServeOptions, ServerError, TlsFiles,
};
use flower_strategy::{fixed_config, weighted_average, FedAvg, FedAvgOptions, MetricSelection};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Learning rate the server hands the clients in every fit config.
pub const LEARNING_RATE: f64 = 0.1;
/// Local epochs the server hands the clients in every fit config.
pub const LOCAL_EPOCHS: i64 = 2;

/// What to run.
#[derive(Debug)]
pub struct FederationConfig {
    /// Where to listen (port 0 picks a free one).
    pub address: SocketAddr,
    /// Server certificate and key (`None`: plaintext, for tests only).
    pub tls: Option<TlsFiles>,
    /// Accepted tokens (static, file or Vault); `None`: anyone may join.
    pub auth: Option<AuthConfig>,
    /// Rounds of fit + evaluate.
    pub rounds: u64,
    /// Clients needed for every fit and evaluate round.
    pub min_clients: usize,
    /// Starting model (`None`: the server asks one client, as Flower does).
    pub initial_parameters: Option<Vec<NdArray>>,
    /// Where `history.json`, `model.npz` and `checkpoint.json` are written.
    pub output_dir: Option<PathBuf>,
}

/// FedAvg as in Flower's examples: all connected clients train every
/// round, the server sends the learning rate and local epochs, and the
/// clients' accuracies are averaged weighted by their example counts.
pub fn fedavg(
    min_clients: usize,
    initial_parameters: Option<Vec<NdArray>>,
) -> anyhow::Result<FedAvg> {
    let mut fit_config = Config::new();
    fit_config.insert("learning_rate".into(), Scalar::Double(LEARNING_RATE));
    fit_config.insert("local_epochs".into(), Scalar::Sint64(LOCAL_EPOCHS));
    let mut options = FedAvgOptions::with_min_clients(min_clients)
        .on_fit_config_fn(fixed_config(fit_config))
        .fit_metrics_aggregation_fn(weighted_average(MetricSelection::All))
        .evaluate_metrics_aggregation_fn(weighted_average(MetricSelection::All));
    if let Some(initial) = initial_parameters {
        options = options.initial_parameters(ndarrays_to_parameters(&initial));
    }
    Ok(FedAvg::new(options)?)
}

/// A server running in this process: the listener serves in the
/// background from [`start`](Self::start) on (clients can connect), the
/// rounds run in [`run`](Self::run).
#[derive(Debug)]
pub struct Federation {
    /// The bound address.
    pub address: SocketAddr,
    /// The connected clients.
    pub manager: ClientManager,
    driver: RoundDriver,
    interrupt: watch::Sender<bool>,
    interrupted: watch::Receiver<bool>,
    stop_serving: watch::Sender<bool>,
    serving: JoinHandle<Result<(), ServerError>>,
    auth: Option<flower_auth::AuthManager>,
}

impl Federation {
    /// Loads the tokens and binds the listener.
    pub async fn start(config: FederationConfig) -> anyhow::Result<Self> {
        let strategy = fedavg(config.min_clients, config.initial_parameters)?;
        let manager = ClientManager::new(None);
        let transport = FlowerTransport::new(manager.clone());
        let options = ServeOptions {
            address: config.address,
            tls: config.tls,
            ..ServeOptions::default()
        };

        // Stops the listener once the run is over.
        let (stop_serving, mut stop_rx) = watch::channel(false);
        let stop = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        // With tokens, every call goes through flower-auth's layer (a wrong
        // or missing token is refused with UNAUTHENTICATED before the call
        // reaches the server); without, through the identity layer.
        let (address, serving, auth): (_, BoxFuture<'static, _>, _) = match &config.auth {
            Some(auth) => {
                let (_store, auth) = flower_auth::token_store_from(auth)
                    .await
                    .context("loading the tokens")?;
                let (address, serving) = serve(&options, transport, auth.layer(), stop).await?;
                (address, Box::pin(serving), Some(auth))
            }
            None => {
                let layer = tower::layer::util::Identity::new();
                let (address, serving) = serve(&options, transport, layer, stop).await?;
                (address, Box::pin(serving), None)
            }
        };

        let driver_config = DriverConfig {
            num_rounds: config.rounds,
            output_dir: config.output_dir,
            client_wait_timeout: Duration::from_secs(120),
            // Fold the clients' results in the order they joined (not the
            // order they answer): the same inputs give the same model bits.
            aggregation_order: AggregationOrder::JoinOrder,
            ..DriverConfig::default()
        };
        let (interrupt, interrupted) = watch::channel(false);
        Ok(Self {
            address,
            driver: RoundDriver::new(manager.clone(), Box::new(strategy), driver_config),
            manager,
            interrupt,
            interrupted,
            stop_serving,
            serving: tokio::spawn(serving),
            auth,
        })
    }

    /// Waits (at most `timeout`) until `n` clients are connected.
    pub async fn wait_for_clients(&self, n: usize, timeout: Duration) -> bool {
        self.manager.wait_for(n, timeout).await
    }

    /// A handle that ends the run early when `true` is sent (as SIGINT does
    /// for the `flower-server` binary): the clients are told to disconnect
    /// and the last completed round is kept.
    pub fn interrupter(&self) -> watch::Sender<bool> {
        self.interrupt.clone()
    }

    /// Runs the rounds (waiting for the clients first), tells the clients to
    /// disconnect, and stops the listener.
    pub async fn run(mut self) -> anyhow::Result<RunOutcome> {
        let outcome = self.driver.run(self.interrupted.clone()).await;
        let _ = self.stop_serving.send(true);
        if let Some(auth) = &self.auth {
            auth.shutdown();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.serving).await;
        Ok(outcome?)
    }

    /// [`run`](Self::run), ended early by Ctrl-C.
    pub async fn run_until_ctrl_c(self) -> anyhow::Result<RunOutcome> {
        let interrupt = self.interrupter();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("Ctrl-C: telling the clients to disconnect");
                let _ = interrupt.send(true);
            }
        });
        let outcome = self.run().await;
        ctrl_c.abort();
        outcome
    }
}

/// Prints, per round, the weighted test loss and accuracy of the clients.
pub fn print_history(history: &History) {
    let accuracy = history.metrics_distributed.get("accuracy");
    println!("round | loss (test) | accuracy (test)");
    for &(round, loss) in &history.losses_distributed {
        let acc = accuracy
            .and_then(|values| values.iter().find(|(r, _)| *r == round))
            .and_then(|(_, v)| v.as_f64())
            .map_or_else(|| "-".to_owned(), |a| format!("{a:.4}"));
        println!("{round:>5} | {loss:>11.4} | {acc:>15}");
    }
}

/// Prints where the server wrote its files.
pub fn print_outputs(dir: &Path) {
    println!("history: {}", dir.join("history.json").display());
    println!("model:   {}", dir.join("model.npz").display());
}

/// Throwaway TLS certificates for `localhost`, `127.0.0.1` and `::1`: a CA
/// (`ca.pem`, what clients trust) and a server certificate and key signed by
/// it (`server.pem`, `server.key`), written into `dir`.
pub fn generate_dev_certificates(dir: &Path) -> anyhow::Result<TlsFiles> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "flower-rs example CA");
    let ca = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned()])?;
    for ip in ["127.0.0.1", "::1"] {
        server
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse()?));
    }
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = server.signed_by(&key, &ca, &ca_key)?;

    let files = TlsFiles {
        ca_certfile: dir.join("ca.pem"),
        certfile: dir.join("server.pem"),
        keyfile: dir.join("server.key"),
    };
    std::fs::write(&files.ca_certfile, ca.pem())?;
    std::fs::write(&files.certfile, server.pem())?;
    std::fs::write(&files.keyfile, key.serialize_pem())?;
    Ok(files)
}

/// Fails with a hint when a TLS file is missing.
pub fn check_tls_files(files: &TlsFiles) -> anyhow::Result<()> {
    for f in [&files.ca_certfile, &files.certfile, &files.keyfile] {
        anyhow::ensure!(
            f.exists(),
            "{} not found: run certificates/generate.sh first, or pass the --ssl-* flags",
            f.display()
        );
    }
    Ok(())
}

/// The exit code of an example: 0, or 1 after printing the error with its
/// causes.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides `default_filter` (e.g. `"info"`).
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Command-line options shared by the example servers (`bearer_server`,
/// `vault_server`).
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub address: SocketAddr,
    /// CA certificate (PEM).
    #[arg(long, default_value = "certificates/out/ca.pem")]
    pub ssl_ca_certfile: PathBuf,
    /// Server certificate (PEM).
    #[arg(long, default_value = "certificates/out/server.pem")]
    pub ssl_certfile: PathBuf,
    /// Server private key (PEM).
    #[arg(long, default_value = "certificates/out/server.key")]
    pub ssl_keyfile: PathBuf,
    /// Rounds of training.
    #[arg(long, default_value_t = 2)]
    pub rounds: u64,
    /// Clients needed for every round.
    #[arg(long, default_value_t = 2)]
    pub min_clients: usize,
    /// Where history.json and model.npz go [default: output/<example>].
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// Runs a TLS federation with `auth` until it completes (or Ctrl-C), then
/// prints the history and where the outputs went.
pub async fn serve_with_auth(
    args: ServerArgs,
    auth: AuthConfig,
    default_output: &str,
) -> anyhow::Result<()> {
    let tls = TlsFiles {
        ca_certfile: args.ssl_ca_certfile,
        certfile: args.ssl_certfile,
        keyfile: args.ssl_keyfile,
    };
    check_tls_files(&tls)?;
    let output_dir = args
        .output_dir
        .unwrap_or_else(|| PathBuf::from(default_output));
    let server = Federation::start(FederationConfig {
        address: args.address,
        tls: Some(tls),
        auth: Some(auth),
        rounds: args.rounds,
        min_clients: args.min_clients,
        // None: the first client to connect is asked for the initial model.
        initial_parameters: None,
        output_dir: Some(output_dir.clone()),
    })
    .await?;
    println!("flower-server listening on {}", server.address);
    let outcome = server.run_until_ctrl_c().await?;
    print_history(&outcome.history);
    print_outputs(&output_dir);
    Ok(())
}
