//! `--strategy-api message`: Flower's message-API strategies run by the
//! real `flower-server` binary over the Fleet API, with two stock
//! `flower-supernode` 1.42 processes running the modern app FAB.
//!
//! Expected values come from the app's README arithmetic: a node moves
//! every element by `delta = factor` (one local epoch, scale 1) and weighs
//! `examples`; its evaluate `loss` is `1.875 + total shift` (8 elements,
//! initial sum 15).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::common::{assert_close, history};
use crate::fleet::{
    base_args, fabs, final_model, report, shifted, supernode, write_init, FleetServer,
};

/// `(round, value)` pairs of `history[section][key]`.
fn series(out: &Path, section: &str, key: &str) -> Vec<(u64, f64)> {
    let h = history(out);
    h[section][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {section}.{key} in {h}"))
        .iter()
        .map(|p| (p[0].as_u64().expect("round"), p[1].as_f64().expect("value")))
        .collect()
}

/// `(fit_results, fit_failures, evaluate_results)` per round.
fn counts(out: &Path) -> Vec<(u64, u64, u64)> {
    history(out)["rounds"]
        .as_array()
        .expect("rounds")
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().expect("count");
            (n("fit_results"), n("fit_failures"), n("evaluate_results"))
        })
        .collect()
}

/// FedAvg with `fraction_train=0.5` and `min_train_nodes=1` over two nodes
/// (factor 1, 10 examples; factor 3, 30 examples): each round trains one
/// sampled node, so its shift is that node's delta (1 or 3, as the
/// aggregated `delta` metric says), and evaluates both. In arrival order,
/// as the server then streams the mean family's train replies.
#[test]
fn msg_fedavg_fraction_train_samples_one_node_per_round() {
    let started = Instant::now();
    let Some(fabs) = fabs() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let init = write_init(dir.path());
    let out = dir.path().join("out");
    let mut args = base_args(&fabs.modern, &init, &out, 2, 2, true);
    args.extend(
        [
            "--insecure",
            "--seed",
            "7",
            "--strategy-api",
            "message",
            "--strategy",
            "fedavg",
            "--strategy-option",
            "fraction_train=0.5",
            // After base_args' --min-fit-clients 2: the last one wins.
            "--min-fit-clients",
            "1",
            // Train replies folded as they arrive (one per round: exact).
            "--aggregation-order",
            "arrival",
        ]
        .map(String::from),
    );
    let mut server = FleetServer::start(&args, dir.path(), "msg-fedavg");
    let Some(a) = supernode(&server, None, None, "factor=1 examples=10") else {
        return;
    };
    let Some(b) = supernode(&server, None, None, "factor=3 examples=30") else {
        return;
    };
    server.wait_success(&[&a, &b]);
    let log = server.log_text();
    assert!(log.contains("FedAvg (message API)"), "{log}");
    assert_eq!(counts(&out), [(1, 0, 2), (1, 0, 2)], "{log}");
    let deltas = series(&out, "metrics_distributed_fit", "delta");
    assert_eq!(deltas.iter().map(|d| d.0).collect::<Vec<_>>(), [1, 2]);
    for (_, d) in &deltas {
        assert!(
            *d == 1.0 || *d == 3.0,
            "one node's delta, not a mean: {deltas:?}"
        );
    }
    let rounds = series(&out, "metrics_distributed_fit", "server-round");
    assert_eq!(rounds, [(1, 1.0), (2, 2.0)]);
    let total = deltas[0].1 + deltas[1].1;
    assert_close(&final_model(&out), &shifted(total), 0.0);
    // Both nodes evaluate the round's model: loss 1.875 + shift so far,
    // factor weighted by examples: (10·1 + 30·3)/40.
    let loss = series(&out, "metrics_distributed", "loss");
    assert_eq!(
        loss,
        [(1, 1.875 + deltas[0].1), (2, 1.875 + total)],
        "{log}"
    );
    assert_eq!(series(&out, "metrics_distributed", "factor")[1].1, 2.5);
    report("msg fedavg fraction_train", started);
}

/// FedMedian, one round, no evaluation: the coordinate-wise median of the
/// two updates (unweighted): a shift of (1 + 3)/2 = 2, where FedAvg's
/// weighted mean would give 2.5.
#[test]
fn msg_fedmedian_takes_the_unweighted_median() {
    let started = Instant::now();
    let Some(fabs) = fabs() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let init = write_init(dir.path());
    let out = dir.path().join("out");
    let mut args = base_args(&fabs.modern, &init, &out, 1, 2, false);
    args.extend(
        [
            "--insecure",
            "--strategy-api",
            "message",
            "--strategy",
            "fedmedian",
        ]
        .map(String::from),
    );
    let mut server = FleetServer::start(&args, dir.path(), "msg-fedmedian");
    let Some(a) = supernode(&server, None, None, "factor=1 examples=10") else {
        return;
    };
    let Some(b) = supernode(&server, None, None, "factor=3 examples=30") else {
        return;
    };
    server.wait_success(&[&a, &b]);
    assert_eq!(counts(&out), [(2, 0, 0)], "{}", server.log_text());
    assert_close(&final_model(&out), &shifted(2.0), 0.0);
    report("msg fedmedian", started);
}

/// Runs the binary with `args` and returns its stderr; it must fail fast.
fn refused(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_flower-server"))
        .args(args)
        .output()
        .expect("run flower-server");
    assert!(!output.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Misuses are refused before anything listens, naming the fix: legacy
/// option names, grpc-bidi clients, no initial model, resume.
#[test]
fn msg_strategy_api_misuse_is_refused_with_the_valid_choices() {
    let Some(fabs) = fabs() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let init = write_init(dir.path());
    let fab = fabs.modern.display().to_string();
    let init = init.display().to_string();
    let fleet = [
        "--insecure",
        "--fleet-api-address",
        "127.0.0.1:0",
        "--fab",
        fab.as_str(),
        "--strategy-api",
        "message",
    ];
    fn with<'a>(fleet: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        fleet.iter().chain(extra).copied().collect()
    }
    let e = refused(&with(
        &fleet,
        &[
            "--initial-parameters",
            &init,
            "--strategy-option",
            "fraction_fit=0.5",
        ],
    ));
    assert!(
        e.contains("fraction_fit") && e.contains("fraction_train"),
        "{e}"
    );
    let e = refused(&with(
        &fleet,
        &["--initial-parameters", &init, "--address", "127.0.0.1:0"],
    ));
    assert!(e.contains("without --address"), "{e}");
    let e = refused(&with(&fleet, &[]));
    assert!(e.contains("--initial-parameters"), "{e}");
    let out = dir.path().join("out").display().to_string();
    let e = refused(&with(
        &fleet,
        &[
            "--initial-parameters",
            &init,
            "--output-dir",
            &out,
            "--resume",
            "--client-wait-timeout",
            "1",
        ],
    ));
    assert!(e.contains("resuming is not supported"), "{e}");
}
