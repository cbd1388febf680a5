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

use std::process::ExitCode;

use clap::Parser;
use common::support::{self, ServerArgs};
use flower_server::{DriverConfig, Server};

#[derive(Debug, Parser)]
#[command(about = "Flower server accepting only clients with one of the given bearer tokens")]
struct Args {
    /// Accepted token(s).
    #[arg(required = true, num_args = 1..)]
    tokens: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    support::init_logging("info");
    support::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Tokens are compared in constant time and never logged (only their
    // SHA-256 fingerprints).
    let auth = flower_auth::AuthConfig::builder()
        .tokens(args.tokens.iter().map(String::as_str))
        .build()?;
    serve(args.server, auth, "output/bearer_server").await
}

/// Runs the federation: FedAvg over `args.min_clients` clients with
/// `auth`, until the rounds are done or Ctrl-C.
async fn serve(
    args: ServerArgs,
    auth: flower_auth::AuthConfig,
    default_output: &str,
) -> anyhow::Result<()> {
    let output_dir = args
        .output_dir
        .clone()
        .unwrap_or_else(|| default_output.into());
    let server = Server::builder()
        .address(args.address)
        .tls(args.tls()?)
        .auth(auth)
        // No initial model: the first client to connect is asked for it.
        .strategy(support::fedavg(args.min_clients, None)?)
        .driver(DriverConfig {
            num_rounds: args.rounds,
            ..DriverConfig::default()
        })
        .output_dir(&output_dir)
        .bind()
        .await?;
    println!("flower-server listening on {}", server.local_addr());
    let outcome = server.run(support::ctrl_c()).await?;
    support::print_history(&outcome.history);
    support::print_outputs(&output_dir);
    Ok(())
}
