//! The gRPC Fleet API spoken as SuperNodes of flwr 1.13-1.22 speak it
//! (`CreateNode`, `Ping`, `PullTaskIns`, ...) by a tonic client: who may
//! join, which calls are bound to which node, and hostile requests answered
//! with a status, never a panic. The runs themselves are covered by the
//! e2e test with stock SuperNodes (`older_supernodes_join_over_grpc`).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flower_auth::node::{AuthorizedNodeKeys, NodeKeyCurve, NodeSigningKey};
use flower_fleet::state::node_id_for_key;
use flower_fleet::{FleetApi, FleetApp, FleetOptions};
use flower_proto as pb;
use flower_server::{ClientManager, Transport};
use futures::FutureExt;
use pb::fleet_client::FleetClient;
use tonic::transport::Channel;
use tonic::{Code, Request};

const RUN_ID: u64 = 77;

struct Grpc {
    client: FleetClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serve: tokio::task::JoinHandle<()>,
}

impl Grpc {
    async fn start(options: FleetOptions) -> Self {
        let port = flower_testkit::free_port();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let api = Box::new(FleetApi::new(
            options
                .address("127.0.0.1:0".parse().expect("addr"))
                .grpc_address(format!("127.0.0.1:{port}").parse().expect("addr"))
                .run_id(RUN_ID),
        ));
        let bound = api
            .bind(ClientManager::default(), stop_rx.map(|_| ()).boxed())
            .await
            .expect("binds");
        let serve = tokio::spawn(async move {
            bound.serve.await.expect("serves");
        });
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            FleetClient::connect(format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("connects in time")
        .expect("connects");
        Grpc {
            client,
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

fn options() -> FleetOptions {
    FleetOptions::new(FleetApp::new(
        Bytes::from_static(b"not really a zip"),
        "flower-rs/t",
        "1.0.0",
    ))
    .insecure()
}

/// The status code of a refused call (`Ok(())` when it went through).
fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<(), Code> {
    result.map(drop).map_err(|s| s.code())
}

/// `CreateNode` as flwr 1.13-1.22 SuperNodes send it.
fn create_node() -> pb::CreateNodeRequest {
    pb::CreateNodeRequest {
        ping_interval: 30.0,
    }
}

/// `Ping` of `node_id`, as flwr 1.13-1.19 SuperNodes send it.
fn ping(node_id: u64) -> pb::PingRequest {
    pb::PingRequest {
        node: node(node_id),
        ping_interval: 30.0,
    }
}

fn node(node_id: u64) -> Option<pb::LegacyNode> {
    Some(pb::LegacyNode {
        node_id,
        anonymous: false,
    })
}

/// `request` signed by `key` as flwr 1.16+ signs gRPC calls (`names`:
/// 1.16+'s or 1.15's metadata names).
fn signed<T>(
    key: &NodeSigningKey,
    request: T,
    names: (&'static str, &'static str, &'static str),
) -> Request<T> {
    let headers = key.signed_headers(SystemTime::now());
    let timestamp = headers
        .get("flwr-timestamp")
        .and_then(|v| v.to_str().ok())
        .expect("timestamp")
        .to_owned();
    let mut request = Request::new(request);
    let metadata = request.metadata_mut();
    metadata.insert_bin(
        tonic::metadata::BinaryMetadataKey::from_static(names.0),
        tonic::metadata::BinaryMetadataValue::from_bytes(key.public_key().to_pem().as_bytes()),
    );
    metadata.insert_bin(
        tonic::metadata::BinaryMetadataKey::from_static(names.1),
        tonic::metadata::BinaryMetadataValue::from_bytes(&key.sign_sha256(timestamp.as_bytes())),
    );
    metadata.insert(
        tonic::metadata::AsciiMetadataKey::from_static(names.2),
        timestamp.parse().expect("ascii"),
    );
    request
}

const NAMES_116: (&str, &str, &str) = (
    "flwr-public-key-bin",
    "flwr-signature-bin",
    "flwr-timestamp",
);
const NAMES_115: (&str, &str, &str) = ("public-key-bin", "signature-bin", "timestamp");

#[tokio::test]
async fn keyless_nodes_of_flwr_1_13_join_ping_and_leave() {
    let mut grpc = Grpc::start(options()).await;
    let c = &mut grpc.client;
    let created = c
        .create_node(create_node())
        .await
        .expect("CreateNode")
        .into_inner();
    let node_id = created.node.expect("node").node_id;
    assert!(node_id > 1, "{node_id}");
    let pong = c.ping(ping(node_id)).await.expect("Ping").into_inner();
    assert!(pong.success);
    // No instruction queued: empty lists, in both inline eras' forms.
    let pulled = c
        .pull_task_ins(pb::PullTaskInsRequest {
            node: node(node_id),
            task_ids: Vec::new(),
        })
        .await
        .expect("PullTaskIns")
        .into_inner();
    assert!(pulled.task_ins_list.is_empty());
    let pulled = c
        .pull_messages(pb::PullMessagesRequest {
            node: Some(pb::Node { node_id }),
            message_ids: Vec::new(),
        })
        .await
        .expect("PullMessages")
        .into_inner();
    assert!(pulled.messages_list.is_empty());
    // GetRun, then GetFab by the hash alone (flwr 1.13 names no run).
    let run = c
        .get_run(pb::GetRunRequest {
            node: Some(pb::Node { node_id }),
            run_id: RUN_ID,
        })
        .await
        .expect("GetRun")
        .into_inner()
        .run
        .expect("run");
    assert_eq!((run.run_id, run.fab_id.as_str()), (RUN_ID, "flower-rs/t"));
    let fab = c
        .get_fab(pb::GetFabRequest {
            node: Some(pb::Node { node_id }),
            hash_str: run.fab_hash.clone(),
            run_id: 0,
        })
        .await
        .expect("GetFab")
        .into_inner()
        .fab
        .expect("fab");
    assert_eq!(fab.content.as_ref(), b"not really a zip");
    let wrong = c
        .get_fab(pb::GetFabRequest {
            node: Some(pb::Node { node_id }),
            hash_str: "0".repeat(64),
            run_id: 0,
        })
        .await;
    assert_eq!(code(wrong), Err(Code::PermissionDenied));
    // A reply to nothing delivered is dropped, as flwr drops it.
    let pushed = c
        .push_task_res(pb::PushTaskResRequest {
            node: node(node_id),
            task_res_list: vec![pb::TaskRes::default()],
        })
        .await
        .expect("PushTaskRes")
        .into_inner();
    assert!(pushed.results.is_empty());
    // Hostile requests: statuses, no panic.
    let empty = c
        .push_task_res(pb::PushTaskResRequest {
            node: node(node_id),
            task_res_list: Vec::new(),
        })
        .await;
    assert_eq!(code(empty), Err(Code::InvalidArgument));
    let garbage = c
        .push_messages(pb::PushMessagesWireRequest {
            node: node(node_id),
            messages_list: vec![Bytes::from_static(b"\xff\xff\xff")],
            ..Default::default()
        })
        .await;
    assert_eq!(code(garbage), Err(Code::InvalidArgument));
    // Another node's id, or one never created: unauthenticated.
    let stranger = c.ping(ping(node_id ^ 1)).await;
    assert_eq!(code(stranger), Err(Code::Unauthenticated));
    c.delete_node(pb::DeleteNodeRequest {
        node: node(node_id),
    })
    .await
    .expect("DeleteNode");
    let gone = c.ping(ping(node_id)).await;
    assert_eq!(code(gone), Err(Code::Unauthenticated));
    grpc.stop().await;
}

#[tokio::test]
async fn signed_nodes_of_flwr_1_15_to_1_22_are_bound_to_their_key() {
    let mut grpc = Grpc::start(options()).await;
    let c = &mut grpc.client;
    for names in [NAMES_116, NAMES_115] {
        let key = NodeSigningKey::generate(NodeKeyCurve::P256);
        let created = c
            .create_node(signed(&key, create_node(), names))
            .await
            .expect("CreateNode")
            .into_inner();
        let node_id = created.node.expect("node").node_id;
        // The id every self-registered node gets from its key.
        assert_eq!(node_id, node_id_for_key(key.public_key().sec1_bytes()));
        let signed_ping = |key: &NodeSigningKey| signed(key, ping(node_id), names);
        assert!(
            c.ping(signed_ping(&key))
                .await
                .expect("Ping")
                .into_inner()
                .success
        );
        // Signed by another key, or not signed: refused.
        let other = NodeSigningKey::generate(NodeKeyCurve::P256);
        let wrong = c.ping(signed_ping(&other)).await;
        assert_eq!(code(wrong), Err(Code::Unauthenticated));
        let unsigned = c.ping(ping(node_id)).await;
        assert_eq!(code(unsigned), Err(Code::Unauthenticated));
        // A heartbeat-era node (1.20-1.22) pulls through the 1.23+ handler.
        let beat = c
            .send_node_heartbeat(signed(
                &key,
                pb::SendNodeHeartbeatRequest {
                    node: Some(pb::Node { node_id }),
                    heartbeat_interval: 30.0,
                },
                names,
            ))
            .await
            .expect("SendNodeHeartbeat")
            .into_inner();
        assert!(beat.success);
        let pulled = c
            .pull_messages(signed(
                &key,
                pb::PullMessagesRequest {
                    node: Some(pb::Node { node_id }),
                    message_ids: Vec::new(),
                },
                names,
            ))
            .await
            .expect("PullMessages")
            .into_inner();
        assert!(pulled.messages_list.is_empty());
    }
    grpc.stop().await;
}

#[tokio::test]
async fn flwr_1_13_node_auth_and_keyless_nodes_under_supernode_auth_are_refused() {
    let mut grpc = Grpc::start(options()).await;
    // flwr 1.13/1.14 `--auth-supernode-*`: an HMAC scheme this server
    // cannot verify.
    let mut request = Request::new(create_node());
    request
        .metadata_mut()
        .insert("public-key", "QUJD".parse().expect("ascii"));
    let refused = grpc.client.create_node(request).await;
    assert_eq!(code(refused), Err(Code::Unauthenticated));
    grpc.stop().await;

    let authorized = NodeSigningKey::generate(NodeKeyCurve::P256);
    let keys = AuthorizedNodeKeys::new([authorized.public_key().clone()]);
    let mut grpc = Grpc::start(options().supernode_auth(keys)).await;
    let keyless = grpc.client.create_node(create_node()).await;
    assert_eq!(code(keyless), Err(Code::Unauthenticated));
    let stranger = NodeSigningKey::generate(NodeKeyCurve::P256);
    let unknown = grpc
        .client
        .create_node(signed(&stranger, create_node(), NAMES_116))
        .await;
    assert_eq!(code(unknown), Err(Code::Unauthenticated));
    let created = grpc
        .client
        .create_node(signed(&authorized, create_node(), NAMES_116))
        .await
        .expect("an authorized key joins")
        .into_inner();
    assert_eq!(
        created.node.map(|n| n.node_id),
        Some(node_id_for_key(authorized.public_key().sec1_bytes()))
    );
    grpc.stop().await;
}

/// The object id only a flwr 1.19 SuperNode pulls (the gRPC legacy layer's
/// probe): SHA-256 of this marker.
fn probe_id() -> String {
    flower_message::ObjectId::of(b"flower-rs: the object only a flwr 1.19 SuperNode pulls")
        .to_string()
}

#[tokio::test]
async fn a_node_that_pulls_the_flwr_1_19_probe_is_refused_and_removed() {
    let mut grpc = Grpc::start(options()).await;
    let c = &mut grpc.client;
    let key = NodeSigningKey::generate(NodeKeyCurve::P256);
    let node_id = c
        .create_node(signed(&key, create_node(), NAMES_116))
        .await
        .expect("CreateNode")
        .into_inner()
        .node
        .expect("node")
        .node_id;
    let beat = |key: &NodeSigningKey| {
        signed(
            key,
            pb::SendNodeHeartbeatRequest {
                node: Some(pb::Node { node_id }),
                heartbeat_interval: 30.0,
            },
            NAMES_116,
        )
    };
    assert!(
        c.send_node_heartbeat(beat(&key))
            .await
            .expect("SendNodeHeartbeat")
            .into_inner()
            .success
    );
    let pull = |key: &NodeSigningKey, object_id: String| {
        signed(
            key,
            pb::PullObjectRequest {
                node: Some(pb::Node { node_id }),
                run_id: RUN_ID,
                object_id,
            },
            NAMES_116,
        )
    };
    // Another object: the 1.23+ handler's answer (nothing found).
    let other = c
        .pull_object(pull(&key, "d".repeat(64)))
        .await
        .map(|r| r.into_inner().object_found);
    assert!(!matches!(&other, Err(s) if s.code() == Code::FailedPrecondition));
    let refused = c.pull_object(pull(&key, probe_id())).await;
    let status = refused.map(|_| ()).expect_err("the probe is refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("flwr 1.19"),
        "{}",
        status.message()
    );
    // Every later call of the node: the same refusal.
    let again = c.send_node_heartbeat(beat(&key)).await;
    assert_eq!(code(again), Err(Code::FailedPrecondition));
    let confirm = c
        .confirm_message_received(signed(
            &key,
            pb::ConfirmMessageReceivedRequest {
                node: Some(pb::Node { node_id }),
                run_id: RUN_ID,
                message_object_id: "a".repeat(64),
            },
            NAMES_116,
        ))
        .await;
    assert_eq!(code(confirm), Err(Code::FailedPrecondition));
    let pulled = c
        .pull_messages(signed(
            &key,
            pb::PullMessagesRequest {
                node: Some(pb::Node { node_id }),
                message_ids: Vec::new(),
            },
            NAMES_116,
        ))
        .await;
    assert_eq!(code(pulled), Err(Code::FailedPrecondition));
    // It may still say goodbye (flwr 1.19 does); then it is forgotten (a
    // signed call is then the 1.23+ handler's: its key-derived id is
    // re-admitted, as after a server restart).
    c.delete_node(signed(
        &key,
        pb::DeleteNodeRequest {
            node: node(node_id),
        },
        NAMES_116,
    ))
    .await
    .expect("DeleteNode");
    let gone = c.send_node_heartbeat(beat(&key)).await;
    assert!(gone.is_ok(), "{gone:?}");
    grpc.stop().await;
}
