//! The same Rust SuperNodes against flower-rs's own Fleet API
//! (`flower-fleet` + `flower-server` FedAvg, what `flower-server
//! --fleet-api-address --fab ...` runs), serving the modern app's FAB:
//! message-API instructions to [`ShiftApp`], and legacy (`fitins.*`)
//! instructions to a `NumPyClient` through [`NumPyClientApp`].

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use flower_client::app::NumPyClientApp;
use flower_client::fleet::SuperNodeOptions;
use flower_client::{BoxError, NumPyClient};
use flower_core::{ndarrays_to_parameters, Config, Metrics, NdArray};
use flower_fleet::{FleetApi, FleetApp, FleetOptions, MessageFormat};
use flower_server::{DriverConfig, RunOutcome, Server};
use flower_strategy::{FedAvg, FedAvgOptions};
use flower_testkit::flwr::{app_dir, build_fab};

use crate::fleet_superlink::{RustNode, ShiftApp};

/// The modern app's FAB, with `lr = 0.5` as the run's override.
fn app() -> Option<FleetApp> {
    let out = tempfile::tempdir().expect("tempdir");
    let path = build_fab(&app_dir("modern"), out.path())?;
    let fab = flower_fab::Fab::from_bytes(Bytes::from(std::fs::read(path).expect("FAB")))
        .expect("valid FAB");
    let config = flower_fab::RunConfig::from_args(&fab, &["lr=0.5"]).expect("run config");
    Some(FleetApp::from_fab(&fab, &config))
}

/// `w` float32 2×3 = 0..5, `b` float64 [0.5, -0.5].
fn model() -> Vec<NdArray> {
    let w = ndarray::ArrayD::from_shape_vec(vec![2, 3], vec![0f32, 1., 2., 3., 4., 5.]).expect("w");
    let b = ndarray::ArrayD::from_shape_vec(vec![2], vec![0.5f64, -0.5]).expect("b");
    vec![NdArray::from(w), NdArray::from(b)]
}

async fn server(fleet: FleetOptions, rounds: u64) -> (Server, SocketAddr) {
    server_with(fleet, rounds, "127.0.0.1:0".parse().expect("addr"), None).await
}

/// As [`server`], on `address`, saving (and with `resume`, resuming) the
/// run in `out`.
async fn server_with(
    fleet: FleetOptions,
    rounds: u64,
    address: SocketAddr,
    out: Option<(&std::path::Path, bool)>,
) -> (Server, SocketAddr) {
    let strategy = FedAvg::new(
        FedAvgOptions::with_min_clients(2).initial_parameters(ndarrays_to_parameters(&model())),
    )
    .expect("fedavg");
    let mut builder = Server::builder()
        .strategy(strategy)
        .insecure()
        .grpc_bidi(false)
        .transport(FleetApi::new(fleet.address(address)))
        .driver(DriverConfig {
            num_rounds: rounds,
            round_timeout: Some(Duration::from_secs(60)),
            client_wait_timeout: Duration::from_secs(60),
            resume: out.is_some_and(|(_, resume)| resume),
            ..DriverConfig::default()
        });
    if let Some((dir, _)) = out {
        builder = builder.output_dir(dir);
    }
    let server = builder.bind().await.expect("server binds");
    let addr = server
        .transport_addrs()
        .iter()
        .find(|(name, _)| *name == "fleet-api")
        .map(|(_, a)| *a)
        .expect("fleet address");
    (server, addr)
}

/// Runs the server to the end (bounded).
fn run(rt: &tokio::runtime::Runtime, server: Server) -> RunOutcome {
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(90),
            server.run(futures::future::pending()),
        )
        .await
    })
    .expect("run finished in time")
    .expect("run succeeded")
}

fn values(a: &NdArray) -> Vec<f64> {
    match a {
        NdArray::F32(x) => x.iter().map(|v| f64::from(*v)).collect(),
        NdArray::F64(x) => x.iter().copied().collect(),
        other => panic!("unexpected dtype {:?}", other.dtype()),
    }
}

fn assert_model_shifted(outcome: &RunOutcome, shift: f64) {
    let arrays = flower_core::parameters_to_ndarrays(&outcome.parameters).expect("npy");
    let want: Vec<Vec<f64>> = model()
        .iter()
        .map(|a| values(a).iter().map(|v| v + shift).collect())
        .collect();
    let got: Vec<Vec<f64>> = arrays.iter().map(values).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        for (x, y) in g.iter().zip(w) {
            assert!((x - y).abs() < 1e-5, "got {got:?}, want {want:?}");
        }
    }
}

fn options(addr: SocketAddr, node_config: &str) -> SuperNodeOptions {
    SuperNodeOptions::new(addr.to_string())
        .insecure()
        .node_config(node_config)
        .expect("node config")
}

/// Message-API instructions: our FedAvg sends no `lr`, so the Rust app
/// reads it from the run config (`lr = 0.5`, the run's override, via
/// GetRun + GetFab): deltas 0.5 (n=10) and 1.5 (n=30), D = 1.25 per round.
#[test]
fn rust_supernodes_on_our_fleet_api() {
    crate::init_tracing();
    let Some(app) = app() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fleet = FleetOptions::new(app)
        .insecure()
        .array_keys(vec!["w".into(), "b".into()]);
    let (server, addr) = rt.block_on(server(fleet, 2));
    let a = RustNode::spawn(&rt, options(addr, "factor=1 examples=10"), ShiftApp);
    let b = RustNode::spawn(&rt, options(addr, "factor=3 examples=30"), ShiftApp);
    let outcome = run(&rt, server);
    assert_eq!(outcome.completed_rounds, 2);
    assert_model_shifted(&outcome, 2.0 * 1.25);
    for node in [a, b] {
        let summary = node.stop(&rt).expect("clean stop");
        assert_eq!(summary.error_replies, 0, "{summary:?}");
        assert!(summary.replies >= 2, "{summary:?}");
    }
}

/// Adds 1 to float arrays; weight 5.
struct PlusOne;

impl NumPyClient for PlusOne {
    fn fit(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        let out = parameters
            .into_iter()
            .map(|p| match p {
                NdArray::F32(x) => NdArray::F32(x + 1.0),
                NdArray::F64(x) => NdArray::F64(x + 1.0),
                other => other,
            })
            .collect();
        Ok((out, 5, Metrics::new()))
    }

    fn evaluate(
        &mut self,
        _parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(f64, u64, Metrics), BoxError> {
        Ok((0.25, 5, Metrics::new()))
    }
}

/// Legacy instructions (`fitins.parameters`, ...): an unchanged
/// `NumPyClient` answers them with the legacy keys; one round moves every
/// element by 1.
#[test]
fn numpy_client_answers_legacy_instructions_on_our_fleet_api() {
    crate::init_tracing();
    let Some(app) = app() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fleet = FleetOptions::new(app)
        .insecure()
        .message_format(MessageFormat::Legacy);
    let (server, addr) = rt.block_on(server(fleet, 1));
    let a = RustNode::spawn(&rt, options(addr, ""), NumPyClientApp::new(PlusOne));
    let b = RustNode::spawn(&rt, options(addr, ""), NumPyClientApp::new(PlusOne));
    let outcome = run(&rt, server);
    assert_eq!(outcome.completed_rounds, 1);
    assert_model_shifted(&outcome, 1.0);
    let losses = &outcome.history.losses_distributed;
    assert!(
        losses.iter().all(|(_, l)| (l - 0.25).abs() < 1e-9) && !losses.is_empty(),
        "{losses:?}"
    );
    for node in [a, b] {
        let summary = node.stop(&rt).expect("clean stop");
        assert_eq!(summary.error_replies, 0, "{summary:?}");
    }
}

/// As the stock SuperNode: an explicit key is refused with `--insecure`
/// before anything is sent; a bad key file and a bad `--node-config` are
/// option errors.
#[test]
fn invalid_supernode_options_are_refused_up_front() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |options: SuperNodeOptions| {
        rt.block_on(flower_client::fleet::run_supernode(
            options,
            NumPyClientApp::new(PlusOne),
            futures::future::pending(),
        ))
    };
    if let Some(key) =
        flower_testkit::flwr::generate_node_key(dir.path(), flower_testkit::flwr::Curve::P384)
    {
        // Nothing listens on port 1: only the up-front check can answer.
        let err = run(SuperNodeOptions::new("127.0.0.1:1")
            .insecure()
            .auth_private_key(&key.private_key))
        .expect_err("refused");
        assert!(
            matches!(err, flower_client::ClientError::InsecureCredentials),
            "{err}"
        );
    }
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "not a key").expect("write");
    let err =
        run(SuperNodeOptions::new("127.0.0.1:1").auth_private_key(&garbage)).expect_err("refused");
    assert!(
        matches!(err, flower_client::ClientError::NodeKey(_)),
        "{err}"
    );
    let err = SuperNodeOptions::new("h:1")
        .node_config("a=[1")
        .expect_err("bad TOML");
    assert!(err.to_string().contains("--node-config"), "{err}");
    let err = run(SuperNodeOptions::new("no-port").insecure()).expect_err("bad address");
    assert!(
        matches!(err, flower_client::ClientError::InvalidOptions(_)),
        "{err}"
    );
}

/// Our server stopped after round 1 of 3 (its task aborted: listener and
/// in-memory link state gone) and resumed from its checkpoint on the same
/// port: the Rust nodes retry through the outage and finish the run.
/// Deltas 0.5 (n=10) and 1.5 (n=30): D = 1.25, three rounds: 3.75.
#[test]
fn rust_supernodes_survive_our_server_restarting_mid_run() {
    crate::init_tracing();
    let Some(app) = app() else { return };
    let out = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fleet = || {
        FleetOptions::new(app.clone())
            .insecure()
            .array_keys(vec!["w".into(), "b".into()])
    };
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (first, addr) = rt.block_on(server_with(fleet(), 3, any, Some((out.path(), false))));
    let a = RustNode::spawn(&rt, options(addr, "factor=1 examples=10"), ShiftApp);
    let b = RustNode::spawn(&rt, options(addr, "factor=3 examples=30"), ShiftApp);
    let task = rt.spawn(first.run(futures::future::pending()));
    let checkpoint = out.path().join("checkpoint.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&checkpoint).is_ok_and(|t| t.contains("\"completed_rounds\": 1"))
    {
        assert!(std::time::Instant::now() < deadline, "round 1 never saved");
        std::thread::sleep(Duration::from_millis(50));
    }
    task.abort();
    let _ = rt.block_on(task);
    std::thread::sleep(Duration::from_secs(1));
    let (second, _) = rt.block_on(server_with(fleet(), 3, addr, Some((out.path(), true))));
    let outcome = run(&rt, second);
    assert_eq!(outcome.completed_rounds, 3);
    assert_model_shifted(&outcome, 3.0 * 1.25);
    for node in [a, b] {
        let summary = node.stop(&rt).expect("clean stop");
        assert_eq!(summary.error_replies, 0, "{summary:?}");
    }
}
