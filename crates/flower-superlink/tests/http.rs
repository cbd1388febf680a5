//! The Control and Runtime APIs over a real socket, without Python: the
//! refusals a stock client sees (content type, token, unknown run, bad FAB,
//! reachable address) and the empty answers of an idle SuperLink.

use std::net::SocketAddr;
use std::time::Duration;

use flower_fleet::{FleetApi, FleetOptions};
use flower_proto as pb;
use flower_superlink::{SuperLink, SuperLinkError, SuperLinkOptions};
use futures::FutureExt;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts a SuperLink (no SuperExec) over a Fleet API on free ports.
async fn start() -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| {
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
        .boxed()
    };
    let fleet = FleetApi::serve_runs(
        FleetOptions::default()
            .address("127.0.0.1:0".parse().expect("addr"))
            .insecure(),
        stop(rx.clone()),
    )
    .await
    .expect("fleet");
    let options = SuperLinkOptions::default()
        .address("127.0.0.1:0".parse().expect("addr"))
        .superexec(None);
    let link = SuperLink::start(options, fleet.link.clone(), stop(rx))
        .await
        .expect("superlink");
    tokio::spawn(fleet.serve);
    tokio::spawn(link.serve);
    (link.local_addr, tx)
}

/// One HTTP/1.1 POST; the status and the body.
async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, response[split + 4..].to_vec())
}

const PB: &str = "application/protobuf";

#[tokio::test]
async fn an_idle_superlink_answers_and_refuses_like_flwr() {
    let (addr, _stop) = start().await;
    // No runs yet.
    let (status, body) = post(addr, "/v1/control/list-runs", PB, &[], &[]).await;
    assert_eq!(status, 200);
    let runs = pb::ListRunsResponse::decode(body.as_slice()).expect("ListRunsResponse");
    assert!(runs.run_dict.is_empty());
    assert!(runs.now.ends_with("+00:00"), "{}", runs.now);
    // SuperExec polls: nothing to do.
    let req = pb::AcquireTaskRequest {
        supported_task_types: vec!["flwr-serverapp".into()],
        agentapp_fab_hashes: vec![],
    };
    let (status, body) = post(
        addr,
        "/v1/runtime/acquire-task",
        PB,
        &[],
        &req.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(pb::AcquireTaskResponse::decode(body.as_slice())
        .expect("AcquireTaskResponse")
        .task
        .is_none());
    // Wrong content type: 415, flwr's code 1002.
    let (status, body) = post(
        addr,
        "/v1/control/list-runs",
        "application/json",
        &[],
        b"{}",
    )
    .await;
    assert_eq!(status, 415);
    assert!(String::from_utf8_lossy(&body).contains("1002"));
    // Runtime calls need a task token: 401, code 1008.
    for token in [None, Some("nonsense")] {
        let headers: Vec<(&str, &str)> =
            token.map(|t| ("flwr-task-token", t)).into_iter().collect();
        let (status, body) = post(addr, "/v1/runtime/pull-task-input", PB, &headers, &[]).await;
        assert_eq!(status, 401);
        assert!(String::from_utf8_lossy(&body).contains("1008"));
    }
    // Unknown run: 404, code 16.
    let req = pb::StopRunRequest { run_id: 7 };
    let (status, body) = post(addr, "/v1/control/stop-run", PB, &[], &req.encode_to_vec()).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("\"code\":16"));
    let req = pb::StreamLogsRequest {
        run_id: 7,
        after_timestamp: 0.0,
    };
    let (status, _) = post(
        addr,
        "/v1/control/stream-logs",
        PB,
        &[],
        &req.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 404);
    // A FAB that is not a FAB: 412, code 15 (invalid run config).
    let req = pb::StartRunRequest {
        fab: Some(pb::Fab {
            hash_str: String::new(),
            content: bytes::Bytes::from_static(b"not a zip"),
            verifications: Default::default(),
        }),
        ..Default::default()
    };
    let (status, body) = post(addr, "/v1/control/start-run", PB, &[], &req.encode_to_vec()).await;
    assert_eq!(status, 412);
    assert!(String::from_utf8_lossy(&body).contains("\"code\":15"));
    // Garbage protobuf: 400, code 1003.
    let (status, _) = post(addr, "/v1/control/stop-run", PB, &[], &[0xff, 0xff]).await;
    assert_eq!(status, 400);
    // No account authentication: flwr's answer to `flwr login`.
    let (status, body) = post(addr, "/v1/control/get-login-details", PB, &[], &[]).await;
    assert_eq!(status, 501);
    assert!(String::from_utf8_lossy(&body).contains("\"code\":19"));
    // Outside both APIs.
    let (status, _) = post(addr, "/v1/fleet/pull-messages", PB, &[], &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_reachable_address_needs_tls_and_consent() {
    let reachable: SocketAddr = "0.0.0.0:0".parse().expect("addr");
    let plain = SuperLinkOptions::default().address(reachable);
    assert!(matches!(
        plain.check_access(),
        Err(SuperLinkError::RemoteControl(_))
    ));
    let consent_only = SuperLinkOptions::default()
        .address(reachable)
        .allow_remote_control(true);
    assert!(consent_only.check_access().is_err(), "consent without TLS");
    let tls_only = SuperLinkOptions::default()
        .address(reachable)
        .tls(flower_server::TlsFiles::new("ca", "cert", "key"));
    assert!(tls_only.check_access().is_err(), "TLS without consent");
    let both = tls_only.allow_remote_control(true);
    assert!(both.check_access().is_ok());
    assert!(
        SuperLinkOptions::default().check_access().is_ok(),
        "loopback"
    );
}
