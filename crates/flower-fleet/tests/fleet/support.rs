//! Helpers: the shared test apps of `python/apps/` built into FABs once
//! per test binary run, stock SuperNode processes (`flower_testkit::flwr`),
//! and a server with FedAvg over the Fleet API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use flower_core::{ndarrays_to_parameters, NdArray, Parameters};
use flower_fleet::{FleetApi, FleetApp, FleetOptions};
use flower_server::{DriverConfig, RunOutcome, Server};
use flower_strategy::{FedAvg, FedAvgOptions};
use flower_testkit::flwr::{app_dir, build_fab, SuperNode};

/// The test apps' version (their `pyproject.toml`).
pub(crate) const FAB_VERSION: &str = "1.0.0";

/// Which ClientApp the FAB holds (`python/apps/modern`, `python/apps/legacy`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum AppKind {
    Modern,
    Legacy,
}

impl AppKind {
    fn dir(self) -> &'static str {
        match self {
            AppKind::Modern => "modern",
            AppKind::Legacy => "legacy",
        }
    }

    /// The FAB id flwr derives: `<publisher>/<project.name>`.
    pub(crate) fn fab_id(self) -> &'static str {
        match self {
            AppKind::Modern => "flower-rs/modern-app",
            AppKind::Legacy => "flower-rs/legacy-app",
        }
    }
}

/// The FAB of `kind`, built with `flwr build` once per test binary run;
/// `None` (the test skips) without the venv.
pub(crate) fn fab(kind: AppKind) -> Option<Bytes> {
    static FABS: OnceLock<Option<(Bytes, Bytes)>> = OnceLock::new();
    let fabs = FABS.get_or_init(|| {
        let out = tempfile::tempdir().expect("tempdir");
        let read = |kind: AppKind| -> Option<Bytes> {
            let path = build_fab(&app_dir(kind.dir()), out.path())?;
            Some(Bytes::from(std::fs::read(path).expect("read FAB")))
        };
        Some((read(AppKind::Modern)?, read(AppKind::Legacy)?))
    });
    let (modern, legacy) = fabs.as_ref()?;
    Some(match kind {
        AppKind::Modern => modern.clone(),
        AppKind::Legacy => legacy.clone(),
    })
}

/// Starts a stock SuperNode for `superlink` with `node_config`, over TLS
/// trusting `ca`, or plain HTTP without it.
pub(crate) fn supernode(
    superlink: SocketAddr,
    node_config: &str,
    ca: Option<&Path>,
) -> Option<SuperNode> {
    let builder = SuperNode::builder(superlink.to_string()).node_config(node_config);
    match ca {
        Some(ca) => builder.root_certificates(ca),
        None => builder.insecure(),
    }
    .start()
}

/// SIGKILLs a SuperNode's process group (no deactivation), with kill(1):
/// the workspace forbids the `unsafe` of kill(2).
pub(crate) fn kill(node: &SuperNode) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", node.pid())])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -KILL");
}

/// The test model: `w` float32 2×3 = 0..5, `b` float64 [0.5, -0.5].
pub(crate) fn model() -> (Vec<String>, Parameters) {
    let w = ndarray::ArrayD::from_shape_vec(vec![2, 3], vec![0f32, 1., 2., 3., 4., 5.]).expect("w");
    let b = ndarray::ArrayD::from_shape_vec(vec![2], vec![0.5f64, -0.5]).expect("b");
    let arrays = vec![NdArray::from(w), NdArray::from(b)];
    (
        vec!["w".into(), "b".into()],
        ndarrays_to_parameters(&arrays),
    )
}

/// A large float32 model of `n` elements (one array), keys `["big"]`.
pub(crate) fn big_model(n: usize) -> (Vec<String>, Parameters) {
    let data: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let a = ndarray::ArrayD::from_shape_vec(vec![n], data).expect("big");
    (
        vec!["big".into()],
        ndarrays_to_parameters(&[NdArray::from(a)]),
    )
}

/// FedAvg waiting for `min_clients` and starting from `initial`.
pub(crate) fn fedavg(min_clients: usize, initial: Parameters) -> FedAvgOptions {
    FedAvgOptions::with_min_clients(min_clients).initial_parameters(initial)
}

/// Binds a server with FedAvg (`options`, `rounds`) over `fleet`.
pub(crate) async fn fedavg_server(
    fleet: FleetOptions,
    options: FedAvgOptions,
    rounds: u64,
) -> (Server, SocketAddr) {
    let strategy = FedAvg::new(options).expect("fedavg");
    let server = Server::builder()
        .strategy(strategy)
        .insecure()
        .grpc_bidi(false)
        .transport(FleetApi::new(
            fleet.address("127.0.0.1:0".parse().expect("addr")),
        ))
        .driver(DriverConfig {
            num_rounds: rounds,
            round_timeout: Some(Duration::from_secs(120)),
            client_wait_timeout: Duration::from_secs(120),
            ..DriverConfig::default()
        })
        .bind()
        .await
        .expect("server binds");
    let addr = server
        .transport_addrs()
        .iter()
        .find(|(name, _)| *name == "fleet-api")
        .map(|(_, a)| *a)
        .expect("fleet address");
    (server, addr)
}

/// Runs the server to the end, at most `limit`; on failure prints the
/// SuperNodes' logs.
pub(crate) async fn run(server: Server, limit: Duration, nodes: &[&SuperNode]) -> RunOutcome {
    match tokio::time::timeout(limit, server.run(futures::future::pending())).await {
        Ok(Ok(outcome)) => outcome,
        other => {
            for (i, n) in nodes.iter().enumerate() {
                eprintln!("--- supernode {i} ---\n{}", n.log());
            }
            panic!(
                "run did not complete: {:?}",
                other.map(|r| r.map(|o| o.completed_rounds))
            );
        }
    }
}

/// The app as the Fleet API serves it: id, version and config read from
/// the FAB by `flower-fab`.
pub(crate) fn app(kind: AppKind, fab: Bytes) -> FleetApp {
    let fab = flower_fab::Fab::from_bytes(fab).expect("a valid FAB");
    assert_eq!(
        (fab.fab_id().as_str(), fab.fab_version()),
        (kind.fab_id(), FAB_VERSION)
    );
    let config = flower_fab::RunConfig::from_args(&fab, &["scale=1.0"]).expect("run config");
    FleetApp::from_fab(&fab, &config)
}

/// Decodes the final parameters.
pub(crate) fn arrays(parameters: &Parameters) -> Vec<NdArray> {
    flower_core::parameters_to_ndarrays(parameters).expect("npy")
}

/// Every element as f64.
pub(crate) fn values(a: &NdArray) -> Vec<f64> {
    match a {
        NdArray::F32(x) => x.iter().map(|v| f64::from(*v)).collect(),
        NdArray::F64(x) => x.iter().copied().collect(),
        other => panic!("unexpected dtype {:?}", other.dtype()),
    }
}
