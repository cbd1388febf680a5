//! What the examples share besides the model: the FedAvg set-up they all
//! use, throwaway TLS certificates, the servers' common flags, logging and
//! a printout of the results. Servers are built with the library's
//! `flower_server::Server::builder()` in each example itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use flower_core::{ndarrays_to_parameters, Config, NdArray, Scalar};
use flower_server::{History, TlsFiles};
use flower_strategy::{fixed_config, weighted_average, FedAvg, FedAvgOptions, MetricSelection};

/// Learning rate the server hands the clients in every fit config.
pub const LEARNING_RATE: f64 = 0.1;
/// Local epochs the server hands the clients in every fit config.
pub const LOCAL_EPOCHS: i64 = 2;

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

impl ServerArgs {
    /// The TLS files, checked to exist.
    pub fn tls(&self) -> anyhow::Result<TlsFiles> {
        let tls = TlsFiles::new(&self.ssl_ca_certfile, &self.ssl_certfile, &self.ssl_keyfile);
        check_tls_files(&tls)?;
        Ok(tls)
    }
}

/// Completes on Ctrl-C: the server then tells the clients to disconnect and
/// keeps the last completed round.
pub async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("Ctrl-C: telling the clients to disconnect");
    } else {
        std::future::pending::<()>().await;
    }
}
