//! Rust clients against the stock Python Flower 1.42 server
//! (`flwr.server.start_server`, FedAvg) over TLS, with and without a bearer
//! token interceptor.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flower_client::{
    start_client, ClientError, ClientOptions, NumPyClient, NumPyClientAdapter, RunSummary,
};
use flower_core::NdArray;
use flower_testkit::stock_server::{StockServer, StockServerConfig};
use flower_testkit::{free_port, python, DevCertificates};
use serde_json::Value;

use crate::trainer::Trainer;
use crate::{init_tracing, STEP_TIMEOUT};

type SharedTrainer = Arc<Mutex<NumPyClientAdapter<Trainer>>>;

fn shared(trainer: Trainer) -> SharedTrainer {
    Arc::new(Mutex::new(trainer.to_client()))
}

async fn run(options: ClientOptions, client: SharedTrainer) -> Result<RunSummary, ClientError> {
    tokio::time::timeout(STEP_TIMEOUT * 2, start_client(options, client))
        .await
        .expect("client finished in time")
}

fn approx(v: &Value, expected: f64, what: &str) {
    let got = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!(
        (got - expected).abs() < 1e-5,
        "{what}: got {got}, expected {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedavg_over_tls_with_two_rust_clients() {
    init_tracing();
    let Some(python) = python() else { return };
    let certs = DevCertificates::generate();
    let port = free_port();
    let server = StockServer::start(
        &python,
        &StockServerConfig {
            port,
            rounds: 3,
            min_clients: 2,
            tls: Some((certs.ca(), certs.cert(), certs.key())),
            token: None,
        },
    )
    .await;

    // Client A adds 0.1 per fit with weight 10, client B adds 0.3 with weight
    // 30: FedAvg moves the model by (0.1·10 + 0.3·30) / 40 = 0.25 per round.
    let a = shared(Trainer::new(1, 0.1, 10, 1.0));
    let b = shared(Trainer::new(2, 0.3, 30, 2.0));
    let options = || {
        ClientOptions::new(format!("127.0.0.1:{port}"))
            .root_certificates_file(certs.ca())
            .no_retries()
    };
    let (ra, rb) = tokio::join!(run(options(), a.clone()), run(options(), b.clone()));
    let log = server.log();
    let ra = ra.unwrap_or_else(|e| panic!("client A: {e}\nserver log:\n{log}"));
    let rb = rb.unwrap_or_else(|e| panic!("client B: {e}\nserver log:\n{log}"));
    let result = server.finish().await;

    for s in [&ra, &rb] {
        assert_eq!((s.rounds, s.fit, s.evaluate), (3, 3, 3), "{s:?}");
        assert_eq!((s.joins, s.retries, s.failed_replies), (1, 0, 0), "{s:?}");
    }
    // The strategy has no initial parameters: exactly one client was asked.
    assert_eq!(ra.get_parameters + rb.get_parameters, 1);

    // Server-side history: loss_r = mean(model_r[0]) + (1.0·10 + 2.0·30) / 40.
    let losses = result["losses_distributed"].as_array().unwrap();
    assert_eq!(losses.len(), 3, "{result}");
    for (r, entry) in losses.iter().enumerate() {
        let round = r as f64 + 1.0;
        assert_eq!(entry[0].as_u64(), Some(r as u64 + 1));
        approx(&entry[1], 0.25 * round + 1.75, "distributed loss");
    }
    let examples = &result["metrics_distributed"]["examples"];
    assert_eq!(
        examples,
        &serde_json::json!([[1, 40], [2, 40], [3, 40]]),
        "{result}"
    );
    assert_eq!(result["fit_failures"], serde_json::json!([0, 0, 0]));

    // Final global model: initial + 0.75, dtypes kept.
    let params = result["parameters"].as_array().unwrap();
    assert_eq!(params[0]["dtype"], "float32");
    assert_eq!(params[0]["shape"], serde_json::json!([2, 3]));
    for v in params[0]["values"].as_array().unwrap() {
        approx(v, 0.75, "float32 weight");
    }
    assert_eq!(params[1]["dtype"], "float64");
    for (i, v) in params[1]["values"].as_array().unwrap().iter().enumerate() {
        approx(v, i as f64 + 0.75, "float64 weight");
    }

    // The clients evaluated exactly that model in round 3.
    let evaluated = a.lock().unwrap().get_ref().last_evaluated.clone();
    match &evaluated[..] {
        [NdArray::F32(w), NdArray::F64(b)] => {
            assert!(w.iter().all(|&v| (v - 0.75).abs() < 1e-5), "{w:?}");
            assert!((b[[3]] - 3.75).abs() < 1e-9, "{b:?}");
        }
        other => panic!("unexpected evaluated model {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_interceptor_on_the_stock_server() {
    init_tracing();
    let Some(python) = python() else { return };
    let certs = DevCertificates::generate();
    let port = free_port();
    let server = StockServer::start(
        &python,
        &StockServerConfig {
            port,
            rounds: 1,
            min_clients: 2,
            tls: Some((certs.ca(), certs.cert(), certs.key())),
            token: Some("good-token".into()),
        },
    )
    .await;
    // Default retry policy (unbounded): an auth failure must still end at once.
    let options =
        || ClientOptions::new(format!("127.0.0.1:{port}")).root_certificates_file(certs.ca());

    let started = Instant::now();
    let wrong = run(
        options().token("wrong-token"),
        shared(Trainer::new(9, 0.0, 1, 0.0)),
    )
    .await;
    let elapsed = started.elapsed();
    match wrong {
        Err(ClientError::Auth { code, ref message }) => {
            assert_eq!(code, tonic::Code::Unauthenticated);
            assert_eq!(message, "Invalid bearer token");
        }
        other => panic!("expected an auth error, got {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(5),
        "auth failure took {elapsed:?}"
    );
    let text = wrong.unwrap_err().to_string();
    assert!(
        text.contains("authentication failed") && !text.contains("wrong-token"),
        "{text}"
    );

    let missing = run(options(), shared(Trainer::new(9, 0.0, 1, 0.0))).await;
    assert!(
        matches!(&missing, Err(ClientError::Auth { message, .. }) if message == "Missing bearer token"),
        "{missing:?}"
    );

    // The server keeps serving: the right token, under either header key, completes the run.
    let (ra, rb) = tokio::join!(
        run(
            options().token("good-token"),
            shared(Trainer::new(1, 0.1, 10, 1.0))
        ),
        run(
            options()
                .token("good-token")
                .auth_header_key("x-authorization"),
            shared(Trainer::new(2, 0.3, 30, 2.0))
        ),
    );
    let log = server.log();
    let ra = ra.unwrap_or_else(|e| panic!("client A: {e}\nserver log:\n{log}"));
    let rb = rb.unwrap_or_else(|e| panic!("client B: {e}\nserver log:\n{log}"));
    assert_eq!((ra.fit, ra.evaluate, rb.fit, rb.evaluate), (1, 1, 1, 1));
    let result = server.finish().await;
    let losses = result["losses_distributed"].as_array().unwrap();
    assert_eq!(losses.len(), 1, "{result}");
    approx(&losses[0][1], 0.25 + 1.75, "distributed loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_fails_fast_with_a_tls_error() {
    init_tracing();
    let Some(python) = python() else { return };
    let certs = DevCertificates::generate();
    let other = DevCertificates::generate();
    let port = free_port();
    let _server = StockServer::start(
        &python,
        &StockServerConfig {
            port,
            rounds: 1,
            min_clients: 1,
            tls: Some((certs.ca(), certs.cert(), certs.key())),
            token: None,
        },
    )
    .await;
    // Default (unbounded) retries: a certificate problem must not be retried.
    let started = Instant::now();
    let outcome = run(
        ClientOptions::new(format!("127.0.0.1:{port}")).root_certificates_file(other.ca()),
        shared(Trainer::new(1, 0.0, 1, 0.0)),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match outcome {
        Err(ClientError::Tls { ref message, .. }) => {
            assert!(
                message.contains("certificate") || message.contains("UnknownIssuer"),
                "{message}"
            );
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
}
