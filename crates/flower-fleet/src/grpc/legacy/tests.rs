use super::*;

fn content() -> RecordDict {
    RecordDict::new()
        .with(
            "fitins.parameters",
            ArrayRecord::new().with(
                "0",
                flower_message::Array {
                    dtype: "float32".into(),
                    shape: vec![2, 3],
                    stype: "numpy.ndarray".into(),
                    data: Bytes::from_static(b"npy bytes"),
                },
            ),
        )
        .with("fitres.metrics", MetricRecord::new().with("delta", 2.5))
        .with(
            "fitins.config",
            ConfigRecord::new().with("label", "x".to_owned()),
        )
}

#[test]
fn record_sets_round_trip_in_flwr_1_13_order() {
    let set = record_set(&content()).expect("record set");
    assert_eq!(set.parameters["fitins.parameters"].data_keys, ["0"]);
    assert_eq!(
        set.parameters["fitins.parameters"].data_values[0].shape,
        [2, 3]
    );
    assert!(set.metrics.contains_key("fitres.metrics"));
    assert!(set.configs.contains_key("fitins.config"));
    let back = record_dict(set).expect("record dict");
    assert_eq!(back, content());

    let mut bad = record_set(&content()).expect("record set");
    if let Some(p) = bad.parameters.get_mut("fitins.parameters") {
        p.data_keys.push("1".into());
    }
    assert!(matches!(record_dict(bad), Err(FleetError::Codec(_))));
}

#[test]
fn task_ins_and_task_res_follow_flwr_1_13() {
    let metadata = Metadata {
        run_id: 7,
        message_id: "ab".repeat(32),
        src_node_id: SUPERLINK_NODE_ID,
        dst_node_id: 42,
        group_id: "1".into(),
        ttl: 600.0,
        message_type: "train".into(),
        created_at: 1000.0,
        src_task_id: Some(3),
        dst_task_id: None,
        ..Metadata::default()
    };
    let message = Message::new(metadata.clone(), content());
    let ins = task_ins(&message, 42).expect("task ins");
    assert_eq!(ins.task_id, metadata.message_id);
    let task = ins.task.clone().expect("task");
    assert_eq!(task.consumer.map(|n| n.node_id), Some(42));
    assert_eq!(task.producer.map(|n| n.anonymous), Some(true));
    assert!(task.ancestry.is_empty());
    assert_eq!(task.task_type, "train");
    assert_eq!(
        record_dict(task.recordset.expect("recordset")).expect("content"),
        content()
    );

    // The node's reply, as flwr 1.13's `message_to_taskres` builds it.
    let res = pb::TaskRes {
        task_id: String::new(),
        group_id: "1".into(),
        run_id: 7,
        task: Some(pb::LegacyTask {
            producer: Some(pb::LegacyNode {
                node_id: 42,
                anonymous: false,
            }),
            consumer: Some(pb::LegacyNode {
                node_id: 0,
                anonymous: true,
            }),
            created_at: 1001.0,
            ttl: 599.0,
            ancestry: vec![metadata.message_id.clone()],
            task_type: "train".into(),
            recordset: record_set(&content()).ok(),
            ..pb::LegacyTask::default()
        }),
    };
    let instruction = pb::Metadata::from(&metadata);
    let reply = reply_message(LegacyReply::from(res.clone()), 42, &instruction).expect("reply");
    assert_eq!(reply.metadata.src_node_id, 42);
    assert_eq!(reply.metadata.dst_node_id, SUPERLINK_NODE_ID);
    assert_eq!(reply.metadata.reply_to_message_id, metadata.message_id);
    assert_eq!(reply.metadata.src_task_id, None);
    assert_eq!(reply.metadata.dst_task_id, Some(3));
    assert_eq!(reply.metadata.ttl, 599.0);
    assert_eq!(reply.content(), Some(&content()));
    // Another node's TaskRes is refused.
    assert!(reply_message(LegacyReply::from(res.clone()), 43, &instruction).is_err());

    // An error reply stays an error.
    let mut failed = res;
    if let Some(t) = failed.task.as_mut() {
        t.recordset = None;
        t.error = Some(pb::Error {
            code: 4,
            reason: "boom".into(),
        });
    }
    let reply = reply_message(LegacyReply::from(failed), 42, &instruction).expect("error reply");
    assert_eq!(reply.error().map(|e| e.code), Some(4));
}

#[test]
fn ping_intervals_are_clamped_to_the_link_state_bounds() {
    assert_eq!(interval(30.0), 30.0);
    assert_eq!(interval(1.0), HEARTBEAT_MIN_INTERVAL);
    assert_eq!(interval(1e300), HEARTBEAT_MAX_INTERVAL);
    assert_eq!(interval(f64::NAN), crate::state::HEARTBEAT_DEFAULT_INTERVAL);
}

/// How flwr `version`'s own classes read a `PullMessages` answer: 1.19's
/// `objects_to_pull` map, 1.20's first tree and tree count. `None`
/// (skipped) without the `.venv-flwr-<version>` venv.
fn python_reads(version: &str, response: &pb::PullMessagesWireResponse) -> Option<String> {
    let python = flower_testkit::workspace_root().join(format!(".venv-flwr-{version}/bin/python"));
    if !python.exists() {
        assert!(
            !flower_testkit::python::python_required(),
            "FLOWER_REQUIRE_PYTHON=1 but {} is missing (scripts/setup-venv.sh)",
            python.display()
        );
        eprintln!("SKIPPED: no flwr {version} venv (scripts/setup-venv.sh creates it)");
        return None;
    }
    let script = r#"
import sys
from flwr.proto import fleet_pb2 as f
r = f.PullMessagesResponse.FromString(bytes.fromhex(sys.argv[1]))
ids = [m.metadata.message_id for m in r.messages_list]
if 'objects_to_pull' in f.PullMessagesResponse.DESCRIPTOR.fields_by_name:
    pull = {k: list(v.object_ids) for k, v in r.objects_to_pull.items()}
    print(ids, sorted(pull.items()))
else:
    t = r.message_object_trees[0]
    print(ids, t.object_id, [c.object_id for c in t.children], len(r.message_object_trees))
"#;
    let hex: String = response
        .encode_to_vec()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = flower_testkit::run_python(&python, script, &[&hex]);
    Some(String::from_utf8_lossy(&out).trim().to_owned())
}

#[test]
fn the_probe_is_pulled_by_flwr_1_19_only() {
    let (root, child, grandchild) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let message = pb::Message {
        metadata: Some(pb::Metadata {
            run_id: 7,
            message_id: root.clone(),
            dst_node_id: 42,
            ..Default::default()
        }),
        ..Default::default()
    };
    let tree = pb::ObjectTree {
        object_id: root.clone(),
        children: vec![pb::ObjectTree {
            object_id: child.clone(),
            children: vec![pb::ObjectTree {
                object_id: grandchild,
                children: Vec::new(),
            }],
        }],
    };
    let mut response = pb::PullMessagesWireResponse {
        reconnect: None,
        messages_list: vec![Bytes::from(message.encode_to_vec())],
        message_object_trees: vec![tree],
    };
    let probe = probe_id().to_string();
    // Without the probe, flwr 1.19 would pull the root and its child, as
    // 1.20-format objects it cannot inflate.
    if let Some(read) = python_reads("1.19.0", &response) {
        assert_eq!(read, format!("['{root}'] [('{root}', ['{child}'])]"));
    }
    add_probe(&mut response);
    assert_eq!(response.message_object_trees.len(), 2);
    if let Some(read) = python_reads("1.19.0", &response) {
        assert_eq!(read, format!("['{root}'] [('{root}', ['{probe}'])]"));
    }
    // flwr 1.20 (and 1.21/1.22, which read the same field the same way)
    // still sees the message's own tree first.
    if let Some(read) = python_reads("1.20.0", &response) {
        assert_eq!(read, format!("['{root}'] {root} ['{child}'] 2"));
    }
    // An empty answer stays empty.
    let mut empty = pb::PullMessagesWireResponse::default();
    add_probe(&mut empty);
    assert!(empty.message_object_trees.is_empty());
}
