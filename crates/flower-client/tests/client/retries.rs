//! Retries: a server that is not up yet, nothing listening at all, and a
//! stock server killed mid-run and restarted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flower_client::{start_client, ClientError, ClientOptions, NumPyClient};
use flower_testkit::stock_server::{StockServer, StockServerConfig};
use flower_testkit::{free_port, python};

use crate::trainer::Trainer;
use crate::{init_tracing, STEP_TIMEOUT};

fn plaintext(port: u16) -> ClientOptions {
    ClientOptions::new(format!("127.0.0.1:{port}"))
        .insecure()
        .backoff(Duration::from_millis(100), Duration::from_millis(500))
}

fn server_config(port: u16, rounds: u32) -> StockServerConfig {
    StockServerConfig::new(port, rounds, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_started_before_the_server_connects_once_it_is_up() {
    init_tracing();
    let Some(python) = python() else { return };
    let port = free_port();
    let options = plaintext(port).max_wait_time(STEP_TIMEOUT);
    let client = tokio::spawn(start_client(
        options,
        Trainer::new(1, 0.1, 10, 0.0).to_client(),
    ));

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!client.is_finished(), "the client must still be retrying");
    let server = StockServer::spawn(&python, &server_config(port, 1));

    let summary = tokio::time::timeout(STEP_TIMEOUT, client)
        .await
        .expect("client finished in time")
        .unwrap()
        .unwrap_or_else(|e| panic!("client: {e}\nserver log:\n{}", server.log()));
    assert!(summary.retries >= 2, "{summary:?}");
    assert_eq!(
        (summary.joins, summary.fit, summary.evaluate),
        (1, 1, 1),
        "{summary:?}"
    );
    let result = server.finish().await;
    assert_eq!(result["losses_distributed"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn max_retries_gives_up_in_bounded_time() {
    init_tracing();
    let port = free_port(); // nothing listens here
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        start_client(
            plaintext(port).max_retries(2),
            Trainer::new(1, 0.1, 10, 0.0).to_client(),
        ),
    )
    .await
    .expect("bounded");
    let elapsed = started.elapsed();
    match outcome {
        Err(ClientError::RetriesExhausted {
            attempts,
            ref last_error,
            ..
        }) => {
            assert_eq!(attempts, 3, "one try plus two retries");
            assert!(
                last_error.contains(&format!("127.0.0.1:{port}")),
                "{last_error}"
            );
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    // Two backoff delays of at most 100 ms and 200 ms, plus refused connects.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let text = outcome.unwrap_err().to_string();
    assert!(
        text.starts_with("giving up after 3 failed attempt(s)"),
        "{text}"
    );
}

#[tokio::test]
async fn max_wait_time_gives_up_in_bounded_time() {
    init_tracing();
    let port = free_port();
    let started = Instant::now();
    let outcome = start_client(
        plaintext(port).max_wait_time(Duration::from_millis(700)),
        Trainer::new(1, 0.1, 10, 0.0).to_client(),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(outcome, Err(ClientError::RetriesExhausted { .. })),
        "{outcome:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(3),
        "took {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_server_killed_mid_run_then_restarted() {
    init_tracing();
    let Some(python) = python() else { return };
    let port = free_port();

    // First server: wants 2 clients, so after the initial GetParametersIns it
    // waits; we kill it while our client is connected.
    let mut first = StockServer::start(
        &python,
        &StockServerConfig {
            min_clients: 2,
            ..server_config(port, 1)
        },
    )
    .await;
    let trainer = Arc::new(Mutex::new(Trainer::new(1, 0.1, 10, 0.0).to_client()));
    let client = tokio::spawn(start_client(
        plaintext(port).max_wait_time(STEP_TIMEOUT),
        trainer.clone(),
    ));

    // Wait (bounded) until the stock server has talked to the client.
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let log = first.log();
        if log.contains("Received initial parameters from one random client") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no initial parameters; server log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill();

    // Second server on the same port, 1 client: the client reconnects and finishes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = StockServer::spawn(&python, &server_config(port, 1));
    let summary = tokio::time::timeout(STEP_TIMEOUT, client)
        .await
        .expect("client finished in time")
        .unwrap()
        .unwrap_or_else(|e| panic!("client: {e}\nserver log:\n{}", second.log()));
    assert_eq!(summary.joins, 2, "{summary:?}");
    assert!(summary.retries >= 1, "{summary:?}");
    assert_eq!((summary.fit, summary.evaluate), (1, 1), "{summary:?}");
    assert_eq!(
        summary.get_parameters, 2,
        "each server asked once: {summary:?}"
    );
    second.finish().await;
}

/// `UNAVAILABLE` from the server, then a stream that ends without
/// `ReconnectIns`: both count as "the server went away" and are retried.
#[tokio::test]
async fn unavailable_and_a_silently_ended_stream_are_retried() {
    use crate::scripted::{script, ScriptedServer, Session};
    use flower_core::{ReconnectIns, ServerMessage};
    init_tracing();
    let server = ScriptedServer::start(script(|mut s: Session| async move {
        match s.index {
            0 => s.fail(tonic::Status::unavailable("warming up")).await,
            1 => s.close(),
            _ => {
                s.send(ServerMessage::Reconnect(ReconnectIns::default()))
                    .await;
                let _ = s.reply().await;
                s.close();
            }
        }
    }))
    .await;
    let summary = tokio::time::timeout(
        STEP_TIMEOUT,
        start_client(
            ClientOptions::new(server.address())
                .insecure()
                .backoff(Duration::from_millis(50), Duration::from_millis(100))
                .max_retries(2),
            Trainer::new(1, 0.0, 1, 0.0).to_client(),
        ),
    )
    .await
    .expect("bounded")
    .expect("recovers");
    assert_eq!(server.joins(), 3);
    assert_eq!((summary.joins, summary.retries), (3, 2), "{summary:?}");
}

/// A server that sends one instruction on every join and then drops the
/// stream must not reset the retry streak: `max_retries` still bounds the
/// client. (Before, any server message reset the counters, so such a server
/// kept the client retrying forever.)
#[tokio::test]
async fn one_message_then_a_dropped_stream_does_not_reset_max_retries() {
    use crate::scripted::{script, ScriptedServer, Session};
    use flower_core::{GetPropertiesIns, ServerMessage};
    init_tracing();
    let server = ScriptedServer::start(script(|mut s: Session| async move {
        s.send(ServerMessage::GetProperties(GetPropertiesIns::default()))
            .await;
        s.close();
    }))
    .await;
    let result = tokio::time::timeout(
        STEP_TIMEOUT,
        start_client(
            ClientOptions::new(server.address())
                .insecure()
                .backoff(Duration::from_millis(20), Duration::from_millis(40))
                .max_retries(2),
            Trainer::new(1, 0.0, 1, 0.0).to_client(),
        ),
    )
    .await
    .expect("bounded: the client gives up");
    assert!(
        matches!(
            result,
            Err(flower_client::ClientError::RetriesExhausted { .. })
        ),
        "{result:?}"
    );
    assert_eq!(server.joins(), 3);
}
