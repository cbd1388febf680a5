//! Failure cases against the `flower-server` binary: the server never panics
//! and finishes with the clients that remain.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

struct Run {
    dir: tempfile::TempDir,
    certs: DevCertificates,
    init: std::path::PathBuf,
    py: std::path::PathBuf,
}

fn setup() -> Option<Run> {
    let py = python()?;
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("init.npz");
    write_initial_npz(&py, &init);
    Some(Run {
        dir,
        certs: DevCertificates::generate(),
        init,
        py,
    })
}

impl Run {
    fn out(&self) -> std::path::PathBuf {
        self.dir.path().join("out")
    }
    fn client(&self, server: &Server, i: usize, extra: &[&str]) -> ChildGuard {
        python_client(
            &self.py,
            &server.address(),
            Some(&self.certs.ca()),
            i,
            extra,
            &self.log(i),
        )
    }
    fn log(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("client{i}.log"))
    }
}

fn rounds(dir: &Path) -> Vec<serde_json::Value> {
    history(dir)["rounds"].as_array().unwrap().clone()
}

#[test]
fn client_killed_mid_fit_is_a_counted_failure() {
    let Some(run) = setup() else { return };
    let args = server_args(&run.certs, &run.out(), &run.init, 2, 2);
    let mut server = Server::start(&args, run.dir.path());
    // The crashing client joins first so that it is in round 1's fit sample.
    let mut crash = run.client(&server, 2, &["--mode", "crash-fit"]);
    server.wait_for_log("client joined", 1, Duration::from_secs(30));
    let mut ok1 = run.client(&server, 0, &[]);
    let mut ok2 = run.client(&server, 1, &[]);
    let status = server.wait(Duration::from_secs(120));
    let log = server.log_text();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let rounds = rounds(&run.out());
    assert_eq!(rounds.len(), 2, "{log}");
    assert_eq!(rounds[0]["fit_failures"], 1, "{log}");
    assert!(rounds[0]["fit_results"].as_u64().unwrap() >= 1, "{log}");
    assert_eq!(rounds[1]["fit_failures"], 0, "{log}");
    assert_eq!(
        crash
            .wait_timeout(Duration::from_secs(10))
            .map(|s| s.code()),
        Some(Some(3))
    );
    assert_clients_succeed([&mut ok1, &mut ok2]);
}

#[test]
fn client_sleeping_past_round_timeout_is_cut_off() {
    let Some(run) = setup() else { return };
    let mut args = server_args(&run.certs, &run.out(), &run.init, 2, 2);
    args.extend(["--round-timeout".into(), "2".into()]);
    let mut server = Server::start(&args, run.dir.path());
    // The slow client joins first so that it is in round 1's fit sample.
    let mut slow = run.client(&server, 2, &["--mode", "sleep-fit", "--sleep", "6"]);
    server.wait_for_log("client joined", 1, Duration::from_secs(30));
    let mut a = run.client(&server, 0, &[]);
    let mut b = run.client(&server, 1, &[]);
    let status = server.wait(Duration::from_secs(120));
    let log = server.log_text();
    assert!(status.success(), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let rounds = rounds(&run.out());
    assert_eq!(rounds[0]["fit_failures"], 1, "{log}");
    assert!(rounds[0]["fit_seconds"].as_f64().unwrap() < 5.0, "{log}");
    let st = slow
        .wait_timeout(Duration::from_secs(20))
        .expect("slow client exits");
    assert!(!st.success());
    let slow_log = std::fs::read_to_string(run.log(2)).unwrap();
    assert!(slow_log.contains("DEADLINE_EXCEEDED"), "{slow_log}");
    for c in [&mut a, &mut b] {
        assert!(c.wait_timeout(Duration::from_secs(30)).is_some());
    }
}

#[test]
fn wrong_shaped_result_is_a_failure_not_a_crash() {
    let Some(run) = setup() else { return };
    let args = server_args(&run.certs, &run.out(), &run.init, 2, 2);
    let mut server = Server::start(&args, run.dir.path());
    let mut a = run.client(&server, 0, &[]);
    let mut b = run.client(&server, 1, &["--mode", "wrong-shape"]);
    let status = server.wait(Duration::from_secs(120));
    let log = server.log_text();
    assert!(status.success(), "{log}");
    let rounds = rounds(&run.out());
    assert_eq!(rounds[0]["fit_failures"], 1, "{log}");
    assert_eq!(rounds[0]["fit_results"], 1, "{log}");
    assert_eq!(rounds[1]["fit_failures"], 0, "{log}");
    assert_clients_succeed([&mut a, &mut b]);
}

#[test]
fn too_few_survivors_end_the_run_after_a_bounded_wait() {
    let Some(run) = setup() else { return };
    let mut args = server_args(&run.certs, &run.out(), &run.init, 3, 2);
    args.extend(["--rejoin-wait-timeout".into(), "3".into()]);
    let mut server = Server::start(&args, run.dir.path());
    let mut ok = run.client(&server, 0, &[]);
    let _crash = run.client(&server, 1, &["--mode", "crash-fit", "--mode-round", "2"]);
    let started = std::time::Instant::now();
    let status = server.wait(Duration::from_secs(90));
    let log = server.log_text();
    assert!(!status.success(), "{log}");
    assert!(started.elapsed() < Duration::from_secs(80));
    assert!(log.contains("ending run"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Round 1 completed and was saved.
    assert!(!rounds(&run.out()).is_empty(), "{log}");
    // The survivor was told to disconnect and exits cleanly.
    let st = ok
        .wait_timeout(Duration::from_secs(30))
        .expect("survivor exits");
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(run.log(0)).unwrap()
    );
}

#[test]
fn sigterm_disconnects_clients_and_keeps_the_saved_state() {
    let Some(run) = setup() else { return };
    let args = server_args(&run.certs, &run.out(), &run.init, 5, 2);
    let mut server = Server::start(&args, run.dir.path());
    let slow = ["--mode", "sleep-fit", "--mode-round", "2", "--sleep", "2"];
    let mut a = run.client(&server, 0, &slow);
    let mut b = run.client(&server, 1, &slow);
    server.wait_for_log("round complete", 1, Duration::from_secs(60));
    let pid = server.child.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = server.wait(Duration::from_secs(30));
    let log = server.log_text();
    assert!(
        !status.success(),
        "an interrupted run is not a completed run: {log}"
    );
    assert!(log.contains("SIGTERM received"), "{log}");
    assert_eq!(rounds(&run.out()).len(), 1, "{log}");
    assert!(run.out().join("model.npz").exists());
    // Clients were told to disconnect (ReconnectIns) rather than cut off.
    for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
        let st = c
            .wait_timeout(Duration::from_secs(40))
            .expect("client exits");
        let client_log = std::fs::read_to_string(run.log(i)).unwrap_or_default();
        assert!(
            st.success() && client_log.contains("Disconnect and shut down"),
            "client {i} ({st}) was not told to disconnect: {client_log}\nserver: {log}"
        );
    }
}
