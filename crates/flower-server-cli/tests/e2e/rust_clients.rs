//! flower-rs Rust clients against the `flower-server` binary over TLS with a
//! bearer token: a client started before the server connects once it is up,
//! a server killed mid-run (SIGKILL) and restarted with `--resume` on the
//! same port gets its clients back and completes the run, and a wrong token
//! fails fast with an auth error and no retries.

// Not every helper is used here (`python`, for one).
#[allow(unused_imports)]
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{history, server_args, DevCertificates, Server};
use flower_client::{start_client, BoxError, ClientError, ClientOptions, NumPyClient, RunSummary};
use flower_core::{Config, Metrics, NdArray, Scalar};
use ndarray::{ArrayD, IxDyn};
use tokio::task::JoinHandle;

const STEP: Duration = Duration::from_secs(60);
const TOKEN: &str = "rust-clients-token";

/// A deterministic client: each fit moves every weight by `0.1·(id+1)`
/// (after `fit_sleep`), weighted by `10·(id+1)` examples.
struct Nudge {
    id: usize,
    fit_sleep: Duration,
}

impl NumPyClient for Nudge {
    fn fit(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        std::thread::sleep(self.fit_sleep);
        let step = 0.1 * (self.id + 1) as f32;
        let out = parameters
            .into_iter()
            .map(|p| match p {
                NdArray::F32(a) => Ok(NdArray::F32(a + step)),
                other => Err(format!("expected float32, got {:?}", other.dtype())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((out, 10 * (self.id as u64 + 1), Metrics::new()))
    }

    fn evaluate(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(f64, u64, Metrics), BoxError> {
        let mean = match &parameters[0] {
            NdArray::F32(a) => f64::from(a.mean().unwrap_or(0.0)),
            other => return Err(format!("expected float32, got {:?}", other.dtype()).into()),
        };
        let metrics = Metrics::from([("accuracy".to_owned(), Scalar::Double(1.0 / (1.0 + mean)))]);
        Ok((mean, 5, metrics))
    }
}

/// Server arguments: TLS, one token, `rounds` rounds with `clients` clients,
/// a float32 initial model written without Python.
fn args(dir: &Path, certs: &DevCertificates, rounds: u64, clients: usize) -> Vec<String> {
    let init = dir.join("init.npz");
    let model = vec![NdArray::F32(ArrayD::zeros(IxDyn(&[2, 3])))];
    flower_core::npz::write_npz_arrays(&init, &model).unwrap();
    let mut args = server_args(certs, &dir.join("out"), &init, rounds, clients);
    args.extend(["--token".to_owned(), TOKEN.to_owned()]);
    args
}

fn options(port: u16, certs: &DevCertificates) -> ClientOptions {
    ClientOptions::new(format!("127.0.0.1:{port}"))
        .root_certificates_file(certs.ca())
        .token(TOKEN)
        .backoff(Duration::from_millis(100), Duration::from_millis(500))
        .max_wait_time(Duration::from_secs(30))
}

fn spawn_client(
    options: ClientOptions,
    id: usize,
    fit_sleep: Duration,
) -> JoinHandle<Result<RunSummary, ClientError>> {
    tokio::spawn(start_client(options, Nudge { id, fit_sleep }.to_client()))
}

async fn finished(
    client: JoinHandle<Result<RunSummary, ClientError>>,
    server: &Server,
) -> RunSummary {
    tokio::time::timeout(STEP, client)
        .await
        .expect("client ends in time")
        .unwrap()
        .unwrap_or_else(|e| panic!("client: {e}\nserver log:\n{}", server.log_text()))
}

/// Starts the binary; its start-up wait is synchronous.
fn start_server(args: &[String], dir: &Path, address: &str) -> Server {
    tokio::task::block_in_place(|| Server::start_at(args, dir, address))
}

fn completed_rounds(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("out/checkpoint.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["completed_rounds"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_before_the_server_connects_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCertificates::generate();
    let port = flower_testkit::free_port();
    let client = spawn_client(options(port, &certs), 0, Duration::ZERO);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!client.is_finished(), "the client must still be retrying");
    let mut server = start_server(
        &args(dir.path(), &certs, 1, 1),
        dir.path(),
        &format!("127.0.0.1:{port}"),
    );

    let summary = finished(client, &server).await;
    assert!(summary.retries >= 2, "{summary:?}");
    assert_eq!(
        (summary.joins, summary.fit, summary.evaluate),
        (1, 1, 1),
        "{summary:?}"
    );
    assert!(
        tokio::task::block_in_place(|| server.wait(STEP)).success(),
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_and_resumed_on_the_same_port_gets_its_clients_back() {
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCertificates::generate();
    let port = flower_testkit::free_port();
    let address = format!("127.0.0.1:{port}");
    let args = args(dir.path(), &certs, 4, 2);
    let mut server = start_server(&args, dir.path(), &address);

    // Slow fits, so that the kill lands mid-run.
    let fit_sleep = Duration::from_millis(300);
    let mut clients = Vec::new();
    for id in 0..2 {
        clients.push(spawn_client(options(port, &certs), id, fit_sleep));
        tokio::task::block_in_place(|| server.wait_for_log("client joined", id + 1, STEP));
    }
    let deadline = Instant::now() + STEP;
    while completed_rounds(dir.path()) < 1 {
        assert!(
            Instant::now() < deadline,
            "round 1 never completed: {}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no ReconnectIns, no clean-up; the clients see broken streams.
    server.child.0.kill().unwrap();
    server.child.0.wait().unwrap();
    let done = completed_rounds(dir.path());
    assert!((1..4).contains(&done), "killed after {done} rounds");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut resume = args.clone();
    resume.push("--resume".into());
    let mut server = start_server(&resume, dir.path(), &address);
    for client in clients {
        let summary = finished(client, &server).await;
        assert_eq!(summary.joins, 2, "{summary:?}");
        assert!(summary.retries >= 1, "{summary:?}");
        assert_eq!(summary.failed_replies, 0, "{summary:?}");
    }
    assert!(
        tokio::task::block_in_place(|| server.wait(STEP)).success(),
        "{}",
        server.log_text()
    );
    let log = server.log_text();
    assert!(log.contains("resuming from checkpoint"), "{log}");
    assert_eq!(completed_rounds(dir.path()), 4);
    let history = history(&dir.path().join("out"));
    let rounds: Vec<u64> = history["losses_distributed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, vec![1, 2, 3, 4], "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_fast_with_an_auth_error_and_no_retries() {
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCertificates::generate();
    let mut server = start_server(&args(dir.path(), &certs, 1, 1), dir.path(), "127.0.0.1:0");

    // The default retry policy retries forever: an auth failure must not be retried.
    let wrong = ClientOptions::new(server.address())
        .root_certificates_file(certs.ca())
        .token("not-the-token");
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        STEP,
        start_client(
            wrong,
            Nudge {
                id: 0,
                fit_sleep: Duration::ZERO,
            }
            .to_client(),
        ),
    )
    .await
    .expect("bounded");
    let elapsed = started.elapsed();
    let error = outcome.expect_err("a wrong token must fail");
    assert!(error.is_auth(), "{error:?}");
    match &error {
        ClientError::Auth { code, message } => {
            assert_eq!(*code, tonic::Code::Unauthenticated);
            assert_eq!(message, flower_auth::INVALID_TOKEN_MESSAGE);
        }
        other => panic!("expected an auth error, got {other:?}"),
    }
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let text = error.to_string();
    assert!(
        text.contains("authentication failed") && !text.contains("not-the-token"),
        "{text}"
    );
    assert!(
        !server.log_text().contains("client joined"),
        "{}",
        server.log_text()
    );

    // The server keeps serving: the right token completes the run.
    let client = spawn_client(options(server.port, &certs), 0, Duration::ZERO);
    let summary = finished(client, &server).await;
    assert_eq!(
        (summary.fit, summary.evaluate, summary.retries),
        (1, 1, 0),
        "{summary:?}"
    );
    assert!(
        tokio::task::block_in_place(|| server.wait(STEP)).success(),
        "{}",
        server.log_text()
    );
}
