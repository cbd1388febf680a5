//! A Flower server that only lets in clients with one of the given bearer
//! tokens (Rust counterpart of ai4flwr's `examples/bearer_server.py`):
//! FedAvg, 2 rounds, at least 2 clients, accuracy averaged weighted by the
//! clients' example counts.
//!
//! ```sh
//! certificates/generate.sh                       # dev CA + server certificate
//! cargo run --example bearer_server -- my-token  # then start 2 clients:
//! cargo run --example client -- --token my-token --partition-id 0
//! cargo run --example client -- --token my-token --partition-id 1
//! ```
//!
//! Stock Python clients join too (`examples/python/client.py`). Ctrl-C ends
//! the run early; the last completed round is kept in `--output-dir`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use common::federation::{self, Federation, FederationConfig};
use flower_server::TlsFiles;

#[derive(Debug, Parser)]
#[command(about = "Flower server accepting only clients with one of the given bearer tokens")]
struct Args {
    /// Accepted token(s).
    #[arg(required = true, num_args = 1..)]
    tokens: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    address: SocketAddr,
    /// CA certificate (PEM).
    #[arg(long, default_value = "certificates/out/ca.pem")]
    ssl_ca_certfile: PathBuf,
    /// Server certificate (PEM).
    #[arg(long, default_value = "certificates/out/server.pem")]
    ssl_certfile: PathBuf,
    /// Server private key (PEM).
    #[arg(long, default_value = "certificates/out/server.key")]
    ssl_keyfile: PathBuf,
    /// Rounds of training.
    #[arg(long, default_value_t = 2)]
    rounds: u64,
    /// Clients needed for every round.
    #[arg(long, default_value_t = 2)]
    min_clients: usize,
    /// Where history.json and model.npz go.
    #[arg(long, default_value = "output/bearer_server")]
    output_dir: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    federation::init_logging("info");
    federation::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = TlsFiles {
        ca_certfile: args.ssl_ca_certfile,
        certfile: args.ssl_certfile,
        keyfile: args.ssl_keyfile,
    };
    federation::check_tls_files(&tls)?;

    // Tokens are compared in constant time and never logged (only their
    // SHA-256 fingerprints).
    let auth = flower_auth::AuthConfig::builder()
        .tokens(args.tokens.iter().map(String::as_str))
        .build()?;
    let server = Federation::start(FederationConfig {
        address: args.address,
        tls: Some(tls),
        auth: Some(auth),
        rounds: args.rounds,
        min_clients: args.min_clients,
        // None: the first client to connect is asked for the initial model.
        initial_parameters: None,
        output_dir: Some(args.output_dir.clone()),
    })
    .await?;
    println!("flower-server listening on {}", server.address);

    let outcome = server.run_until_ctrl_c().await?;
    federation::print_history(&outcome.history);
    federation::print_outputs(&args.output_dir);
    Ok(())
}
