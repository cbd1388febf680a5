//! The Rust SuperNode's HTTP behaviour against a scripted Fleet API: every
//! request signed and typed as flwr's, 502/503 retried with back-off, 401
//! stopping the node at once, any other error status ending it after it
//! deactivates and unregisters.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flower_client::app::NumPyClientApp;
use flower_client::fleet::{run_supernode, SuperNodeOptions};
use flower_client::{ClientError, NumPyClient};
use flower_proto as pb;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

struct Nothing;
impl NumPyClient for Nothing {}

/// Answers per RPC, in order; the last one repeats.
type Script = HashMap<&'static str, Vec<(u16, Vec<u8>)>>;

#[derive(Default)]
struct Seen {
    calls: Vec<String>,
    unsigned: Vec<String>,
}

async fn scripted(script: Script) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let script = Arc::new(Mutex::new(script));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, script) = (seen2.clone(), script.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (seen, script) = (seen.clone(), script.clone());
                    async move {
                        let rpc = req.uri().path().trim_start_matches("/v1/fleet/").to_owned();
                        let signed = flower_auth::node::verify_node_request(
                            req.headers(),
                            SystemTime::now(),
                        )
                        .is_ok()
                            && req.headers()[http::header::CONTENT_TYPE] == "application/protobuf";
                        {
                            let mut seen = seen.lock().expect("lock");
                            seen.calls.push(rpc.clone());
                            if !signed {
                                seen.unsigned.push(rpc.clone());
                            }
                        }
                        let _ = req.into_body().collect().await;
                        let (status, body) = {
                            let mut script = script.lock().expect("lock");
                            match script.get_mut(rpc.as_str()) {
                                Some(answers) if answers.len() > 1 => answers.remove(0),
                                Some(answers) => answers[0].clone(),
                                None => (404, b"{}".to_vec()),
                            }
                        };
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn ok(message: impl prost::Message) -> (u16, Vec<u8>) {
    (200, message.encode_to_vec())
}

fn error(status: u16) -> (u16, Vec<u8>) {
    (status, br#"{"code": 1, "detail": "scripted"}"#.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_502_503_then_stops_on_500_after_leaving() {
    let script: Script = [
        (
            "register-node",
            vec![
                error(503),
                error(502),
                ok(pb::RegisterNodeFleetResponse { node_id: 7 }),
            ],
        ),
        (
            "activate-node",
            vec![ok(pb::ActivateNodeResponse { node_id: 7 })],
        ),
        (
            "send-node-heartbeat",
            vec![ok(pb::SendNodeHeartbeatResponse { success: true })],
        ),
        ("pull-messages", vec![error(500)]),
        ("deactivate-node", vec![ok(pb::DeactivateNodeResponse {})]),
        (
            "unregister-node",
            vec![ok(pb::UnregisterNodeFleetResponse {})],
        ),
    ]
    .into_iter()
    .collect();
    let (addr, seen) = scripted(script).await;
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        run_supernode(
            SuperNodeOptions::new(addr.to_string()).insecure(),
            NumPyClientApp::new(Nothing),
            futures::future::pending(),
        ),
    )
    .await
    .expect("ended in time");
    match result {
        Err(ClientError::FleetStatus {
            rpc: "pull-messages",
            status: 500,
            ..
        }) => {}
        other => panic!("expected HTTP 500 on pull-messages, got {other:?}"),
    }
    let seen = seen.lock().expect("lock");
    assert!(seen.unsigned.is_empty(), "unsigned: {:?}", seen.unsigned);
    let count = |rpc: &str| seen.calls.iter().filter(|c| *c == rpc).count();
    assert_eq!(count("register-node"), 3, "{:?}", seen.calls);
    assert_eq!(count("activate-node"), 1);
    assert_eq!(count("pull-messages"), 1, "500 is not retried");
    assert_eq!(count("deactivate-node"), 1);
    assert_eq!(count("unregister-node"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_at_once_on_401() {
    let script: Script = [
        (
            "register-node",
            vec![ok(pb::RegisterNodeFleetResponse { node_id: 7 })],
        ),
        ("activate-node", vec![error(401)]),
    ]
    .into_iter()
    .collect();
    let (addr, seen) = scripted(script).await;
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        run_supernode(
            SuperNodeOptions::new(addr.to_string()).insecure(),
            NumPyClientApp::new(Nothing),
            futures::future::pending(),
        ),
    )
    .await
    .expect("ended in time");
    assert!(
        matches!(
            result,
            Err(ClientError::NodeUnauthorized {
                rpc: "activate-node",
                ..
            })
        ),
        "{result:?}"
    );
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.calls, ["register-node", "activate-node"]);
}
