//! Whole federations in one process through the library entry point
//! (`flower_server::Server::builder()`, as the examples use it): Rust
//! clients, and Rust beside stock Python clients, over TLS with a token.

// The `client` example below includes `examples/common` once more.
#![allow(clippy::duplicate_mod)]

#[path = "../../examples/common/mod.rs"]
mod common;

/// The `client` example, its `main` aside.
#[path = "../../examples/client.rs"]
#[allow(dead_code, unreachable_pub)]
mod client_example;

mod mixed_federation;
mod rust_clients_tls;

use std::path::Path;

use common::model::initial_parameters;
use flower_server::{DriverConfig, Server, TlsFiles};

/// The examples' FedAvg over `clients` iris clients, TLS and one token,
/// bound on a free loopback port; results go to `out`.
async fn start_server(
    tls: TlsFiles,
    token: &str,
    rounds: u64,
    clients: usize,
    out: &Path,
) -> Server {
    Server::builder()
        .address("127.0.0.1:0".parse().unwrap())
        .tls(tls)
        .auth(
            flower_auth::AuthConfig::builder()
                .token(token)
                .build()
                .unwrap(),
        )
        .strategy(common::support::fedavg(clients, Some(initial_parameters())).unwrap())
        .driver(DriverConfig {
            num_rounds: rounds,
            client_wait_timeout: std::time::Duration::from_secs(120),
            ..DriverConfig::default()
        })
        .output_dir(out)
        .bind()
        .await
        .unwrap()
}
