//! The one error type of this crate.

use crate::{ObjectClass, ObjectId};

/// Everything that can go wrong building, deflating or inflating messages.
///
/// Inflating hostile input never panics: every malformed id, head, body,
/// tree or size ends in one of these variants.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object id that is not 64 lowercase hex characters.
    #[error("invalid object id {id:?}: expected 64 lowercase hex characters")]
    BadObjectId {
        /// The offending text (lossy UTF-8, at most 80 bytes).
        id: String,
    },
    /// An object's content does not hash to the id it was given under.
    #[error("object {expected}: its content hashes to {actual}")]
    IdMismatch {
        /// The id the object was stored or announced under.
        expected: ObjectId,
        /// `sha256(content)`.
        actual: ObjectId,
    },
    /// The head names a class outside flwr's closed registry.
    #[error("object {id}: unknown class {class:?}")]
    UnknownClass {
        /// The object.
        id: ObjectId,
        /// The class name found (lossy UTF-8, at most 80 bytes).
        class: String,
    },
    /// The head is not `"<Class> <child ids> <body length>"` followed by a NUL.
    #[error("object {id}: malformed head: {reason}")]
    MalformedHeader {
        /// The object.
        id: ObjectId,
        /// What is wrong.
        reason: &'static str,
    },
    /// The body length in the head differs from the actual body length.
    #[error("object {id}: head declares a {declared}-byte body, {actual} bytes follow")]
    WrongLength {
        /// The object.
        id: ObjectId,
        /// Length in the head.
        declared: u64,
        /// Bytes after the NUL.
        actual: u64,
    },
    /// An object named by the tree (or a head) is not available.
    #[error("object {id} is missing")]
    MissingObject {
        /// The missing object.
        id: ObjectId,
    },
    /// An object appears among its own ancestors in an object tree.
    #[error("object tree has a cycle through {id}")]
    Cycle {
        /// The repeated id.
        id: ObjectId,
    },
    /// A node lists the same child twice (flwr lists unique children).
    #[error("object {parent} lists child {child} twice")]
    DuplicateChild {
        /// The parent.
        parent: ObjectId,
        /// The repeated child.
        child: ObjectId,
    },
    /// The same key twice in a record or reference map (flwr writes dicts).
    #[error("object {id}: key {key:?} appears twice")]
    DuplicateKey {
        /// The object.
        id: ObjectId,
        /// The repeated key.
        key: String,
    },
    /// The children in an object tree differ from those in the object's head.
    #[error("object {id}: the tree lists {tree} children, the head lists {head} (or other ids)")]
    TreeMismatch {
        /// The object.
        id: ObjectId,
        /// Number of children in the tree node.
        tree: usize,
        /// Number of children in the head.
        head: usize,
    },
    /// The ids a body refers to differ from the children in its head.
    #[error("object {id}: the body refers to child {child}, which is not in the head")]
    UnknownChild {
        /// The parent.
        id: ObjectId,
        /// The id the body names.
        child: ObjectId,
    },
    /// A child in the head is never referred to by the body.
    #[error("object {id}: head child {child} is not referred to by the body")]
    UnusedChild {
        /// The parent.
        id: ObjectId,
        /// The unreferenced child.
        child: ObjectId,
    },
    /// A child of a class its parent cannot hold (e.g. an `Array` inside a
    /// `RecordDict`), or a root that is not a `Message`.
    #[error("object {id} is a {found}, expected {expected}")]
    WrongClass {
        /// The object.
        id: ObjectId,
        /// What the parent (or the caller) allows.
        expected: &'static str,
        /// What the head says.
        found: ObjectClass,
    },
    /// An `Array` body names a chunk index beyond the chunks in its head.
    #[error("Array {id}: chunk index {index} is out of range ({chunks} chunks in the head)")]
    ChunkIndexOutOfRange {
        /// The array.
        id: ObjectId,
        /// The index found in `arraychunk_ids`.
        index: u64,
        /// Number of children in the head.
        chunks: usize,
    },
    /// A JSON body (`Array`, `ArrayRecord`, `RecordDict`) does not parse.
    #[error("{class} {id}: malformed JSON body")]
    JsonBody {
        /// The object.
        id: ObjectId,
        /// Its class.
        class: ObjectClass,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A protobuf body (`Message`, `ConfigRecord`, `MetricRecord`) does not
    /// decode.
    #[error("{class} {id}: malformed protobuf body")]
    ProtoBody {
        /// The object.
        id: ObjectId,
        /// Its class.
        class: ObjectClass,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// A body that parses but breaks flwr's rules (e.g. a `Message` with an
    /// error and content, a record value with no type).
    #[error("{class} {id}: {reason}")]
    InvalidBody {
        /// The object.
        id: ObjectId,
        /// Its class.
        class: ObjectClass,
        /// What is wrong.
        reason: String,
    },
    /// An `Array`'s data is not a valid `.npy` buffer (or one the codec
    /// does not support).
    #[error("array data is not a valid .npy buffer")]
    Npy(#[source] flower_core::CodecError),
    /// An `Array`'s `.npy` header disagrees with its `dtype`/`shape` fields.
    #[error("array declares {declared}, its .npy data holds {found}")]
    ArrayMismatch {
        /// `dtype` and `shape` of the `Array`.
        declared: String,
        /// `dtype` and `shape` of the `.npy` header.
        found: String,
    },
    /// `Array::to_ndarray` on an array that is not `numpy.ndarray`-serialized.
    #[error("unsupported array serialization {stype:?} (expected \"numpy.ndarray\")")]
    WrongStype {
        /// The array's `stype`.
        stype: String,
    },
    /// A value flwr's typing rules refuse for a record (wrong type, mixed
    /// list, integer out of the 64-bit range, empty `oneof`).
    #[error("invalid record value: {0}")]
    InvalidValue(String),
    /// A configured limit was exceeded.
    #[error("{what} exceeds the limit: {actual} > {limit}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The size found (or reached when counting stopped).
        actual: u64,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
