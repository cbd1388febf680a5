//! Link-state unit tests: injected time, no I/O.

use std::sync::Arc;

use bytes::Bytes;
use flower_core::{FitIns, Parameters, ServerMessage};
use flower_message::{deflate, ArrayRecord, Deflated, Message, Metadata, MetricRecord, RecordDict};
use flower_server::OutgoingMessage;
use tokio::sync::oneshot;

use super::*;
use crate::convert::ContentOptions;
use crate::outgoing::SharedContent;

const T0: f64 = 1_000_000.0;

fn state() -> LinkState {
    LinkState::new(StateConfig::new(42), 7)
}

fn online(s: &mut LinkState, key: &[u8]) -> u64 {
    let id = s.register(key).expect("register");
    assert_eq!(s.activate(key, 30.0, false, T0).expect("activate"), id);
    id
}

fn content(model_bytes: usize) -> SharedContent {
    let message = OutgoingMessage::for_round(
        ServerMessage::Fit(FitIns {
            parameters: Parameters {
                tensors: vec![Bytes::from(vec![3u8; model_bytes])],
                tensor_type: "raw".into(),
            },
            config: Default::default(),
        }),
        1,
    );
    SharedContent::build(&message, &ContentOptions::default(), &Default::default())
        .expect("content")
}

fn reply_to(instruction: &Instruction, node_id: u64, value: u8) -> (pb::Message, Deflated) {
    let metadata = Metadata {
        run_id: 42,
        src_node_id: node_id,
        dst_node_id: SUPERLINK_NODE_ID,
        reply_to_message_id: instruction.tree.id.to_string(),
        message_type: "train".into(),
        ttl: 60.0,
        created_at: T0,
        ..Metadata::default()
    };
    let array = flower_message::Array {
        dtype: "uint8".into(),
        shape: vec![4],
        stype: "raw".into(),
        data: Bytes::from(vec![value; 4]),
    };
    let content = RecordDict::new()
        .with("arrays", ArrayRecord::new().with("0", array))
        .with("metrics", MetricRecord::new().with("num-examples", 5i64));
    let d = deflate(&Message::new(metadata, content));
    let wire = pb::Message {
        metadata: Some(pb::Metadata {
            run_id: 42,
            message_id: d.root.to_string(),
            src_node_id: node_id,
            dst_node_id: SUPERLINK_NODE_ID,
            reply_to_message_id: instruction.tree.id.to_string(),
            ..pb::Metadata::default()
        }),
        content: Some(pb::RecordDict::default()),
        error: None,
    };
    (wire, d)
}

#[test]
fn nodes_register_activate_heartbeat_and_go_silent() {
    let mut s = state();
    let id = online(&mut s, b"k1");
    assert_eq!(s.take_events(), [NodeEvent::Online(id)]);
    assert_eq!(s.register(b"k1"), Err(StateError::KeyInUse));
    assert_eq!(
        s.heartbeat(id, 9.0, T0),
        Err(StateError::BadHeartbeatInterval(9.0))
    );
    assert_eq!(
        s.activate(b"k2", 30.0, false, T0),
        Err(StateError::UnknownKey)
    );
    assert_eq!(s.heartbeat(12345, 30.0, T0), Ok(false));
    // online_until = now + 2 × interval.
    assert_eq!(s.heartbeat(id, 10.0, T0 + 5.0), Ok(true));
    s.tick(T0 + 24.9);
    assert_eq!(s.node_status(id), Some(NodeStatus::Online));
    s.tick(T0 + 25.0);
    assert_eq!(s.node_status(id), Some(NodeStatus::Offline));
    assert_eq!(s.take_events(), [NodeEvent::Offline(id)]);
    // A heartbeat brings it back.
    assert_eq!(s.heartbeat(id, 30.0, T0 + 26.0), Ok(true));
    assert_eq!(s.take_events(), [NodeEvent::Online(id)]);
    s.deactivate(id, T0 + 27.0).expect("deactivate");
    assert_eq!(
        s.deactivate(id, T0 + 27.0),
        Err(StateError::BadTransition(id))
    );
    s.unregister(id).expect("unregister");
    assert_eq!(s.node_for_key(b"k1"), None);
    assert_eq!(s.take_events(), [NodeEvent::Offline(id)]);
}

#[test]
fn a_silent_node_fails_its_exchange_within_its_patience() {
    let mut s = state();
    let id = online(&mut s, b"k");
    let c = content(16);
    let (tx, mut rx) = oneshot::channel();
    s.enqueue(id, c.instruction(42, id, 3600.0, T0), tx, T0)
        .expect("enqueue");
    s.tick(T0 + 59.0);
    assert!(rx.try_recv().is_err(), "still within patience");
    s.tick(T0 + 60.0);
    assert!(matches!(rx.try_recv(), Ok(Err(ExchangeFailure::NodeSilent(n))) if n == id));
    assert!(s.store().is_empty(), "objects released");
    // An offline node takes no instruction.
    let (tx, _rx) = oneshot::channel();
    assert_eq!(
        s.enqueue(id, c.instruction(42, id, 3600.0, T0), tx, T0 + 61.0),
        Err(StateError::NodeNotOnline(id))
    );
}

#[test]
fn pull_hands_out_one_undelivered_unexpired_instruction() {
    let mut s = state();
    let id = online(&mut s, b"k");
    let c = content(16);
    assert!(s.pull_messages(id, T0).is_none());
    let (tx, mut rx) = oneshot::channel();
    let instruction = c.instruction(42, id, 10.0, T0);
    let root = instruction.tree.id;
    s.enqueue(id, instruction, tx, T0).expect("enqueue");
    let (tx2, _rx2) = oneshot::channel();
    assert_eq!(
        s.enqueue(id, c.instruction(42, id, 10.0, T0), tx2, T0),
        Err(StateError::DuplicateMessage(root.to_string()))
    );
    let (wire, tree) = s.pull_messages(id, T0 + 1.0).expect("one message");
    assert_eq!(tree.object_id, root.to_string());
    assert_eq!(wire.metadata.map(|m| m.message_id), Some(root.to_string()));
    assert!(s.pull_messages(id, T0 + 1.0).is_none(), "delivered once");
    // The root and the model are pullable until the TTL.
    assert!(matches!(
        s.pull_object(42, &root.to_string()),
        Ok(Lookup::Found(_))
    ));
    assert_eq!(
        s.pull_object(43, &root.to_string()),
        Err(StateError::RunNotRunning(43))
    );
    assert_eq!(s.pull_object(42, "nonsense"), Ok(Lookup::NotFound));
    s.tick(T0 + 10.0);
    assert!(matches!(rx.try_recv(), Ok(Err(ExchangeFailure::Expired))));
    assert!(s.store().is_empty());
    // An instruction already expired when pulled is dropped, not handed out.
    let (tx, mut rx) = oneshot::channel();
    s.enqueue(id, c.instruction(42, id, 1.0, T0 + 20.0), tx, T0 + 20.0)
        .expect("enqueue");
    assert!(s.pull_messages(id, T0 + 21.0).is_none());
    assert!(matches!(rx.try_recv(), Ok(Err(ExchangeFailure::Expired))));
}

#[test]
fn the_broadcast_model_is_stored_once_and_collected() {
    let mut s = state();
    let model = 100_000;
    let c = Arc::new(content(model));
    let nodes: Vec<u64> = (0..4)
        .map(|i| online(&mut s, format!("key{i}").as_bytes()))
        .collect();
    let mut waiters = Vec::new();
    let mut roots = Vec::new();
    for &n in &nodes {
        let (tx, rx) = oneshot::channel();
        let ins = c.instruction(42, n, 3600.0, T0);
        roots.push(ins.tree.id);
        s.enqueue(n, ins, tx, T0).expect("enqueue");
        waiters.push(rx);
    }
    let held = s.store().content_bytes();
    assert!(
        held > model && held < model + 4 * 1024,
        "stored once: {held}"
    );
    // Confirming releases a node's hold; the model stays for the others.
    for (i, &n) in nodes.iter().enumerate().take(3) {
        assert!(s.pull_messages(n, T0).is_some());
        s.confirm(n, 42, &roots[i].to_string()).expect("confirm");
    }
    assert!(s.store().content_bytes() > model);
    assert!(s.pull_messages(nodes[3], T0).is_some());
    s.confirm(nodes[3], 42, &roots[3].to_string())
        .expect("confirm");
    assert_eq!(
        s.store().content_bytes(),
        0,
        "collected after the last pull"
    );
    assert_eq!(s.exchanges_in_flight(), 4, "still waiting for replies");
    s.finish_run();
    for mut rx in waiters {
        assert!(matches!(
            rx.try_recv(),
            Ok(Err(ExchangeFailure::RunFinished))
        ));
    }
    assert_eq!(
        s.pull_object(42, &roots[0].to_string()),
        Err(StateError::RunNotRunning(42))
    );
    assert_eq!(s.check_running(42), Err(StateError::RunNotRunning(42)));
}

#[test]
fn replies_are_preregistered_pushed_and_completed() {
    let mut s = state();
    let a = online(&mut s, b"a");
    let b = online(&mut s, b"b");
    let c = content(16);
    let ia = c.instruction(42, a, 3600.0, T0);
    let ib = c.instruction(42, b, 3600.0, T0);
    let (txa, mut rxa) = oneshot::channel();
    let (txb, mut rxb) = oneshot::channel();
    s.enqueue(a, ia.clone(), txa, T0).expect("enqueue");
    s.enqueue(b, ib.clone(), txb, T0).expect("enqueue");
    s.pull_messages(a, T0);
    s.pull_messages(b, T0);

    // A reply to someone else's instruction is ignored (flwr's empty answer).
    let (wrong, dw) = reply_to(&ib, a, 1);
    let res = s
        .push_messages(a, &wrong, &dw.tree.to_proto(), T0)
        .expect("push");
    assert!(res.objects_to_push.is_empty() && res.session_id.is_empty());

    let (wire, d) = reply_to(&ia, a, 1);
    let res = s
        .push_messages(a, &wire, &d.tree.to_proto(), T0)
        .expect("push");
    assert_eq!(res.objects_to_push.len(), d.objects.len());
    // Objects outside the session, or from another node, are refused.
    let (first_id, first) = d
        .objects
        .get_index(0)
        .map(|(k, v)| (*k, v.clone()))
        .expect("one");
    assert_eq!(
        s.push_object(b, 42, &res.session_id, &first_id, first.clone()),
        Ok(PushOutcome::Refused)
    );
    assert!(s.is_pending(a, &res.session_id, &first_id));
    let mut last = PushOutcome::Refused;
    for (id, content) in &d.objects {
        last = s
            .push_object(a, 42, &res.session_id, id, content.clone())
            .expect("push object");
    }
    assert_eq!(last, PushOutcome::Completed);
    let reply = rxa.try_recv().expect("outcome").expect("reply");
    let m = {
        let (tree, source) = reply.into_source();
        flower_message::inflate(&tree, &source, &Limits::default())
    }
    .expect("inflate");
    assert_eq!(m.metadata.src_node_id, a);
    // Pushing again after completion stores nothing.
    assert_eq!(
        s.push_object(a, 42, &res.session_id, &first_id, first),
        Ok(PushOutcome::Refused)
    );

    // Node b's identical content needs only what is not stored: while b's
    // preregistration holds them, objects shared with a pending reply are
    // not asked twice.
    let (wire, d) = reply_to(&ib, b, 2);
    let res = s
        .push_messages(b, &wire, &d.tree.to_proto(), T0)
        .expect("push");
    assert_eq!(res.objects_to_push.len(), d.objects.len());
    // The session expires after 180 s.
    s.heartbeat(b, 1800.0, T0 + 1.0).expect("heartbeat");
    s.tick(T0 + 180.0);
    assert!(matches!(
        rxb.try_recv(),
        Ok(Err(ExchangeFailure::SessionExpired))
    ));
    assert!(
        s.store().is_empty(),
        "everything released: {:?}",
        s.store().len()
    );
}

#[test]
fn an_invalid_object_fails_the_exchange_at_once() {
    let mut s = state();
    let a = online(&mut s, b"a");
    let c = content(16);
    let ia = c.instruction(42, a, 3600.0, T0);
    let (tx, mut rx) = oneshot::channel();
    s.enqueue(a, ia.clone(), tx, T0).expect("enqueue");
    s.pull_messages(a, T0);
    let (wire, d) = reply_to(&ia, a, 1);
    let res = s
        .push_messages(a, &wire, &d.tree.to_proto(), T0)
        .expect("push");
    s.reject_reply(a, &res.session_id, "hash mismatch".into());
    assert!(matches!(
        rx.try_recv(),
        Ok(Err(ExchangeFailure::InvalidObject(_)))
    ));
    assert!(s.store().is_empty());
}

#[test]
fn supernode_auth_admits_only_authorized_keys_and_revocation_fails_work() {
    let mut config = StateConfig::new(42);
    config.enable_supernode_auth = true;
    let mut s = LinkState::new(config, 1);
    assert_eq!(s.register(b"k"), Err(StateError::RegistrationDisabled));
    assert_eq!(
        s.activate(b"k", 30.0, false, T0),
        Err(StateError::UnknownKey)
    );
    let id = s
        .activate(b"k", 30.0, true, T0)
        .expect("pre-registered key");
    assert_eq!(s.unregister(id), Err(StateError::UnregistrationDisabled));
    let c = content(16);
    let (tx, mut rx) = oneshot::channel();
    s.enqueue(id, c.instruction(42, id, 3600.0, T0), tx, T0)
        .expect("enqueue");
    assert_eq!(s.revoke_key(b"k"), Some(id));
    assert!(matches!(rx.try_recv(), Ok(Err(ExchangeFailure::NodeRemoved(n))) if n == id));
    assert_eq!(
        s.take_events(),
        [NodeEvent::Online(id), NodeEvent::Offline(id)]
    );
    assert_eq!(s.node_for_key(b"k"), None);
    assert_eq!(
        s.activate(b"k", 30.0, false, T0),
        Err(StateError::UnknownKey)
    );
}

#[test]
fn a_cancelled_exchange_releases_its_objects() {
    let mut s = state();
    let a = online(&mut s, b"a");
    let (tx, rx) = oneshot::channel();
    let ex = s
        .enqueue(a, content(1000).instruction(42, a, 3600.0, T0), tx, T0)
        .expect("enqueue");
    drop(rx);
    s.cancel(ex);
    assert!(s.store().is_empty());
    assert!(s.pull_messages(a, T0).is_none());
}

#[test]
fn node_ids_are_derived_from_keys() {
    // The first 8 bytes of SHA-256(key), big-endian, then >> 1.
    let digest = ObjectId::of(b"k1");
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest.as_bytes()[..8]);
    assert_eq!(node_id_for_key(b"k1"), u64::from_be_bytes(head) >> 1);
    assert_ne!(node_id_for_key(b"k1"), node_id_for_key(b"k2"));
    // Every id is a valid SuperNode id: not 0, not the SuperLink's, < 2^63.
    for i in 0u32..2000 {
        let id = node_id_for_key(&i.to_be_bytes());
        assert!(id > SUPERLINK_NODE_ID && id < 1 << 63, "{id}");
    }
    // The same key gets the same id in two states (two server processes),
    // both through self-registration and through pre-registration.
    let mut a = state();
    let mut b = state();
    assert_eq!(online(&mut a, b"k1"), node_id_for_key(b"k1"));
    assert_eq!(online(&mut b, b"k1"), node_id_for_key(b"k1"));
    let mut config = StateConfig::new(42);
    config.enable_supernode_auth = true;
    let mut c = LinkState::new(config, 99);
    assert_eq!(
        c.activate(b"k1", 30.0, true, T0),
        Ok(node_id_for_key(b"k1"))
    );
}

/// A server restart: a fresh state takes back a node by its key-derived id
/// as registered and activated with the default heartbeat interval.
#[test]
fn a_node_unknown_after_a_restart_is_readmitted_by_its_derived_id() {
    let mut before = state();
    let id = online(&mut before, b"k");
    let mut s = state();
    assert_eq!(s.node_status(id), None);
    // Another id than the key's, or another key's id: refused.
    assert_eq!(
        s.readmit(b"k", id + 1, false, T0),
        Err(StateError::UnknownNode(id + 1))
    );
    assert_eq!(
        s.readmit(b"other", id, false, T0),
        Err(StateError::UnknownNode(id))
    );
    assert!(s.take_events().is_empty());
    s.readmit(b"k", id, false, T0).expect("readmitted");
    assert_eq!(s.node_status(id), Some(NodeStatus::Online));
    assert_eq!(s.node_for_key(b"k"), Some(id));
    assert_eq!(s.take_events(), [NodeEvent::Online(id)]);
    // Idempotent: a second request changes nothing.
    s.readmit(b"k", id, false, T0 + 1.0).expect("still bound");
    assert!(s.take_events().is_empty());
    // It takes work at once, and its patience is 2 × 30 s unless it
    // heartbeats.
    let c = content(16);
    let (tx, mut rx) = oneshot::channel();
    s.enqueue(id, c.instruction(42, id, 3600.0, T0), tx, T0)
        .expect("enqueue");
    assert!(s.pull_messages(id, T0 + 1.0).is_some());
    s.tick(T0 + 59.9);
    assert!(rx.try_recv().is_err(), "within the default patience");
    assert_eq!(s.heartbeat(id, 30.0, T0 + 59.9), Ok(true));
    s.tick(T0 + 119.8);
    assert!(rx.try_recv().is_err(), "the heartbeat extended it");
    s.tick(T0 + 119.9);
    assert!(matches!(rx.try_recv(), Ok(Err(ExchangeFailure::NodeSilent(n))) if n == id));
    // The key is now bound: registering it again is refused, as for a node
    // that registered itself.
    assert_eq!(s.register(b"k"), Err(StateError::KeyInUse));
}

#[test]
fn with_supernode_auth_only_authorized_keys_are_readmitted() {
    let mut config = StateConfig::new(42);
    config.enable_supernode_auth = true;
    let mut s = LinkState::new(config, 3);
    let id = node_id_for_key(b"k");
    assert_eq!(s.readmit(b"k", id, false, T0), Err(StateError::UnknownKey));
    assert_eq!(s.node_status(id), None);
    assert!(s.take_events().is_empty());
    s.readmit(b"k", id, true, T0).expect("authorized");
    assert_eq!(s.node_status(id), Some(NodeStatus::Online));
    assert_eq!(s.take_events(), [NodeEvent::Online(id)]);
    // Revoked, it is forgotten, and not taken back any more.
    assert_eq!(s.revoke_key(b"k"), Some(id));
    assert_eq!(s.readmit(b"k", id, false, T0), Err(StateError::UnknownKey));
    assert_eq!(s.node_status(id), None);
}

fn run(run_id: u64) -> (pb::Run, pb::Fab) {
    (
        pb::Run {
            run_id,
            fab_hash: "ab".repeat(32),
            ..pb::Run::default()
        },
        pb::Fab {
            hash_str: "ab".repeat(32),
            content: Bytes::from_static(b"fab"),
            verifications: Default::default(),
        },
    )
}

#[test]
fn runs_are_registered_served_and_finished_one_by_one() {
    let mut s = LinkState::new(StateConfig::new(0), 1);
    assert!(!s.knows_run(0), "0 registers no run");
    let (r1, f1) = run(101);
    let (r2, f2) = run(102);
    s.add_run(r1, f1);
    s.add_run(r2, f2);
    assert_eq!(s.run_info(101).map(|r| r.run_id), Some(101));
    assert!(s.run_fab(102).is_some());
    let id = online(&mut s, b"k");
    let c = content(16);
    // A node queues instructions of several runs, delivered oldest first.
    let (tx1, mut rx1) = oneshot::channel();
    let first = c.instruction(101, id, 60.0, T0);
    let first_root = first.tree.id;
    s.enqueue(id, first, tx1, T0).expect("run 101");
    let (tx2, mut rx2) = oneshot::channel();
    let second = c.instruction(102, id, 60.0, T0);
    let second_root = second.tree.id;
    s.enqueue(id, second, tx2, T0).expect("run 102");
    let (_, tree) = s.pull_messages(id, T0).expect("first");
    assert_eq!(tree.object_id, first_root.to_string());
    // Finishing run 101 fails only its exchange; 102 is still served.
    s.finish(101);
    assert!(matches!(
        rx1.try_recv(),
        Ok(Err(ExchangeFailure::RunFinished))
    ));
    assert!(rx2.try_recv().is_err(), "run 102 still waits");
    assert!(s.run_info(101).is_none() && s.run_fab(101).is_none());
    assert!(s.knows_run(101));
    assert_eq!(s.check_running(101), Err(StateError::RunNotRunning(101)));
    let (_, tree) = s.pull_messages(id, T0 + 1.0).expect("second");
    assert_eq!(tree.object_id, second_root.to_string());
    // Instructions of a finished or unknown run are refused.
    let (tx, _rx) = oneshot::channel();
    assert_eq!(
        s.enqueue(id, c.instruction(101, id, 60.0, T0 + 2.0), tx, T0 + 2.0),
        Err(StateError::RunNotRunning(101))
    );
    let nodes = s.nodes();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].status, NodeStatus::Online);
    assert_eq!(nodes[0].heartbeat_interval, 30.0);
}
