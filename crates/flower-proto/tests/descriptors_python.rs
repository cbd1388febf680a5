//! The compiled `.proto` files equal flwr 1.42's schema: (a) every file's
//! messages, fields (name, number, label, type, type name, oneof,
//! `optional`), nested types, enums and services equal the descriptor
//! embedded in the venv's `flwr/proto/<file>_pb2.py`; (b) Fleet messages
//! built in Python with every field set decode here and re-encode byte for
//! byte. Skipped (with a printed reason) when the pinned venv is absent,
//! unless `FLOWER_REQUIRE_PYTHON=1`.

use flower_proto as pb;
use prost::Message;

/// Compares our descriptor set (file given as argv[1]) with flwr's.
const COMPARE: &str = r#"
import importlib, json, sys
from google.protobuf import descriptor_pb2

ours = descriptor_pb2.FileDescriptorSet.FromString(open(sys.argv[1], 'rb').read())

def normalize(fd):
    fd = descriptor_pb2.FileDescriptorProto().FromString(fd.SerializeToString())
    fd.ClearField('source_code_info')
    fd.ClearField('options')
    def clean(msg):
        for f in msg.field:
            f.ClearField('json_name')
        for n in msg.nested_type:
            clean(n)
    for m in fd.message_type:
        clean(m)
    # protoc records `rpc X(..) returns (..) {}` as an empty options
    # message, protox as none: the same schema.
    for s in fd.service:
        for meth in s.method:
            if meth.HasField('options') and meth.options.ByteSize() == 0:
                meth.ClearField('options')
    return fd

def count(msgs):
    n_msg = n_field = 0
    for m in msgs:
        a, b = count(m.nested_type)
        n_msg += 1 + a
        n_field += len(m.field) + b
    return n_msg, n_field

diffs, files, messages, fields = [], [], 0, 0
for fd in ours.file:
    stem = fd.name.rsplit('/', 1)[-1][:-len('.proto')]
    theirs = descriptor_pb2.FileDescriptorProto.FromString(
        importlib.import_module(f'flwr.proto.{stem}_pb2').DESCRIPTOR.serialized_pb)
    a, b = normalize(fd), normalize(theirs)
    files.append(fd.name)
    m, f = count(b.message_type)
    messages += m
    fields += f
    for part in ['name', 'package', 'dependency', 'syntax', 'message_type', 'enum_type', 'service']:
        x, y = getattr(a, part), getattr(b, part)
        if x != y:
            diffs.append(f'{fd.name}: {part} differs:\nours:\n{x}\nflwr:\n{y}')
print(json.dumps({'files': files, 'messages': messages, 'fields': fields, 'diffs': diffs}))
"#;

/// Builds Fleet messages with every field set and prints `{name: hex}`.
const MESSAGES: &str = r#"
import json
from flwr.proto import fleet_pb2 as f, message_pb2 as m, recorddict_pb2 as r, run_pb2, fab_pb2
from flwr.proto import node_pb2, heartbeat_pb2, error_pb2, transport_pb2

node = node_pb2.Node(node_id=2**64 - 1)
meta = m.Metadata(run_id=7, message_id='a' * 64, src_node_id=1, dst_node_id=2**63 + 5,
                  reply_to_message_id='b' * 64, group_id='g', ttl=43200.5, message_type='train',
                  created_at=1764600000.25, src_task_id=0, dst_task_id=9)
content = r.RecordDict(items=[
    r.RecordDict.Item(key='arrays', array_record=r.ArrayRecord(items=[r.ArrayRecord.Item(
        key='w', value=r.Array(dtype='float32', shape=[2, 3], stype='numpy.ndarray', data=b'\x93NUMPY'))])),
    r.RecordDict.Item(key='metrics', metric_record=r.MetricRecord(items=[
        r.MetricRecord.Item(key='d', value=r.MetricRecordValue(double=0.5)),
        r.MetricRecord.Item(key='s', value=r.MetricRecordValue(sint64=-3)),
        r.MetricRecord.Item(key='u', value=r.MetricRecordValue(uint64=2**64 - 1)),
        r.MetricRecord.Item(key='dl', value=r.MetricRecordValue(double_list=r.DoubleList(vals=[1.5, -2.0]))),
        r.MetricRecord.Item(key='sl', value=r.MetricRecordValue(sint_list=r.SintList(vals=[-1, 2]))),
        r.MetricRecord.Item(key='ul', value=r.MetricRecordValue(uint_list=r.UintList(vals=[2**64 - 1]))),
    ])),
    r.RecordDict.Item(key='config', config_record=r.ConfigRecord(items=[
        r.ConfigRecord.Item(key='b', value=r.ConfigRecordValue(bool=True)),
        r.ConfigRecord.Item(key='str', value=r.ConfigRecordValue(string='é')),
        r.ConfigRecord.Item(key='by', value=r.ConfigRecordValue(bytes=b'\x00\xff')),
        r.ConfigRecord.Item(key='bl', value=r.ConfigRecordValue(bool_list=r.BoolList(vals=[True, False]))),
        r.ConfigRecord.Item(key='stl', value=r.ConfigRecordValue(string_list=r.StringList(vals=['x', '']))),
        r.ConfigRecord.Item(key='byl', value=r.ConfigRecordValue(bytes_list=r.BytesList(vals=[b'', b'\x01']))),
    ])),
])
msg = m.Message(metadata=meta, content=content, error=error_pb2.Error(code=-5, reason='node gone'))
tree = m.ObjectTree(object_id='c' * 64, children=[m.ObjectTree(object_id='d' * 64, children=[m.ObjectTree(object_id='e' * 64)])])
scalar = transport_pb2.Scalar(sint64=-1)
run = run_pb2.Run(run_id=1, fab_id='flwr/app', fab_version='1.0.0', override_config={'lr': scalar},
                  fab_hash='f' * 64, pending_at='p', starting_at='s', running_at='r', finished_at='x',
                  status=run_pb2.RunStatus(status='running', sub_status='ok', details='d'), flwr_aid='aid',
                  federation='default', bytes_sent=10, bytes_recv=20, clientapp_runtime=1.25,
                  primary_task_type='flwr-clientapp', primary_task_id=0, series_id=3, account_name='acc')
out = {
    'RegisterNodeFleetRequest': f.RegisterNodeFleetRequest(public_key=b'-----BEGIN PUBLIC KEY-----'),
    'RegisterNodeFleetResponse': f.RegisterNodeFleetResponse(node_id=2**64 - 1),
    'ActivateNodeRequest': f.ActivateNodeRequest(public_key=b'pk', heartbeat_interval=30.0),
    'ActivateNodeResponse': f.ActivateNodeResponse(node_id=12),
    'DeactivateNodeRequest': f.DeactivateNodeRequest(node_id=12),
    'UnregisterNodeFleetRequest': f.UnregisterNodeFleetRequest(node_id=12),
    'SendNodeHeartbeatRequest': heartbeat_pb2.SendNodeHeartbeatRequest(node=node, heartbeat_interval=30.0),
    'SendNodeHeartbeatResponse': heartbeat_pb2.SendNodeHeartbeatResponse(success=True),
    'PullMessagesRequest': f.PullMessagesRequest(node=node, message_ids=['x', 'y']),
    'PullMessagesResponse': f.PullMessagesResponse(reconnect=f.Reconnect(reconnect=5), messages_list=[msg],
                                                   message_object_trees=[tree]),
    'PushMessagesRequest': f.PushMessagesRequest(node=node, messages_list=[msg, m.Message()],
                                                 message_object_trees=[tree, tree], clientapp_runtime_list=[1.5, 0.25]),
    'PushMessagesResponse': f.PushMessagesResponse(reconnect=f.Reconnect(reconnect=5), results={'a' * 64: 1},
                                                   objects_to_push=['c' * 64], session_id='sess'),
    'GetRunRequest': run_pb2.GetRunRequest(node=node, run_id=4),
    'GetRunResponse': run_pb2.GetRunResponse(run=run),
    'GetFabRequest': fab_pb2.GetFabRequest(node=node, hash_str='f' * 64, run_id=4),
    'GetFabResponse': fab_pb2.GetFabResponse(fab=fab_pb2.Fab(hash_str='f' * 64, content=b'PK\x03\x04',
                                                             verifications={'valid_license': 'yes'})),
    'PushObjectRequest': m.PushObjectRequest(node=node, run_id=4, object_id='c' * 64, object_content=b'x\x00y',
                                             session_id='sess'),
    'PushObjectResponse': m.PushObjectResponse(stored=True),
    'PullObjectRequest': m.PullObjectRequest(node=node, run_id=4, object_id='c' * 64),
    'PullObjectResponse': m.PullObjectResponse(object_found=True, object_available=True, object_content=b'\x00'),
    'ConfirmMessageReceivedRequest': m.ConfirmMessageReceivedRequest(node=node, run_id=4, message_object_id='c' * 64),
    'Context': m.Context(run_id=1, node_id=2, node_config={'k': scalar}, state=content, run_config={'k': scalar},
                         series_id=3),
    'NodeInfo': node_pb2.NodeInfo(node_id=1, owner_aid='a', owner_name='n', status='online', registered_at='t',
                                  last_activated_at='t1', last_deactivated_at='t2', unregistered_at='t3',
                                  online_until=99.5, heartbeat_interval=30.0, public_key=b'pk', location='l', name='nm'),
    'ObjectIDs': m.ObjectIDs(object_ids=['a', 'b']),
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

#[test]
fn descriptors_equal_flwr_pb2() {
    let Some(py) = flower_testkit::python() else {
        return;
    };
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), pb::FILE_DESCRIPTOR_SET).expect("write descriptor set");
    let path = file.path().to_str().expect("utf-8 temp path");
    let out = flower_testkit::run_python(&py, COMPARE, &[path]);
    let out: serde_json::Value = serde_json::from_slice(&out).expect("JSON from Python");
    let diffs = out["diffs"].as_array().expect("diffs");
    assert!(
        diffs.is_empty(),
        "{}",
        diffs
            .iter()
            .filter_map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let files: Vec<&str> = out["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    for name in [
        "transport",
        "error",
        "node",
        "heartbeat",
        "fab",
        "run",
        "recorddict",
        "message",
        "fleet",
        "task",
        "runseries",
        "federation_config",
        "federation",
        "log",
        "runtime",
        "control",
    ] {
        let want = format!("flwr/proto/{name}.proto");
        assert!(files.contains(&want.as_str()), "{want} was not compared");
    }
    // A floor, so that an empty comparison cannot pass.
    assert!(out["fields"].as_u64().unwrap_or(0) > 200, "{out}");
}

/// Decodes Python's bytes as `T` and re-encodes them.
fn round_trip<T: Message + Default>(name: &str, hex: &str) {
    let bytes = hex_decode(hex);
    let decoded = T::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        decoded.encode_to_vec(),
        bytes,
        "{name} re-encodes differently"
    );
    assert!(!bytes.is_empty(), "{name}: Python sent an empty message");
}

#[test]
fn fleet_messages_round_trip_byte_identically() {
    let Some(py) = flower_testkit::python() else {
        return;
    };
    let out = flower_testkit::run_python(&py, MESSAGES, &[]);
    let out: serde_json::Value = serde_json::from_slice(&out).expect("JSON from Python");
    let out = out.as_object().expect("object");
    let mut checked = 0;
    for (name, hex) in out {
        let hex = hex.as_str().expect("hex string");
        match name.as_str() {
            "RegisterNodeFleetRequest" => round_trip::<pb::RegisterNodeFleetRequest>(name, hex),
            "RegisterNodeFleetResponse" => round_trip::<pb::RegisterNodeFleetResponse>(name, hex),
            "ActivateNodeRequest" => round_trip::<pb::ActivateNodeRequest>(name, hex),
            "ActivateNodeResponse" => round_trip::<pb::ActivateNodeResponse>(name, hex),
            "DeactivateNodeRequest" => round_trip::<pb::DeactivateNodeRequest>(name, hex),
            "UnregisterNodeFleetRequest" => round_trip::<pb::UnregisterNodeFleetRequest>(name, hex),
            "SendNodeHeartbeatRequest" => round_trip::<pb::SendNodeHeartbeatRequest>(name, hex),
            "SendNodeHeartbeatResponse" => round_trip::<pb::SendNodeHeartbeatResponse>(name, hex),
            "PullMessagesRequest" => round_trip::<pb::PullMessagesRequest>(name, hex),
            "PullMessagesResponse" => round_trip::<pb::PullMessagesResponse>(name, hex),
            "PushMessagesRequest" => round_trip::<pb::PushMessagesRequest>(name, hex),
            "PushMessagesResponse" => round_trip::<pb::PushMessagesResponse>(name, hex),
            "GetRunRequest" => round_trip::<pb::GetRunRequest>(name, hex),
            "GetRunResponse" => round_trip::<pb::GetRunResponse>(name, hex),
            "GetFabRequest" => round_trip::<pb::GetFabRequest>(name, hex),
            "GetFabResponse" => round_trip::<pb::GetFabResponse>(name, hex),
            "PushObjectRequest" => round_trip::<pb::PushObjectRequest>(name, hex),
            "PushObjectResponse" => round_trip::<pb::PushObjectResponse>(name, hex),
            "PullObjectRequest" => round_trip::<pb::PullObjectRequest>(name, hex),
            "PullObjectResponse" => round_trip::<pb::PullObjectResponse>(name, hex),
            "ConfirmMessageReceivedRequest" => {
                round_trip::<pb::ConfirmMessageReceivedRequest>(name, hex)
            }
            "Context" => round_trip::<pb::Context>(name, hex),
            "NodeInfo" => round_trip::<pb::NodeInfo>(name, hex),
            "ObjectIDs" => round_trip::<pb::ObjectIDs>(name, hex),
            other => panic!("no Rust type mapped for {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 24);
}
