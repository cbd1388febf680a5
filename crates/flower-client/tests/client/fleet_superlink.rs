//! Rust SuperNodes (`flower_client::fleet`) in a stock Flower 1.42
//! federation: `flower-superlink` running the modern app's message-API
//! `FedAvg` ServerApp (submitted with `flwr run`), over TLS, beside a stock
//! Python `flower-supernode`; and with `--enable-supernode-auth`,
//! pre-registered OpenSSH keys and a model above the 5 MiB chunk size.
//!
//! The Rust nodes run [`ShiftApp`], the arithmetic of
//! `examples/supernode.rs`: every float array `x` becomes
//! `x + lr * factor`, weight `examples`. The Python ClientApp adds
//! `local-epochs * factor * scale` (= `factor` with the defaults). One
//! FedAvg round moves every element by `D = Σ n_i d_i / Σ n_i`.

use std::time::Duration;

use flower_client::app::{ClientApp, Context, Instruction, Reply};
use flower_client::fleet::{run_supernode, SuperNodeOptions, SuperNodeSummary};
use flower_client::{BoxError, ClientError};
use flower_core::NdArray;
use flower_testkit::flwr::{app_dir, generate_node_key, Curve, SuperNode};
use flower_testkit::superlink::{final_arrays, SuperLink};
use flower_testkit::DevCertificates;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bound on a whole `flwr run`.
const RUN_LIMIT: Duration = Duration::from_secs(150);

/// `x + lr * factor` for float arrays (lr from the message config, else the
/// run config, else 0.1); weight = node config `examples` (default 10);
/// evaluate: `loss` = mean of all float elements. Metric keys as the
/// modern app's Python ClientApp (FedAvg needs identical keys).
pub(crate) struct ShiftApp;

impl ShiftApp {
    fn delta(ins: &Instruction, ctx: &Context) -> f64 {
        let lr = ins
            .config_f64("lr")
            .or_else(|| ctx.run_f64("lr"))
            .unwrap_or(0.1);
        lr * ctx.node_f64("factor").unwrap_or(1.0)
    }

    fn examples(ctx: &Context) -> u64 {
        ctx.node_f64("examples").map_or(10, |e| e as u64)
    }
}

impl ClientApp for ShiftApp {
    fn train(&mut self, ins: Instruction, ctx: &Context) -> Result<Reply, BoxError> {
        let d = Self::delta(&ins, ctx);
        let round = ins.server_round().unwrap_or(0);
        let arrays = ins
            .arrays
            .into_iter()
            .map(|(name, a)| {
                let a = match a {
                    NdArray::F32(x) => NdArray::F32(x.mapv(|v| (f64::from(v) + d) as f32)),
                    NdArray::F64(x) => NdArray::F64(x + d),
                    other => other,
                };
                (name, a)
            })
            .collect();
        Ok(Reply::train(arrays, Self::examples(ctx))
            .metric("delta", d)
            .metric("server-round", round))
    }

    fn evaluate(&mut self, ins: Instruction, ctx: &Context) -> Result<Reply, BoxError> {
        let values: Vec<f64> = ins
            .arrays
            .iter()
            .flat_map(|(_, a)| match a {
                NdArray::F32(x) => x.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(),
                NdArray::F64(x) => x.iter().copied().collect(),
                _ => Vec::new(),
            })
            .collect();
        let loss = values.iter().sum::<f64>() / values.len().max(1) as f64;
        Ok(Reply::evaluate(Self::examples(ctx))
            .metric("loss", loss)
            .metric("factor", ctx.node_f64("factor").unwrap_or(1.0)))
    }
}

/// A Rust SuperNode running on `rt` until [`RustNode::stop`].
pub(crate) struct RustNode {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<SuperNodeSummary, ClientError>>,
}

impl RustNode {
    pub(crate) fn spawn<A: ClientApp + 'static>(
        rt: &Runtime,
        options: SuperNodeOptions,
        app: A,
    ) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let options = options.poll_interval(Duration::from_millis(500));
        let handle = rt.spawn(run_supernode(options, app, async move {
            let _ = rx.await;
        }));
        RustNode {
            stop: Some(tx),
            handle,
        }
    }

    /// Signals shutdown and waits (bounded) for the node's result.
    pub(crate) fn stop(mut self, rt: &Runtime) -> Result<SuperNodeSummary, ClientError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), &mut self.handle)
                .await
                .expect("node stopped in time")
                .expect("node task")
        })
    }

    /// Waits (bounded) for the node to end on its own.
    pub(crate) fn join(
        mut self,
        rt: &Runtime,
        limit: Duration,
    ) -> Result<SuperNodeSummary, ClientError> {
        rt.block_on(async {
            tokio::time::timeout(limit, &mut self.handle)
                .await
                .expect("node ended in time")
                .expect("node task")
        })
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn options(link: &SuperLink, certs: &DevCertificates, node_config: &str) -> SuperNodeOptions {
    SuperNodeOptions::new(link.address())
        .root_certificates(certs.ca())
        .node_config(node_config)
        .expect("node config")
}

/// Asserts that `name`'s final values are `initial[i] + shift`.
fn assert_shifted(finals: &[(String, Vec<f64>)], name: &str, initial: &[f64], shift: f64) {
    let got = &finals
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no final {name} in {finals:?}; see the flwr run output above"))
        .1;
    let want: Vec<f64> = initial.iter().map(|v| v + shift).collect();
    assert_eq!(got.len(), want.len(), "{name}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{name}: got {got:?}, want {want:?}");
    }
}

const W0: [f64; 6] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
const B0: [f64; 2] = [0.5, -0.5];

/// Two Rust SuperNodes and one stock Python SuperNode, TLS, two rounds of
/// the stock message-API FedAvg: deltas 0.5 (n=10), 1.0 (n=10), 2.0
/// (n=20), so D = (5 + 10 + 40) / 40 = 1.375 per round.
#[test]
fn rust_and_python_supernodes_on_a_stock_superlink_over_tls() {
    crate::init_tracing();
    let certs = DevCertificates::generate();
    let Some(link) = SuperLink::builder().tls(&certs).start() else {
        return;
    };
    let rt = runtime();
    let a = RustNode::spawn(
        &rt,
        options(&link, &certs, "factor=1 examples=10"),
        ShiftApp,
    );
    let b = RustNode::spawn(
        &rt,
        options(&link, &certs, "factor=2 examples=10"),
        ShiftApp,
    );
    let Some(python) = SuperNode::builder(link.address())
        .root_certificates(certs.ca())
        .node_config("factor=2 examples=20")
        .start()
    else {
        return;
    };
    let Some(run) = link.run(&app_dir("modern"), "lr=0.5 min-nodes=3") else {
        return;
    };
    let output = run.wait(RUN_LIMIT);
    let finals = final_arrays(&output);
    if finals.is_empty() {
        eprintln!(
            "flwr run output:\n{output}\n--- SuperLink ---\n{}\n--- Python SuperNode ---\n{}",
            link.log(),
            python.log()
        );
    }
    assert_shifted(&finals, "w", &W0, 2.0 * 1.375);
    assert_shifted(&finals, "b", &B0, 2.0 * 1.375);
    for node in [a, b] {
        let summary = node.stop(&rt).expect("clean stop");
        // Two rounds of train + evaluate, no error reply, nothing dropped.
        assert_eq!(
            (summary.replies, summary.error_replies, summary.dropped),
            (4, 0, 0),
            "{summary:?}"
        );
    }
    assert!(
        link.wait_for_log("Deactivated node_id", 2, Duration::from_secs(10)),
        "Rust nodes did not deactivate:\n{}",
        link.log()
    );
    drop(python);
}

/// `--enable-supernode-auth` with keys on P-256 and P-521 registered by
/// `flwr supernode register`, a 6 MB float32 array (two 5 MiB chunks each
/// way), one round: deltas 0.5 (n=10) and 1.5 (n=30), D = 1.25. A node
/// with an unregistered (ephemeral) key is refused and stops.
#[test]
fn registered_keys_and_a_model_above_five_mib() {
    crate::init_tracing();
    let certs = DevCertificates::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let big = 1_500_000usize;
    let Some(link) = SuperLink::builder()
        .tls(&certs)
        .enable_supernode_auth()
        .env("FLOWER_RS_EXTRA_ELEMENTS", big.to_string())
        .start()
    else {
        return;
    };
    let (Some(k256), Some(k521)) = (
        generate_node_key(dir.path(), Curve::P256),
        generate_node_key(dir.path(), Curve::P521),
    ) else {
        return;
    };
    for key in [&k256, &k521] {
        link.register_supernode(&key.public_key).expect("venv");
    }
    let rt = runtime();
    let a = RustNode::spawn(
        &rt,
        options(&link, &certs, "factor=1 examples=10").auth_private_key(&k256.private_key),
        ShiftApp,
    );
    let b = RustNode::spawn(
        &rt,
        options(&link, &certs, "factor=3 examples=30").auth_private_key(&k521.private_key),
        ShiftApp,
    );
    let stranger = RustNode::spawn(&rt, options(&link, &certs, ""), ShiftApp);
    let refused = stranger.join(&rt, Duration::from_secs(60));
    assert!(refused.is_err(), "an unregistered key joined: {refused:?}");

    let Some(run) = link.run(&app_dir("modern"), "lr=0.5 num-server-rounds=1") else {
        return;
    };
    let output = run.wait(RUN_LIMIT);
    let finals = final_arrays(&output);
    if finals.is_empty() {
        eprintln!(
            "flwr run output:\n{output}\n--- SuperLink ---\n{}",
            link.log()
        );
    }
    assert_shifted(&finals, "w", &W0, 1.25);
    assert_shifted(&finals, "b", &B0, 1.25);
    // `big` is printed as [size, min, max].
    let big_final = &finals.iter().find(|(n, _)| n == "big").expect("big").1;
    assert_eq!(big_final[0], big as f64);
    assert!((big_final[1] - 1.25).abs() < 1e-6 && (big_final[2] - 1.25).abs() < 1e-6);
    for node in [a, b] {
        let summary = node.stop(&rt).expect("clean stop");
        assert_eq!(
            (summary.replies, summary.error_replies),
            (2, 0),
            "{summary:?}"
        );
    }
}

/// The SuperLink is killed (SIGKILL, in-memory state lost) after two Rust
/// nodes joined, and restarted on the same port: the nodes retry, find
/// themselves unknown (401), join again and serve a new run, one round:
/// deltas 0.5 (n=10) and 1.0 (n=30), D = 0.875.
#[test]
fn rust_supernodes_rejoin_a_restarted_superlink() {
    crate::init_tracing();
    let certs = DevCertificates::generate();
    let Some(mut link) = SuperLink::builder().tls(&certs).start() else {
        return;
    };
    let rt = runtime();
    let a = RustNode::spawn(
        &rt,
        options(&link, &certs, "factor=1 examples=10"),
        ShiftApp,
    );
    let b = RustNode::spawn(
        &rt,
        options(&link, &certs, "factor=2 examples=30"),
        ShiftApp,
    );
    assert!(
        link.wait_for_log("Activated node_id", 2, Duration::from_secs(30)),
        "nodes did not join:\n{}",
        link.log()
    );
    let port = link.port();
    link.kill();
    drop(link);
    // Long enough for the nodes to notice (connection refused, retried).
    std::thread::sleep(Duration::from_secs(2));
    let Some(link) = SuperLink::builder().tls(&certs).port(port).start() else {
        return;
    };
    assert!(
        link.wait_for_log("Activated node_id", 2, Duration::from_secs(60)),
        "nodes did not rejoin:\n{}",
        link.log()
    );
    let Some(run) = link.run(&app_dir("modern"), "lr=0.5 num-server-rounds=1") else {
        return;
    };
    let output = run.wait(RUN_LIMIT);
    let finals = final_arrays(&output);
    if finals.is_empty() {
        eprintln!(
            "flwr run output:\n{output}\n--- SuperLink ---\n{}",
            link.log()
        );
    }
    assert_shifted(&finals, "w", &W0, 0.875);
    assert_shifted(&finals, "b", &B0, 0.875);
    for node in [a, b] {
        let summary = node.stop(&rt).expect("clean stop");
        assert_eq!(summary.rejoins, 1, "{summary:?}");
        assert_eq!(
            (summary.replies, summary.error_replies),
            (2, 0),
            "{summary:?}"
        );
    }
}

/// The legacy app's `NumPyClient` arithmetic in Rust: fit adds
/// `delta = factor` (local-epochs = scale = 1) and reports `{"delta"}`;
/// evaluate reports the mean of all elements as loss and `{"loss",
/// "factor"}`.
struct LegacyTwin {
    factor: f64,
    examples: u64,
}

impl flower_client::NumPyClient for LegacyTwin {
    fn fit(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &flower_core::Config,
    ) -> Result<(Vec<NdArray>, u64, flower_core::Metrics), BoxError> {
        let d = self.factor;
        let out = parameters
            .into_iter()
            .map(|p| match p {
                NdArray::F32(x) => NdArray::F32(x.mapv(|v| (f64::from(v) + d) as f32)),
                NdArray::F64(x) => NdArray::F64(x + d),
                other => other,
            })
            .collect();
        let metrics = [("delta".to_owned(), flower_core::Scalar::Double(d))].into();
        Ok((out, self.examples, metrics))
    }

    fn evaluate(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &flower_core::Config,
    ) -> Result<(f64, u64, flower_core::Metrics), BoxError> {
        let values: Vec<f64> = parameters
            .iter()
            .flat_map(|a| match a {
                NdArray::F32(x) => x.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(),
                NdArray::F64(x) => x.iter().copied().collect(),
                _ => Vec::new(),
            })
            .collect();
        let loss = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let metrics = [
            ("loss".to_owned(), flower_core::Scalar::Double(loss)),
            (
                "factor".to_owned(),
                flower_core::Scalar::Double(self.factor),
            ),
        ]
        .into();
        Ok((loss, self.examples, metrics))
    }
}

/// An unchanged `NumPyClient` (through `NumPyClientApp`) on a stock
/// SuperLink running the legacy app's `ServerApp(server_fn=...)` with the
/// stock legacy `FedAvg`: instructions and replies use flwr's compat keys.
/// D = (10·1 + 30·3)/40 = 2.5, so the distributed losses are 4.375 and
/// 6.875 (1.875 + r·D).
#[test]
fn numpy_client_on_a_stock_superlink_running_a_legacy_strategy() {
    crate::init_tracing();
    let certs = DevCertificates::generate();
    let Some(link) = SuperLink::builder().tls(&certs).start() else {
        return;
    };
    let rt = runtime();
    let nodes = [(1.0, 10), (3.0, 30)].map(|(factor, examples)| {
        RustNode::spawn(
            &rt,
            options(&link, &certs, ""),
            flower_client::app::NumPyClientApp::new(LegacyTwin { factor, examples }),
        )
    });
    let Some(run) = link.run(&app_dir("legacy"), "") else {
        return;
    };
    let output = run.wait(RUN_LIMIT);
    for expected in ["round 1: 4.375", "round 2: 6.875"] {
        assert!(output.contains(expected), "{expected:?} missing:\n{output}");
    }
    for node in nodes {
        let summary = node.stop(&rt).expect("clean stop");
        assert_eq!(
            (summary.replies, summary.error_replies),
            (4, 0),
            "{summary:?}"
        );
    }
}
