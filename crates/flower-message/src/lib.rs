//! Flower 1.42 messages and their object codec, with no I/O.
//!
//! * Types: [`Message`] ([`Metadata`], [`Payload`], [`MessageError`]), the
//!   records of its content ([`RecordDict`] of [`ArrayRecord`],
//!   [`ConfigRecord`], [`MetricRecord`]), [`Array`] (data = a `.npy` file,
//!   through flower-core's codec) and the record values ([`ConfigValue`],
//!   [`MetricValue`], with Python's typing rules via [`PyValue`]).
//! * The content-addressed object tree that the Fleet API moves messages
//!   in: [`deflate`] turns a message into objects (`"<Class> <child ids>
//!   <len>" NUL <body>`, id = SHA-256 of the content) plus an
//!   [`ObjectTree`]; [`inflate`] rebuilds it, verifying every id, head,
//!   body, child list and chunk index within [`Limits`];
//!   [`validate_object`] checks one received object. Output is
//!   byte-identical to flwr's (JSON bodies as Python's `json.dumps` writes
//!   them, protobuf bodies as flwr serializes them). [`deflate_parts`] gives
//!   the same objects with each array chunk as its head plus a slice of the
//!   array ([`ObjectParts`], no copy), and [`deflate_parts_reusing`] takes
//!   the ids of chunks cut from buffers a [`ChunkIds`] remembers instead of
//!   hashing them again.
//!
//! * Protobuf forms: `TryFrom` between [`Message`], [`RecordDict`], [`Array`]
//!   and their `flower_proto` messages (flwr's `serde.py`), and
//!   [`Message::to_wire_proto`] for the Fleet API's message lists.
//!
//! Every failure is an [`Error`]; hostile input never panics.

mod codec;
mod error;
mod id;
mod message;
mod object;
mod proto;
mod pyjson;
mod records;
mod tree;
mod value;

pub use codec::{
    deflate, deflate_parts, deflate_parts_reusing, deflate_parts_with_chunk_size,
    deflate_with_chunk_size, inflate, ChunkIds, Deflated, DeflatedParts, Limits, ObjectParts,
    DEFAULT_CHUNK_SIZE,
};
pub use error::{Error, Result};
pub use id::ObjectId;
pub use message::{Message, MessageError, Metadata, Payload};
pub use object::{
    encode_object, parse_head, validate_object, HandOver, HandedOver, ObjectClass, ObjectHead,
    ObjectSource, VerifiedObjects,
};
pub use records::{
    Array, ArrayRecord, ConfigRecord, MetricRecord, Record, RecordDict, NUMPY_STYPE,
};
pub use tree::{ObjectTree, MAX_TREE_DEPTH};
pub use value::{ConfigValue, MetricValue, PyValue};
