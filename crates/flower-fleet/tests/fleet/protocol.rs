//! The Fleet API spoken by a Rust HTTP client: hostile inputs get only the
//! statuses a SuperNode survives (200, 401, 403, 503; 404 off the Fleet
//! paths), and the server never panics.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flower_auth::node::{AuthorizedNodeKeys, NodeKeyCurve, NodeSigningKey};
use flower_fleet::{FleetApi, FleetApp, FleetOptions};
use flower_proto as pb;
use flower_server::{ClientManager, Transport};
use futures::FutureExt;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prost::Message as _;

const PATHS: [&str; 12] = [
    "register-node",
    "activate-node",
    "deactivate-node",
    "unregister-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
];

const RUN_ID: u64 = 77;

struct Fleet {
    addr: SocketAddr,
    clients: ClientManager,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serve: tokio::task::JoinHandle<()>,
}

impl Fleet {
    async fn start(options: FleetOptions) -> Self {
        let clients = ClientManager::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let api = Box::new(FleetApi::new(
            options
                .address("127.0.0.1:0".parse().expect("addr"))
                .run_id(RUN_ID),
        ));
        let bound = api
            .bind(clients.clone(), stop_rx.map(|_| ()).boxed())
            .await
            .expect("binds");
        let serve = tokio::spawn(async move {
            bound.serve.await.expect("serves");
        });
        Fleet {
            addr: bound.local_addr,
            clients,
            stop: Some(stop_tx),
            serve,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.serve)
            .await
            .expect("stops in time")
            .expect("serve task did not panic");
    }
}

fn fab_app() -> FleetApp {
    FleetApp::new(
        Bytes::from_static(b"not really a zip"),
        "flower-rs/t",
        "1.0.0",
    )
}

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: HeaderMap,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let mut request = request.body(Full::new(Bytes::from(body))).expect("request");
    request.headers_mut().extend(headers);
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered in time")
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

async fn call(
    addr: SocketAddr,
    key: &NodeSigningKey,
    rpc: &str,
    body: Vec<u8>,
) -> (StatusCode, Bytes) {
    let headers = key.signed_headers(SystemTime::now());
    send(
        addr,
        Method::POST,
        &format!("/v1/fleet/{rpc}"),
        headers,
        Some("application/protobuf"),
        body,
    )
    .await
}

fn allowed(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 401 | 403 | 503)
}

async fn register_and_activate(addr: SocketAddr, key: &NodeSigningKey) -> u64 {
    let pem = key.public_key().to_pem().into_bytes();
    let (status, body) = call(
        addr,
        key,
        "register-node",
        pb::RegisterNodeFleetRequest {
            public_key: pem.clone().into(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let registered = pb::RegisterNodeFleetResponse::decode(body)
        .expect("decodes")
        .node_id;
    let (status, body) = call(
        addr,
        key,
        "activate-node",
        pb::ActivateNodeRequest {
            public_key: pem.into(),
            heartbeat_interval: 30.0,
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let node_id = pb::ActivateNodeResponse::decode(body)
        .expect("decodes")
        .node_id;
    assert_eq!(node_id, registered);
    node_id
}

fn node(node_id: u64) -> Option<pb::Node> {
    Some(pb::Node { node_id })
}

#[tokio::test]
async fn a_signed_node_registers_and_reads_the_run() {
    let fleet = Fleet::start(FleetOptions::new(fab_app()).insecure()).await;
    let key = NodeSigningKey::generate(NodeKeyCurve::P384);
    let node_id = register_and_activate(fleet.addr, &key).await;
    assert_eq!(fleet.clients.len(), 1, "an active node is a client");
    let metrics = fleet.clients.metrics().encode();
    for line in [
        "flower_fleet_nodes_online 1.0",
        "flower_clients_connected{transport=\"fleet-api\"} 1",
        "flower_fleet_objects 0.0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    let received: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("flower_bytes_received_total{transport=\"fleet-api\"} "))
        .and_then(|v| v.parse().ok())
        .expect("fleet-api bytes received");
    assert!(received > 0.0, "register and activate requests counted");
    let (status, body) = call(
        fleet.addr,
        &key,
        "get-run",
        pb::GetRunRequest {
            node: node(node_id),
            run_id: RUN_ID,
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let run = pb::GetRunResponse::decode(body)
        .expect("decodes")
        .run
        .expect("run");
    assert_eq!(
        (run.run_id, run.fab_id.as_str(), run.fab_version.as_str()),
        (RUN_ID, "flower-rs/t", "1.0.0")
    );
    let fab = fab_app();
    let (status, body) = call(
        fleet.addr,
        &key,
        "get-fab",
        pb::GetFabRequest {
            node: node(node_id),
            hash_str: fab.fab_hash.clone(),
            run_id: RUN_ID,
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let got = pb::GetFabResponse::decode(body)
        .expect("decodes")
        .fab
        .expect("fab");
    assert_eq!(got.content, fab.fab);
    // Heartbeat, no message yet, deactivate, unregister.
    let (status, body) = call(
        fleet.addr,
        &key,
        "send-node-heartbeat",
        pb::SendNodeHeartbeatRequest {
            node: node(node_id),
            heartbeat_interval: 30.0,
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        pb::SendNodeHeartbeatResponse::decode(body)
            .expect("decodes")
            .success
    );
    let (status, body) = call(
        fleet.addr,
        &key,
        "pull-messages",
        pb::PullMessagesRequest {
            node: node(node_id),
            message_ids: vec![],
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(pb::PullMessagesResponse::decode(body)
        .expect("decodes")
        .messages_list
        .is_empty());
    let (status, _) = call(
        fleet.addr,
        &key,
        "deactivate-node",
        pb::DeactivateNodeRequest { node_id }.encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fleet.clients.len(), 0, "a deactivated node is no client");
    let (status, _) = call(
        fleet.addr,
        &key,
        "unregister-node",
        pb::UnregisterNodeFleetRequest { node_id }.encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    fleet.stop().await;
}

#[tokio::test]
async fn hostile_requests_get_only_survivable_statuses() {
    let fleet = Fleet::start(
        FleetOptions::new(fab_app())
            .insecure()
            .max_request_bytes(64 * 1024),
    )
    .await;
    let addr = fleet.addr;
    let key = NodeSigningKey::generate(NodeKeyCurve::P256);
    let other = NodeSigningKey::generate(NodeKeyCurve::P384);
    let node_id = register_and_activate(addr, &key).await;

    // Off the Fleet paths: 404.
    let (status, _) = send(
        addr,
        Method::POST,
        "/v1/fleet/nope",
        HeaderMap::new(),
        None,
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(addr, Method::GET, "/", HeaderMap::new(), None, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for path in PATHS {
        let url = format!("/v1/fleet/{path}");
        // No signature: 401 with flwr's message.
        let (status, body) = send(
            addr,
            Method::POST,
            &url,
            HeaderMap::new(),
            Some("application/protobuf"),
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(String::from_utf8_lossy(&body).contains("Invalid SuperNode authentication"));
        // A signature by another key under this key's header: 401.
        let mut forged = key.signed_headers(SystemTime::now());
        let theirs = other.signed_headers(SystemTime::now());
        forged.insert("flwr-signature", theirs["flwr-signature"].clone());
        let (status, _) = send(
            addr,
            Method::POST,
            &url,
            forged,
            Some("application/protobuf"),
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        // An old timestamp: 401.
        let stale = key.signed_headers(SystemTime::now() - Duration::from_secs(400));
        let (status, _) = send(
            addr,
            Method::POST,
            &url,
            stale,
            Some("application/protobuf"),
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        // Wrong method, wrong content type, garbage, oversized: 403.
        let signed = || key.signed_headers(SystemTime::now());
        let (status, _) = send(addr, Method::GET, &url, signed(), None, vec![]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, body) = send(
            addr,
            Method::POST,
            &url,
            signed(),
            Some("application/json"),
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(String::from_utf8_lossy(&body).contains("1002"), "{body:?}");
        let (status, _) = send(
            addr,
            Method::POST,
            &url,
            signed(),
            Some("application/protobuf"),
            vec![0xff; 7],
        )
        .await;
        assert!(allowed(status), "{path}: {status}");
        let (status, _) = send(
            addr,
            Method::POST,
            &url,
            signed(),
            Some("application/protobuf"),
            vec![0; 100 * 1024],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        // Random bytes, signed: never a status that kills a SuperNode.
        for seed in 0..20u8 {
            let junk: Vec<u8> = (0..(seed as usize * 13))
                .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
                .collect();
            let (status, _) = call(addr, &key, path, junk).await;
            assert!(allowed(status), "{path} seed {seed}: {status}");
        }
    }

    // Someone else's node id: 401. The other key's own register works.
    let (status, _) = call(
        addr,
        &other,
        "pull-messages",
        pb::PullMessagesRequest {
            node: node(node_id),
            message_ids: vec![],
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A signature by another key of the same curve (the forged ones above
    // do not even parse for P-256): 401.
    let mut forged = key.signed_headers(SystemTime::now());
    let same_curve = NodeSigningKey::generate(NodeKeyCurve::P256).signed_headers(SystemTime::now());
    forged.insert("flwr-signature", same_curve["flwr-signature"].clone());
    let (status, _) = send(
        addr,
        Method::POST,
        "/v1/fleet/pull-messages",
        forged,
        Some("application/protobuf"),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Each refusal is counted by its reason.
    let metrics = fleet.clients.metrics().encode();
    let refusals = |reason: &str| -> f64 {
        let prefix = format!("flower_fleet_node_auth_refusals_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let paths = PATHS.len() as f64;
    assert_eq!(refusals("missing"), paths, "{metrics}");
    assert_eq!(refusals("malformed"), paths, "{metrics}");
    assert_eq!(refusals("bad_signature"), 1.0, "{metrics}");
    assert_eq!(refusals("stale"), paths, "{metrics}");
    assert!(refusals("unbound") >= 1.0, "{metrics}");
    // Register with a body key that is not the signer: 401.
    let (status, _) = call(
        addr,
        &other,
        "register-node",
        pb::RegisterNodeFleetRequest {
            public_key: key.public_key().to_pem().into_bytes().into(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A heartbeat interval out of [10, 1800]: 403, not flwr's 400.
    let (status, _) = call(
        addr,
        &key,
        "send-node-heartbeat",
        pb::SendNodeHeartbeatRequest {
            node: node(node_id),
            heartbeat_interval: 5.0,
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Bad object ids and unknown sessions: found/stored false, 200.
    let (status, body) = call(
        addr,
        &key,
        "pull-object",
        pb::PullObjectRequest {
            node: node(node_id),
            run_id: RUN_ID,
            object_id: "../../etc/passwd".into(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !pb::PullObjectResponse::decode(body)
            .expect("decodes")
            .object_found
    );
    let (status, body) = call(
        addr,
        &key,
        "push-object",
        pb::PushObjectRequest {
            node: node(node_id),
            run_id: RUN_ID,
            object_id: "ab".repeat(32),
            object_content: vec![1, 2, 3].into(),
            session_id: "nope".into(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !pb::PushObjectResponse::decode(body)
            .expect("decodes")
            .stored
    );
    // Another run, a wrong FAB hash: 403.
    let (status, _) = call(
        addr,
        &key,
        "get-run",
        pb::GetRunRequest {
            node: node(node_id),
            run_id: RUN_ID + 1,
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        addr,
        &key,
        "get-fab",
        pb::GetFabRequest {
            node: node(node_id),
            hash_str: "0".repeat(64),
            run_id: RUN_ID,
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A reply to nothing: flwr's empty answer.
    let reply = pb::Message {
        metadata: Some(pb::Metadata {
            run_id: RUN_ID,
            message_id: "cd".repeat(32),
            src_node_id: node_id,
            reply_to_message_id: "ef".repeat(32),
            ..Default::default()
        }),
        content: None,
        error: None,
    };
    let tree = pb::ObjectTree {
        object_id: "cd".repeat(32),
        children: vec![],
    };
    let (status, body) = call(
        addr,
        &key,
        "push-messages",
        pb::PushMessagesRequest {
            node: node(node_id),
            messages_list: vec![reply],
            message_object_trees: vec![tree],
            clientapp_runtime_list: vec![],
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(pb::PushMessagesResponse::decode(body)
        .expect("decodes")
        .objects_to_push
        .is_empty());
    fleet.stop().await;
}

#[tokio::test]
async fn supernode_auth_admits_only_authorized_keys_and_revocation_removes_the_node() {
    let good = NodeSigningKey::generate(NodeKeyCurve::P256);
    let wrong = NodeSigningKey::generate(NodeKeyCurve::P256);
    let keys = AuthorizedNodeKeys::new([good.public_key().clone()]);
    let fleet = Fleet::start(
        FleetOptions::new(fab_app())
            .insecure()
            .supernode_auth(keys.clone()),
    )
    .await;
    let addr = fleet.addr;
    // Self-registration is off: 401 with flwr's code 2001 and wording.
    let (status, body) = call(
        addr,
        &good,
        "register-node",
        pb::RegisterNodeFleetRequest {
            public_key: good.public_key().to_pem().into_bytes().into(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&body).contains("2001"), "{body:?}");
    // The authorized key activates directly; the wrong key is refused.
    let activate = |k: &NodeSigningKey| {
        pb::ActivateNodeRequest {
            public_key: k.public_key().to_pem().into_bytes().into(),
            heartbeat_interval: 30.0,
        }
        .encode_to_vec()
    };
    let (status, _) = call(addr, &wrong, "activate-node", activate(&wrong)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(addr, &good, "activate-node", activate(&good)).await;
    assert_eq!(status, StatusCode::OK);
    let node_id = pb::ActivateNodeResponse::decode(body)
        .expect("decodes")
        .node_id;
    assert_eq!(fleet.clients.len(), 1);
    // Removing the key removes the node: it is no client, its calls get 401.
    keys.replace(Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !fleet.clients.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fleet.clients.len(), 0);
    let (status, _) = call(
        addr,
        &good,
        "pull-messages",
        pb::PullMessagesRequest {
            node: node(node_id),
            message_ids: vec![],
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    fleet.stop().await;
}

fn heartbeat(node_id: u64) -> Vec<u8> {
    pb::SendNodeHeartbeatRequest {
        node: node(node_id),
        heartbeat_interval: 30.0,
    }
    .encode_to_vec()
}

/// A server restart (a second Fleet API that never saw the node): a node
/// signing with its key and naming the id derived from it is taken back at
/// once; any other id is refused with 401.
#[tokio::test]
async fn after_a_restart_a_node_is_readmitted_by_its_key_derived_id() {
    let key = NodeSigningKey::generate(NodeKeyCurve::P384);
    let derived = flower_fleet::state::node_id_for_key(key.public_key().sec1_bytes());
    let first = Fleet::start(FleetOptions::new(fab_app()).insecure()).await;
    let node_id = register_and_activate(first.addr, &key).await;
    assert_eq!(node_id, derived);
    first.stop().await;

    let second = Fleet::start(FleetOptions::new(fab_app()).insecure()).await;
    let addr = second.addr;
    assert_eq!(second.clients.len(), 0);
    let (status, _) = call(addr, &key, "send-node-heartbeat", heartbeat(node_id + 1)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Deactivating an unknown node does not admit it.
    let (status, _) = call(
        addr,
        &key,
        "deactivate-node",
        pb::DeactivateNodeRequest { node_id }.encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(second.clients.len(), 0);
    let (status, body) = call(addr, &key, "send-node-heartbeat", heartbeat(node_id)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        pb::SendNodeHeartbeatResponse::decode(body)
            .expect("decodes")
            .success
    );
    assert_eq!(second.clients.len(), 1, "the node is a client again");
    let (status, _) = call(
        addr,
        &key,
        "pull-messages",
        pb::PullMessagesRequest {
            node: node(node_id),
            message_ids: vec![],
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Another key naming this node's id is still refused.
    let other = NodeSigningKey::generate(NodeKeyCurve::P384);
    let (status, _) = call(addr, &other, "send-node-heartbeat", heartbeat(node_id)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    second.stop().await;
}

/// With supernode auth, only an authorized key is re-admitted after a
/// restart.
#[tokio::test]
async fn after_a_restart_supernode_auth_readmits_only_authorized_keys() {
    let good = NodeSigningKey::generate(NodeKeyCurve::P256);
    let wrong = NodeSigningKey::generate(NodeKeyCurve::P521);
    let keys = AuthorizedNodeKeys::new([good.public_key().clone()]);
    let fleet = Fleet::start(FleetOptions::new(fab_app()).insecure().supernode_auth(keys)).await;
    let addr = fleet.addr;
    let wrong_id = flower_fleet::state::node_id_for_key(wrong.public_key().sec1_bytes());
    let (status, _) = call(addr, &wrong, "send-node-heartbeat", heartbeat(wrong_id)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(fleet.clients.len(), 0);
    let good_id = flower_fleet::state::node_id_for_key(good.public_key().sec1_bytes());
    let (status, _) = call(addr, &good, "send-node-heartbeat", heartbeat(good_id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fleet.clients.len(), 1);
    fleet.stop().await;
}
