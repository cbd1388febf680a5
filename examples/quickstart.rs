//! The quickstart: a complete federated-learning run on this machine, over
//! TLS with bearer-token authentication, in one process.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```
//!
//! 1. Generates throwaway TLS certificates (a CA and a `localhost` server
//!    certificate) and a random token.
//! 2. Starts a flower-rs server (FedAvg, 5 rounds, 3 clients) that accepts
//!    only that token.
//! 3. Starts 3 Rust clients, each training softmax regression on its own
//!    share of the iris data set (shipped inside the `linfa-datasets` crate).
//! 4. Prints the test loss and accuracy of the global model after every
//!    round, and where `history.json` and `model.npz` were written
//!    (`output/quickstart/`), with a plot of the run (`history.png`, `.svg`)
//!    next to them.
//!
//! Nothing else is needed: no Python, no certificates on disk beforehand.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::data::partition;
use common::model::{initial_parameters, IrisClient};
use common::support;
use flower_client::{start_client, ClientOptions, NumPyClient as _};
use flower_server::{DriverConfig, Server};
use rand::distributions::{Alphanumeric, DistString as _};

const NUM_CLIENTS: usize = 3;
const ROUNDS: u64 = 5;

#[tokio::main]
async fn main() -> ExitCode {
    support::init_logging("warn");
    support::exit_code(run().await)
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let output_dir = PathBuf::from("output/quickstart");
    println!(
        "flower-rs quickstart: {NUM_CLIENTS} clients, {ROUNDS} rounds of FedAvg, \
         softmax regression on iris"
    );

    // 1. Throwaway certificates (deleted at exit) and a random token.
    let certs_dir = tempfile::tempdir()?;
    let tls = support::generate_dev_certificates(certs_dir.path())?;
    let ca = tls.ca_certfile.clone();
    let token = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);

    // 2. The server: TLS, only our token accepted, FedAvg over all clients,
    //    results in output_dir. Clients can connect once it is bound.
    let server = Server::builder()
        .address("127.0.0.1:0".parse()?)
        .tls(tls)
        .auth(
            flower_auth::AuthConfig::builder()
                .token(token.as_str())
                .build()?,
        )
        .strategy(support::fedavg(NUM_CLIENTS, Some(initial_parameters()))?)
        .driver(DriverConfig {
            num_rounds: ROUNDS,
            ..DriverConfig::default()
        })
        .output_dir(&output_dir)
        .bind()
        .await?;
    let address = server.local_addr();
    println!(
        "server listening on {address} (TLS; token fingerprint {})",
        flower_auth::Fingerprint::of(&token)
    );

    // 3. The clients. They join one after the other so that the server
    //    aggregates them in the same order every time: the same run gives
    //    the same model, bit for bit.
    let mut clients = Vec::new();
    for id in 0..NUM_CLIENTS {
        let data = partition(id, NUM_CLIENTS);
        println!(
            "client {id}: {} training rows, {} test rows",
            data.train_y.len(),
            data.test_y.len()
        );
        let options = ClientOptions::new(address.to_string())
            .root_certificates_file(&ca)
            .token(token.as_str());
        clients.push(tokio::spawn(start_client(
            options,
            IrisClient::new(data).to_client(),
        )));
        anyhow::ensure!(
            server
                .clients()
                .wait_for(id + 1, Duration::from_secs(30))
                .await,
            "client {id} did not connect"
        );
    }

    // 4. Run the rounds (Ctrl-C stops early); at the end the server tells
    //    the clients to disconnect.
    let outcome = server.run(support::ctrl_c()).await?;
    for (id, client) in clients.into_iter().enumerate() {
        let summary = client
            .await?
            .with_context(|| format!("client {id} failed"))?;
        println!(
            "client {id} done: {} fit, {} evaluate",
            summary.fit, summary.evaluate
        );
    }
    println!();
    support::print_history(&outcome.history);
    println!();
    println!(
        "{} rounds completed in {:.1?}",
        outcome.completed_rounds,
        started.elapsed()
    );
    support::print_outputs(&output_dir);
    // 5. Loss and metrics per round, as pictures next to history.json.
    let plot = flower_plot::plot_output_dir(&output_dir)?;
    println!("plot:    {} (and .svg)", plot.png.display());
    Ok(())
}
