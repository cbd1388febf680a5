//! Errors in client code: an `Err` from `fit` or undecodable tensors become a
//! non-OK status (which the stock server counts as a failure) and the client
//! stays connected; a panic ends the run with a clear error.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flower_client::{start_client, BoxError, ClientError, ClientOptions, NumPyClient};
use flower_core::{
    ndarrays_to_parameters, ClientMessage, Code, Config, FitIns, Metrics, NdArray, Parameters,
    ReconnectIns, ServerMessage, NUMPY_TENSOR_TYPE,
};
use flower_testkit::stock_server::{StockServer, StockServerConfig};
use flower_testkit::{free_port, python};

use crate::scripted::{script, ScriptedServer, Session};
use crate::trainer::Trainer;
use crate::{init_tracing, STEP_TIMEOUT};

fn approx(v: &serde_json::Value, expected: f64) {
    let got = v.as_f64().unwrap();
    assert!(
        (got - expected).abs() < 1e-5,
        "got {got}, expected {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fit_error_is_a_failure_on_the_stock_server_and_the_client_stays() {
    init_tracing();
    let Some(python) = python() else { return };
    let port = free_port();
    let server = StockServer::start(&python, &StockServerConfig::new(port, 2, 2)).await;
    let mut failing = Trainer::new(1, 0.1, 10, 1.0);
    failing.fail_fit_in = vec![1];
    let options = || {
        ClientOptions::new(format!("127.0.0.1:{port}"))
            .insecure()
            .no_retries()
    };
    let (ra, rb) = tokio::join!(
        tokio::time::timeout(STEP_TIMEOUT, start_client(options(), failing.to_client())),
        tokio::time::timeout(
            STEP_TIMEOUT,
            start_client(options(), Trainer::new(2, 0.3, 30, 2.0).to_client())
        ),
    );
    let log = server.log();
    let ra = ra
        .expect("bounded")
        .unwrap_or_else(|e| panic!("client A: {e}\n{log}"));
    let rb = rb
        .expect("bounded")
        .unwrap_or_else(|e| panic!("client B: {e}\n{log}"));
    assert_eq!(
        (ra.fit, ra.evaluate, ra.failed_replies, ra.joins),
        (2, 2, 1, 1),
        "{ra:?}"
    );
    assert_eq!((rb.fit, rb.failed_replies), (2, 0), "{rb:?}");

    let result = server.finish().await;
    assert_eq!(
        result["fit_failures"],
        serde_json::json!([1, 0]),
        "{result}"
    );
    assert_eq!(result["fit_results"], serde_json::json!([1, 2]), "{result}");
    // Round 1 aggregates B alone (+0.3), round 2 both (+0.25).
    let losses = result["losses_distributed"].as_array().unwrap();
    approx(&losses[0][1], 0.3 + 1.75);
    approx(&losses[1][1], 0.55 + 1.75);
}

#[tokio::test]
async fn undecodable_parameters_get_a_non_ok_status_and_the_next_fit_works() {
    init_tracing();
    let replies: Arc<Mutex<Vec<ClientMessage>>> = Arc::default();
    let out = replies.clone();
    let server = ScriptedServer::start(script(move |mut s: Session| {
        let out = out.clone();
        async move {
            let garbage = Parameters {
                tensors: vec![Bytes::from_static(b"\x93NUMPY garbage")],
                tensor_type: NUMPY_TENSOR_TYPE.into(),
            };
            let good = ndarrays_to_parameters(&crate::trainer::initial_model());
            for parameters in [garbage, good] {
                let config = Config::new();
                let reply = s
                    .ask(ServerMessage::Fit(FitIns { parameters, config }))
                    .await;
                out.lock().unwrap().push(reply);
            }
            s.send(ServerMessage::Reconnect(ReconnectIns::default()))
                .await;
            let _ = s.reply().await;
            s.close();
        }
    }))
    .await;
    let summary = start_client(
        ClientOptions::new(server.address()).insecure().no_retries(),
        Trainer::new(1, 0.5, 10, 0.0).to_client(),
    )
    .await
    .expect("client stays connected after a bad FitIns");
    assert_eq!(
        (summary.fit, summary.failed_replies, summary.joins),
        (2, 1, 1)
    );

    let replies = replies.lock().unwrap();
    let [ClientMessage::Fit(bad), ClientMessage::Fit(ok)] = &replies[..] else {
        panic!("unexpected replies {replies:?}");
    };
    assert_eq!(bad.status.code, Code::FitNotImplemented);
    assert!(
        bad.status
            .message
            .starts_with("could not decode the server's parameters"),
        "{}",
        bad.status.message
    );
    assert!(ok.status.is_ok());
    assert_eq!(ok.num_examples, 10);
}

struct Panics;

impl NumPyClient for Panics {
    fn fit(
        &mut self,
        _parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        panic!("bug in user code");
    }
}

#[tokio::test]
async fn a_panic_in_client_code_ends_the_run_with_an_error() {
    init_tracing();
    let server = ScriptedServer::start(script(|mut s: Session| async move {
        s.send(ServerMessage::Fit(FitIns::default())).await;
        let _ = s.reply().await;
    }))
    .await;
    let outcome = tokio::time::timeout(
        STEP_TIMEOUT,
        start_client(
            ClientOptions::new(server.address()).insecure(),
            Panics.to_client(),
        ),
    )
    .await
    .expect("bounded");
    match outcome {
        Err(ClientError::ClientPanicked { kind, message }) => {
            assert_eq!(kind, flower_core::InstructionKind::Fit);
            assert_eq!(message, "bug in user code");
        }
        other => panic!("expected ClientPanicked, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_is_never_sent_over_plaintext_unless_allowed() {
    init_tracing();
    let seen_auth: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let out = seen_auth.clone();
    let server = ScriptedServer::start(script(move |mut s: Session| {
        let out = out.clone();
        async move {
            let auth = s
                .metadata
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            out.lock().unwrap().push(auth);
            s.send(ServerMessage::Reconnect(ReconnectIns::default()))
                .await;
            let _ = s.reply().await;
            s.close();
        }
    }))
    .await;
    let options = ClientOptions::new(server.address())
        .insecure()
        .token("t0k")
        .no_retries();
    let refused = start_client(options.clone(), Trainer::new(1, 0.0, 1, 0.0).to_client()).await;
    assert!(
        matches!(refused, Err(ClientError::InsecureCredentials)),
        "{refused:?}"
    );
    assert_eq!(server.joins(), 0, "nothing was sent");

    start_client(
        options.allow_insecure_auth(),
        Trainer::new(1, 0.0, 1, 0.0).to_client(),
    )
    .await
    .expect("allowed explicitly");
    assert_eq!(
        *seen_auth.lock().unwrap(),
        vec![Some("Bearer t0k".to_owned())]
    );
}

/// Any `tonic` interceptor plugs in (this is where `flower-auth`'s client
/// credentials go); its error ends the run without reaching the server.
#[tokio::test]
async fn an_interceptor_adds_credentials_or_stops_the_call() {
    init_tracing();
    let seen_auth: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let out = seen_auth.clone();
    let server = ScriptedServer::start(script(move |mut s: Session| {
        let out = out.clone();
        async move {
            let auth = s
                .metadata
                .get("x-authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            out.lock().unwrap().push(auth);
            s.send(ServerMessage::Reconnect(ReconnectIns::default()))
                .await;
            let _ = s.reply().await;
            s.close();
        }
    }))
    .await;
    let options = || ClientOptions::new(server.address()).insecure().no_retries();

    let adds = |mut request: tonic::Request<()>| {
        request.metadata_mut().insert(
            "x-authorization",
            "Bearer from-interceptor".parse().unwrap(),
        );
        Ok(request)
    };
    start_client(
        options().interceptor(adds),
        Trainer::new(1, 0.0, 1, 0.0).to_client(),
    )
    .await
    .expect("interceptor credentials");
    assert_eq!(
        *seen_auth.lock().unwrap(),
        vec![Some("Bearer from-interceptor".to_owned())]
    );

    let refuses = |_request: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
        Err(tonic::Status::unauthenticated("token file is empty"))
    };
    let outcome = start_client(
        ClientOptions::new(server.address())
            .insecure()
            .interceptor(refuses),
        Trainer::new(1, 0.0, 1, 0.0).to_client(),
    )
    .await;
    assert!(
        matches!(&outcome, Err(ClientError::Auth { message, .. }) if message == "token file is empty"),
        "{outcome:?}"
    );
    assert_eq!(
        server.joins(),
        1,
        "the refused call never reached the server"
    );
}
