//! One federation of 2 Rust clients (`examples/client.rs`, run through its
//! command line) and 2 stock Python Flower clients (`examples/python/client.py`,
//! flwr 1.42 + numpy, on the data the Rust client's `--dump-data` writes)
//! against the flower-rs server, over TLS with a bearer token: every client
//! takes part in every round and exits cleanly, and the model comes out as an
//! all-Rust federation's (the two clients compute the same maths).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::support::generate_dev_certificates;
use crate::start_server;
use clap::Parser as _;
use flower_core::{parameters_to_ndarrays, NdArray};
use flower_server::RunOutcome;
use flower_testkit::{python, workspace_root, ChildGuard};

const STEP: Duration = Duration::from_secs(90);
const TOKEN: &str = "mixed-federation-token";
const CLIENTS: usize = 4;
const ROUNDS: u64 = 3;

/// Which clients are Python processes (the others are Rust tasks).
enum Kind {
    Rust,
    Python,
}

/// Runs the `client` example with these arguments.
fn client_example(args: &[&str]) -> anyhow::Result<()> {
    let args = std::iter::once("client").chain(args.iter().copied());
    crate::client_example::run(crate::client_example::Args::try_parse_from(args)?)
}

async fn federation(dir: &Path, kinds: &[Kind], py: Option<&Path>) -> RunOutcome {
    let tls = generate_dev_certificates(&dir.join("certs")).unwrap();
    let ca = tls.ca_certfile.clone();
    let server = start_server(tls, TOKEN, ROUNDS, kinds.len(), &dir.join("out")).await;
    let csv = dir.join("iris.csv");
    client_example(&["--dump-data", csv.to_str().unwrap()]).expect("--dump-data");

    let mut rust = Vec::new();
    let mut pythons = Vec::new();
    for (id, kind) in kinds.iter().enumerate() {
        match kind {
            Kind::Rust => {
                let args = [
                    "--server-address".to_owned(),
                    server.local_addr().to_string(),
                    "--root-certificates".to_owned(),
                    ca.display().to_string(),
                    "--token".to_owned(),
                    TOKEN.to_owned(),
                    "--partition-id".to_owned(),
                    id.to_string(),
                    "--num-partitions".to_owned(),
                    kinds.len().to_string(),
                    "--max-wait-time".to_owned(),
                    "10".to_owned(),
                ];
                // The example blocks on its own runtime: a thread of its own.
                rust.push(std::thread::spawn(move || {
                    client_example(&args.iter().map(String::as_str).collect::<Vec<_>>())
                }));
            }
            Kind::Python => {
                let child = Command::new(py.expect("python"))
                    .arg(workspace_root().join("examples/python/client.py"))
                    .args(["--server-address", &server.local_addr().to_string()])
                    .arg("--root-certificates")
                    .arg(&ca)
                    .args(["--token", TOKEN])
                    .args(["--partition-id", &id.to_string()])
                    .args(["--num-partitions", &kinds.len().to_string()])
                    .arg("--data")
                    .arg(&csv)
                    .env("FLWR_TELEMETRY_ENABLED", "0")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join(format!("py{id}.log"))).unwrap())
                    .spawn()
                    .expect("start the Python client");
                pythons.push((id, ChildGuard(child)));
            }
        }
        // One after the other: the same join order, the same fold order.
        assert!(
            server.clients().wait_for(id + 1, STEP).await,
            "client {id} did not join; logs in {}",
            dir.display()
        );
    }
    let outcome = tokio::time::timeout(STEP, server.run(std::future::pending()))
        .await
        .expect("run ends in time")
        .expect("run succeeds");
    // The run is over: every client has been told to disconnect.
    for (i, thread) in rust.into_iter().enumerate() {
        let result = tokio::task::block_in_place(|| thread.join()).expect("no panic");
        result.unwrap_or_else(|e| panic!("Rust client {i}: {e:#}"));
    }
    for (id, mut child) in pythons {
        let status = child.wait_timeout(STEP).expect("Python client exits");
        assert!(
            status.success(),
            "Python client {id}: {status}\n{}",
            std::fs::read_to_string(dir.join(format!("py{id}.log"))).unwrap_or_default()
        );
    }
    outcome
}

fn floats(p: &flower_core::Parameters) -> Vec<f64> {
    parameters_to_ndarrays(p)
        .unwrap()
        .into_iter()
        .flat_map(|a| match a {
            NdArray::F64(a) => a.iter().copied().collect::<Vec<_>>(),
            other => panic!("expected float64, got {:?}", other.dtype()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rust_and_two_python_clients_train_one_model() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kinds = [Kind::Rust, Kind::Python, Kind::Rust, Kind::Python];
    // Every client, Rust or Python, ended cleanly (checked in `federation`)
    // and took part in every round.
    let mixed = federation(&dir.path().join("mixed"), &kinds, Some(&py)).await;
    assert_eq!(mixed.completed_rounds, ROUNDS);
    for r in &mixed.history.rounds {
        assert_eq!(
            (
                r.fit_results,
                r.fit_failures,
                r.evaluate_results,
                r.evaluate_failures
            ),
            (CLIENTS, 0, CLIENTS, 0),
            "{r:?}"
        );
    }
    let losses: Vec<f64> = mixed
        .history
        .losses_distributed
        .iter()
        .map(|&(_, l)| l)
        .collect();
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");

    // The same federation with Rust clients only: the same model, up to
    // floating-point summation order (numpy's BLAS vs ndarray).
    let rust_only = [Kind::Rust, Kind::Rust, Kind::Rust, Kind::Rust];
    let reference = federation(&dir.path().join("rust"), &rust_only, None).await;
    let (got, want) = (floats(&mixed.parameters), floats(&reference.parameters));
    assert_eq!(got.len(), 15);
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
            "{got:?}\nvs\n{want:?}"
        );
    }
    assert!(
        want.iter().any(|w| w.abs() > 0.05),
        "the model moved: {want:?}"
    );
}
