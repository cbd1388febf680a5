//! Channel settings: messages above tonic's 4 MiB default pass by default,
//! a lowered limit fails cleanly, HTTP/2 keepalive works, and the blocking
//! entry point runs a whole session.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flower_client::{start_client, start_client_blocking, ClientError, ClientOptions, NumPyClient};
use flower_core::{
    ndarrays_to_parameters, parameters_to_ndarrays, ClientMessage, Config, FitIns, NdArray,
    ReconnectIns, ServerMessage,
};
use ndarray::{ArrayD, IxDyn};

use crate::scripted::{script, ScriptedServer, Session};
use crate::trainer::Trainer;
use crate::{init_tracing, STEP_TIMEOUT};

/// 12 MiB of float32: three times tonic's default 4 MiB limit.
fn big_model() -> Vec<NdArray> {
    vec![NdArray::F32(ArrayD::from_elem(
        IxDyn(&[3 * 1024 * 1024]),
        1.0f32,
    ))]
}

/// Sends one big `FitIns`, records the reply, then ends the run.
fn big_fit_script(out: Arc<Mutex<Option<ClientMessage>>>) -> crate::scripted::Script {
    script(move |mut s: Session| {
        let out = out.clone();
        async move {
            let parameters = ndarrays_to_parameters(&big_model());
            s.send(ServerMessage::Fit(FitIns {
                parameters,
                config: Config::new(),
            }))
            .await;
            let reply = s.reply().await;
            let got_reply = reply.is_some();
            *out.lock().unwrap() = reply;
            if got_reply {
                s.send(ServerMessage::Reconnect(ReconnectIns::default()))
                    .await;
                let _ = s.reply().await;
            }
            s.close();
        }
    })
}

#[tokio::test]
async fn messages_above_4_mib_pass_with_the_default_limit() {
    init_tracing();
    let reply = Arc::new(Mutex::new(None));
    let server = ScriptedServer::start(big_fit_script(reply.clone())).await;
    let summary = tokio::time::timeout(
        STEP_TIMEOUT,
        start_client(
            ClientOptions::new(server.address()).insecure().no_retries(),
            Trainer::new(1, 0.5, 10, 0.0).to_client(),
        ),
    )
    .await
    .expect("bounded")
    .expect("big messages pass");
    assert_eq!((summary.fit, summary.failed_replies), (1, 0));
    let Some(ClientMessage::Fit(res)) = reply.lock().unwrap().take() else {
        panic!("no fit_res");
    };
    assert!(res.parameters.byte_len() > 12 * 1024 * 1024);
    let arrays = parameters_to_ndarrays(&res.parameters).unwrap();
    let NdArray::F32(a) = &arrays[0] else {
        panic!("dtype changed")
    };
    assert!(a.iter().all(|&v| v == 1.5));
}

#[tokio::test]
async fn a_lowered_limit_fails_with_a_clear_error_and_no_retry() {
    init_tracing();
    let reply = Arc::new(Mutex::new(None));
    let server = ScriptedServer::start(big_fit_script(reply.clone())).await;
    let outcome = tokio::time::timeout(
        STEP_TIMEOUT,
        start_client(
            // Default (unbounded) retries: a size violation is not transient.
            ClientOptions::new(server.address())
                .insecure()
                .max_message_size(1024 * 1024),
            Trainer::new(1, 0.5, 10, 0.0).to_client(),
        ),
    )
    .await
    .expect("bounded");
    match outcome {
        Err(ClientError::Rpc(status)) => {
            assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
            assert!(status.message().contains("too large"), "{status:?}");
        }
        other => panic!("expected an Rpc error, got {other:?}"),
    }
    assert_eq!(server.joins(), 1);
}

#[tokio::test]
async fn keepalive_pings_do_not_disturb_a_session() {
    init_tracing();
    let server = ScriptedServer::start(script(|mut s: Session| async move {
        // Idle for a while so that several pings go out.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let reply = s.ask(ServerMessage::Fit(FitIns {
            parameters: ndarrays_to_parameters(&crate::trainer::initial_model()),
            config: Config::new(),
        }));
        assert!(matches!(reply.await, ClientMessage::Fit(_)));
        s.send(ServerMessage::Reconnect(ReconnectIns::default()))
            .await;
        let _ = s.reply().await;
        s.close();
    }))
    .await;
    let summary = start_client(
        ClientOptions::new(server.address())
            .insecure()
            .no_retries()
            .keepalive_interval(Duration::from_millis(100))
            .keepalive_timeout(Duration::from_secs(5))
            .keepalive_while_idle(true),
        Trainer::new(1, 0.5, 10, 0.0).to_client(),
    )
    .await
    .expect("session with keepalive");
    assert_eq!(summary.fit, 1);
}

#[test]
fn blocking_entry_point_runs_a_session() {
    init_tracing();
    // The test server runs on a runtime of its own thread.
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let server = server_rt.block_on(ScriptedServer::start(script(|mut s: Session| async move {
        s.send(ServerMessage::Reconnect(ReconnectIns::default()))
            .await;
        let _ = s.reply().await;
        s.close();
    })));
    let options = ClientOptions::new(server.address()).insecure().no_retries();
    let summary = start_client_blocking(options.clone(), Trainer::new(1, 0.0, 1, 0.0).to_client())
        .expect("blocking client");
    assert_eq!(summary.joins, 1);

    // Inside a runtime it refuses instead of panicking.
    let nested = server_rt.block_on(async {
        start_client_blocking(options, Trainer::new(1, 0.0, 1, 0.0).to_client())
    });
    assert!(matches!(nested, Err(ClientError::Runtime(_))), "{nested:?}");
    drop(server);
}
