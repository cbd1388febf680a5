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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use common::federation::{self, Federation, FederationConfig};
use flower_auth::{AuthConfig, VaultConfig};
use flower_server::TlsFiles;

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
    #[arg(long, default_value = "output/vault_server")]
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
    let server = Federation::start(FederationConfig {
        address: args.address,
        tls: Some(tls),
        auth: Some(auth),
        rounds: args.rounds,
        min_clients: args.min_clients,
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
