//! A Flower server whose accepted tokens live in HashiCorp Vault / OpenBao
//! (Rust counterpart of ai4flwr's `examples/vault_server.py`).
//!
//! ```sh
//! certificates/generate.sh
//! export OIDC_ACCESS_TOKEN=<your OIDC access token>
//! cargo run --example vault_server -- <DEPLOYMENT_ID> https://vault.example.org:8200
//! ```
//!
//! The server logs in to Vault with the OIDC access token (JWT auth method,
//! mount `jwt`), and accepts every `token` value stored under
//! `secrets/users/<sub>/deployments/<DEPLOYMENT_ID>/federated/` (KV version
//! 1), where `<sub>` is the OIDC token's subject. The list is refreshed every
//! minute and on `SIGUSR1`; clients whose token was removed are disconnected.
//! FedAvg, 2 rounds, at least 2 clients, weighted-average accuracy, like
//! `bearer_server`.

mod common;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use common::support::{self, ServerArgs};
use flower_auth::{AuthConfig, VaultConfig};
use flower_server::{DriverConfig, Server};

#[derive(Debug, Parser)]
#[command(about = "Flower server with its bearer tokens in Vault (OIDC login)")]
struct Args {
    /// Deployment id: the tokens are read from
    /// users/<sub>/deployments/<ID>/federated.
    deployment_id: String,
    /// Vault address, e.g. https://vault.example.org:8200.
    vault_addr: String,
    /// Role of the JWT login [default: the auth method's default role].
    #[arg(long)]
    vault_role: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    support::init_logging("info");
    support::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let oidc_token = std::env::var("OIDC_ACCESS_TOKEN")
        .context("set OIDC_ACCESS_TOKEN to your OIDC access token")?;
    let mut vault = VaultConfig::builder(args.vault_addr)
        .oidc_access_token(oidc_token)
        .deployment_id(args.deployment_id);
    if let Some(role) = args.vault_role {
        vault = vault.role(role);
    }
    // Logs in and loads the token list once: a failure here is fatal.
    let auth = AuthConfig::builder().vault(Some(vault.build()?)).build()?;
    serve(args.server, auth, "output/vault_server").await
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
