//! flower-message: the Fleet API's object codec and protobuf forms.

use std::collections::HashMap;

use bytes::Bytes;
use flower_message::{
    deflate, inflate, parse_head, validate_object, Array, Limits, Message, ObjectId, ObjectTree,
    RecordDict,
};
use prost::Message as _;

/// Separates objects in a `fleet_objects` input.
pub const OBJECT_SEPARATOR: &[u8] = b"\n--obj--\n";

/// Bounds small enough that no input makes a target slow or large, big
/// enough for every seed.
fn limits() -> Limits {
    Limits {
        max_object_bytes: 1 << 20,
        max_tree_nodes: 4096,
        max_total_bytes: 16 << 20,
    }
}

/// Splits `data` into object contents, replacing each `@XX` (two hex digits,
/// the index of an earlier object) with that object's 64-character id, so that the fuzzer can build
/// trees whose heads and bodies name their children by SHA-256 (which it
/// could never compute itself).
pub fn objects_of(data: &[u8]) -> Vec<(ObjectId, Bytes)> {
    let mut out: Vec<(ObjectId, Bytes)> = Vec::new();
    let mut rest = data;
    loop {
        let (part, next) = match find(rest, OBJECT_SEPARATOR) {
            Some(at) => (&rest[..at], Some(&rest[at + OBJECT_SEPARATOR.len()..])),
            None => (rest, None),
        };
        let mut content = Vec::with_capacity(part.len());
        let mut i = 0;
        while i < part.len() {
            let reference = (part[i] == b'@')
                .then(|| part.get(i + 1..i + 3))
                .flatten()
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| usize::from_str_radix(hex, 16).ok())
                .and_then(|k| out.get(k));
            match reference {
                Some((id, _)) => {
                    content.extend_from_slice(id.to_string().as_bytes());
                    i += 3;
                }
                None => {
                    content.push(part[i]);
                    i += 1;
                }
            }
        }
        out.push((ObjectId::of(&content), Bytes::from(content)));
        match next {
            Some(next) => rest = next,
            None => return out,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Deflate, inflate back, deflate again: our own objects must inflate, to a
/// message with the same id. Default limits: a message that passed the small
/// fuzzing limits may still deflate into more nodes (one per record).
fn check_round_trip(message: &Message) {
    let deflated = deflate(message);
    let again = inflate(&deflated.tree, &deflated, &Limits::default())
        .unwrap_or_else(|e| panic!("our own deflated message does not inflate: {e}"));
    assert_eq!(again.metadata.message_id, deflated.root.to_string());
    assert_eq!(deflate(&again).root, deflated.root, "deflate is not stable");
}

/// What a SuperLink does with objects a node pushed: checks each
/// (`validate_object`, `parse_head`), rebuilds the tree below the last one
/// (`ObjectTree::from_objects`) and inflates the message. Input: object
/// contents separated by [`OBJECT_SEPARATOR`], children before parents,
/// `@XX` naming object `XX` (see [`objects_of`]). Oracle: `validate_object`
/// agrees with `parse_head` on objects stored under their own id and refuses
/// a wrong id; trees round-trip through protobuf; an inflated message
/// carries the root id, and re-deflates and re-inflates to the same id.
pub fn fleet_objects(data: &[u8]) {
    let objects = objects_of(data);
    let wrong = ObjectId::of(b"not the content");
    for (id, content) in &objects {
        let head = parse_head(id, content);
        let validated = validate_object(id, content);
        match (&head, &validated) {
            (Ok(h), Ok(v)) => assert_eq!(h, v),
            (Err(_), Err(_)) => {}
            _ => panic!("validate_object and parse_head disagree on a correctly named object"),
        }
        if let Ok(h) = &head {
            assert!(h.body_offset <= content.len());
        }
        if *id != wrong {
            assert!(validate_object(&wrong, content).is_err());
        }
    }
    let Some((root, _)) = objects.last() else {
        return;
    };
    let root = *root;
    let store: HashMap<ObjectId, Bytes> = objects.into_iter().collect();
    let limits = limits();
    let Ok(tree) = ObjectTree::from_objects(&root, &store, &limits) else {
        return;
    };
    assert_eq!(tree.id, root);
    assert_eq!(
        ObjectTree::from_proto(&tree.to_proto(), &limits)
            .ok()
            .as_ref(),
        Some(&tree),
        "an object tree does not round-trip through protobuf"
    );
    let Ok(message) = inflate(&tree, &store, &limits) else {
        return;
    };
    assert_eq!(message.metadata.message_id, root.to_string());
    check_round_trip(&message);
}

/// The protobuf `TryFrom` conversions of flower-message, on one input
/// decoded as each of `Message`, `RecordDict`, `Array` and `ObjectTree`.
/// Oracle: typed → proto → typed is stable, a converted message deflates
/// and inflates back, a tree converts back to itself.
pub fn fleet_proto(data: &[u8]) {
    let limits = limits();
    if let Ok(raw) = flower_proto::Message::decode(data) {
        if let Ok(message) = Message::try_from(raw) {
            let _ = message.to_wire_proto();
            let proto = flower_proto::Message::try_from(&message)
                .expect("a message read from protobuf converts back");
            let bytes = proto.encode_to_vec();
            let again = Message::try_from(
                flower_proto::Message::decode(bytes.as_slice()).expect("our own encoding decodes"),
            )
            .expect("our own message converts");
            let bytes_again = flower_proto::Message::try_from(&again)
                .expect("converts back")
                .encode_to_vec();
            assert_eq!(bytes_again, bytes, "typed -> proto -> typed is not stable");
            check_round_trip(&message);
        }
    }
    if let Ok(raw) = flower_proto::RecordDict::decode(data) {
        if let Ok(records) = RecordDict::try_from(raw) {
            let proto = flower_proto::RecordDict::try_from(&records)
                .expect("a RecordDict read from protobuf converts back");
            let bytes = proto.encode_to_vec();
            let again = RecordDict::try_from(
                flower_proto::RecordDict::decode(bytes.as_slice())
                    .expect("our own encoding decodes"),
            )
            .expect("our own RecordDict converts");
            let bytes_again = flower_proto::RecordDict::try_from(&again)
                .expect("converts back")
                .encode_to_vec();
            assert_eq!(bytes_again, bytes, "typed -> proto -> typed is not stable");
        }
    }
    if let Ok(raw) = flower_proto::Array::decode(data) {
        if let Ok(array) = Array::try_from(raw) {
            let _ = array.to_ndarray();
            let proto = flower_proto::Array::try_from(&array)
                .expect("an Array read from protobuf converts back");
            let again = Array::try_from(proto).expect("our own Array converts");
            assert_eq!(again, array);
        }
    }
    if let Ok(raw) = flower_proto::ObjectTree::decode(data) {
        if let Ok(tree) = ObjectTree::from_proto(&raw, &limits) {
            assert_eq!(
                ObjectTree::from_proto(&tree.to_proto(), &limits)
                    .ok()
                    .as_ref(),
                Some(&tree)
            );
        }
    }
}
