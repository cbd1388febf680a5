//! The TOML configuration file maps onto the same settings as the flags, and
//! without initial parameters the server asks one client for them.

use std::time::Duration;

use crate::common::*;

#[test]
fn toml_config_runs_a_federation_and_initial_parameters_come_from_a_client() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"
insecure = true
rounds = 2
min-fit-clients = 2
min-evaluate-clients = 2
min-available-clients = 2
output-dir = {out:?}
seed = 7

[strategy-options]
evaluate_metrics = "all"
"#,
            out = out.display().to_string()
        ),
    )
    .unwrap();
    let args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--log-json".into(),
    ];
    let mut server = Server::start(&args, dir.path());
    let mut a = python_client(
        &py,
        &server.address(),
        None,
        0,
        &[],
        &dir.path().join("a.log"),
    );
    let mut b = python_client(
        &py,
        &server.address(),
        None,
        1,
        &[],
        &dir.path().join("b.log"),
    );
    let status = server.wait(Duration::from_secs(120));
    let log = server.log_text();
    assert!(status.success(), "{log}");
    // JSON log lines.
    assert!(
        log.lines()
            .all(|l| l.trim().is_empty() || serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{log}"
    );
    assert!(
        log.contains("received initial parameters from one random client"),
        "{log}"
    );
    let history = history(&out);
    assert_eq!(history["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(
        history["metrics_distributed"]["accuracy"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The client's initial model has 12 + 5 values in two layers.
    let model = model(&out);
    assert_eq!(model.iter().map(Vec::len).collect::<Vec<_>>(), vec![12, 5]);
    assert_clients_succeed([&mut a, &mut b]);
}

#[test]
fn bad_configuration_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flower-server"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, err) = run(&["--address", "127.0.0.1:0"]);
    assert!(!status.success());
    assert!(err.contains("refusing to start without TLS"), "{err}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "rounds = \"three\"\nunknown-key = 1\n").unwrap();
    let (status, err) = run(&["--config", bad.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("bad.toml"), "{err}");

    let (status, err) = run(&["--insecure", "--strategy", "no-such-strategy"]);
    assert!(!status.success());
    assert!(err.contains("no-such-strategy"), "{err}");

    let (status, err) = run(&[
        "--insecure",
        "--initial-parameters",
        "/nonexistent/model.npz",
    ]);
    assert!(!status.success());
    assert!(err.contains("model.npz"), "{err}");
}

#[test]
fn help_documents_the_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flower-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--address",
        "--insecure",
        "--ssl-ca-certfile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--rounds",
        "--round-timeout",
        "--min-fit-clients",
        "--min-evaluate-clients",
        "--min-available-clients",
        "--fraction-fit",
        "--fraction-evaluate",
        "--strategy",
        "--initial-parameters",
        "--output-dir",
        "--resume",
        "--seed",
        "--max-message-size",
        "--config",
        "--token",
        "--token-file",
        "--vault-addr",
        "--vault-token",
        "--oidc-access-token",
        "--vault-auth-path",
        "--vault-role",
        "--vault-mount",
        "--vault-secret-path",
        "--deployment-id",
        "--vault-refresh-interval",
        "--allow-insecure-auth",
        "--log-json",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("fedavg"));
}
