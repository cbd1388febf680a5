//! `ReconnectIns`: `seconds > 0` makes the client answer, leave, wait and
//! rejoin; `seconds == 0` ends the run. Driven by a scripted `FlowerService`
//! over real gRPC on loopback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flower_client::{start_client, ClientOptions, NumPyClient};
use flower_core::{
    ClientMessage, DisconnectRes, GetPropertiesIns, Reason, ReconnectIns, ServerMessage,
};

use crate::scripted::{script, ScriptedServer, Session};
use crate::trainer::Trainer;
use crate::{init_tracing, STEP_TIMEOUT};

#[derive(Debug, Default)]
struct Seen {
    join_times: Vec<Instant>,
    replies: Vec<(usize, ClientMessage)>,
}

#[tokio::test]
async fn reconnect_with_seconds_rejoins_and_zero_shuts_down() {
    init_tracing();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    let server = ScriptedServer::start(script(move |mut s: Session| {
        let seen = record.clone();
        async move {
            seen.lock().unwrap().join_times.push(Instant::now());
            let index = s.index;
            let instruction = if index == 0 {
                // An instruction first, so the rejoin is not the first exchange.
                let reply = s
                    .ask(ServerMessage::GetProperties(GetPropertiesIns::default()))
                    .await;
                seen.lock().unwrap().replies.push((index, reply));
                ReconnectIns { seconds: 1 }
            } else {
                ReconnectIns::default()
            };
            // With the disconnect grace the DisconnectRes reaches the server.
            if let Some(reply) = s.ask_optional(ServerMessage::Reconnect(instruction)).await {
                seen.lock().unwrap().replies.push((index, reply));
            }
            s.close();
        }
    }))
    .await;

    let started = Instant::now();
    let summary = tokio::time::timeout(
        STEP_TIMEOUT,
        start_client(
            ClientOptions::new(server.address()).insecure().no_retries(),
            Trainer::new(1, 0.0, 1, 0.0).to_client(),
        ),
    )
    .await
    .expect("bounded")
    .expect("client ends cleanly on ReconnectIns{}");
    let elapsed = started.elapsed();

    assert_eq!(server.joins(), 2);
    assert_eq!(
        (summary.joins, summary.reconnects, summary.retries),
        (2, 1, 0),
        "{summary:?}"
    );
    assert_eq!(summary.get_properties, 1);
    assert_eq!(
        summary.failed_replies, 1,
        "Trainer has no get_properties: {summary:?}"
    );

    let seen = seen.lock().unwrap();
    let gap = seen.join_times[1] - seen.join_times[0];
    assert!(gap >= Duration::from_secs(1), "rejoined after {gap:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    let disconnect = ClientMessage::Disconnect(DisconnectRes {
        reason: Reason::Reconnect,
    });
    let kinds: Vec<(usize, &str)> = seen
        .replies
        .iter()
        .map(|(i, m)| (*i, m.kind().as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, "get_properties_res"),
            (0, "disconnect_res"),
            (1, "disconnect_res")
        ]
    );
    assert!(seen
        .replies
        .iter()
        .filter(|(_, m)| m.kind().as_str() == "disconnect_res")
        .all(|(_, m)| *m == disconnect));
}

/// The server never ends the stream after `ReconnectIns{}`: the client waits
/// at most its disconnect grace, and not at all with a zero grace (Python's
/// behaviour).
#[tokio::test]
async fn disconnect_grace_bounds_the_wait_for_the_server() {
    init_tracing();
    let server = ScriptedServer::start(script(|mut s: Session| async move {
        s.send(ServerMessage::Reconnect(ReconnectIns::default()))
            .await;
        let _ = s.reply().await;
        tokio::time::sleep(STEP_TIMEOUT).await;
        drop(s);
    }))
    .await;
    let run = |grace: Duration| {
        let options = ClientOptions::new(server.address())
            .insecure()
            .no_retries()
            .disconnect_grace(grace);
        async move {
            let started = Instant::now();
            let summary = start_client(options, Trainer::new(1, 0.0, 1, 0.0).to_client())
                .await
                .unwrap();
            assert_eq!(summary.joins, 1);
            started.elapsed()
        }
    };
    let zero = run(Duration::ZERO).await;
    let two = run(Duration::from_secs(2)).await;
    assert!(zero < Duration::from_millis(1500), "{zero:?}");
    assert!(
        two >= Duration::from_secs(2) && two < Duration::from_secs(4),
        "{two:?}"
    );
}
