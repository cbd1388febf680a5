//! `legacy_fleet.proto` matches the wire of the flwr releases it was
//! written from: messages built with every field set by flwr 1.13.0's and
//! 1.15.0's own Python classes (in the `.venv-flwr-<version>` venvs that
//! scripts/setup-venv.sh creates) decode into our types and re-encode to
//! the same message of the same length. Skipped (with a printed reason) without those venvs, unless
//! `FLOWER_REQUIRE_PYTHON=1`.

use flower_proto as pb;
use prost::Message;

/// The RecordSet of flwr 1.13-1.18 with every value kind.
const RECORDSET: &str = r#"
import json
from flwr.proto import recordset_pb2 as r, node_pb2, error_pb2

recordset = r.RecordSet(
    parameters={'p': r.ParametersRecord(data_keys=['w', 'b'], data_values=[
        r.Array(dtype='float32', shape=[2, 3], stype='numpy.ndarray', data=b'\x93NUMPY'),
        r.Array(dtype='float64', shape=[2], stype='numpy.ndarray', data=b'\x00')])},
    metrics={'m': r.MetricsRecord(data={
        'd': r.MetricsRecordValue(double=0.5), 's': r.MetricsRecordValue(sint64=-3),
        'u': r.MetricsRecordValue(uint64=2**64 - 1),
        'dl': r.MetricsRecordValue(double_list=r.DoubleList(vals=[1.5, -2.0])),
        'sl': r.MetricsRecordValue(sint_list=r.SintList(vals=[-1, 2])),
        'ul': r.MetricsRecordValue(uint_list=r.UintList(vals=[2**64 - 1]))})},
    configs={'c': r.ConfigsRecord(data={
        'b': r.ConfigsRecordValue(bool=True), 'str': r.ConfigsRecordValue(string='é'),
        'by': r.ConfigsRecordValue(bytes=b'\x00\xff'),
        'bl': r.ConfigsRecordValue(bool_list=r.BoolList(vals=[True, False])),
        'stl': r.ConfigsRecordValue(string_list=r.StringList(vals=['x', ''])),
        'byl': r.ConfigsRecordValue(bytes_list=r.BytesList(vals=[b'', b'\x01']))})})
error = error_pb2.Error(code=-5, reason='node gone')
"#;

/// flwr 1.13's Task-era Fleet messages.
const V113: &str = r#"
from flwr.proto import fleet_pb2 as f, task_pb2 as t
node = node_pb2.Node(node_id=2**64 - 1, anonymous=True)
task = t.Task(producer=node_pb2.Node(node_id=0, anonymous=True), consumer=node, created_at=1.5,
              delivered_at='d', pushed_at=2.5, ttl=600.0, ancestry=['a' * 64], task_type='train',
              recordset=recordset, error=error)
ins = t.TaskIns(task_id='x' * 64, group_id='1', run_id=7, task=task)
res = t.TaskRes(task_id='', group_id='1', run_id=7, task=task)
out = {
    'CreateNodeRequest': f.CreateNodeRequest(ping_interval=30.0),
    'CreateNodeResponse': f.CreateNodeResponse(node=node),
    'DeleteNodeRequest': f.DeleteNodeRequest(node=node),
    'PingRequest': f.PingRequest(node=node, ping_interval=30.0),
    'PingResponse': f.PingResponse(success=True),
    'PullTaskInsRequest': f.PullTaskInsRequest(node=node, task_ids=['x']),
    'PullTaskInsResponse': f.PullTaskInsResponse(reconnect=f.Reconnect(reconnect=5), task_ins_list=[ins]),
    'PushTaskResRequest': f.PushTaskResRequest(node=node, task_res_list=[res]),
    'PushTaskResResponse': f.PushTaskResResponse(reconnect=f.Reconnect(reconnect=5), results={'x': 3}),
    'RecordSet': recordset,
}
print(json.dumps({k: v.SerializeToString(deterministic=True).hex() for k, v in out.items()}))
"#;

/// flwr 1.15's inline-message era.
const V115: &str = r#"
from flwr.proto import fleet_pb2 as f, message_pb2 as m
node = node_pb2.Node(node_id=2**64 - 1)
meta = m.Metadata(run_id=7, message_id='a' * 64, src_node_id=1, dst_node_id=2**63 + 5,
                  reply_to_message='b' * 64, group_id='g', ttl=43200.5, message_type='train',
                  created_at=1764600000.25)
msg = m.Message(metadata=meta, content=recordset, error=error)
out = {
    'LegacyMessage': msg,
    'PullMessagesResponse': f.PullMessagesResponse(reconnect=f.Reconnect(reconnect=5), messages_list=[msg, msg]),
    'PushMessagesRequest': f.PushMessagesRequest(node=node, messages_list=[msg]),
    'PushMessagesResponse': f.PushMessagesResponse(reconnect=f.Reconnect(reconnect=5), results={'x': 3}),
}
print(json.dumps({k: v.SerializeToString(deterministic=True).hex() for k, v in out.items()}))
"#;

fn hex_decode(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Decodes Python's bytes as `T` and re-encodes them: the same length (no
/// field dropped as unknown) and the same message once decoded again (map
/// entries may come in another order: Python's "deterministic" order is
/// not the sorted one).
fn round_trip<T: Message + Default + PartialEq + std::fmt::Debug>(name: &str, bytes: &[u8]) -> T {
    assert!(!bytes.is_empty(), "{name}: Python sent an empty message");
    let decoded = T::decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ours = decoded.encode_to_vec();
    assert_eq!(
        ours.len(),
        bytes.len(),
        "{name} re-encodes to another length"
    );
    assert_eq!(
        T::decode(ours.as_slice()).ok().as_ref(),
        Some(&decoded),
        "{name} re-encodes differently"
    );
    decoded
}

/// `{name: bytes}` from `script` run by the python of flwr `version`'s
/// venv; `None` (skipped) without it.
fn python_messages(version: &str, script: &str) -> Option<Vec<(String, Vec<u8>)>> {
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
    let out = flower_testkit::run_python(&python, &format!("{RECORDSET}{script}"), &[]);
    let out: serde_json::Value = serde_json::from_slice(&out).expect("JSON from Python");
    Some(
        out.as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| (k.clone(), hex_decode(v.as_str().expect("hex"))))
            .collect(),
    )
}

#[test]
fn flwr_1_13_task_messages_round_trip() {
    let Some(messages) = python_messages("1.13.0", V113) else {
        return;
    };
    let mut checked = 0;
    for (name, bytes) in &messages {
        match name.as_str() {
            "CreateNodeRequest" => {
                let m = round_trip::<pb::CreateNodeRequest>(name, bytes);
                assert_eq!(m.ping_interval, 30.0);
            }
            "CreateNodeResponse" => {
                let m = round_trip::<pb::CreateNodeResponse>(name, bytes);
                assert_eq!(
                    m.node.map(|n| (n.node_id, n.anonymous)),
                    Some((u64::MAX, true))
                );
            }
            "DeleteNodeRequest" => drop(round_trip::<pb::DeleteNodeRequest>(name, bytes)),
            "PingRequest" => drop(round_trip::<pb::PingRequest>(name, bytes)),
            "PingResponse" => assert!(round_trip::<pb::PingResponse>(name, bytes).success),
            "PullTaskInsRequest" => drop(round_trip::<pb::PullTaskInsRequest>(name, bytes)),
            "PullTaskInsResponse" => {
                let m = round_trip::<pb::PullTaskInsResponse>(name, bytes);
                let task = m.task_ins_list[0].task.clone().expect("task");
                assert_eq!(task.ancestry, ["a".repeat(64)]);
                assert_eq!(task.error.map(|e| e.code), Some(-5));
                let set = task.recordset.expect("recordset");
                assert_eq!(set.parameters["p"].data_keys, ["w", "b"]);
                assert_eq!(set.metrics["m"].data.len(), 6);
                assert_eq!(set.configs["c"].data.len(), 6);
            }
            "PushTaskResRequest" => drop(round_trip::<pb::PushTaskResRequest>(name, bytes)),
            "PushTaskResResponse" => {
                let m = round_trip::<pb::PushTaskResResponse>(name, bytes);
                assert_eq!(m.results.get("x"), Some(&3));
            }
            "RecordSet" => drop(round_trip::<pb::RecordSet>(name, bytes)),
            other => panic!("unexpected message {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 10);
}

#[test]
fn flwr_1_15_inline_messages_round_trip() {
    let Some(messages) = python_messages("1.15.0", V115) else {
        return;
    };
    let mut checked = 0;
    for (name, bytes) in &messages {
        match name.as_str() {
            "LegacyMessage" => {
                let m = round_trip::<pb::LegacyMessage>(name, bytes);
                let md = m.metadata.expect("metadata");
                assert_eq!(md.reply_to_message_id, "b".repeat(64));
                assert_eq!(md.dst_node_id, (1 << 63) + 5);
                assert_eq!(m.content.expect("content").parameters.len(), 1);
            }
            // The era-neutral supersets the service is generated with.
            "PullMessagesResponse" => {
                let m = round_trip::<pb::PullMessagesWireResponse>(name, bytes);
                assert_eq!(m.messages_list.len(), 2);
                pb::LegacyMessage::decode(m.messages_list[0].clone()).expect("a message");
            }
            "PushMessagesRequest" => {
                let m = round_trip::<pb::PushMessagesWireRequest>(name, bytes);
                pb::LegacyMessage::decode(m.messages_list[0].clone()).expect("a message");
            }
            "PushMessagesResponse" => drop(round_trip::<pb::PushMessagesResponse>(name, bytes)),
            other => panic!("unexpected message {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 4);
}
