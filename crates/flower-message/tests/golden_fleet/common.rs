//! Shared helpers: vector directories, hex, building messages from their
//! JSON description, and the byte-for-byte replay of one case.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use flower_core::NdArray;
use flower_message::{
    deflate_with_chunk_size, inflate, validate_object, Array, ArrayRecord, ConfigRecord,
    ConfigValue, Limits, Message, MessageError, Metadata, MetricRecord, MetricValue, ObjectId,
    ObjectTree, Payload, Record, RecordDict,
};
use indexmap::IndexMap;
use serde_json::Value;

/// The shared golden vectors: `$FLWR_GOLDEN_FLEET_DIR`, or
/// `<workspace>/../shared/golden/fleet`. A missing directory fails the test.
pub(crate) fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("FLWR_GOLDEN_FLEET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden/fleet")
        });
    assert!(
        dir.is_dir(),
        "golden Fleet vectors not found at {} (set FLWR_GOLDEN_FLEET_DIR to the directory \
         holding golden_vectors_chunk*.json)",
        dir.display()
    );
    dir
}

/// This crate's own vectors (written by `tests/make_vectors.py`).
pub(crate) fn own_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

pub(crate) fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

pub(crate) fn id(s: &str) -> ObjectId {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// A double given as the hex of its bits.
fn bits(v: &Value) -> f64 {
    let b = hex(v.as_str().expect("double bits"));
    f64::from_be_bytes(b.try_into().expect("8 bytes"))
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

fn list<T>(v: &Value, f: impl Fn(&Value) -> T) -> Vec<T> {
    v.as_array().expect("list").iter().map(f).collect()
}

/// A ConfigRecordValue/MetricRecordValue described as `{kind: value}`.
pub(crate) fn config_value(v: &Value) -> ConfigValue {
    let (kind, x) = v
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("{kind: value}");
    match kind.as_str() {
        "double" => ConfigValue::Double(bits(x)),
        "sint64" => ConfigValue::Sint64(x.as_i64().expect("i64")),
        "uint64" => ConfigValue::Uint64(u64_of(x)),
        "bool" => ConfigValue::Bool(x.as_bool().expect("bool")),
        "string" => ConfigValue::String(x.as_str().expect("str").to_owned()),
        "bytes" => ConfigValue::Bytes(hex(x.as_str().expect("hex")).into()),
        "double_list" => ConfigValue::DoubleList(list(x, bits)),
        "sint_list" => ConfigValue::SintList(list(x, |v| v.as_i64().expect("i64"))),
        "uint_list" => ConfigValue::UintList(list(x, u64_of)),
        "bool_list" => ConfigValue::BoolList(list(x, |v| v.as_bool().expect("bool"))),
        "string_list" => ConfigValue::StringList(list(x, |v| v.as_str().expect("str").to_owned())),
        "bytes_list" => ConfigValue::BytesList(list(x, |v| hex(v.as_str().expect("hex")).into())),
        other => panic!("unknown value kind {other}"),
    }
}

pub(crate) fn metric_value(v: &Value) -> MetricValue {
    match config_value(v) {
        ConfigValue::Double(x) => MetricValue::Double(x),
        ConfigValue::Sint64(x) => MetricValue::Sint64(x),
        ConfigValue::Uint64(x) => MetricValue::Uint64(x),
        ConfigValue::DoubleList(x) => MetricValue::DoubleList(x),
        ConfigValue::SintList(x) => MetricValue::SintList(x),
        ConfigValue::UintList(x) => MetricValue::UintList(x),
        other => panic!("not a metric value: {other:?}"),
    }
}

/// Rebuilds a large array from its recipe (see make_vectors.py).
fn recipe_array(desc: &Value) -> Array {
    let shape: Vec<usize> = list(&desc["shape"], |d| u64_of(d) as usize);
    let n: usize = shape.iter().product();
    let nd = match (str_of(desc, "recipe"), str_of(desc, "dtype")) {
        ("arange", "float32") => NdArray::F32(
            ndarray::ArrayD::from_shape_vec(shape, (0..n).map(|i| i as f32).collect())
                .expect("shape"),
        ),
        ("zeros", "uint8") => NdArray::U8(ndarray::ArrayD::zeros(shape)),
        (r, d) => panic!("unknown recipe {r} for {d}"),
    };
    let array = Array::from_ndarray(&nd);
    assert_eq!(array.data.len() as u64, u64_of(&desc["len"]), "recipe size");
    array
}

fn array(desc: &Value) -> Array {
    if desc.get("recipe").is_some() {
        return recipe_array(desc);
    }
    Array {
        dtype: str_of(desc, "dtype").to_owned(),
        shape: list(&desc["shape"], |d| u64_of(d) as usize),
        stype: str_of(desc, "stype").to_owned(),
        data: hex(str_of(desc, "data_hex")).into(),
    }
}

/// Builds the message a case describes (message_id left empty).
pub(crate) fn message(desc: &Value) -> Message {
    let m = &desc["metadata"];
    let opt = |v: &Value| v.as_u64();
    let metadata = Metadata {
        run_id: u64_of(&m["run_id"]),
        message_id: String::new(),
        src_node_id: u64_of(&m["src_node_id"]),
        dst_node_id: u64_of(&m["dst_node_id"]),
        reply_to_message_id: str_of(m, "reply_to_message_id").to_owned(),
        group_id: str_of(m, "group_id").to_owned(),
        ttl: bits(&m["ttl"]),
        message_type: str_of(m, "message_type").to_owned(),
        created_at: bits(&m["created_at"]),
        src_task_id: opt(&m["src_task_id"]),
        dst_task_id: opt(&m["dst_task_id"]),
    };
    if let Some(e) = desc.get("error") {
        return Message::with_error(
            metadata,
            MessageError {
                code: e["code"].as_i64().expect("code"),
                reason: str_of(e, "reason").to_owned(),
            },
        );
    }
    let mut content = RecordDict::new();
    for entry in desc["content"].as_array().expect("content") {
        let name = entry[0].as_str().expect("name").to_owned();
        let (kind, items) = entry[1]
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("record");
        let pairs = items.as_array().expect("items");
        let key = |p: &Value| p[0].as_str().expect("key").to_owned();
        let record = match kind.as_str() {
            "array_record" => Record::Array(
                pairs
                    .iter()
                    .map(|p| (key(p), array(&p[1])))
                    .collect::<ArrayRecord>(),
            ),
            "config_record" => Record::Config(
                pairs
                    .iter()
                    .map(|p| (key(p), config_value(&p[1])))
                    .collect::<ConfigRecord>(),
            ),
            "metric_record" => Record::Metric(
                pairs
                    .iter()
                    .map(|p| (key(p), metric_value(&p[1])))
                    .collect::<MetricRecord>(),
            ),
            other => panic!("unknown record kind {other}"),
        };
        content.insert(name, record);
    }
    Message::new(metadata, content)
}

pub(crate) fn tree(v: &Value) -> ObjectTree {
    ObjectTree {
        id: id(str_of(v, "id")),
        children: v["children"]
            .as_array()
            .expect("children")
            .iter()
            .map(tree)
            .collect(),
    }
}

/// The objects of a case whose content is given inline.
pub(crate) fn inline_objects(case: &Value) -> IndexMap<ObjectId, Bytes> {
    case["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|o| {
            let content = o.get("content_hex")?.as_str()?;
            Some((id(str_of(o, "id")), Bytes::from(hex(content))))
        })
        .collect()
}

pub(crate) fn chunk_size(case: &Value) -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(u64_of(&case["chunk_size"]) as usize).expect("chunk size > 0")
}

/// Deflates `message` and checks it against the case byte for byte: root
/// id, tree, object ids in flwr's order, inline contents (others are pinned
/// by their id, the SHA-256 of the content). Returns the deflated objects.
pub(crate) fn check_deflate(
    name: &str,
    case: &Value,
    message: &Message,
    tree: &ObjectTree,
) -> flower_message::Deflated {
    let deflated = deflate_with_chunk_size(message, chunk_size(case));
    assert_eq!(deflated.root, id(str_of(case, "root")), "{name}: root id");
    assert_eq!(&deflated.tree, tree, "{name}: tree");
    let expected: Vec<&Value> = case["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .collect();
    let ours: Vec<ObjectId> = deflated.objects.keys().copied().collect();
    let theirs: Vec<ObjectId> = expected.iter().map(|o| id(str_of(o, "id"))).collect();
    assert_eq!(ours, theirs, "{name}: object ids and order");
    for o in expected {
        let content = &deflated.objects[&id(str_of(o, "id"))];
        match o.get("content_hex").and_then(Value::as_str) {
            Some(h) => assert_eq!(
                content.as_ref(),
                hex(h).as_slice(),
                "{name}: {}",
                str_of(o, "id")
            ),
            None => assert_eq!(content.len() as u64, u64_of(&o["len"]), "{name}: length"),
        }
    }
    deflated
}

/// Inflates `tree` from `objects` (each validated first) and checks the
/// message id.
pub(crate) fn check_inflate(
    name: &str,
    tree: &ObjectTree,
    objects: &IndexMap<ObjectId, Bytes>,
) -> Message {
    for (oid, content) in objects {
        validate_object(oid, content).unwrap_or_else(|e| panic!("{name}: {oid}: {e}"));
    }
    let message = inflate(tree, objects, &Limits::default())
        .unwrap_or_else(|e| panic!("{name}: inflate: {e}"));
    assert_eq!(
        message.metadata.message_id,
        tree.id.to_string(),
        "{name}: message id"
    );
    if let Payload::Content(c) = &message.payload {
        assert!(c.len() < 1000, "sanity");
    }
    message
}
