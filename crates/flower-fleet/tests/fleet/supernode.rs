//! Rounds over stock `flower-supernode` 1.42 processes.

use std::time::Duration;

use flower_fleet::{FleetOptions, MessageFormat, SpillConfig};

use crate::support::{
    app, arrays, big_model, fab, fedavg, fedavg_server, kill, model, run, supernode, values,
    AppKind,
};

/// Two self-registered SuperNodes (`--insecure`), the message-API app, two
/// rounds of FedAvg: weights 10 and 30, steps 1 and 3, so each round moves
/// every element by (10·1 + 30·3)/40 = 2.5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fedavg_over_two_insecure_supernodes_matches_the_expectation() {
    let Some(fab) = fab(AppKind::Modern) else {
        return;
    };
    let (keys, initial) = model();
    let options = FleetOptions::new(app(AppKind::Modern, fab))
        .insecure()
        .array_keys(keys);
    let (server, addr) = fedavg_server(options, fedavg(2, initial), 2).await;
    let Some(a) = supernode(addr, "factor=1 examples=10", None) else {
        return;
    };
    let Some(b) = supernode(addr, "factor=3 examples=30", None) else {
        return;
    };
    let outcome = run(server, Duration::from_secs(240), &[&a, &b]).await;
    assert_eq!(outcome.completed_rounds, 2);
    let got = arrays(&outcome.parameters);
    assert_eq!(values(&got[0]), [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
    assert_eq!(values(&got[1]), [5.5, 4.5]);
    assert_eq!(got[0].dtype().numpy_name(), "float32");
    assert_eq!(got[1].dtype().numpy_name(), "float64");
    // Evaluate loss after round r: mean of all 8 elements = 1.875 + 2.5 r.
    let losses: Vec<(u64, f64)> = outcome.history.losses_distributed.clone();
    assert_eq!(losses.len(), 2, "{losses:?}");
    assert!((losses[0].1 - 4.375).abs() < 1e-6, "{losses:?}");
    assert!((losses[1].1 - 6.875).abs() < 1e-6, "{losses:?}");
    for r in &outcome.history.rounds {
        assert_eq!((r.fit_results, r.fit_failures), (2, 0), "{r:?}");
        assert_eq!((r.evaluate_results, r.evaluate_failures), (2, 0), "{r:?}");
    }
}

/// TLS (certificates from the testkit) and a model larger than 5 MiB (two
/// chunks each way), with the legacy NumPyClient app; with a 1 MiB reply
/// memory limit every pushed chunk goes through a spill file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_legacy_app_with_a_multi_chunk_model() {
    let Some(fab) = fab(AppKind::Legacy) else {
        return;
    };
    let certs = flower_testkit::DevCertificates::generate();
    let spill_dir = tempfile::tempdir().expect("spill dir");
    // 1.6 M float32 = 6.4 MB: two 5 MiB chunks.
    let n = 1_600_000;
    let (_, initial) = big_model(n);
    let options = FleetOptions::new(app(AppKind::Legacy, fab))
        .tls(flower_server::TlsFiles::new(
            certs.ca(),
            certs.cert(),
            certs.key(),
        ))
        .message_format(MessageFormat::Legacy)
        .spill(Some(SpillConfig {
            memory_limit: 1 << 20,
            dir: spill_dir.path().to_path_buf(),
        }))
        // One chunk read at a time: the two nodes' pushes take turns.
        .large_body_readers(1);
    let (server, addr) = fedavg_server(options, fedavg(2, initial), 1).await;
    let ca = certs.ca();
    let Some(a) = supernode(addr, "factor=1 examples=10", Some(&ca)) else {
        return;
    };
    let Some(b) = supernode(addr, "factor=3 examples=30", Some(&ca)) else {
        return;
    };
    let outcome = run(server, Duration::from_secs(300), &[&a, &b]).await;
    assert_eq!(outcome.completed_rounds, 1);
    let got = values(&arrays(&outcome.parameters)[0]);
    assert_eq!(got.len(), n);
    for (i, v) in got.iter().enumerate().step_by(99_991) {
        assert_eq!(*v, (i % 1000) as f64 + 2.5, "element {i}");
    }
}

/// A SuperNode killed (SIGKILL: no deactivation) after it received its
/// round-1 instruction: its exchange fails once its heartbeat patience
/// (2 × 30 s) runs out, FedAvg aggregates the other reply, the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supernode_killed_mid_round_counts_as_a_failure() {
    let Some(fab) = fab(AppKind::Modern) else {
        return;
    };
    let (keys, initial) = model();
    let options = FleetOptions::new(app(AppKind::Modern, fab))
        .insecure()
        .array_keys(keys);
    // Evaluation then goes on with the survivor.
    let strategy = fedavg(2, initial)
        .min_evaluate_clients(1)
        .min_available_clients(1);
    let (server, addr) = fedavg_server(options, strategy, 1).await;
    let Some(a) = supernode(addr, "factor=1 examples=10", None) else {
        return;
    };
    let Some(b) = supernode(addr, "factor=3 examples=30", None) else {
        return;
    };
    let killer = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !b.log().contains("Received successfully") {
            assert!(
                std::time::Instant::now() < deadline,
                "b never received: {}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        kill(&b);
    });
    // Both must be in the round: start it only once both are online.
    assert!(
        server.clients().wait_for(2, Duration::from_secs(60)).await,
        "{}",
        a.log()
    );
    let started = std::time::Instant::now();
    let outcome = run(server, Duration::from_secs(200), &[&a]).await;
    killer.join().expect("killer thread");
    assert_eq!(outcome.completed_rounds, 1);
    let round = &outcome.history.rounds[0];
    assert_eq!((round.fit_results, round.fit_failures), (1, 1), "{round:?}");
    // Only a's update (step 1): w = 1..6.
    let got = arrays(&outcome.parameters);
    assert_eq!(values(&got[0]), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // Bounded by the heartbeat patience, not the 120 s round timeout.
    assert!(
        started.elapsed() < Duration::from_secs(110),
        "{:?}",
        started.elapsed()
    );
}
