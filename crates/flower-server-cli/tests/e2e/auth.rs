//! Token authentication end to end: stock Python Flower clients sending the
//! token with ai4flwr's plugin (`authorization`) and under `x-authorization`,
//! rejected clients failing fast, revocation, and no token in the logs.

use std::time::Duration;

use crate::common::*;

const TOKEN_A: &str = "tok-alpha-3f9c1d0e8b7a";
const TOKEN_B: &str = "tok-bravo-77e1c2a9d4f0";

fn setup() -> Option<(
    std::path::PathBuf,
    tempfile::TempDir,
    DevCertificates,
    std::path::PathBuf,
)> {
    let py = python()?;
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("init.npz");
    write_initial_npz(&py, &init);
    Some((py, dir, DevCertificates::generate(), init))
}

#[test]
fn python_clients_with_tokens_complete_and_bad_tokens_fail_fast() {
    let Some((py, dir, certs, init)) = setup() else {
        return;
    };
    let out = dir.path().join("out");
    let mut args = server_args(&certs, &out, &init, 2, 2);
    args.extend([
        "--token".into(),
        TOKEN_A.into(),
        "--token".into(),
        TOKEN_B.into(),
    ]);
    let mut server = Server::start(&args, dir.path());
    let addr = server.address();
    let ca = certs.ca();

    // Rejected clients: wrong token, no token. They must fail with
    // UNAUTHENTICATED (ai4flwr's interceptor leaves them hanging): a hanging
    // client would outlive the bounded wait below, whose bound only has to
    // cover the interpreters' start-up on a loaded machine.
    let wrong_log = dir.path().join("wrong.log");
    let mut wrong = python_client(
        &py,
        &addr,
        Some(&ca),
        0,
        &["--token", "not-a-valid-token-123"],
        &wrong_log,
    );
    let none_log = dir.path().join("none.log");
    let mut none = python_client(&py, &addr, Some(&ca), 0, &[], &none_log);
    for (child, log) in [(&mut wrong, &wrong_log), (&mut none, &none_log)] {
        let st = child
            .wait_timeout(Duration::from_secs(90))
            .expect("rejected client exits instead of hanging");
        assert!(!st.success());
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains("UNAUTHENTICATED") && text.contains("Invalid token"),
            "{text}"
        );
    }
    // A rejected call never registers a client.
    assert!(!server.log_text().contains("client joined"));

    let mut good_a = python_client(
        &py,
        &addr,
        Some(&ca),
        0,
        &["--token", TOKEN_A],
        &dir.path().join("a.log"),
    );
    let mut good_b = python_client(
        &py,
        &addr,
        Some(&ca),
        1,
        &["--token", TOKEN_B, "--header-key", "x-authorization"],
        &dir.path().join("b.log"),
    );
    let status = server.wait(Duration::from_secs(120));
    let log = server.log_text();
    assert!(status.success(), "{log}");
    assert_clients_succeed([&mut good_a, &mut good_b]);
    // Never log a token: neither accepted nor rejected values.
    let out_text = std::fs::read_to_string(&server.out).unwrap_or_default();
    for secret in [TOKEN_A, TOKEN_B, "not-a-valid-token-123"] {
        assert!(
            !log.contains(secret) && !out_text.contains(secret),
            "token {secret} logged:\n{log}"
        );
    }
}

#[test]
fn token_auth_over_plaintext_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flower-server"))
        .args(["--insecure", "--token", TOKEN_A, "--address", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plaintext"), "{stderr}");
    assert!(!stderr.contains(TOKEN_A));
    let _ = dir;
}

#[test]
fn removing_a_token_from_the_file_closes_its_live_stream() {
    let Some((py, dir, certs, init)) = setup() else {
        return;
    };
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{TOKEN_A}\n\n  {TOKEN_B}  \n")).unwrap();
    let out = dir.path().join("out");
    let mut args = server_args(&certs, &out, &init, 3, 2);
    args.extend(["--token-file".into(), tokens.display().to_string()]);
    args.extend(["--rejoin-wait-timeout".into(), "3".into()]);
    let mut server = Server::start(&args, dir.path());
    let addr = server.address();
    let ca = certs.ca();
    // Client B sleeps in round 2's fit: its token is revoked meanwhile.
    let mut a = python_client(
        &py,
        &addr,
        Some(&ca),
        0,
        &["--token", TOKEN_A],
        &dir.path().join("a.log"),
    );
    let b_log = dir.path().join("b.log");
    let mut b = python_client(
        &py,
        &addr,
        Some(&ca),
        1,
        &[
            "--token",
            TOKEN_B,
            "--mode",
            "sleep-fit",
            "--mode-round",
            "2",
            "--sleep",
            "5",
        ],
        &b_log,
    );
    // Revoke while B is inside round 2's fit.
    server.wait_for_log("configure_fit round=2", 1, Duration::from_secs(60));
    std::fs::write(&tokens, format!("{TOKEN_A}\n")).unwrap();
    let pid = server.child.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .unwrap()
        .success());
    let st = b
        .wait_timeout(Duration::from_secs(30))
        .expect("revoked client exits");
    assert!(!st.success());
    let text = std::fs::read_to_string(&b_log).unwrap();
    assert!(text.contains("UNAUTHENTICATED"), "{text}");
    // Round 2 counted B as a failed client; with one client left (min 2)
    // the run then ends after the bounded rejoin wait.
    let _ = server.wait(Duration::from_secs(120));
    let log = server.log_text();
    assert!(
        log.contains("aggregate_fit round=2 results=1 failures=1"),
        "{log}"
    );
    assert!(log.contains("reason=token revoked; stream closed"), "{log}");
    let _ = a.wait_timeout(Duration::from_secs(30));
    let log = server.log_text();
    assert!(!log.contains(TOKEN_A) && !log.contains(TOKEN_B), "{log}");
}
