//! Object content: `"<Class> <child ids> <body length>" NUL <body>`, and its
//! validation (flwr's `supercore/inflatable/inflatable_object.py` and
//! `inflatable_utils.py::validate_object_content`).

use std::fmt;

use bytes::Bytes;

use crate::{Error, ObjectId};

/// The closed registry of object classes (flwr's
/// `inflatable_class_registry`), named by their Python `__qualname__`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectClass {
    /// A slice of an `Array`'s data; the body is the raw bytes.
    ArrayChunk,
    /// An array's metadata (JSON) over its chunks.
    Array,
    /// Named arrays (JSON name → array id).
    ArrayRecord,
    /// A `flwr.proto.ConfigRecord`.
    ConfigRecord,
    /// A `flwr.proto.MetricRecord`.
    MetricRecord,
    /// Named records (JSON name → record id).
    RecordDict,
    /// A `flwr.proto.Message` with metadata (and error), no content.
    Message,
}

impl ObjectClass {
    /// Every class.
    pub const ALL: [ObjectClass; 7] = [
        ObjectClass::ArrayChunk,
        ObjectClass::Array,
        ObjectClass::ArrayRecord,
        ObjectClass::ConfigRecord,
        ObjectClass::MetricRecord,
        ObjectClass::RecordDict,
        ObjectClass::Message,
    ];

    /// The name written in object heads.
    pub const fn name(self) -> &'static str {
        match self {
            ObjectClass::ArrayChunk => "ArrayChunk",
            ObjectClass::Array => "Array",
            ObjectClass::ArrayRecord => "ArrayRecord",
            ObjectClass::ConfigRecord => "ConfigRecord",
            ObjectClass::MetricRecord => "MetricRecord",
            ObjectClass::RecordDict => "RecordDict",
            ObjectClass::Message => "Message",
        }
    }

    /// The class named `name` in a head.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        ObjectClass::ALL
            .into_iter()
            .find(|c| c.name().as_bytes() == name)
    }

    /// Whether objects of this class can have `child` as a child.
    pub const fn can_hold(self, child: ObjectClass) -> bool {
        matches!(
            (self, child),
            (ObjectClass::Message, ObjectClass::RecordDict)
                | (
                    ObjectClass::RecordDict,
                    ObjectClass::ArrayRecord
                        | ObjectClass::ConfigRecord
                        | ObjectClass::MetricRecord
                )
                | (ObjectClass::ArrayRecord, ObjectClass::Array)
                | (ObjectClass::Array, ObjectClass::ArrayChunk)
        )
    }

    /// What this class can hold, for error messages.
    pub(crate) const fn child_description(self) -> &'static str {
        match self {
            ObjectClass::Message => "a RecordDict",
            ObjectClass::RecordDict => "an ArrayRecord, ConfigRecord or MetricRecord",
            ObjectClass::ArrayRecord => "an Array",
            ObjectClass::Array => "an ArrayChunk",
            _ => "nothing (this class has no children)",
        }
    }
}

impl fmt::Display for ObjectClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The parsed head of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// The class.
    pub class: ObjectClass,
    /// Child ids, in head order (unique).
    pub children: Vec<ObjectId>,
    /// Offset of the body in the content (just after the NUL).
    pub body_offset: usize,
}

/// Encodes an object: head, NUL, body.
pub fn encode_object(class: ObjectClass, children: &[ObjectId], body: &[u8]) -> Vec<u8> {
    let mut out = encode_head(class, children, body.len(), body.len());
    out.extend_from_slice(body);
    out
}

/// The head of an object (class, children, body length, NUL) whose body of
/// `body_len` bytes follows elsewhere; `spare` bytes of capacity are
/// reserved behind it.
pub(crate) fn encode_head(
    class: ObjectClass,
    children: &[ObjectId],
    body_len: usize,
    spare: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(class.name().len() + 66 * children.len() + 24 + spare);
    out.extend_from_slice(class.name().as_bytes());
    out.push(b' ');
    for (i, c) in children.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        c.write_hex(&mut out);
    }
    out.push(b' ');
    out.extend_from_slice(body_len.to_string().as_bytes());
    out.push(0);
    out
}

/// Parses the head of `content`, stored under `id`, and checks it the way
/// flwr's `validate_object_content` does, more strictly: the class is known,
/// child ids are 64 lowercase hex characters and unique, the length is a
/// canonical decimal equal to the body length. The hash is not checked
/// here; see [`validate_object`].
pub fn parse_head(id: &ObjectId, content: &[u8]) -> Result<ObjectHead, Error> {
    let malformed = |reason| Error::MalformedHeader { id: *id, reason };
    let nul = content
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed("no NUL byte between head and body"))?;
    let head = &content[..nul];
    let mut parts = head.split(|&b| b == b' ');
    let (Some(class), Some(children), Some(len), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three space-separated fields"));
    };
    let class = ObjectClass::from_name(class).ok_or_else(|| Error::UnknownClass {
        id: *id,
        class: String::from_utf8_lossy(&class[..class.len().min(80)]).into_owned(),
    })?;
    let children = if children.is_empty() {
        Vec::new()
    } else {
        let ids = children
            .split(|&b| b == b',')
            .map(ObjectId::parse_bytes)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, child) in ids.iter().enumerate() {
            if ids[..i].contains(child) {
                return Err(Error::DuplicateChild {
                    parent: *id,
                    child: *child,
                });
            }
        }
        ids
    };
    if len.is_empty() || !len.iter().all(u8::is_ascii_digit) {
        return Err(malformed("body length is not a decimal number"));
    }
    if len.len() > 1 && len[0] == b'0' {
        return Err(malformed("body length has leading zeros"));
    }
    let declared = std::str::from_utf8(len)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| malformed("body length does not fit in 64 bits"))?;
    let body_offset = nul + 1;
    let actual = (content.len() - body_offset) as u64;
    if declared != actual {
        return Err(Error::WrongLength {
            id: *id,
            declared,
            actual,
        });
    }
    Ok(ObjectHead {
        class,
        children,
        body_offset,
    })
}

/// Checks an object received under `id` (e.g. by `PushObject`): its content
/// hashes to `id` and its head is valid ([`parse_head`]).
pub fn validate_object(id: &ObjectId, content: &[u8]) -> Result<ObjectHead, Error> {
    let actual = ObjectId::of(content);
    if actual != *id {
        return Err(Error::IdMismatch {
            expected: *id,
            actual,
        });
    }
    parse_head(id, content)
}

/// Where inflation reads objects from.
pub trait ObjectSource {
    /// The content stored under `id`, if any.
    fn object(&self, id: &ObjectId) -> Option<Bytes>;

    /// Whether every content this source returns was already checked to
    /// hash to its id ([`validate_object`], e.g. as each object was pushed),
    /// so that inflation parses heads without hashing the bytes again.
    /// `false` unless the source says otherwise ([`VerifiedObjects`]).
    fn contents_verified(&self) -> bool {
        false
    }
}

/// An [`ObjectSource`] whose every content was checked with
/// [`validate_object`] when it was received: [`inflate`](crate::inflate)
/// then skips the second SHA-256 pass over the model's bytes (heads, trees,
/// bodies and limits are still checked).
#[derive(Debug, Clone, Copy)]
pub struct VerifiedObjects<'a, S>(pub &'a S);

impl<S: ObjectSource> ObjectSource for VerifiedObjects<'_, S> {
    fn object(&self, id: &ObjectId) -> Option<Bytes> {
        self.0.object(id)
    }

    fn contents_verified(&self) -> bool {
        true
    }
}

/// An object's stored content as [`HandOver`] hands it over: in memory
/// already, or read on the way (e.g. from a spill file).
pub trait HandedOver {
    /// The content; `None` when it cannot be had (the caller's source logs
    /// why; inflation then reports the object missing).
    fn into_content(self) -> Option<Bytes>;
}

impl HandedOver for Bytes {
    fn into_content(self) -> Option<Bytes> {
        Some(self)
    }
}

/// An [`ObjectSource`] that hands each object over on its fetch:
/// [`inflate`](crate::inflate) fetches every object once, and then frees
/// each chunk as soon as the last array using it is assembled, so a message
/// is never held as chunks and as arrays at once.
#[derive(Debug)]
pub struct HandOver<V = Bytes>(std::sync::Mutex<std::collections::HashMap<ObjectId, V>>);

impl<V> HandOver<V> {
    /// Hands over `objects`.
    pub fn new(objects: std::collections::HashMap<ObjectId, V>) -> Self {
        HandOver(std::sync::Mutex::new(objects))
    }
}

impl<V: HandedOver> ObjectSource for HandOver<V> {
    fn object(&self, id: &ObjectId) -> Option<Bytes> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)?
            .into_content()
    }
}

impl<S: std::hash::BuildHasher> ObjectSource for std::collections::HashMap<ObjectId, Bytes, S> {
    fn object(&self, id: &ObjectId) -> Option<Bytes> {
        self.get(id).cloned()
    }
}

impl ObjectSource for std::collections::BTreeMap<ObjectId, Bytes> {
    fn object(&self, id: &ObjectId) -> Option<Bytes> {
        self.get(id).cloned()
    }
}

impl<S: std::hash::BuildHasher> ObjectSource for indexmap::IndexMap<ObjectId, Bytes, S> {
    fn object(&self, id: &ObjectId) -> Option<Bytes> {
        self.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ObjectId {
        ObjectId::from_bytes([7; 32])
    }

    #[test]
    fn head_round_trip() {
        let child = ObjectId::of(b"x");
        let content = encode_object(ObjectClass::Array, &[child, id()], b"{}");
        let head = parse_head(&id(), &content).ok();
        assert_eq!(
            head,
            Some(ObjectHead {
                class: ObjectClass::Array,
                children: vec![child, id()],
                body_offset: 6 + 129 + 3,
            })
        );
        assert_eq!(
            encode_object(ObjectClass::ArrayChunk, &[], b"ab"),
            b"ArrayChunk  2\0ab"
        );
    }

    #[test]
    fn malformed_heads_give_typed_errors() {
        let cases: [(&[u8], &str); 10] = [
            (b"ArrayChunk  2ab", "no NUL"),
            (b"ArrayChunk 2\0ab", "three"),
            (b"ArrayChunk   2\0ab", "three"),
            (b"ArrayChunk  02\0ab", "leading"),
            (b"ArrayChunk  +2\0ab", "decimal"),
            (b"ArrayChunk  \0ab", "decimal"),
            (b"ArrayChunk  99999999999999999999999\0", "64 bits"),
            (b"Array x 2\0ab", "BadObjectId"),
            (b"Tensor  2\0ab", "UnknownClass"),
            (b"ArrayChunk  3\0ab", "WrongLength"),
        ];
        for (content, want) in cases {
            let err = parse_head(&id(), content).err();
            let text = format!("{err:?}");
            assert!(
                text.contains(want),
                "{}: {text}",
                String::from_utf8_lossy(content)
            );
        }
        let dup = format!("Array {0},{0} 0\0", ObjectId::of(b"x"));
        assert!(matches!(
            parse_head(&id(), dup.as_bytes()),
            Err(Error::DuplicateChild { .. })
        ));
    }

    #[test]
    fn validate_checks_the_hash_first() {
        let content = encode_object(ObjectClass::ArrayChunk, &[], b"data");
        let good = ObjectId::of(&content);
        assert!(validate_object(&good, &content).is_ok());
        assert!(matches!(
            validate_object(&id(), &content),
            Err(Error::IdMismatch { .. })
        ));
    }

    #[test]
    fn hand_over_gives_each_object_once() {
        let source = HandOver::new([(id(), Bytes::from_static(b"x"))].into_iter().collect());
        assert_eq!(source.object(&id()), Some(Bytes::from_static(b"x")));
        assert_eq!(source.object(&id()), None);
        assert!(!source.contents_verified());
    }
}
