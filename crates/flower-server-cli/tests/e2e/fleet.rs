//! The Fleet API of the real `flower-server` binary with stock
//! `flower-supernode` 1.42 processes running FABs of `python/apps/` (built
//! once per test binary run): node authentication with OpenSSH keys, a
//! wrong key, a key revoked mid-run, a late joiner, a server killed and
//! resumed, SuperNodes beside grpc-bidi clients, and the legacy app.
//!
//! Each test checks `model.npz` against the FedAvg value the apps' README
//! arithmetic gives (`delta = local-epochs × factor × scale`, weight =
//! `examples`), and prints its wall time. Evaluation is off
//! (`--fraction-evaluate 0`) where it checks nothing new: every evaluate
//! message costs one more ClientApp process per node.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use flower_core::NdArray;
use flower_testkit::flwr::{build_fab, generate_node_key, Curve, NodeKey, SuperNode};

use crate::common::{assert_close, flat, history, python, python_client, ChildGuard};
use flower_testkit::DevCertificates;

/// Bound on a whole federation run (server start to exit).
const RUN_LIMIT: Duration = Duration::from_secs(240);
/// Bound on a SuperNode coming online or a round completing.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// The FABs of `python/apps/modern` and `python/apps/legacy`.
pub(crate) struct Fabs {
    pub(crate) modern: PathBuf,
    pub(crate) legacy: PathBuf,
}

/// Builds both FABs once per test binary run (`flwr build` takes seconds);
/// `None` (the test skips, saying so) without the venv.
pub(crate) fn fabs() -> Option<&'static Fabs> {
    static FABS: OnceLock<Option<Fabs>> = OnceLock::new();
    let mut built_here = false;
    let fabs = FABS.get_or_init(|| {
        built_here = true;
        build_fabs()
    });
    if fabs.is_none() && !built_here {
        eprintln!("SKIPPED: no FABs (the pinned venv is missing)");
    }
    fabs.as_ref()
}

/// `flwr build` into a private directory, then an atomic rename into the
/// shared `fleet-e2e-fabs` of the target directory: FAB names carry their
/// content hash, so a concurrent test binary sees either no file or the
/// whole one, and nothing piles up in /tmp.
fn build_fabs() -> Option<Fabs> {
    let shared = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-e2e-fabs");
    std::fs::create_dir_all(&shared).expect("FAB dir");
    let staging = tempfile::tempdir_in(&shared).expect("staging dir");
    let place = |name: &str| -> Option<PathBuf> {
        let built = build_fab(&flower_testkit::flwr::app_dir(name), staging.path())?;
        let target = shared.join(built.file_name().expect("FAB name"));
        std::fs::rename(&built, &target).expect("move FAB");
        Some(target)
    };
    Some(Fabs {
        modern: place("modern")?,
        legacy: place("legacy")?,
    })
}

/// A running `flower-server` serving the Fleet API (and grpc-bidi when
/// `--address` is among its arguments).
pub(crate) struct FleetServer {
    child: ChildGuard,
    fleet: String,
    grpc: Option<String>,
    log: PathBuf,
}

impl FleetServer {
    /// Starts the binary with `args` and waits (bounded) for its listening
    /// lines.
    pub(crate) fn start(args: &[String], dir: &Path, tag: &str) -> FleetServer {
        let log = dir.join(format!("server-{tag}.log"));
        let grpc_wanted = args.iter().any(|a| a == "--address");
        let mut child = Command::new(env!("CARGO_BIN_EXE_flower-server"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("start flower-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("flower-server fleet-api listening on ") {
                    let _ = tx.send((true, addr.to_owned()));
                } else if let Some(addr) = line.strip_prefix("flower-server listening on ") {
                    let _ = tx.send((false, addr.to_owned()));
                }
            }
        });
        let mut child = ChildGuard(child);
        let (mut fleet, mut grpc) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while fleet.is_none() || (grpc_wanted && grpc.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((true, addr)) => fleet = Some(addr),
                Ok((false, addr)) => grpc = Some(addr),
                Err(_) => {
                    child.kill();
                    panic!(
                        "server did not listen; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        FleetServer {
            child,
            fleet: fleet.expect("fleet address"),
            grpc,
            log,
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until `needle` is logged `count` times.
    fn wait_for_log(&self, needle: &str, count: usize, nodes: &[&SuperNode]) {
        let deadline = Instant::now() + STEP_LIMIT;
        while self.log_text().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "{needle:?} x{count} not logged; server log:\n{}{}",
                self.log_text(),
                node_logs(nodes)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The gRPC Fleet address (`--fleet-grpc-address`), from the log
    /// (bounded wait).
    pub(crate) fn grpc_fleet_address(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.log_text().lines().find_map(|l| {
                l.split("fleet api (grpc, flwr <= 1.39) listening on ")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .map(str::to_owned)
            });
            if let Some(address) = found {
                return address;
            }
            assert!(
                Instant::now() < deadline,
                "no gRPC Fleet address in the log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for the server to exit.
    pub(crate) fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.wait_timeout(RUN_LIMIT)
    }

    /// Waits (bounded) for a successful exit.
    pub(crate) fn wait_success(&mut self, nodes: &[&SuperNode]) {
        match self.child.wait_timeout(RUN_LIMIT) {
            Some(status) if status.success() => {}
            other => panic!(
                "server ended with {other:?}; log:\n{}{}",
                self.log_text(),
                node_logs(nodes)
            ),
        }
    }
}

fn node_logs(nodes: &[&SuperNode]) -> String {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("\n--- supernode {i} ---\n{}", n.log()))
        .collect()
}

/// The server arguments every test shares: the FAB, the initial model, the
/// output directory, rounds, the client minimums, bounded waits, evaluation
/// on or off, and a Fleet API on a free port.
pub(crate) fn base_args(
    fab: &Path,
    init: &Path,
    out: &Path,
    rounds: u64,
    min: usize,
    evaluate: bool,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--fleet-api-address",
        "127.0.0.1:0",
        "--fab",
        &fab.display().to_string(),
        "--initial-parameters",
        &init.display().to_string(),
        "--output-dir",
        &out.display().to_string(),
        "--rounds",
        &rounds.to_string(),
        "--round-timeout",
        "120",
        "--client-wait-timeout",
        "120",
        "--rejoin-wait-timeout",
        "60",
    ]
    .map(String::from)
    .to_vec();
    for flag in [
        "--min-fit-clients",
        "--min-evaluate-clients",
        "--min-available-clients",
    ] {
        args.push(flag.into());
        args.push(min.to_string());
    }
    if !evaluate {
        args.extend(["--fraction-evaluate".into(), "0".into()]);
    }
    args
}

fn tls_args(certs: &DevCertificates) -> Vec<String> {
    vec![
        "--ssl-ca-certfile".into(),
        certs.ca().display().to_string(),
        "--ssl-certfile".into(),
        certs.cert().display().to_string(),
        "--ssl-keyfile".into(),
        certs.key().display().to_string(),
    ]
}

/// Writes the apps' initial model (`w` float32 2×3 = 0..5, `b` float64
/// [0.5, -0.5]) as `init.npz` with its keys.
pub(crate) fn write_init(dir: &Path) -> PathBuf {
    let w = ndarray::ArrayD::from_shape_vec(vec![2, 3], vec![0f32, 1., 2., 3., 4., 5.]).expect("w");
    let b = ndarray::ArrayD::from_shape_vec(vec![2], vec![0.5f64, -0.5]).expect("b");
    let path = dir.join("init.npz");
    flower_core::npz::write_npz(
        &path,
        &[
            ("w".to_owned(), NdArray::from(w)),
            ("b".to_owned(), NdArray::from(b)),
        ],
    )
    .expect("write init.npz");
    path
}

/// The initial model with every element moved by `shift`.
pub(crate) fn shifted(shift: f64) -> Vec<Vec<f64>> {
    vec![
        (0..6).map(|v| f64::from(v) + shift).collect(),
        vec![0.5 + shift, -0.5 + shift],
    ]
}

/// `model.npz`: its keys (which must be the initial `.npz` keys, in order)
/// and its arrays as f64.
pub(crate) fn final_model(out: &Path) -> Vec<Vec<f64>> {
    let arrays = flower_core::npz::read_npz(&out.join("model.npz")).expect("model.npz");
    let names: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["w", "b"], "model.npz keeps the initial keys");
    assert_eq!(arrays[0].1.dtype().numpy_name(), "float32");
    assert_eq!(arrays[1].1.dtype().numpy_name(), "float64");
    arrays.iter().map(|(_, a)| flat(a)).collect()
}

/// `(fit_results, fit_failures)` of every round in `history.json`.
fn fit_counts(out: &Path) -> Vec<(u64, u64)> {
    history(out)["rounds"]
        .as_array()
        .expect("rounds")
        .iter()
        .map(|r| {
            (
                r["fit_results"].as_u64().expect("fit_results"),
                r["fit_failures"].as_u64().expect("fit_failures"),
            )
        })
        .collect()
}

/// Rounds completed so far, from `checkpoint.json` (0 before the first).
fn completed_rounds(out: &Path) -> u64 {
    std::fs::read_to_string(out.join("checkpoint.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["completed_rounds"].as_u64())
        .unwrap_or(0)
}

/// Waits (bounded) until at least `n` rounds are saved.
fn wait_for_round(out: &Path, n: u64, server: &FleetServer, nodes: &[&SuperNode]) -> u64 {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let done = completed_rounds(out);
        if done >= n {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "round {n} never completed; server log:\n{}{}",
            server.log_text(),
            node_logs(nodes)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` (`-STOP`, `-CONT`, `-USR1`, ...) to `target` (a pid, or
/// `-pgid` for a process group) with kill(1): the workspace forbids the
/// `unsafe` of kill(2).
fn signal(signal: &str, target: &str) {
    let status = Command::new("kill")
        .args([signal, "--", target])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {target}");
}

/// Freezes or thaws a SuperNode with its SuperExec and ClientApp processes.
fn freeze(node: &SuperNode, frozen: bool) {
    let group = format!("-{}", node.pid());
    signal(if frozen { "-STOP" } else { "-CONT" }, &group);
}

/// Writes the authorized-keys file (OpenSSH lines) atomically, so a reload
/// never reads half a file.
fn write_authorized(path: &Path, keys: &[&NodeKey]) {
    let text: String = keys
        .iter()
        .map(|k| std::fs::read_to_string(&k.public_key).expect("public key"))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write keys");
    std::fs::rename(&tmp, path).expect("replace keys");
}

pub(crate) fn supernode(
    server: &FleetServer,
    tls: Option<&DevCertificates>,
    key: Option<&NodeKey>,
    config: &str,
) -> Option<SuperNode> {
    let mut builder = SuperNode::builder(server.fleet.clone()).node_config(config);
    builder = match tls {
        Some(certs) => builder.root_certificates(certs.ca()),
        None => builder.insecure(),
    };
    if let Some(key) = key {
        builder = builder.auth_private_key(&key.private_key);
    }
    builder.start()
}

pub(crate) fn report(name: &str, started: Instant) {
    eprintln!("fleet e2e {name}: {:.1} s", started.elapsed().as_secs_f64());
}

/// (a) TLS, `--enable-supernode-auth`, pre-registered OpenSSH keys on two
/// curves; one round with evaluation: D = (10·1 + 30·3)/40 = 2.5, loss =
/// 1.875 + 2.5.
#[test]
fn fleet_tls_supernode_auth_with_openssh_keys_matches_fedavg() {
    let started = Instant::now();
    let Some(fabs) = fabs() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = DevCertificates::generate();
    let (Some(k256), Some(k384)) = (
        generate_node_key(dir.path(), Curve::P256),
        generate_node_key(dir.path(), Curve::P384),
    ) else {
        return;
    };
    let keys = dir.path().join("authorized_keys");
    write_authorized(&keys, &[&k256, &k384]);
    let init = write_init(dir.path());
    let out = dir.path().join("out");
    let mut args = base_args(&fabs.modern, &init, &out, 1, 2, true);
    args.extend(tls_args(&certs));
    args.extend([
        "--enable-supernode-auth".into(),
        "--authorized-keys".into(),
        keys.display().to_string(),
    ]);
    let mut server = FleetServer::start(&args, dir.path(), "a");
    let Some(a) = supernode(&server, Some(&certs), Some(&k256), "factor=1 examples=10") else {
        return;
    };
    let Some(b) = supernode(&server, Some(&certs), Some(&k384), "factor=3 examples=30") else {
        return;
    };
    server.wait_success(&[&a, &b]);
    assert_close(&final_model(&out), &shifted(2.5), 0.0);
    assert_eq!(fit_counts(&out), [(2, 0)]);
    let h = history(&out);
    assert_eq!(h["rounds"][0]["evaluate_results"], 2, "{h}");
    let loss = h["losses_distributed"][0][1].as_f64().expect("loss");
    assert!((loss - 4.375).abs() < 1e-9, "{h}");
    report("a (tls + supernode auth)", started);
}

/// (b) A SuperNode whose key is not authorized is refused (401: it shuts
/// itself down) and gets no work; the authorized one completes the run.
#[test]
fn fleet_refuses_an_unauthorized_key() {
    let started = Instant::now();
    let Some(fabs) = fabs() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = DevCertificates::generate();
    let (Some(good), Some(wrong)) = (
        generate_node_key(dir.path(), Curve::P256),
        generate_node_key(dir.path(), Curve::P384),
    ) else {
        return;
    };
    let keys = dir.path().join("authorized_keys");
    write_authorized(&keys, &[&good]);
    let init = write_init(dir.path());
    let out = dir.path().join("out");
    let mut args = base_args(&fabs.modern, &init, &out, 1, 1, false);
    args.extend(tls_args(&certs));
    let metrics_port = flower_testkit::free_port();
    args.extend([
        "--enable-supernode-auth".into(),
        "--authorized-keys".into(),
        keys.display().to_string(),
        "--metrics-address".into(),
        format!("127.0.0.1:{metrics_port}"),
    ]);
    let mut server = FleetServer::start(&args, dir.path(), "b");
    // The wrong key first, so that it is refused while the run is on.
    let Some(mut intruder) = supernode(&server, Some(&certs), Some(&wrong), "factor=100") else {
        return;
    };
    let code = intruder.wait_exit(Duration::from_secs(60));
    assert!(
        !intruder.is_running(),
        "the unauthorized SuperNode still runs:\n{}",
        intruder.log()
    );
    let intruder_log = intruder.log();
    assert!(
        !intruder_log.contains("Received successfully"),
        "exit {code:?}:\n{intruder_log}"
    );
    // The operators' view of the Fleet API while it waits for a node.
    let metrics = crate::ops::scrape(metrics_port).expect("metrics endpoint");
    let value = |key: &str| crate::ops::value(&metrics, key);
    assert_eq!(value("flower_fleet_authorized_keys{}"), 1.0);
    assert_eq!(value("flower_fleet_nodes_online{}"), 0.0);
    assert_eq!(value("flower_fleet_key_reloads_total{outcome=error}"), 0.0);
    assert!(value("flower_fleet_keys_seconds_since_reload{}") >= 0.0);
    assert!(value("flower_bytes_received_total{transport=fleet-api}") > 0.0);
    assert_eq!(value("flower_round_phase{phase=waiting}"), 1.0);
    let Some(a) = supernode(&server, Some(&certs), Some(&good), "factor=1 examples=10") else {
        return;
    };
    server.wait_success(&[&a, &intruder]);
    assert_eq!(server.log_text().matches("SuperNode online").count(), 1);
    assert_close(&final_model(&out), &shifted(1.0), 0.0);
    assert_eq!(fit_counts(&out), [(1, 0)]);
    eprintln!("unauthorized SuperNode exit code: {code:?}");
    report("b (unauthorized key)", started);
}

/// (c) A key revoked mid-run: the authorized-keys file is rewritten
/// without B's key (and with a new key C), then SIGUSR1. B's pending
/// round-1 work fails at once (B is frozen between receiving its
/// instruction and the revocation, so its reply cannot win the race),
/// round 1 aggregates A's update alone, C joins and the run goes on with
/// A and C; the revoked B, thawed, gets 401 and shuts down.
/// D = 1, then (10·1 + 10·5)/20 = 3.
#[test]
fn fleet_key_revoked_mid_run_fails_its_pending_work() {
    let started = Instant::now();
    let Some(fabs) = fabs() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = DevCertificates::generate();
    let (Some(ka), Some(kb), Some(kc)) = (
        generate_node_key(dir.path(), Curve::P256),
        generate_node_key(dir.path(), Curve::P384),
        generate_node_key(dir.path(), Curve::P521),
    ) else {
        return;
    };
    let keys = dir.path().join("authorized_keys");
    write_authorized(&keys, &[&ka, &kb]);
    let init = write_init(dir.path());
    let out = dir.path().join("out");
    // Every phase waits for min-available clients, evaluation included.
    let mut args = base_args(&fabs.modern, &init, &out, 2, 2, false);
    args.extend(tls_args(&certs));
    args.extend([
        "--enable-supernode-auth".into(),
        "--authorized-keys".into(),
        keys.display().to_string(),
    ]);
    let mut server = FleetServer::start(&args, dir.path(), "c");
    let Some(a) = supernode(&server, Some(&certs), Some(&ka), "factor=1 examples=10") else {
        return;
    };
    let Some(mut b) = supernode(&server, Some(&certs), Some(&kb), "factor=3 examples=30") else {
        return;
    };
    assert!(
        b.wait_for_log("Received successfully", STEP_LIMIT),
        "b got no instruction; server log:\n{}{}",
        server.log_text(),
        node_logs(&[&a, &b])
    );
    freeze(&b, true);
    write_authorized(&keys, &[&ka, &kc]);
    signal("-USR1", &server.child.0.id().to_string());
    server.wait_for_log("node key revoked", 1, &[&a, &b]);
    // Thawed while the server runs, b finds its node gone: its reply gets
    // 401 and it shuts itself down.
    freeze(&b, false);
    let code = b.wait_exit(Duration::from_secs(60));
    assert!(
        !b.is_running(),
        "revoked SuperNode still runs:\n{}",
        b.log()
    );
    assert!(!b.log().contains("Sent successfully"), "{}", b.log());
    let Some(c) = supernode(&server, Some(&certs), Some(&kc), "factor=5 examples=10") else {
        return;
    };
    server.wait_success(&[&a, &b, &c]);
    assert_eq!(fit_counts(&out), [(1, 1), (2, 0)]);
    assert_close(&final_model(&out), &shifted(4.0), 0.0);
    let log = server.log_text();
    assert!(log.contains("no longer authorized"), "{log}");
    eprintln!("revoked SuperNode exit code: {code:?}");
    report("c (key revoked mid-run)", started);
}

/// (d) A SuperNode that joins after round 1 takes part in later rounds.
/// The first node is frozen from the end of round 1 until the late one is
/// online, so round 2 (sampled before the join) has one node and round 3
/// both: D = 1, 1, (10·1 + 30·3)/40 = 2.5.
#[test]
fn fleet_late_supernode_joins_later_rounds() {
    let started = Instant::now();
    let Some(fabs) = fabs() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let init = write_init(dir.path());
    let out = dir.path().join("out");
    let mut args = base_args(&fabs.modern, &init, &out, 3, 1, false);
    args.push("--insecure".into());
    let mut server = FleetServer::start(&args, dir.path(), "d");
    let Some(a) = supernode(&server, None, None, "factor=1 examples=10") else {
        return;
    };
    assert_eq!(wait_for_round(&out, 1, &server, &[&a]), 1);
    freeze(&a, true);
    let Some(b) = supernode(&server, None, None, "factor=3 examples=30") else {
        freeze(&a, false);
        return;
    };
    server.wait_for_log("SuperNode online", 2, &[&a, &b]);
    freeze(&a, false);
    server.wait_success(&[&a, &b]);
    assert_eq!(fit_counts(&out), [(1, 0), (1, 0), (2, 0)]);
    assert_close(&final_model(&out), &shifted(4.5), 0.0);
    report("d (late SuperNode)", started);
}

/// The `SuperNode ID: <id>` lines a SuperNode logged (one per activation).
fn logged_node_ids(node: &SuperNode) -> Vec<String> {
    node.log()
        .lines()
        .filter_map(|l| l.split("SuperNode ID: ").nth(1))
        .map(|id| id.trim().to_owned())
        .collect()
}

/// (e) The server SIGKILLed after round 1 of 3 and restarted with
/// `--resume` on the same port: the same SuperNode processes carry on (the
/// new process re-admits them by their key-derived ids; they never
/// re-activate) and the final model is the uninterrupted run's, 3 × 2.5.
#[test]
fn fleet_server_killed_and_resumed_keeps_its_supernodes() {
    let started = Instant::now();
    let Some(fabs) = fabs() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let init = write_init(dir.path());
    let out = dir.path().join("out");
    let mut args = base_args(&fabs.modern, &init, &out, 3, 2, false);
    args.push("--insecure".into());
    let mut server = FleetServer::start(&args, dir.path(), "e1");
    let Some(mut a) = supernode(&server, None, None, "factor=1 examples=10") else {
        return;
    };
    let Some(mut b) = supernode(&server, None, None, "factor=3 examples=30") else {
        return;
    };
    assert_eq!(wait_for_round(&out, 1, &server, &[&a, &b]), 1);
    server.child.kill();
    let killed_at = Instant::now();
    let port = server.fleet.rsplit(':').next().expect("port").to_owned();
    let mut resumed = args.clone();
    let at = resumed
        .iter()
        .position(|a| a == "127.0.0.1:0")
        .expect("fleet address");
    resumed[at] = format!("127.0.0.1:{port}");
    resumed.push("--resume".into());
    let mut server = FleetServer::start(&resumed, dir.path(), "e2");
    server.wait_success(&[&a, &b]);
    let log = server.log_text();
    assert!(log.contains("resuming from checkpoint"), "{log}");
    assert_eq!(log.matches("re-admitted").count(), 2, "{log}");
    assert_eq!(fit_counts(&out).len(), 3);
    assert_close(&final_model(&out), &shifted(7.5), 0.0);
    for node in [&mut a, &mut b] {
        assert!(node.is_running(), "SuperNode exited:\n{}", node.log());
        // Activated once: the same id before and after the restart.
        assert_eq!(logged_node_ids(node).len(), 1, "{}", node.log());
    }
    eprintln!(
        "resumed run finished {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    report("e (server killed and resumed)", started);
}

/// One round of the grpc-bidi test client (`python/flower_test_client.py`,
/// partition `k - 1`) on `p`: `0.9 p + 0.01 k sin(i + k)` (in float32 for
/// the sine, as numpy does it).
fn grpc_client_update(p: &[f64], k: u32) -> Vec<f64> {
    p.iter()
        .enumerate()
        .map(|(i, v)| {
            let s = ((i as f32) + k as f32).sin();
            f64::from(0.9f32) * v + f64::from((0.01 * f64::from(k)) as f32 * s)
        })
        .collect()
}

/// (f) One stock SuperNode (`--fleet-api-address`) and one stock grpc-bidi
/// client (`--address`) in one federation over TLS: every round has both
/// results, no failures, and the model is their weighted mean (weights 10
/// and 10).
#[test]
fn fleet_supernodes_and_grpc_clients_share_a_federation() {
    let started = Instant::now();
    let Some(fabs) = fabs() else { return };
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = DevCertificates::generate();
    let init = write_init(dir.path());
    let out = dir.path().join("out");
    let rounds = 2;
    let mut args = base_args(&fabs.modern, &init, &out, rounds, 2, false);
    args.extend(tls_args(&certs));
    args.extend(["--address".into(), "127.0.0.1:0".into()]);
    let mut server = FleetServer::start(&args, dir.path(), "f");
    let Some(node) = supernode(&server, Some(&certs), None, "factor=1 examples=10") else {
        return;
    };
    let grpc = server.grpc.clone().expect("grpc address");
    let mut client = python_client(
        &py,
        &grpc,
        Some(&certs.ca()),
        0,
        &[],
        &dir.path().join("grpc-client.log"),
    );
    server.wait_success(&[&node]);
    let status = client
        .wait_timeout(Duration::from_secs(30))
        .expect("grpc client exits");
    assert!(status.success(), "grpc client: {status}");
    let log = server.log_text();
    assert!(log.contains("SuperNode online"), "{log}");
    assert!(log.contains("client joined"), "{log}");
    assert_eq!(fit_counts(&out), vec![(2, 0); rounds as usize]);
    let mut want = shifted(0.0);
    for _ in 0..rounds {
        want = want
            .iter()
            .map(|p| {
                let fleet: Vec<f64> = p.iter().map(|v| v + 1.0).collect();
                let grpc = grpc_client_update(p, 1);
                fleet
                    .iter()
                    .zip(&grpc)
                    .map(|(a, b)| (a + b) / 2.0)
                    .collect()
            })
            .collect();
    }
    assert_close(&final_model(&out), &want, 1e-5);
    report("f (SuperNode + grpc-bidi client)", started);
}

/// (g) The legacy `client_fn` NumPyClient app through
/// `--fleet-message-format legacy`, with `--run-config scale=2.0`: D =
/// 2 × 2.5 = 5, evaluate loss 1.875 + 5.
#[test]
fn fleet_legacy_app_with_legacy_message_format() {
    let started = Instant::now();
    let Some(fabs) = fabs() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let init = write_init(dir.path());
    let out = dir.path().join("out");
    let mut args = base_args(&fabs.legacy, &init, &out, 1, 2, true);
    args.extend(
        [
            "--insecure",
            "--fleet-message-format",
            "legacy",
            "--run-config",
            "scale=2.0",
        ]
        .map(String::from),
    );
    let mut server = FleetServer::start(&args, dir.path(), "g");
    let Some(a) = supernode(&server, None, None, "factor=1 examples=10") else {
        return;
    };
    let Some(b) = supernode(&server, None, None, "factor=3 examples=30") else {
        return;
    };
    server.wait_success(&[&a, &b]);
    assert_close(&final_model(&out), &shifted(5.0), 0.0);
    assert_eq!(fit_counts(&out), [(2, 0)]);
    let h = history(&out);
    let loss = h["losses_distributed"][0][1].as_f64().expect("loss");
    assert!((loss - 6.875).abs() < 1e-9, "{h}");
    report("g (legacy app)", started);
}
