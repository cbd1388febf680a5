//! A Flower client as a program: trains softmax regression on its share of
//! the iris data and sends a bearer token (Rust counterpart of ai4flwr's
//! `examples/client.py`).
//!
//! ```sh
//! certificates/generate.sh
//! cargo run --example bearer_server -- my-token            # in one terminal
//! cargo run --example client -- --token my-token --partition-id 0   # in two
//! cargo run --example client -- --token my-token --partition-id 1   # others
//! ```
//!
//! The token can also come from `FLOWER_TOKEN` or a file (`--token-file`,
//! re-read when it changes). `--dump-data iris.csv` writes the data set for
//! `examples/python/client.py` and exits. The exit code is 0 once the server
//! has ended the run.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use common::data::{partition, write_csv};
use common::model::IrisClient;
use flower_client::{start_client_blocking, ClientOptions, NumPyClient as _};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "Flower client (Rust): softmax regression on one iris partition")]
pub struct Args {
    /// Server address, HOST:PORT.
    #[arg(long, default_value = "localhost:8080")]
    server_address: String,
    /// CA certificate (PEM) the server's certificate must chain to.
    #[arg(
        long,
        default_value = "certificates/out/ca.pem",
        conflicts_with = "insecure"
    )]
    root_certificates: PathBuf,
    /// Plaintext instead of TLS (a token is then refused: it would travel in clear).
    #[arg(long)]
    insecure: bool,
    /// Bearer token.
    #[arg(
        long,
        env = "FLOWER_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the bearer token (first non-blank line).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Metadata key of the token (the server also accepts x-authorization).
    #[arg(long, default_value = flower_client::DEFAULT_AUTH_HEADER_KEY)]
    header_key: String,
    /// Which share of the data this client trains on (0-based).
    #[arg(long, default_value_t = 0)]
    partition_id: usize,
    /// Into how many shares the data is split.
    #[arg(long, default_value_t = 2)]
    num_partitions: usize,
    /// Give up when the server cannot be reached for this many seconds.
    #[arg(long, default_value_t = 60)]
    max_wait_time: u64,
    /// Write the iris data set as CSV to this file and exit.
    #[arg(long, value_name = "FILE")]
    dump_data: Option<PathBuf>,
}

fn main() -> ExitCode {
    common::support::init_logging("info");
    // 0 after a clean end of the run; otherwise the error and exit code 1.
    common::support::exit_code(run(Args::parse()))
}

/// Runs the client until the server ends the run (or writes the data set).
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(path) = &args.dump_data {
        write_csv(path).with_context(|| format!("cannot write {}", path.display()))?;
        println!("iris data written to {}", path.display());
        return Ok(());
    }
    anyhow::ensure!(
        args.partition_id < args.num_partitions,
        "--partition-id must be below --num-partitions"
    );

    let mut options = ClientOptions::new(&args.server_address)
        .auth_header_key(&args.header_key)
        .max_wait_time(Duration::from_secs(args.max_wait_time));
    options = match args.insecure {
        true => options.insecure(),
        false => options.root_certificates_file(&args.root_certificates),
    };
    if let Some(token) = &args.token {
        options = options.token(token);
    } else if let Some(file) = &args.token_file {
        options = options.token_file(file);
    }

    let client = IrisClient::new(partition(args.partition_id, args.num_partitions));
    // Blocks until the server sends ReconnectIns at the end of the run.
    let summary = start_client_blocking(options, client.to_client())
        .with_context(|| format!("client {} failed", args.partition_id))?;
    println!(
        "client {} done: {} rounds ({} fit, {} evaluate)",
        args.partition_id, summary.rounds, summary.fit, summary.evaluate
    );
    Ok(())
}
