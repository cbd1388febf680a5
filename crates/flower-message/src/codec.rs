//! Deflate (a [`Message`] to content-addressed objects plus an
//! [`ObjectTree`]) and inflate (back, verifying everything), as flwr 1.42's
//! `deflate()`/`inflate()` methods of `Message`, `RecordDict`,
//! `ArrayRecord`, `Array`, `ArrayChunk`, `ConfigRecord` and `MetricRecord`
//! do.
//!
//! Memory stays O(model): inflated chunk bodies and single-chunk arrays are
//! `Bytes` slices of the object contents (no copy); a multi-chunk array is
//! copied once into one buffer, and inflation lets go of each chunk as soon
//! as the last array that uses it has copied it, so a source that hands over
//! its contents (each object is fetched once) never holds a message's chunks
//! and its assembled arrays at once. Deflating copies each chunk once (the
//! head must precede it in the object).

use std::collections::HashMap;
use std::num::NonZeroUsize;

use bytes::{Bytes, BytesMut};
use flower_proto as pb;
use indexmap::IndexMap;
use prost::Message as _;

use crate::message::encode_message_body;
use crate::object::{encode_head, encode_object, parse_head, validate_object};
use crate::pyjson::{self, ArrayBody, StrPairs};
use crate::tree::check_child_class;
use crate::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Error, Message, MessageError, Metadata,
    MetricRecord, MetricValue, ObjectClass, ObjectId, ObjectSource, ObjectTree, Payload, Record,
    RecordDict,
};

/// flwr's array chunk size, `FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE` (5 MiB).
pub const DEFAULT_CHUNK_SIZE: NonZeroUsize = match NonZeroUsize::new(5 * 1024 * 1024) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// Bounds applied while inflating (and rebuilding trees from) objects a
/// peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest single object (head + body). Default 128 MiB: chunks are
    /// 5 MiB, but a ConfigRecord may hold large `bytes` values.
    pub max_object_bytes: usize,
    /// Most nodes in an object tree (repeats included). Default 2^20.
    pub max_tree_nodes: usize,
    /// Largest logical size of the inflated message: array data plus record
    /// values, plus 64 bytes per entry, counting an object again for every
    /// reference to it (shared objects cost no memory twice, but a body
    /// that names one array a million times must not pass). Default 4 GiB.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_object_bytes: 128 << 20,
            max_tree_nodes: 1 << 20,
            max_total_bytes: 4 << 30,
        }
    }
}

/// A deflated message.
#[derive(Debug, Clone, PartialEq)]
pub struct Deflated {
    /// The root (`Message`) object's id, which is the message id.
    pub root: ObjectId,
    /// The object tree.
    pub tree: ObjectTree,
    /// Every distinct object's content, in post-order of first appearance
    /// (children before parents; the order of flwr's
    /// `get_all_nested_objects`).
    pub objects: IndexMap<ObjectId, Bytes>,
}

impl ObjectSource for Deflated {
    fn object(&self, id: &ObjectId) -> Option<Bytes> {
        self.objects.get(id).cloned()
    }
}

/// An object's content as two parts, `head` then `tail`. Array chunks are
/// their head and a slice of the array's own bytes, so deflating does not
/// copy array data; every other object is whole in `head` (empty `tail`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectParts {
    /// The start of the content (for chunks: the head and its NUL).
    pub head: Bytes,
    /// The rest (for chunks: the chunk's bytes, shared with the array).
    pub tail: Bytes,
}

impl ObjectParts {
    /// Content in two parts, `head` then `tail`.
    pub fn chained(head: Bytes, tail: Bytes) -> Self {
        ObjectParts { head, tail }
    }

    /// The non-empty parts, in order.
    pub fn parts(&self) -> impl Iterator<Item = &Bytes> {
        [&self.head, &self.tail]
            .into_iter()
            .filter(|b| !b.is_empty())
    }

    /// The whole content: free for one-part content, a copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        if self.tail.is_empty() {
            return self.head.clone();
        }
        if self.head.is_empty() {
            return self.tail.clone();
        }
        let mut whole = BytesMut::with_capacity(self.len());
        whole.extend_from_slice(&self.head);
        whole.extend_from_slice(&self.tail);
        whole.freeze()
    }

    /// The content's length.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Whether the content is empty (never, for a valid object).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for ObjectParts {
    fn from(head: Bytes) -> Self {
        ObjectParts {
            head,
            tail: Bytes::new(),
        }
    }
}

/// A deflated message whose array chunks share the arrays' buffers; see
/// [`deflate_parts`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeflatedParts {
    /// The root (`Message`) object's id, which is the message id.
    pub root: ObjectId,
    /// The object tree.
    pub tree: ObjectTree,
    /// Every distinct object's content, in the order of [`Deflated::objects`].
    pub objects: IndexMap<ObjectId, ObjectParts>,
}

/// The ids of array chunks already hashed, by the bytes they were cut from,
/// so that deflating the same arrays again (a broadcast model sent for
/// evaluation, then for the next round's training) does not hash them
/// again; see [`deflate_parts_reusing`]. It holds those bytes: a remembered
/// buffer cannot be freed and its address reused for other content while
/// its id is remembered, and `Bytes` never change.
#[derive(Debug, Default, Clone)]
pub struct ChunkIds {
    ids: HashMap<(usize, usize), (Bytes, ObjectId)>,
}

impl ChunkIds {
    /// How many chunks are remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no chunk is remembered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn key(data: &Bytes) -> (usize, usize) {
        (data.as_ptr() as usize, data.len())
    }

    fn get(&self, data: &Bytes) -> Option<ObjectId> {
        self.ids.get(&Self::key(data)).map(|(_, id)| *id)
    }

    fn insert(&mut self, data: &Bytes, id: ObjectId) {
        self.ids.insert(Self::key(data), (data.clone(), id));
    }
}

impl From<DeflatedParts> for Deflated {
    fn from(parts: DeflatedParts) -> Self {
        Deflated {
            root: parts.root,
            tree: parts.tree,
            objects: parts
                .objects
                .into_iter()
                .map(|(id, content)| (id, content.to_bytes()))
                .collect(),
        }
    }
}

/// Deflates `message` with flwr's default 5 MiB chunks.
pub fn deflate(message: &Message) -> Deflated {
    deflate_with_chunk_size(message, DEFAULT_CHUNK_SIZE)
}

/// Deflates `message`, cutting array data into `chunk_size`-byte chunks.
/// `metadata.message_id` is left out of the content (it is the result's
/// [`Deflated::root`]).
pub fn deflate_with_chunk_size(message: &Message, chunk_size: NonZeroUsize) -> Deflated {
    deflate_parts_with_chunk_size(message, chunk_size).into()
}

/// Deflates `message` as [`deflate`] does, the array chunks' contents being
/// their heads and slices of the arrays' own buffers: no array byte is
/// copied, and the ids are hashed over the two parts.
pub fn deflate_parts(message: &Message) -> DeflatedParts {
    deflate_parts_with_chunk_size(message, DEFAULT_CHUNK_SIZE)
}

/// [`deflate_parts`] with `chunk_size`-byte chunks.
pub fn deflate_parts_with_chunk_size(message: &Message, chunk_size: NonZeroUsize) -> DeflatedParts {
    deflate_parts_inner(message, chunk_size, None).0
}

/// [`deflate_parts`], taking the ids of chunks cut from the very buffers
/// `known` remembers instead of hashing them; returns the chunk ids of this
/// message, to pass to the next call.
pub fn deflate_parts_reusing(message: &Message, known: &ChunkIds) -> (DeflatedParts, ChunkIds) {
    let (parts, seen) = deflate_parts_inner(message, DEFAULT_CHUNK_SIZE, Some(known));
    (parts, seen.unwrap_or_default())
}

fn deflate_parts_inner(
    message: &Message,
    chunk_size: NonZeroUsize,
    known: Option<&ChunkIds>,
) -> (DeflatedParts, Option<ChunkIds>) {
    let mut d = Deflater {
        chunk_size: chunk_size.get(),
        objects: IndexMap::new(),
        known,
        seen: known.map(|_| ChunkIds::default()),
    };
    let (children, error) = match &message.payload {
        Payload::Content(content) => (vec![d.record_dict(content)], None),
        Payload::Error(e) => (Vec::new(), Some(e)),
    };
    let body = encode_message_body(&message.metadata, error);
    let root = d.put(ObjectClass::Message, &children, &body);
    let parts = DeflatedParts {
        root: root.id,
        objects: d.objects,
        tree: root,
    };
    (parts, d.seen)
}

impl Message {
    /// This message's id: the id of its `Message` object, deflated with
    /// flwr's default 5 MiB chunks (the id depends on the chunk size once an
    /// array exceeds it).
    pub fn object_id(&self) -> ObjectId {
        deflate(self).root
    }
}

struct Deflater<'k> {
    chunk_size: usize,
    objects: IndexMap<ObjectId, ObjectParts>,
    /// Chunk ids to reuse, and where this deflation's are collected.
    known: Option<&'k ChunkIds>,
    seen: Option<ChunkIds>,
}

impl Deflater<'_> {
    /// Stores an object (first occurrence wins the position) and returns its
    /// tree node.
    fn put(&mut self, class: ObjectClass, children: &[ObjectTree], body: &[u8]) -> ObjectTree {
        let ids: Vec<ObjectId> = children.iter().map(|c| c.id).collect();
        let content = encode_object(class, &ids, body);
        let id = ObjectId::of(&content);
        self.objects.entry(id).or_insert_with(|| ObjectParts {
            head: Bytes::from(content),
            tail: Bytes::new(),
        });
        ObjectTree {
            id,
            children: children.to_vec(),
        }
    }

    /// Stores an array chunk as its head and `data` itself.
    fn put_chunk(&mut self, data: Bytes) -> ObjectTree {
        let head = encode_head(ObjectClass::ArrayChunk, &[], data.len(), 0);
        let id = self
            .known
            .and_then(|known| known.get(&data))
            .unwrap_or_else(|| ObjectId::of_parts(&[&head, &data]));
        if let Some(seen) = &mut self.seen {
            seen.insert(&data, id);
        }
        self.objects.entry(id).or_insert_with(|| ObjectParts {
            head: Bytes::from(head),
            tail: data,
        });
        ObjectTree {
            id,
            children: Vec::new(),
        }
    }

    fn record_dict(&mut self, rd: &RecordDict) -> ObjectTree {
        let named: Vec<(&str, ObjectTree)> = rd
            .iter()
            .map(|(name, record)| {
                let tree = match record {
                    Record::Array(r) => self.array_record(r),
                    Record::Config(r) => self.config_record(r),
                    Record::Metric(r) => self.metric_record(r),
                };
                (name.as_str(), tree)
            })
            .collect();
        self.named_refs(ObjectClass::RecordDict, named)
    }

    fn array_record(&mut self, ar: &ArrayRecord) -> ObjectTree {
        let named: Vec<(&str, ObjectTree)> = ar
            .iter()
            .map(|(name, array)| (name.as_str(), self.array(array)))
            .collect();
        self.named_refs(ObjectClass::ArrayRecord, named)
    }

    /// A `{name: child_id}` JSON body over the unique children.
    fn named_refs(&mut self, class: ObjectClass, named: Vec<(&str, ObjectTree)>) -> ObjectTree {
        let hex: Vec<String> = named.iter().map(|(_, t)| t.id.to_string()).collect();
        let mut body = Vec::with_capacity(named.len() * 80 + 2);
        pyjson::write_str_map(
            &mut body,
            named
                .iter()
                .zip(&hex)
                .map(|((name, _), id)| (*name, id.as_str())),
        );
        let mut unique: Vec<ObjectTree> = Vec::with_capacity(named.len());
        for (_, tree) in named {
            if !unique.iter().any(|u| u.id == tree.id) {
                unique.push(tree);
            }
        }
        self.put(class, &unique, &body)
    }

    fn array(&mut self, array: &Array) -> ObjectTree {
        let mut unique: Vec<ObjectTree> = Vec::new();
        let mut index_of: HashMap<ObjectId, u64> = HashMap::new();
        let mut indices = Vec::with_capacity(array.data.len() / self.chunk_size + 1);
        let len = array.data.len();
        for start in (0..len).step_by(self.chunk_size) {
            let chunk = array.data.slice(start..len.min(start + self.chunk_size));
            let tree = self.put_chunk(chunk);
            let next = unique.len() as u64;
            let index = *index_of.entry(tree.id).or_insert(next);
            if index == next {
                unique.push(tree);
            }
            indices.push(index);
        }
        let mut body = Vec::with_capacity(96 + 3 * indices.len());
        body.extend_from_slice(b"{\"dtype\": ");
        pyjson::write_str(&mut body, &array.dtype);
        body.extend_from_slice(b", \"shape\": ");
        pyjson::write_uint_list(&mut body, array.shape.iter().map(|&d| d as u64));
        body.extend_from_slice(b", \"stype\": ");
        pyjson::write_str(&mut body, &array.stype);
        body.extend_from_slice(b", \"arraychunk_ids\": ");
        pyjson::write_uint_list(&mut body, indices.into_iter());
        body.push(b'}');
        self.put(ObjectClass::Array, &unique, &body)
    }

    fn config_record(&mut self, r: &ConfigRecord) -> ObjectTree {
        let body = pb::ConfigRecord {
            items: r
                .iter()
                .map(|(k, v)| pb::config_record::Item {
                    key: k.clone(),
                    value: Some(v.to_proto()),
                })
                .collect(),
        }
        .encode_to_vec();
        self.put(ObjectClass::ConfigRecord, &[], &body)
    }

    fn metric_record(&mut self, r: &MetricRecord) -> ObjectTree {
        let body = pb::MetricRecord {
            items: r
                .iter()
                .map(|(k, v)| pb::metric_record::Item {
                    key: k.clone(),
                    value: Some(v.to_proto()),
                })
                .collect(),
        }
        .encode_to_vec();
        self.put(ObjectClass::MetricRecord, &[], &body)
    }
}

/// Rebuilds the message whose objects `tree` names, reading contents from
/// `objects`. Verifies every object: content hashes to its id, valid head,
/// head children equal the tree's children, each child of a class its
/// parent can hold, bodies well-formed and referring to exactly the head's
/// children, chunk indices in range, and `limits`. Objects not in the tree
/// are ignored. `metadata.message_id` is set to the root id.
pub fn inflate(
    tree: &ObjectTree,
    objects: &impl ObjectSource,
    limits: &Limits,
) -> Result<Message, Error> {
    let mut inf = Inflater {
        objects,
        limits,
        memo: HashMap::new(),
        parents: distinct_parents(tree),
        nodes: 0,
        path: Vec::with_capacity(crate::MAX_TREE_DEPTH),
    };
    inf.node(tree, None)?;
    match inf.memo.remove(&tree.id) {
        Some(Done {
            node: Node::Message(m),
            ..
        }) => Ok(m),
        // `node` stored the root and checked that it is a Message.
        _ => Err(Error::MissingObject { id: tree.id }),
    }
}

/// For every object, how many distinct parent objects list it: a chunk's
/// bytes may go once that many arrays have been assembled from it.
fn distinct_parents(tree: &ObjectTree) -> HashMap<ObjectId, usize> {
    let mut counts = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![tree];
    while let Some(t) = stack.pop() {
        if !seen.insert(t.id) {
            // A repeated subtree lists the same children again.
            continue;
        }
        for child in &t.children {
            *counts.entry(child.id).or_insert(0) += 1;
            stack.push(child);
        }
    }
    counts
}

/// An inflated object.
enum Node {
    Chunk(Bytes),
    /// A chunk every array using it has copied already: its class and
    /// children stay in the memo for the tree checks, its bytes are gone.
    SpentChunk,
    Array(Array),
    ArrayRecord(ArrayRecord),
    Config(ConfigRecord),
    Metric(MetricRecord),
    RecordDict(RecordDict),
    Message(Message),
}

/// An inflated object, its head's children and its logical size.
struct Done {
    class: ObjectClass,
    children: Vec<ObjectId>,
    node: Node,
    size: u64,
}

struct Inflater<'a, S> {
    objects: &'a S,
    limits: &'a Limits,
    memo: HashMap<ObjectId, Done>,
    /// [`distinct_parents`], counted down as arrays are assembled.
    parents: HashMap<ObjectId, usize>,
    nodes: usize,
    path: Vec<ObjectId>,
}

/// Per-entry overhead counted against `max_total_bytes`.
const ENTRY_COST: u64 = 64;

impl<S: ObjectSource> Inflater<'_, S> {
    fn too_big(&self, what: &'static str, actual: u64) -> Error {
        Error::LimitExceeded {
            what,
            limit: self.limits.max_total_bytes,
            actual,
        }
    }

    /// Adds `more` to `size`, failing past `max_total_bytes`.
    fn grow(&self, size: &mut u64, more: u64) -> Result<(), Error> {
        *size = size.saturating_add(more);
        if *size > self.limits.max_total_bytes {
            return Err(self.too_big("inflated message size", *size));
        }
        Ok(())
    }

    /// Inflates the object of tree node `t` under `parent` into the memo
    /// (each object is fetched, hashed and parsed once; later occurrences
    /// only check their place in the tree).
    fn node(
        &mut self,
        t: &ObjectTree,
        parent: Option<(ObjectId, ObjectClass)>,
    ) -> Result<(), Error> {
        self.nodes += 1;
        if self.nodes > self.limits.max_tree_nodes {
            return Err(Error::LimitExceeded {
                what: "object tree nodes",
                limit: self.limits.max_tree_nodes as u64,
                actual: self.nodes as u64,
            });
        }
        let id = t.id;
        if self.path.contains(&id) {
            return Err(Error::Cycle { id });
        }
        if let Some(done) = self.memo.get(&id) {
            check_child_class(&id, done.class, parent)?;
            let class = done.class;
            let head_children = done.children.clone();
            self.check_tree_children(t, &head_children)?;
            // The subtree below must match too (each node is then a memo hit).
            self.path.push(id);
            for child in &t.children {
                self.node(child, Some((id, class)))?;
            }
            self.path.pop();
            return Ok(());
        }

        let content = self
            .objects
            .object(&id)
            .ok_or(Error::MissingObject { id })?;
        if content.len() > self.limits.max_object_bytes {
            return Err(Error::LimitExceeded {
                what: "object size",
                limit: self.limits.max_object_bytes as u64,
                actual: content.len() as u64,
            });
        }
        let head = if self.objects.contents_verified() {
            parse_head(&id, &content)?
        } else {
            validate_object(&id, &content)?
        };
        check_child_class(&id, head.class, parent)?;
        self.check_tree_children(t, &head.children)?;
        self.path.push(id);
        for child in &t.children {
            self.node(child, Some((id, head.class)))?;
        }
        self.path.pop();

        let body = content.slice(head.body_offset..);
        drop(content);
        let (node, size) = self.build(&id, head.class, &head.children, body)?;
        self.memo.insert(
            id,
            Done {
                class: head.class,
                children: head.children,
                node,
                size,
            },
        );
        Ok(())
    }

    fn check_tree_children(&self, t: &ObjectTree, head: &[ObjectId]) -> Result<(), Error> {
        if t.child_ids().ne(head.iter()) {
            return Err(Error::TreeMismatch {
                id: t.id,
                tree: t.children.len(),
                head: head.len(),
            });
        }
        Ok(())
    }

    /// A child inflated earlier in this call (all children are inflated
    /// before their parent's body is read).
    fn child(&self, id: &ObjectId) -> Result<&Done, Error> {
        self.memo.get(id).ok_or(Error::MissingObject { id: *id })
    }

    fn build(
        &mut self,
        id: &ObjectId,
        class: ObjectClass,
        children: &[ObjectId],
        body: Bytes,
    ) -> Result<(Node, u64), Error> {
        match class {
            ObjectClass::ArrayChunk => {
                let size = body.len() as u64;
                Ok((Node::Chunk(body), size))
            }
            ObjectClass::Array => {
                let chunks = self.take_chunks(children)?;
                self.array(id, children, chunks, &body)
            }
            ObjectClass::ArrayRecord | ObjectClass::RecordDict => {
                self.named(id, class, children, &body)
            }
            ObjectClass::ConfigRecord => {
                let proto = pb::ConfigRecord::decode(body).map_err(|source| Error::ProtoBody {
                    id: *id,
                    class,
                    source,
                })?;
                let mut record = ConfigRecord::new();
                let mut size = 0;
                for item in proto.items {
                    let value = item.value.unwrap_or_default();
                    let value = ConfigValue::try_from(value).map_err(|e| Error::InvalidBody {
                        id: *id,
                        class,
                        reason: format!("key {:?}: {e}", item.key),
                    })?;
                    self.grow(
                        &mut size,
                        item.key.len() as u64 + ENTRY_COST + value.size() as u64,
                    )?;
                    if record.contains_key(&item.key) {
                        return Err(Error::DuplicateKey {
                            id: *id,
                            key: item.key,
                        });
                    }
                    record.insert(item.key, value);
                }
                Ok((Node::Config(record), size))
            }
            ObjectClass::MetricRecord => {
                let proto = pb::MetricRecord::decode(body).map_err(|source| Error::ProtoBody {
                    id: *id,
                    class,
                    source,
                })?;
                let mut record = MetricRecord::new();
                let mut size = 0;
                for item in proto.items {
                    let value = item.value.unwrap_or_default();
                    let value = MetricValue::try_from(value).map_err(|e| Error::InvalidBody {
                        id: *id,
                        class,
                        reason: format!("key {:?}: {e}", item.key),
                    })?;
                    self.grow(
                        &mut size,
                        item.key.len() as u64 + ENTRY_COST + value.size() as u64,
                    )?;
                    if record.contains_key(&item.key) {
                        return Err(Error::DuplicateKey {
                            id: *id,
                            key: item.key,
                        });
                    }
                    record.insert(item.key, value);
                }
                Ok((Node::Metric(record), size))
            }
            ObjectClass::Message => self.message(id, children, body),
        }
    }

    /// The chunks of an array about to be assembled, in head order: taken
    /// out of the memo (leaving [`Node::SpentChunk`]) when this array is the
    /// last to use them, so they are freed as they are copied.
    fn take_chunks(&mut self, children: &[ObjectId]) -> Result<Vec<Bytes>, Error> {
        let mut chunks = Vec::with_capacity(children.len());
        for c in children {
            let last_use = match self.parents.get_mut(c) {
                Some(n) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => true,
            };
            let done = self
                .memo
                .get_mut(c)
                .ok_or(Error::MissingObject { id: *c })?;
            let bytes = match &mut done.node {
                Node::Chunk(b) if last_use => {
                    let b = std::mem::take(b);
                    done.node = Node::SpentChunk;
                    b
                }
                Node::Chunk(b) => b.clone(),
                // Every array using the chunk was counted: not reached for
                // a tree that passed the checks, still an error, not a panic.
                _ => {
                    return Err(Error::WrongClass {
                        id: *c,
                        expected: ObjectClass::Array.child_description(),
                        found: done.class,
                    })
                }
            };
            chunks.push(bytes);
        }
        Ok(chunks)
    }

    fn array(
        &self,
        id: &ObjectId,
        children: &[ObjectId],
        chunks: Vec<Bytes>,
        body: &[u8],
    ) -> Result<(Node, u64), Error> {
        let class = ObjectClass::Array;
        debug_assert_eq!(children.len(), chunks.len());
        let meta: ArrayBody = serde_json::from_slice(body).map_err(|source| Error::JsonBody {
            id: *id,
            class,
            source,
        })?;
        let mut used = vec![false; chunks.len()];
        let mut len: u64 = 0;
        for &index in &meta.arraychunk_ids {
            let chunk = usize::try_from(index)
                .ok()
                .and_then(|i| chunks.get(i).map(|c| (i, c)));
            let Some((i, chunk)) = chunk else {
                return Err(Error::ChunkIndexOutOfRange {
                    id: *id,
                    index,
                    chunks: chunks.len(),
                });
            };
            used[i] = true;
            len = len.saturating_add(chunk.len() as u64);
            if len > self.limits.max_total_bytes {
                return Err(self.too_big("array data size", len));
            }
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(Error::UnusedChild {
                id: *id,
                child: children[i],
            });
        }
        // One chunk used once (every array up to the chunk size): no copy.
        let data = match meta.arraychunk_ids.as_slice() {
            [] => Bytes::new(),
            [only] => chunks[*only as usize].clone(),
            ids => {
                // Each chunk is dropped after its last place in the array,
                // so the copy grows as the chunks go.
                let mut last = vec![0; chunks.len()];
                for (place, &i) in ids.iter().enumerate() {
                    last[i as usize] = place;
                }
                let mut chunks: Vec<Option<Bytes>> = chunks.into_iter().map(Some).collect();
                let mut buf = BytesMut::with_capacity(len as usize);
                for (place, &i) in ids.iter().enumerate() {
                    let slot = &mut chunks[i as usize];
                    if let Some(chunk) = slot {
                        buf.extend_from_slice(chunk);
                    }
                    if last[i as usize] == place {
                        *slot = None;
                    }
                }
                buf.freeze()
            }
        };
        let mut size = ENTRY_COST;
        self.grow(
            &mut size,
            data.len() as u64 + (meta.dtype.len() + meta.stype.len() + 8 * meta.shape.len()) as u64,
        )?;
        let array = Array {
            dtype: meta.dtype,
            shape: meta.shape,
            stype: meta.stype,
            data,
        };
        Ok((Node::Array(array), size))
    }

    /// `ArrayRecord` and `RecordDict`: a `{name: child_id}` JSON body.
    fn named(
        &self,
        id: &ObjectId,
        class: ObjectClass,
        children: &[ObjectId],
        body: &[u8],
    ) -> Result<(Node, u64), Error> {
        let pairs: StrPairs = serde_json::from_slice(body).map_err(|source| Error::JsonBody {
            id: *id,
            class,
            source,
        })?;
        let mut used = vec![false; children.len()];
        let mut size = 0;
        let mut arrays = ArrayRecord::new();
        let mut records = RecordDict::new();
        for (name, child) in pairs.0 {
            let child: ObjectId = child.parse()?;
            let Some(i) = children.iter().position(|c| *c == child) else {
                return Err(Error::UnknownChild { id: *id, child });
            };
            used[i] = true;
            let done = self.child(&child)?;
            self.grow(&mut size, name.len() as u64 + ENTRY_COST + done.size)?;
            let duplicate = match (&done.node, class) {
                (Node::Array(a), ObjectClass::ArrayRecord) => {
                    arrays.insert(name.clone(), a.clone()).is_some()
                }
                (Node::ArrayRecord(r), ObjectClass::RecordDict) => records
                    .insert(name.clone(), Record::Array(r.clone()))
                    .is_some(),
                (Node::Config(r), ObjectClass::RecordDict) => records
                    .insert(name.clone(), Record::Config(r.clone()))
                    .is_some(),
                (Node::Metric(r), ObjectClass::RecordDict) => records
                    .insert(name.clone(), Record::Metric(r.clone()))
                    .is_some(),
                _ => {
                    return Err(Error::WrongClass {
                        id: child,
                        expected: class.child_description(),
                        found: done.class,
                    })
                }
            };
            if duplicate {
                return Err(Error::DuplicateKey { id: *id, key: name });
            }
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(Error::UnusedChild {
                id: *id,
                child: children[i],
            });
        }
        Ok(if class == ObjectClass::ArrayRecord {
            (Node::ArrayRecord(arrays), size)
        } else {
            (Node::RecordDict(records), size)
        })
    }

    fn message(
        &self,
        id: &ObjectId,
        children: &[ObjectId],
        body: Bytes,
    ) -> Result<(Node, u64), Error> {
        let class = ObjectClass::Message;
        let proto = pb::Message::decode(body).map_err(|source| Error::ProtoBody {
            id: *id,
            class,
            source,
        })?;
        let invalid = |reason: &str| Error::InvalidBody {
            id: *id,
            class,
            reason: reason.to_owned(),
        };
        if proto.content.is_some() {
            return Err(invalid("the body carries inline content"));
        }
        let mut metadata = Metadata::from(proto.metadata.unwrap_or_default());
        metadata.message_id = id.to_string();
        let (payload, size) = match (proto.error, children) {
            (Some(e), []) => (Payload::Error(MessageError::from(e)), ENTRY_COST),
            (Some(_), _) => return Err(invalid("a Message with an error has no content")),
            (None, [child]) => {
                let done = self.child(child)?;
                match &done.node {
                    Node::RecordDict(rd) => (Payload::Content(rd.clone()), done.size),
                    _ => {
                        return Err(Error::WrongClass {
                            id: *child,
                            expected: class.child_description(),
                            found: done.class,
                        })
                    }
                }
            }
            (None, []) => return Err(invalid("a Message needs content or an error")),
            (None, _) => return Err(invalid("a Message has exactly one RecordDict child")),
        };
        Ok((Node::Message(Message { metadata, payload }), size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::VerifiedObjects;

    fn message_with(data: Vec<u8>) -> Message {
        let array = Array {
            dtype: "uint8".into(),
            shape: vec![data.len()],
            stype: "raw".into(),
            data: data.into(),
        };
        Message::new(
            Metadata::default(),
            RecordDict::new().with("r", ArrayRecord::new().with("a", array)),
        )
    }

    fn inflated_array(d: &Deflated) -> Array {
        let m = inflate(&d.tree, d, &Limits::default());
        m.ok()
            .and_then(|m| m.content()?.array_record("r")?.get("a").cloned())
            .unwrap_or_else(|| Array {
                dtype: String::new(),
                shape: vec![],
                stype: String::new(),
                data: Bytes::new(),
            })
    }

    #[test]
    fn single_chunk_arrays_are_not_copied() {
        let d = deflate(&message_with(vec![1, 2, 3, 4]));
        let array = inflated_array(&d);
        assert_eq!(array.data.as_ref(), [1, 2, 3, 4]);
        let chunk = d
            .objects
            .get_index(0)
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        assert!(chunk.starts_with(b"ArrayChunk  4\0"));
        // The array's data points into the chunk object's buffer.
        let range = chunk.as_ptr_range();
        assert!(range.contains(&array.data.as_ptr()));
    }

    #[test]
    fn chunking_dedups_and_reassembles() {
        let data: Vec<u8> = [[9u8; 4], [9; 4], [1; 4]].concat();
        let four = NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN);
        let d = deflate_with_chunk_size(&message_with(data.clone()), four);
        let array_node = &d.tree.children[0].children[0].children[0];
        assert_eq!(array_node.children.len(), 2);
        let body = &d.objects[&array_node.id];
        assert!(body.ends_with(b"\"arraychunk_ids\": [0, 0, 1]}"));
        assert_eq!(inflated_array(&d).data.as_ref(), data.as_slice());
        // Empty data: no chunks at all.
        let d = deflate_with_chunk_size(&message_with(Vec::new()), four);
        assert!(d.tree.children[0].children[0].children[0]
            .children
            .is_empty());
        assert!(inflated_array(&d).data.is_empty());
    }

    #[test]
    fn parts_are_deflate_without_copying_array_bytes() {
        let data: Vec<u8> = [&[9u8; 4][..], &[9; 4], &[1; 3]].concat();
        let message = message_with(data);
        let four = NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN);
        let parts = deflate_parts_with_chunk_size(&message, four);
        let whole = deflate_with_chunk_size(&message, four);
        assert_eq!(Deflated::from(parts.clone()), whole);
        let array = message
            .content()
            .and_then(|c| c.array_record("r")?.get("a").cloned())
            .map(|a| a.data)
            .unwrap_or_default();
        let within = array.as_ptr_range();
        let chunks: Vec<&ObjectParts> = parts
            .objects
            .values()
            .filter(|p| p.head.starts_with(b"ArrayChunk "))
            .collect();
        // The repeated 9-chunk once, then the short 1-chunk.
        assert_eq!(chunks.len(), 2);
        for chunk in chunks {
            assert!(chunk.head.ends_with(b"\0"));
            assert!(within.contains(&chunk.tail.as_ptr()), "chunk bytes copied");
        }
    }

    #[test]
    fn known_chunk_ids_are_taken_by_buffer_not_by_content() {
        let message = message_with(vec![7u8; 10]);
        let (first, seen) = deflate_parts_reusing(&message, &ChunkIds::default());
        assert_eq!(seen.len(), 1);
        let (again, seen_again) = deflate_parts_reusing(&message, &seen);
        assert_eq!(again, first);
        assert_eq!(seen_again.len(), 1);
        // The id comes from the memo for this very buffer (a planted id is
        // taken as is), and is hashed for equal bytes in another buffer.
        let data = message
            .content()
            .and_then(|c| c.array_record("r")?.get("a").cloned())
            .map(|a| a.data)
            .unwrap_or_default();
        let planted = ObjectId::of(b"planted");
        let mut known = ChunkIds::default();
        known.insert(&data, planted);
        let (reused, _) = deflate_parts_reusing(&message, &known);
        assert!(reused.objects.contains_key(&planted));
        let copy = message_with(vec![7u8; 10]);
        let (hashed, _) = deflate_parts_reusing(&copy, &known);
        assert!(!hashed.objects.contains_key(&planted));
        assert_eq!(hashed, first);
    }

    #[test]
    fn verified_sources_skip_only_the_hash() {
        let d = deflate(&message_with(vec![1, 2, 3, 4]));
        // Swap the chunk's bytes for others of the same length: the head
        // still parses, only the hash tells.
        let mut tampered: std::collections::HashMap<ObjectId, Bytes> =
            d.objects.iter().map(|(k, v)| (*k, v.clone())).collect();
        let (chunk_id, _) = d
            .objects
            .get_index(0)
            .map(|(k, v)| (*k, v))
            .unwrap_or_else(|| unreachable!());
        tampered.insert(chunk_id, Bytes::from_static(b"ArrayChunk  4\0wxyz"));
        let limits = Limits::default();
        assert!(matches!(
            inflate(&d.tree, &tampered, &limits),
            Err(Error::IdMismatch { .. })
        ));
        let trusted = inflate(&d.tree, &VerifiedObjects(&tampered), &limits);
        let data = trusted
            .ok()
            .and_then(|m| Some(m.content()?.array_record("r")?.get("a")?.data.clone()));
        assert_eq!(data.as_deref(), Some(&b"wxyz"[..]));
        // Structure is still checked: a missing object is an error.
        tampered.remove(&chunk_id);
        assert!(inflate(&d.tree, &VerifiedObjects(&tampered), &limits).is_err());
    }

    /// A source that hands each object over once (as the Fleet link's reply
    /// store does) and notes, at every fetch, how many chunk buffers it
    /// handed over are still alive.
    struct HandOver {
        objects: std::sync::Mutex<HashMap<ObjectId, Bytes>>,
        live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        seen_live: std::sync::Mutex<Vec<usize>>,
    }

    /// Owns a chunk's bytes and counts itself alive.
    struct Tracked(Vec<u8>, std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl AsRef<[u8]> for Tracked {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl ObjectSource for HandOver {
        fn object(&self, id: &ObjectId) -> Option<Bytes> {
            let live = self.live.load(std::sync::atomic::Ordering::SeqCst);
            self.seen_live.lock().ok()?.push(live);
            let content = self.objects.lock().ok()?.remove(id)?;
            if !content.starts_with(b"ArrayChunk ") {
                return Some(content);
            }
            self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(Bytes::from_owner(Tracked(
                content.to_vec(),
                self.live.clone(),
            )))
        }
    }

    #[test]
    fn chunks_are_released_once_their_last_array_is_assembled() {
        let four = NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN);
        let first: Vec<u8> = (0..12).collect();
        // The second array shares its first chunk with the first array.
        let second: Vec<u8> = (0..4).chain(100..108).collect();
        let array = |data: Vec<u8>| Array {
            dtype: "uint8".into(),
            shape: vec![data.len()],
            stype: "raw".into(),
            data: data.into(),
        };
        let message = Message::new(
            Metadata::default(),
            RecordDict::new().with(
                "r",
                ArrayRecord::new()
                    .with("a", array(first.clone()))
                    .with("b", array(second.clone())),
            ),
        );
        let d = deflate_with_chunk_size(&message, four);
        let source = HandOver {
            objects: std::sync::Mutex::new(
                d.objects.iter().map(|(k, v)| (*k, v.clone())).collect(),
            ),
            live: Default::default(),
            seen_live: Default::default(),
        };
        let m = inflate(&d.tree, &source, &Limits::default()).expect("inflate");
        let record = m
            .content()
            .and_then(|c| c.array_record("r"))
            .expect("record");
        assert_eq!(record.get("a").map(|a| a.data.to_vec()), Some(first));
        assert_eq!(record.get("b").map(|a| a.data.to_vec()), Some(second));
        let seen = source
            .seen_live
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        // Objects are fetched parents first: message, dict, record, a, a's
        // 3 chunks, b, b's 2 new chunks. When b is fetched a's own chunks
        // are gone and only the shared one is alive (without the release
        // all 3 would be).
        assert_eq!(seen, [0, 0, 0, 0, 0, 1, 2, 1, 1, 2]);
        assert_eq!(source.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
