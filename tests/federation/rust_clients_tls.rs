//! Rust clients (the examples' iris client) against the flower-rs server in
//! this process, over TLS with a bearer token: the run completes, the model
//! learns, and the same run gives the same model file bit for bit.

use std::path::Path;
use std::time::Duration;

use crate::common::data::partition;
use crate::common::model::IrisClient;
use crate::common::support::generate_dev_certificates;
use crate::start_server;
use flower_client::{start_client, ClientOptions, NumPyClient as _, RunSummary};
use flower_core::NdArray;
use flower_server::RunOutcome;

const STEP: Duration = Duration::from_secs(60);

/// One federation of `clients` iris clients, joined one after the other.
async fn run(out: &Path, rounds: u64, clients: usize) -> (RunOutcome, Vec<RunSummary>) {
    let certs = tempfile::tempdir().unwrap();
    let tls = generate_dev_certificates(certs.path()).unwrap();
    let ca = tls.ca_certfile.clone();
    let token = "quickstart-test-token";
    let server = start_server(tls, token, rounds, clients, out).await;
    let mut tasks = Vec::new();
    for id in 0..clients {
        let options = ClientOptions::new(server.local_addr().to_string())
            .root_certificates_file(&ca)
            .token(token)
            .no_retries();
        let client = IrisClient::new(partition(id, clients)).to_client();
        tasks.push(tokio::spawn(start_client(options, client)));
        assert!(server.clients().wait_for(id + 1, STEP).await);
    }
    let outcome = tokio::time::timeout(STEP, server.run(std::future::pending()))
        .await
        .expect("run ends in time")
        .expect("run succeeds");
    let mut summaries = Vec::new();
    for task in tasks {
        let summary = tokio::time::timeout(STEP, task)
            .await
            .expect("client ends in time")
            .unwrap()
            .expect("client ends cleanly");
        summaries.push(summary);
    }
    (outcome, summaries)
}

fn model_file(dir: &Path) -> Vec<(String, NdArray)> {
    flower_core::npz::read_npz(&dir.join("model.npz")).expect("model.npz")
}

fn bits(arrays: &[(String, NdArray)]) -> Vec<(String, Vec<u64>)> {
    arrays
        .iter()
        .map(|(name, a)| match a {
            NdArray::F64(a) => (name.clone(), a.iter().map(|v| v.to_bits()).collect()),
            other => panic!("{name}: expected float64, got {:?}", other.dtype()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rounds_over_tls_with_a_token_learn_and_repeat_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (first, summaries) = run(&dir.path().join("first"), 3, 3).await;

    assert_eq!(first.completed_rounds, 3);
    for s in &summaries {
        assert_eq!((s.fit, s.evaluate, s.rounds), (3, 3, 3), "{s:?}");
        assert_eq!((s.joins, s.retries, s.failed_replies), (1, 0, 0), "{s:?}");
        assert_eq!(s.get_parameters, 0, "the strategy has initial parameters");
    }
    let h = &first.history;
    assert!(h.rounds.iter().all(|r| r.fit_results == 3
        && r.fit_failures == 0
        && r.evaluate_results == 3
        && r.evaluate_failures == 0));
    // It learns: the test loss falls every round, accuracy ends higher.
    let losses: Vec<f64> = h.losses_distributed.iter().map(|&(_, l)| l).collect();
    assert_eq!(losses.len(), 3);
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
    assert!(losses[0] < 3f64.ln(), "better than chance: {losses:?}");
    let accuracy: Vec<f64> = h.metrics_distributed["accuracy"]
        .iter()
        .map(|(_, v)| v.as_f64().unwrap())
        .collect();
    assert!(accuracy.windows(2).all(|w| w[1] >= w[0]), "{accuracy:?}");
    assert!(
        accuracy[2] > accuracy[0] && accuracy[2] > 0.8,
        "{accuracy:?}"
    );

    // The files the server wrote: history.json matches, model.npz is the
    // final model.
    let out = dir.path().join("first");
    let history: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("history.json")).unwrap()).unwrap();
    assert_eq!(history["losses_distributed"].as_array().unwrap().len(), 3);
    let saved = model_file(&out);
    let final_model = flower_core::parameters_to_ndarrays(&first.parameters).unwrap();
    assert_eq!(
        saved.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(),
        final_model
    );
    assert_eq!(saved[0].1.shape(), &[4, 3]);
    assert_eq!(saved[1].1.shape(), &[3]);

    // Same run again (new certificates, new server, new clients): the same
    // model, bit for bit.
    let (second, _) = run(&dir.path().join("second"), 3, 3).await;
    assert_eq!(second.completed_rounds, 3);
    assert_eq!(bits(&model_file(&dir.path().join("second"))), bits(&saved));
}
