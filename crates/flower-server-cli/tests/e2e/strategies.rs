//! Strategies other than FedAvg, chosen by name on the command line, with 3
//! stock Python clients for 3 rounds.

use std::time::Duration;

use crate::common::*;

fn run_strategy(name: &str, options: &[&str]) {
    run_strategy_in(name, options);
}

/// Runs `name` and returns the final model and the checkpoint's text
/// (`None` when Python is missing and the test is skipped).
fn run_strategy_in(name: &str, options: &[&str]) -> Option<(Vec<Vec<f64>>, String)> {
    let py = python()?;
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCertificates::generate();
    let init = dir.path().join("init.npz");
    write_initial_npz(&py, &init);
    let out = dir.path().join("out");
    let mut args = server_args(&certs, &out, &init, 3, 3);
    args.extend(["--strategy".into(), name.into()]);
    for o in options {
        args.extend(["--strategy-option".into(), o.to_string()]);
    }
    let mut server = Server::start(&args, dir.path());
    let mut clients = python_clients(&py, &server, &certs.ca(), 3, dir.path());
    let status = server.wait(Duration::from_secs(120));
    let log = server.log_text();
    assert!(status.success(), "{name}: {log}");
    let history = history(&out);
    let rounds = history["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "{log}");
    for r in rounds {
        assert_eq!(r["fit_results"], 3, "{log}");
        assert_eq!(r["fit_failures"], 0, "{log}");
    }
    assert_eq!(history["losses_distributed"].as_array().unwrap().len(), 3);
    let initial = model_from(&init);
    let last = model(&out);
    assert_eq!(last.len(), initial.len());
    assert_ne!(last, initial, "{name} did not change the model");
    assert_clients_succeed(&mut clients);
    let checkpoint = std::fs::read_to_string(out.join("checkpoint.json")).unwrap();
    Some((last, checkpoint))
}

#[test]
fn unseeded_dp_noise_differs_between_runs_and_is_never_saved() {
    // Same clients, same inputs, same --seed: with noise from the OS the two
    // models differ, and no checkpoint holds a noise seed to subtract it.
    let options = [
        "noise_multiplier=1.0",
        "clipping_norm=10.0",
        "num_sampled_clients=3",
    ];
    let Some((first, checkpoint)) = run_strategy_in("dp-server-fixed", &options) else {
        return;
    };
    let (second, _) = run_strategy_in("dp-server-fixed", &options).unwrap();
    assert_ne!(first, second, "unseeded DP runs produced identical models");
    let state: serde_json::Value = serde_json::from_str(&checkpoint).unwrap();
    let rng = &state["strategy_state"]["rng"];
    assert_eq!(rng["seed_source"], "os", "{checkpoint}");
    assert!(rng.get("seed").is_none(), "{checkpoint}");
}

fn model_from(path: &std::path::Path) -> Vec<Vec<f64>> {
    flower_core::npz::read_npz(path)
        .unwrap()
        .into_iter()
        .map(|(_, a)| flat(&a))
        .collect()
}

#[test]
fn fedadam_with_three_python_clients() {
    run_strategy("fedadam", &["eta=0.05"]);
}

#[test]
fn krum_with_three_python_clients() {
    run_strategy(
        "krum",
        &["num_malicious_clients=0", "num_clients_to_keep=2"],
    );
}
