//! Crash and resume: SIGKILL the server after round 2 of 4, restart it with
//! `--resume`; the run completes 4 rounds and the final model equals an
//! uninterrupted run's.

use std::time::{Duration, Instant};

use crate::common::*;

fn start_clients(
    py: &std::path::Path,
    server: &Server,
    certs: &DevCertificates,
    dir: &std::path::Path,
    tag: &str,
    extra: &[&str],
) -> Vec<ChildGuard> {
    // Clients join one at a time so that join order (and so the fold order)
    // is the same in every run.
    let mut clients = Vec::new();
    for i in 0..2 {
        clients.push(python_client(
            py,
            &server.address(),
            Some(&certs.ca()),
            i,
            extra,
            &dir.join(format!("{tag}{i}.log")),
        ));
        server.wait_for_log("client joined", i + 1, Duration::from_secs(30));
    }
    clients
}

#[test]
fn killed_server_resumes_and_matches_an_uninterrupted_run() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCertificates::generate();
    let init = dir.path().join("init.npz");
    write_initial_npz(&py, &init);

    // Uninterrupted reference run.
    let straight = dir.path().join("straight");
    let mut server = Server::start(&server_args(&certs, &straight, &init, 4, 2), dir.path());
    let mut clients = start_clients(&py, &server, &certs, dir.path(), "s", &[]);
    assert!(
        server.wait(Duration::from_secs(120)).success(),
        "{}",
        server.log_text()
    );
    for c in &mut clients {
        c.wait_timeout(Duration::from_secs(30));
    }
    let want = model(&straight);

    // Interrupted run: slow fits so that the kill lands between rounds 2 and 4.
    let resumed = dir.path().join("resumed");
    let args = server_args(&certs, &resumed, &init, 4, 2);
    let mut server = Server::start(&args, dir.path());
    let slow = ["--mode", "sleep-fit", "--mode-round", "3", "--sleep", "30"];
    let mut clients = start_clients(&py, &server, &certs, dir.path(), "k", &slow);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = std::fs::read_to_string(resumed.join("checkpoint.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["completed_rounds"].as_u64())
            .unwrap_or(0);
        if done >= 2 {
            assert_eq!(
                done, 2,
                "the third round cannot complete while clients sleep"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round 2 never completed: {}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL: no chance to clean up.
    server.child.0.kill().unwrap();
    server.child.0.wait().unwrap();
    drop(clients.drain(..));

    let mut resume_args = args.clone();
    resume_args.push("--resume".into());
    let mut server = Server::start(&resume_args, dir.path());
    let mut clients = start_clients(&py, &server, &certs, dir.path(), "r", &[]);
    assert!(
        server.wait(Duration::from_secs(120)).success(),
        "{}",
        server.log_text()
    );
    for c in &mut clients {
        assert!(c
            .wait_timeout(Duration::from_secs(30))
            .expect("exits")
            .success());
    }
    let log = server.log_text();
    assert!(log.contains("resuming from checkpoint"), "{log}");
    let history = history(&resumed);
    assert_eq!(history["rounds"].as_array().unwrap().len(), 4);
    let got = model(&resumed);
    assert_close(&got, &want, 1e-7);
}
