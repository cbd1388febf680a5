//! Helpers: a tiny Flower app built into a FAB with `flwr build`, stock
//! SuperNode processes, and a server with FedAvg over the Fleet API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use flower_core::{ndarrays_to_parameters, NdArray, Parameters};
use flower_fleet::{FleetApi, FleetApp, FleetOptions};
use flower_server::{DriverConfig, RunOutcome, Server};
use flower_strategy::{FedAvg, FedAvgOptions};
use flower_testkit::ChildGuard;

/// The test app's id and version (its `pyproject.toml`).
pub(crate) const FAB_ID: &str = "flower-rs/fleet-test-app";
pub(crate) const FAB_VERSION: &str = "1.0.0";

const PYPROJECT: &str = r#"[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fleet-test-app"
version = "1.0.0"
description = "flower-fleet test app"
license = "Apache-2.0"
dependencies = ["flwr>=1.42.0", "numpy>=1.26"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "flower-rs"

[tool.flwr.app.components]
serverapp = "fleet_test_app.server_app:app"
clientapp = "fleet_test_app.client_app:app"

[tool.flwr.app.config]
scale = 1.0
"#;

/// Message API: train adds `factor * scale` to every element; evaluate
/// reports the mean of all elements as `loss`. Weight: `examples`.
const MODERN_CLIENT: &str = r#"
import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

def _delta(context):
    return float(context.node_config.get("factor", 1.0)) * float(context.run_config["scale"])

@app.train()
def train(msg: Message, context: Context) -> Message:
    step = _delta(context)
    arrays = ArrayRecord({k: Array((a.numpy() + step).astype(a.numpy().dtype)) for k, a in msg.content["arrays"].items()})
    metrics = MetricRecord({"num-examples": int(context.node_config.get("examples", 10)),
                            "server-round": int(msg.content["config"]["server-round"])})
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    flat = [a.numpy().astype(np.float64).ravel() for a in msg.content["arrays"].values()]
    loss = float(np.concatenate(flat).mean())
    metrics = MetricRecord({"num-examples": int(context.node_config.get("examples", 10)), "loss": loss})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
"#;

/// The same arithmetic as a legacy `client_fn` NumPyClient app.
const LEGACY_CLIENT: &str = r#"
import numpy as np
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.app import Context

class Client(NumPyClient):
    def __init__(self, context):
        self.step = float(context.node_config.get("factor", 1.0)) * float(context.run_config["scale"])
        self.n = int(context.node_config.get("examples", 10))
    def fit(self, parameters, config):
        return [(p + self.step).astype(p.dtype) for p in parameters], self.n, {}
    def evaluate(self, parameters, config):
        flat = np.concatenate([p.astype(np.float64).ravel() for p in parameters])
        return float(flat.mean()), self.n, {}

def client_fn(context: Context):
    return Client(context).to_client()

app = ClientApp(client_fn=client_fn)
"#;

const SERVER_APP: &str = r#"
from flwr.serverapp import ServerApp
app = ServerApp()
"#;

/// Which ClientApp the FAB holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AppKind {
    Modern,
    Legacy,
}

/// The venv's `bin/` (skips the test when absent and not required).
pub(crate) fn venv_bin() -> Option<PathBuf> {
    flower_testkit::python::venv_tool("flower-supernode")?;
    flower_testkit::venv_bin()
}

fn offline(cmd: &mut Command, bin: &Path, home: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env("FLWR_HOME", home)
        .env("FLWR_DISABLE_UPDATE_CHECK", "1")
        .env("FLWR_TELEMETRY_ENABLED", "0");
}

/// Writes the test app and builds its FAB with `flwr build`.
pub(crate) fn build_fab(bin: &Path, kind: AppKind) -> Bytes {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app");
    let pkg = app.join("fleet_test_app");
    std::fs::create_dir_all(&pkg).expect("mkdir");
    std::fs::write(app.join("pyproject.toml"), PYPROJECT).expect("write");
    std::fs::write(pkg.join("__init__.py"), "").expect("write");
    let client = match kind {
        AppKind::Modern => MODERN_CLIENT,
        AppKind::Legacy => LEGACY_CLIENT,
    };
    std::fs::write(pkg.join("client_app.py"), client).expect("write");
    std::fs::write(pkg.join("server_app.py"), SERVER_APP).expect("write");
    let mut cmd = Command::new(bin.join("flwr"));
    cmd.arg("build")
        .arg("--app")
        .arg(&app)
        .current_dir(dir.path());
    offline(&mut cmd, bin, dir.path());
    let out = cmd.output().expect("flwr build runs");
    assert!(
        out.status.success(),
        "flwr build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fab = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "fab"))
        .expect("a .fab file");
    Bytes::from(std::fs::read(fab).expect("read fab"))
}

/// A stock `flower-supernode` process (killed on drop), logging to a file.
pub(crate) struct SuperNode {
    pub(crate) child: ChildGuard,
    log: PathBuf,
    _home: tempfile::TempDir,
}

impl SuperNode {
    /// Starts `flower-supernode --superlink <addr> --node-config <config>`
    /// with `extra` flags (`--insecure`, `--root-certificates ...`).
    pub(crate) fn start(
        bin: &Path,
        superlink: SocketAddr,
        node_config: &str,
        extra: &[&str],
    ) -> Self {
        let home = tempfile::tempdir().expect("tempdir");
        let log = home.path().join("supernode.log");
        let file = std::fs::File::create(&log).expect("log file");
        let runtime_port = flower_testkit::free_port().to_string();
        let mut cmd = Command::new(bin.join("flower-supernode"));
        cmd.arg("--superlink")
            .arg(superlink.to_string())
            .args(["--node-config", node_config])
            .args(["--port", &runtime_port])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone"))
            .stderr(file);
        offline(&mut cmd, bin, home.path());
        let child = ChildGuard(cmd.spawn().expect("flower-supernode starts"));
        SuperNode {
            child,
            log,
            _home: home,
        }
    }

    /// The process's output so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
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
pub(crate) fn app(fab: Bytes) -> FleetApp {
    let fab = flower_fab::Fab::from_bytes(fab).expect("a valid FAB");
    assert_eq!(
        (fab.fab_id().as_str(), fab.fab_version()),
        (FAB_ID, FAB_VERSION)
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
