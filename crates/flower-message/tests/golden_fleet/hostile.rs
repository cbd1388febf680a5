//! Hostile input: each malformed id, head, body, tree or size gives its
//! exact error, and nothing panics.

use std::num::NonZeroUsize;

use bytes::Bytes;
use flower_message::{
    deflate_with_chunk_size, encode_object, inflate, validate_object, Array, ArrayRecord,
    ConfigRecord, Deflated, Error, Limits, Message, Metadata, MetricRecord, ObjectClass, ObjectId,
    ObjectTree, RecordDict,
};
use flower_proto as pb;
use indexmap::IndexMap;

type Objects = IndexMap<ObjectId, Bytes>;

/// A message with an array of 3 chunks (two identical), a config and a
/// metric record, deflated with 16-byte chunks.
fn base() -> (Message, Deflated) {
    let mut data = vec![7u8; 32];
    data.extend_from_slice(b"tail");
    let array = Array {
        dtype: "uint8".into(),
        shape: vec![36],
        stype: "raw".into(),
        data: data.into(),
    };
    let content = RecordDict::new()
        .with("arrays", ArrayRecord::new().with("a", array))
        .with("config", ConfigRecord::new().with("lr", 0.5))
        .with("metrics", MetricRecord::new().with("n", 3i64));
    let message = Message::new(
        Metadata {
            run_id: 1,
            message_type: "train".into(),
            ttl: 60.0,
            ..Metadata::default()
        },
        content,
    );
    let deflated = deflate_with_chunk_size(&message, NonZeroUsize::new(16).expect("16"));
    (message, deflated)
}

fn limits() -> Limits {
    Limits::default()
}

/// Stores `content` under its own id.
fn put(objects: &mut Objects, content: Vec<u8>) -> ObjectId {
    let id = ObjectId::of(&content);
    objects.insert(id, content.into());
    id
}

/// The first object of `class` in `d`.
fn first(d: &Deflated, class: ObjectClass) -> (ObjectId, Bytes) {
    d.objects
        .iter()
        .find(|(_, c)| c.starts_with(format!("{} ", class.name()).as_bytes()))
        .map(|(i, c)| (*i, c.clone()))
        .expect("class present")
}

fn body(content: &[u8]) -> &[u8] {
    let nul = content.iter().position(|&b| b == 0).expect("NUL");
    &content[nul + 1..]
}

/// Replaces the `Array` object (and every ancestor) with versions whose
/// array body is `new_body` and head children `children`; returns the new
/// tree and objects, as a producer would deflate them.
fn with_array(d: &Deflated, children: &[ObjectId], new_body: &[u8]) -> (ObjectTree, Objects) {
    let mut objects = d.objects.clone();
    let (old_array, _) = first(d, ObjectClass::Array);
    let array = put(
        &mut objects,
        encode_object(ObjectClass::Array, children, new_body),
    );
    let (old_ar, ar_content) = first(d, ObjectClass::ArrayRecord);
    let ar_body = String::from_utf8_lossy(body(&ar_content))
        .replace(&old_array.to_string(), &array.to_string());
    let ar = put(
        &mut objects,
        encode_object(ObjectClass::ArrayRecord, &[array], ar_body.as_bytes()),
    );
    let (_, rd_content) = first(d, ObjectClass::RecordDict);
    let rd_body =
        String::from_utf8_lossy(body(&rd_content)).replace(&old_ar.to_string(), &ar.to_string());
    let rd_children: Vec<ObjectId> = d.tree.children[0]
        .child_ids()
        .map(|c| if *c == old_ar { ar } else { *c })
        .collect();
    let rd = put(
        &mut objects,
        encode_object(ObjectClass::RecordDict, &rd_children, rd_body.as_bytes()),
    );
    let root_content = &d.objects[&d.root];
    let msg = put(
        &mut objects,
        encode_object(ObjectClass::Message, &[rd], body(root_content)),
    );
    // Trees from heads (hashes need not hold for these helpers' callers).
    let tree = ObjectTree::from_objects(&msg, &objects, &limits())
        .unwrap_or_else(|_| ObjectTree::leaf(msg));
    (tree, objects)
}

#[test]
fn the_base_case_inflates() {
    let (message, d) = base();
    let back = inflate(&d.tree, &d, &limits());
    assert_eq!(back.map(|m| m.payload).ok(), Some(message.payload));
    // 3 chunks, 2 unique; 8 objects.
    assert_eq!(d.objects.len(), 8);
}

#[test]
fn bad_ids() {
    let (_, d) = base();
    let mut tree = d.tree.to_proto();
    tree.children[0].object_id = "ABC".into();
    assert!(matches!(
        ObjectTree::from_proto(&tree, &limits()),
        Err(Error::BadObjectId { id }) if id == "ABC"
    ));
    tree.children[0].object_id = d.tree.children[0].id.to_string().to_uppercase();
    assert!(matches!(
        ObjectTree::from_proto(&tree, &limits()),
        Err(Error::BadObjectId { .. })
    ));
    // A head naming a non-hex child.
    let mut objects = Objects::new();
    let bad = put(
        &mut objects,
        format!("Message {} 0\0", "z".repeat(64)).into_bytes(),
    );
    assert!(matches!(
        validate_object(&bad, &objects[&bad]),
        Err(Error::BadObjectId { .. })
    ));
}

#[test]
fn content_not_hashing_to_its_id() {
    let (_, d) = base();
    let mut objects = d.objects.clone();
    let (chunk, _) = first(&d, ObjectClass::ArrayChunk);
    objects.insert(
        chunk,
        Bytes::from(encode_object(
            ObjectClass::ArrayChunk,
            &[],
            b"0123456789abcdeF",
        )),
    );
    let err = inflate(&d.tree, &objects, &limits()).err();
    assert!(
        matches!(err, Some(Error::IdMismatch { expected, actual }) if expected == chunk && actual != chunk),
        "{err:?}"
    );
}

#[test]
fn unknown_class_and_malformed_heads() {
    let mut objects = Objects::new();
    let unknown = put(&mut objects, b"Tensor  2\0ab".to_vec());
    let err = inflate(&ObjectTree::leaf(unknown), &objects, &limits()).err();
    assert!(
        matches!(&err, Some(Error::UnknownClass { class, .. }) if class == "Tensor"),
        "{err:?}"
    );
    let custom = put(&mut objects, b"CustomDataClass  0\0".to_vec());
    assert!(matches!(
        validate_object(&custom, &objects[&custom]),
        Err(Error::UnknownClass { .. })
    ));
    for (content, reason) in [
        (&b"Message 0\0"[..], "expected three space-separated fields"),
        (b"Message  0", "no NUL byte between head and body"),
        (b"Message  00\0", "body length has leading zeros"),
        (b"Message  -1\0", "body length is not a decimal number"),
        (
            b"Message  99999999999999999999\0",
            "body length does not fit in 64 bits",
        ),
    ] {
        let id = put(&mut objects, content.to_vec());
        let err = inflate(&ObjectTree::leaf(id), &objects, &limits()).err();
        assert!(
            matches!(&err, Some(Error::MalformedHeader { reason: r, .. }) if *r == reason),
            "{}: {err:?}",
            String::from_utf8_lossy(content)
        );
    }
}

#[test]
fn wrong_lengths_truncated_bodies_and_huge_declared_lengths() {
    let (_, d) = base();
    let (_, chunk) = first(&d, ObjectClass::ArrayChunk);
    let mut objects = Objects::new();
    // Truncated: one byte short of the declared 16.
    let short = put(&mut objects, chunk[..chunk.len() - 1].to_vec());
    assert!(matches!(
        validate_object(&short, &objects[&short]),
        Err(Error::WrongLength {
            declared: 16,
            actual: 15,
            ..
        })
    ));
    let long = put(&mut objects, [&chunk[..], b"x"].concat());
    assert!(matches!(
        validate_object(&long, &objects[&long]),
        Err(Error::WrongLength {
            declared: 16,
            actual: 17,
            ..
        })
    ));
    let huge = put(
        &mut objects,
        b"ArrayChunk  9223372036854775808\0abc".to_vec(),
    );
    assert!(matches!(
        validate_object(&huge, &objects[&huge]),
        Err(Error::WrongLength {
            declared: 9_223_372_036_854_775_808,
            actual: 3,
            ..
        })
    ));
    let max = put(&mut objects, b"ArrayChunk  18446744073709551615\0".to_vec());
    assert!(matches!(
        validate_object(&max, &objects[&max]),
        Err(Error::WrongLength {
            declared: u64::MAX,
            actual: 0,
            ..
        })
    ));

    // Truncated bodies with a head that matches: JSON and protobuf errors.
    let (array, array_content) = first(&d, ObjectClass::Array);
    let children: Vec<ObjectId> = d.tree.children[0].children[0].children[0]
        .child_ids()
        .copied()
        .collect();
    let b = body(&array_content);
    let (tree, objects) = with_array(&d, &children, &b[..b.len() - 1]);
    let err = inflate(&tree, &objects, &limits()).err();
    assert!(
        matches!(
            err,
            Some(Error::JsonBody {
                class: ObjectClass::Array,
                ..
            })
        ),
        "{err:?}"
    );
    assert_ne!(tree.children[0].children[0].children[0].id, array);

    let (config, config_content) = first(&d, ObjectClass::ConfigRecord);
    let cb = body(&config_content);
    let mut objects = d.objects.clone();
    let truncated = encode_object(ObjectClass::ConfigRecord, &[], &cb[..cb.len() - 1]);
    // Keep the old id so the RecordDict still names it: the hash fails first.
    objects.insert(config, truncated.clone().into());
    assert!(matches!(
        inflate(&d.tree, &objects, &limits()),
        Err(Error::IdMismatch { .. })
    ));
    // Under its own id, the body itself fails to decode.
    let mut alone = Objects::new();
    let cid = put(&mut alone, truncated);
    let rd = put(
        &mut alone,
        encode_object(
            ObjectClass::RecordDict,
            &[cid],
            format!("{{\"c\": \"{cid}\"}}").as_bytes(),
        ),
    );
    let msg = put(
        &mut alone,
        encode_object(ObjectClass::Message, &[rd], body(&d.objects[&d.root])),
    );
    let tree = ObjectTree::from_objects(&msg, &alone, &limits()).expect("tree from heads");
    let err = inflate(&tree, &alone, &limits()).err();
    assert!(
        matches!(
            err,
            Some(Error::ProtoBody {
                class: ObjectClass::ConfigRecord,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn missing_objects_cycles_and_duplicate_children() {
    let (_, d) = base();
    let mut objects = d.objects.clone();
    let (metric, _) = first(&d, ObjectClass::MetricRecord);
    objects.shift_remove(&metric);
    assert!(matches!(
        inflate(&d.tree, &objects, &limits()),
        Err(Error::MissingObject { id }) if id == metric
    ));
    assert!(matches!(
        ObjectTree::from_objects(&d.root, &objects, &limits()),
        Err(Error::MissingObject { id }) if id == metric
    ));

    // A -> B -> A, in a protobuf tree and in a tree given directly.
    let (a, b) = (d.root, d.tree.children[0].id);
    let cyclic = ObjectTree {
        id: a,
        children: vec![ObjectTree {
            id: b,
            children: vec![ObjectTree::leaf(a)],
        }],
    };
    assert!(matches!(
        ObjectTree::from_proto(&cyclic.to_proto(), &limits()),
        Err(Error::Cycle { id }) if id == a
    ));
    // inflate meets the RecordDict's head (children differ) before the
    // cycle; with matching heads (impossible for real hashes) it would
    // report the cycle. Both are typed errors.
    let err = inflate(&cyclic, &d, &limits()).err();
    assert!(
        matches!(err, Some(Error::TreeMismatch { .. } | Error::Cycle { .. })),
        "{err:?}"
    );

    let mut dup = d.tree.to_proto();
    let first_child = dup.children[0].children[0].clone();
    dup.children[0].children.push(first_child);
    assert!(matches!(
        ObjectTree::from_proto(&dup, &limits()),
        Err(Error::DuplicateChild { .. })
    ));
    // Duplicate children in a head.
    let (_, chunk) = first(&d, ObjectClass::ArrayChunk);
    let cid = ObjectId::of(&chunk);
    let dup_head = encode_object(ObjectClass::Array, &[cid, cid], b"{}");
    let dup_id = ObjectId::of(&dup_head);
    assert!(matches!(
        validate_object(&dup_id, &dup_head),
        Err(Error::DuplicateChild { parent, child }) if parent == dup_id && child == cid
    ));
}

#[test]
fn tree_disagreeing_with_heads() {
    let (_, d) = base();
    let mut tree = d.tree.clone();
    tree.children[0].children.pop();
    assert!(matches!(
        inflate(&tree, &d, &limits()),
        Err(Error::TreeMismatch {
            tree: 2,
            head: 3,
            ..
        })
    ));
    let mut tree = d.tree.clone();
    tree.children[0].children.swap(0, 1);
    assert!(matches!(
        inflate(&tree, &d, &limits()),
        Err(Error::TreeMismatch { .. })
    ));
}

#[test]
fn wrong_classes() {
    let (_, d) = base();
    // The root must be a Message.
    let rd = ObjectTree::from_objects(&d.tree.children[0].id, &d, &limits());
    assert!(matches!(
        rd,
        Err(Error::WrongClass {
            found: ObjectClass::RecordDict,
            ..
        })
    ));
    // A Message holding an Array directly.
    let mut objects = d.objects.clone();
    let (array, _) = first(&d, ObjectClass::Array);
    let msg = put(
        &mut objects,
        encode_object(ObjectClass::Message, &[array], body(&d.objects[&d.root])),
    );
    let array_tree = d.tree.children[0].children[0].children[0].clone();
    let tree = ObjectTree {
        id: msg,
        children: vec![array_tree],
    };
    let err = inflate(&tree, &objects, &limits()).err();
    assert!(
        matches!(err, Some(Error::WrongClass { id, expected: "a RecordDict", found: ObjectClass::Array }) if id == array),
        "{err:?}"
    );
    // A ConfigRecord with a child.
    let (chunk, _) = first(&d, ObjectClass::ArrayChunk);
    let cfg = put(
        &mut objects,
        encode_object(ObjectClass::ConfigRecord, &[chunk], b""),
    );
    let err = ObjectTree::from_objects(&cfg, &objects, &limits()).err();
    assert!(matches!(err, Some(Error::WrongClass { .. })), "{err:?}");
}

#[test]
fn chunk_count_lies() {
    let (_, d) = base();
    let array_tree = &d.tree.children[0].children[0].children[0];
    let chunks: Vec<ObjectId> = array_tree.child_ids().copied().collect();
    assert_eq!(chunks.len(), 2);
    let body_with = |ids: &str| {
        format!("{{\"dtype\": \"uint8\", \"shape\": [36], \"stype\": \"raw\", \"arraychunk_ids\": [{ids}]}}")
    };
    // An index beyond the head's chunks.
    let (tree, objects) = with_array(&d, &chunks, body_with("0, 0, 2").as_bytes());
    let err = inflate(&tree, &objects, &limits()).err();
    assert!(
        matches!(
            err,
            Some(Error::ChunkIndexOutOfRange {
                index: 2,
                chunks: 2,
                ..
            })
        ),
        "{err:?}"
    );
    // A head chunk the body never uses.
    let (tree, objects) = with_array(&d, &chunks, body_with("0, 0").as_bytes());
    let err = inflate(&tree, &objects, &limits()).err();
    assert!(
        matches!(err, Some(Error::UnusedChild { child, .. }) if child == chunks[1]),
        "{err:?}"
    );
    // Fewer chunks in the head than the body needs.
    let (tree, objects) = with_array(&d, &chunks[..1], body_with("0, 0, 1").as_bytes());
    let err = inflate(&tree, &objects, &limits()).err();
    assert!(
        matches!(
            err,
            Some(Error::ChunkIndexOutOfRange {
                index: 1,
                chunks: 1,
                ..
            })
        ),
        "{err:?}"
    );
    // Unknown or missing body keys, wrong types.
    for bad in [
        "{\"dtype\": \"uint8\", \"shape\": [36], \"stype\": \"raw\"}".to_owned(),
        body_with("0, 0, 1").replace('}', ", \"extra\": 1}"),
        body_with("0, 0, -1"),
        body_with("0, 0, 1.0"),
        body_with("0, 0, 1").replace("[36]", "[-36]"),
        body_with("0, 0, 1").replace("\"uint8\"", "8"),
    ] {
        let (tree, objects) = with_array(&d, &chunks, bad.as_bytes());
        let err = inflate(&tree, &objects, &limits()).err();
        assert!(
            matches!(err, Some(Error::JsonBody { .. })),
            "{bad}: {err:?}"
        );
    }
    // The honest body, re-made through the same helper, still inflates.
    let (tree, objects) = with_array(&d, &chunks, body_with("0, 0, 1").as_bytes());
    assert!(inflate(&tree, &objects, &limits()).is_ok());
}

#[test]
fn reference_bodies_naming_other_children_or_duplicates() {
    let (_, d) = base();
    let (array, _) = first(&d, ObjectClass::Array);
    let other = ObjectId::of(b"not a child");
    let array_tree = d.tree.children[0].children[0].children[0].clone();
    for (body, want) in [
        (format!("{{\"a\": \"{other}\"}}"), "UnknownChild"),
        (
            format!("{{\"a\": \"{array}\", \"a\": \"{array}\"}}"),
            "DuplicateKey",
        ),
        ("{}".to_owned(), "UnusedChild"),
        (format!("{{\"a\": \"{}\"}}", "x".repeat(64)), "BadObjectId"),
        (format!("{{\"a\": 1, \"b\": \"{array}\"}}"), "JsonBody"),
    ] {
        let mut objects = d.objects.clone();
        let ar = put(
            &mut objects,
            encode_object(ObjectClass::ArrayRecord, &[array], body.as_bytes()),
        );
        let rd = put(
            &mut objects,
            encode_object(
                ObjectClass::RecordDict,
                &[ar],
                format!("{{\"r\": \"{ar}\"}}").as_bytes(),
            ),
        );
        let msg = put(
            &mut objects,
            encode_object(ObjectClass::Message, &[rd], body_of_root(&d)),
        );
        let tree = ObjectTree {
            id: msg,
            children: vec![ObjectTree {
                id: rd,
                children: vec![ObjectTree {
                    id: ar,
                    children: vec![array_tree.clone()],
                }],
            }],
        };
        let err = inflate(&tree, &objects, &limits()).err();
        assert!(debug(&err).starts_with(want), "{body}: {err:?}");
    }
}

/// The error's `Debug` text ("" for none), to match variants by name.
fn debug(err: &Option<Error>) -> String {
    err.as_ref().map(|e| format!("{e:?}")).unwrap_or_default()
}

fn body_of_root(d: &Deflated) -> &[u8] {
    body(&d.objects[&d.root])
}

#[test]
fn invalid_message_and_record_bodies() {
    let (_, d) = base();
    let rd = d.tree.children[0].clone();
    let meta = pb::Metadata {
        run_id: 1,
        ..Default::default()
    };
    let cases: [(pb::Message, Vec<ObjectTree>, &str); 4] = [
        (
            pb::Message {
                metadata: Some(meta.clone()),
                content: None,
                error: Some(pb::Error {
                    code: 1,
                    reason: String::new(),
                }),
            },
            vec![rd.clone()],
            "a Message with an error has no content",
        ),
        (
            pb::Message {
                metadata: Some(meta.clone()),
                content: Some(pb::RecordDict::default()),
                error: None,
            },
            vec![rd.clone()],
            "the body carries inline content",
        ),
        (
            pb::Message {
                metadata: Some(meta.clone()),
                content: None,
                error: None,
            },
            vec![],
            "a Message needs content or an error",
        ),
        (
            pb::Message {
                metadata: None,
                content: None,
                error: None,
            },
            vec![],
            "a Message needs content or an error",
        ),
    ];
    for (proto, children, reason) in cases {
        let mut objects = d.objects.clone();
        let ids: Vec<ObjectId> = children.iter().map(|c| c.id).collect();
        let body = prost::Message::encode_to_vec(&proto);
        let msg = put(
            &mut objects,
            encode_object(ObjectClass::Message, &ids, &body),
        );
        let tree = ObjectTree { id: msg, children };
        let err = inflate(&tree, &objects, &limits()).err();
        assert!(
            matches!(&err, Some(Error::InvalidBody { reason: r, .. }) if r == reason),
            "{reason}: {err:?}"
        );
    }
    // Record values with no type, and repeated keys.
    for (record, want) in [
        (
            pb::ConfigRecord {
                items: vec![pb::config_record::Item {
                    key: "k".into(),
                    value: None,
                }],
            },
            "InvalidBody",
        ),
        (
            pb::ConfigRecord {
                items: vec![
                    pb::config_record::Item {
                        key: "k".into(),
                        value: Some(flower_message::ConfigValue::Bool(true).to_proto()),
                    },
                    pb::config_record::Item {
                        key: "k".into(),
                        value: Some(flower_message::ConfigValue::Bool(false).to_proto()),
                    },
                ],
            },
            "DuplicateKey",
        ),
    ] {
        let mut objects = Objects::new();
        let cfg = put(
            &mut objects,
            encode_object(
                ObjectClass::ConfigRecord,
                &[],
                &prost::Message::encode_to_vec(&record),
            ),
        );
        let rd = put(
            &mut objects,
            encode_object(
                ObjectClass::RecordDict,
                &[cfg],
                format!("{{\"c\": \"{cfg}\"}}").as_bytes(),
            ),
        );
        let msg = put(
            &mut objects,
            encode_object(ObjectClass::Message, &[rd], body_of_root(&d)),
        );
        let tree = ObjectTree::from_objects(&msg, &objects, &limits()).expect("tree");
        let err = inflate(&tree, &objects, &limits()).err();
        assert!(debug(&err).starts_with(want), "{err:?}");
    }
}

#[test]
fn size_limits() {
    let (_, d) = base();
    let tight = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        l
    };
    let err = inflate(&d.tree, &d, &tight(|l| l.max_object_bytes = 100)).err();
    assert!(
        matches!(
            err,
            Some(Error::LimitExceeded {
                what: "object size",
                limit: 100,
                ..
            })
        ),
        "{err:?}"
    );
    let err = inflate(&d.tree, &d, &tight(|l| l.max_tree_nodes = 5)).err();
    assert!(
        matches!(
            err,
            Some(Error::LimitExceeded {
                what: "object tree nodes",
                ..
            })
        ),
        "{err:?}"
    );
    let err = inflate(&d.tree, &d, &tight(|l| l.max_total_bytes = 30)).err();
    assert!(matches!(err, Some(Error::LimitExceeded { .. })), "{err:?}");

    // An array body naming one 16-byte chunk a million times: 16 MB of
    // data from a 3 MB body, refused before anything is allocated.
    let chunks: Vec<ObjectId> = d.tree.children[0].children[0].children[0]
        .child_ids()
        .copied()
        .collect();
    let ids = vec!["0"; 1_000_000].join(", ") + ", 1";
    let body = format!("{{\"dtype\": \"uint8\", \"shape\": [36], \"stype\": \"raw\", \"arraychunk_ids\": [{ids}]}}");
    let (tree, objects) = with_array(&d, &chunks, body.as_bytes());
    let err = inflate(&tree, &objects, &tight(|l| l.max_total_bytes = 1 << 20)).err();
    assert!(
        matches!(
            err,
            Some(Error::LimitExceeded {
                what: "array data size",
                limit: 1_048_576,
                ..
            })
        ),
        "{err:?}"
    );
    // A RecordDict naming one ArrayRecord 50,000 times: counted per name.
    let (ar, _) = first(&d, ObjectClass::ArrayRecord);
    let names: Vec<String> = (0..50_000).map(|i| format!("\"r{i}\": \"{ar}\"")).collect();
    let mut objects = d.objects.clone();
    let rd = put(
        &mut objects,
        encode_object(
            ObjectClass::RecordDict,
            &[ar],
            format!("{{{}}}", names.join(", ")).as_bytes(),
        ),
    );
    let msg = put(
        &mut objects,
        encode_object(ObjectClass::Message, &[rd], body_of_root(&d)),
    );
    let tree = ObjectTree::from_objects(&msg, &objects, &limits()).expect("tree");
    let err = inflate(&tree, &objects, &tight(|l| l.max_total_bytes = 1 << 20)).err();
    assert!(
        matches!(
            err,
            Some(Error::LimitExceeded {
                what: "inflated message size",
                ..
            })
        ),
        "{err:?}"
    );
    // Within the default limits it inflates (50,000 references, one copy).
    let ok = inflate(&tree, &objects, &limits()).map(|m| m.content().map(|c| c.len()));
    assert_eq!(ok.ok().flatten(), Some(50_000));
}

#[test]
fn bad_npy_in_an_array_surfaces_on_decoding() {
    let array = Array {
        dtype: "float32".into(),
        shape: vec![2],
        stype: flower_message::NUMPY_STYPE.into(),
        data: Bytes::from_static(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'"),
    };
    let message = Message::new(
        Metadata::default(),
        RecordDict::new().with("a", ArrayRecord::new().with("x", array)),
    );
    let d = flower_message::deflate(&message);
    // Inflating relays the bytes as flwr does (it never parses them)...
    let back = inflate(&d.tree, &d, &limits()).expect("inflates");
    let a = &back
        .content()
        .and_then(|c| c.array_record("a"))
        .expect("record")["x"];
    // ...and decoding names the problem.
    assert!(matches!(a.to_ndarray(), Err(Error::Npy(_))));
}

#[test]
fn mutated_roots_never_panic() {
    let (_, d) = base();
    let root = d.objects[&d.root].clone();
    let mut outcomes = [0usize; 2];
    let mut check = |content: Vec<u8>| {
        let mut objects = d.objects.clone();
        let id = put(&mut objects, content);
        let result = ObjectTree::from_objects(&id, &objects, &limits())
            .and_then(|tree| inflate(&tree, &objects, &limits()));
        outcomes[usize::from(result.is_ok())] += 1;
    };
    for len in 0..root.len() {
        check(root[..len].to_vec());
    }
    for i in 0..root.len() {
        for v in [0u8, b' ', b',', b'0', 0xff, root[i] ^ 1] {
            let mut m = root.to_vec();
            m[i] = v;
            check(m);
        }
    }
    // Most mutations fail; some (e.g. in metadata values) are valid messages.
    assert!(outcomes[0] > root.len(), "{outcomes:?}");
}
