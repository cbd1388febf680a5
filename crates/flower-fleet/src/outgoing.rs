//! Instructions for nodes: the content deflated once per
//! [`OutgoingMessage`], each node's `Message` root built around it.
//!
//! Every sampled node gets the same model. Its `RecordDict` subtree (the
//! model's chunks, arrays, records) is deflated once, and the same `Bytes`
//! are what every node pulls; only the small `Message` object differs per
//! node (its metadata names the destination), so a broadcast costs one
//! model in memory, not one per node. Not even one: each array chunk object
//! is its small head followed by a slice of the model's own `.npy` bytes
//! (which the round driver holds anyway), hashed in those two parts
//! ([`deflate_parts`]), so no array byte is copied.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use flower_message::{
    deflate_parts_reusing, encode_object, ChunkIds, Message, Metadata, ObjectClass, ObjectId,
    ObjectTree, RecordDict,
};
use flower_proto as pb;
use flower_server::{OutgoingContent, OutgoingMessage};
use flower_strategy::msg::MessageType;
use prost::Message as _;
use tokio::sync::OnceCell;

use crate::convert::{instruction_content, strategy_content, ContentOptions, EVALUATE, TRAIN};
use crate::state::{Content, Instruction, SUPERLINK_NODE_ID};
use crate::FleetError;

/// An instruction's content, deflated once.
#[derive(Debug)]
pub(crate) struct SharedContent {
    message_type: &'static str,
    group_id: String,
    /// The `RecordDict` subtree.
    subtree: ObjectTree,
    /// Every object of the subtree (no `Message` root).
    objects: Vec<(ObjectId, Content)>,
}

impl SharedContent {
    /// Translates and deflates `message`.
    pub(crate) fn build(
        message: &OutgoingMessage,
        options: &ContentOptions,
        known: &Mutex<ChunkIds>,
    ) -> Result<Self, FleetError> {
        let (message_type, content) =
            instruction_content(message.message(), message.round(), options)?;
        let group_id = message.round().map(|r| r.to_string()).unwrap_or_default();
        Self::from_content(message_type, group_id, content, known)
    }

    /// Deflates a message-API instruction (its content as the strategy
    /// built it).
    pub(crate) fn build_content(
        message: &OutgoingContent,
        known: &Mutex<ChunkIds>,
    ) -> Result<Self, FleetError> {
        let content = strategy_content(message.content())?;
        let message_type = match message.message_type() {
            MessageType::Train => TRAIN,
            MessageType::Evaluate => EVALUATE,
        };
        Self::from_content(message_type, message.round().to_string(), content, known)
    }

    /// Deflates `content`; its chunk objects share the array data's
    /// buffers. Chunks of the buffers the previous instruction was cut from
    /// (`known`: the same model sent for evaluation, then for the next
    /// round's training) keep their ids instead of being hashed again;
    /// `known` then remembers this instruction's.
    fn from_content(
        message_type: &'static str,
        group_id: String,
        content: RecordDict,
        known: &Mutex<ChunkIds>,
    ) -> Result<Self, FleetError> {
        let message = Message::new(Metadata::default(), content);
        let deflated = {
            let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
            let (deflated, seen) = deflate_parts_reusing(&message, &known);
            *known = seen;
            deflated
        };
        let root = deflated.root;
        let subtree = deflated
            .tree
            .children
            .into_iter()
            .next()
            .ok_or_else(|| FleetError::Unsupported("deflated message has no content".into()))?;
        let objects = deflated
            .objects
            .into_iter()
            .filter(|(id, _)| *id != root)
            .collect();
        Ok(SharedContent {
            message_type,
            group_id,
            subtree,
            objects,
        })
    }

    /// flwr's message type (`train`, `evaluate`, ...).
    pub(crate) fn message_type(&self) -> &'static str {
        self.message_type
    }

    /// The instruction for `node_id`: metadata as flwr's `Grid` writes it
    /// (source = the SuperLink, `group_id` = the round), and the `Message`
    /// object whose id is the message id.
    pub(crate) fn instruction(&self, run_id: u64, node_id: u64, ttl: f64, now: f64) -> Instruction {
        let mut metadata = pb::Metadata {
            run_id,
            message_id: String::new(),
            src_node_id: SUPERLINK_NODE_ID,
            dst_node_id: node_id,
            reply_to_message_id: String::new(),
            group_id: self.group_id.clone(),
            ttl,
            message_type: self.message_type.to_owned(),
            created_at: now,
            src_task_id: None,
            dst_task_id: None,
        };
        // The body is the metadata with a blank message id (receivers only
        // check the hash, they never re-deflate, so prost's encoding is fine).
        let body = pb::Message {
            metadata: Some(metadata.clone()),
            content: None,
            error: None,
        }
        .encode_to_vec();
        let content = Bytes::from(encode_object(
            ObjectClass::Message,
            &[self.subtree.id],
            &body,
        ));
        let root = ObjectId::of(&content);
        metadata.message_id = root.to_string();
        let mut objects = Vec::with_capacity(self.objects.len() + 1);
        objects.extend(self.objects.iter().cloned());
        objects.push((root, Content::from(content)));
        Instruction {
            wire: pb::Message {
                metadata: Some(metadata),
                content: Some(pb::RecordDict::default()),
                error: None,
            },
            tree: ObjectTree {
                id: root,
                children: vec![self.subtree.clone()],
            },
            objects,
            expires_at: now + ttl,
        }
    }
}

type Cell = Arc<OnceCell<Result<Arc<SharedContent>, String>>>;

/// Deflated content by instruction (an [`OutgoingMessage`] or an
/// [`OutgoingContent`]), while the instruction is alive.
#[derive(Debug)]
pub(crate) struct ContentCache<T = OutgoingMessage> {
    entries: Mutex<Vec<(Weak<T>, Cell)>>,
    /// The chunk ids of the last instruction deflated.
    chunk_ids: Arc<Mutex<ChunkIds>>,
}

impl<T> Default for ContentCache<T> {
    fn default() -> Self {
        ContentCache {
            entries: Mutex::new(Vec::new()),
            chunk_ids: Arc::default(),
        }
    }
}

impl ContentCache<OutgoingMessage> {
    /// The content of `message`, deflated by the first caller (off the
    /// async threads); later callers wait for it.
    pub(crate) async fn get(
        &self,
        message: &Arc<OutgoingMessage>,
        options: &Arc<ContentOptions>,
    ) -> Result<Arc<SharedContent>, String> {
        let options = options.clone();
        let known = self.chunk_ids.clone();
        self.get_with(message, move |m| SharedContent::build(m, &options, &known))
            .await
    }
}

impl ContentCache<OutgoingContent> {
    /// The content of a message-API instruction, deflated by the first
    /// caller; later callers wait for it.
    pub(crate) async fn get_content(
        &self,
        message: &Arc<OutgoingContent>,
    ) -> Result<Arc<SharedContent>, String> {
        let known = self.chunk_ids.clone();
        self.get_with(message, move |m| SharedContent::build_content(m, &known))
            .await
    }
}

impl<T: Send + Sync + 'static> ContentCache<T> {
    async fn get_with(
        &self,
        message: &Arc<T>,
        build: impl FnOnce(&T) -> Result<SharedContent, FleetError> + Send + 'static,
    ) -> Result<Arc<SharedContent>, String> {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.retain(|(weak, _)| weak.strong_count() > 0);
            let found = entries
                .iter()
                .find(|(weak, _)| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(message)))
                .map(|(_, cell)| cell.clone());
            found.unwrap_or_else(|| {
                let cell = Cell::default();
                entries.push((Arc::downgrade(message), cell.clone()));
                cell
            })
        };
        cell.get_or_init(|| {
            let message = message.clone();
            async move {
                tokio::task::spawn_blocking(move || build(&message))
                    .await
                    .map_err(|e| format!("deflating the instruction failed: {e}"))
                    .and_then(|r| r.map(Arc::new).map_err(|e| e.to_string()))
            }
        })
        .await
        .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flower_core::{FitIns, Parameters, ServerMessage};
    use flower_message::{deflate, DEFAULT_CHUNK_SIZE};

    #[tokio::test]
    async fn one_deflation_per_instruction_shared_by_nodes() {
        let tensor = Bytes::from(vec![7u8; 64]);
        let message = OutgoingMessage::for_round(
            ServerMessage::Fit(FitIns {
                parameters: Parameters {
                    tensors: vec![tensor],
                    tensor_type: "raw".into(),
                },
                config: Default::default(),
            }),
            2,
        );
        let cache = ContentCache::default();
        let options = Arc::new(ContentOptions::default());
        let a = cache.get(&message, &options).await.expect("content");
        let b = cache.get(&message, &options).await.expect("content");
        assert!(Arc::ptr_eq(&a, &b));
        let one = a.instruction(7, 100, 60.0, 1000.0);
        let two = a.instruction(7, 200, 60.0, 1000.0);
        // Different roots, one shared subtree with the same buffers.
        assert_ne!(one.tree.id, two.tree.id);
        assert_eq!(one.tree.children, two.tree.children);
        let (id1, c1) = &one.objects[0];
        let (id2, c2) = &two.objects[0];
        assert_eq!(id1, id2);
        assert_eq!(c1, c2);
        let md = one.wire.metadata.expect("metadata");
        assert_eq!(md.message_id, one.tree.id.to_string());
        assert_eq!(
            (md.group_id.as_str(), md.message_type.as_str()),
            ("2", "train")
        );
        // The node's objects inflate back to the instruction.
        let objects: std::collections::HashMap<_, _> = one
            .objects
            .iter()
            .map(|(id, c)| (*id, c.to_bytes()))
            .collect();
        let m = flower_message::inflate(&one.tree, &objects, &Default::default()).expect("inflate");
        assert_eq!(m.metadata.dst_node_id, 100);
        assert!(m.content().and_then(|c| c.array_record("arrays")).is_some());
        drop(message);
        // A dead instruction's entry is pruned on the next lookup.
        let other = OutgoingMessage::new(ServerMessage::Fit(FitIns::default()));
        let _ = cache.get(&other, &options).await;
        assert_eq!(cache.entries.lock().map(|e| e.len()).unwrap_or(0), 1);
    }

    /// Chunk objects are the model's own bytes behind a head, and every
    /// object is byte for byte what `deflate` makes, repeated chunks and
    /// partial last chunks included.
    #[test]
    fn chunk_objects_share_the_model_bytes() {
        let chunk = DEFAULT_CHUNK_SIZE.get();
        let mut big = vec![1u8; 2 * chunk + 100];
        big[2 * chunk..].fill(9);
        // Two equal chunks (stored once), then a short one; then an array
        // equal to the first chunk, an empty one and a distinct one.
        let tensors = vec![
            Bytes::from(big),
            Bytes::from(vec![1u8; chunk]),
            Bytes::new(),
            Bytes::from(vec![5u8; 10]),
        ];
        let message = OutgoingMessage::for_round(
            ServerMessage::Fit(FitIns {
                parameters: Parameters {
                    tensors: tensors.clone(),
                    tensor_type: "raw".into(),
                },
                config: Default::default(),
            }),
            1,
        );
        let shared = SharedContent::build(&message, &ContentOptions::default(), &Mutex::default())
            .expect("build");
        let (_, content) =
            instruction_content(message.message(), Some(1), &ContentOptions::default())
                .expect("content");
        let expected = deflate(&Message::new(Metadata::default(), content));
        let ours: Vec<(ObjectId, Bytes)> = shared
            .objects
            .iter()
            .map(|(id, c)| (*id, c.to_bytes()))
            .collect();
        let theirs: Vec<(ObjectId, Bytes)> = expected
            .objects
            .into_iter()
            .filter(|(id, _)| *id != expected.root)
            .collect();
        assert_eq!(ours, theirs);
        let within = |part: &Bytes| {
            tensors.iter().any(|t| {
                let range = t.as_ptr() as usize..t.as_ptr() as usize + t.len();
                !t.is_empty() && range.contains(&(part.as_ptr() as usize))
            })
        };
        let chunks: Vec<&Content> = shared
            .objects
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.to_bytes().starts_with(b"ArrayChunk "))
            .collect();
        // 1-filled chunk, the 9-filled tail, the 5-filled array.
        assert_eq!(chunks.len(), 3);
        for c in chunks {
            let parts: Vec<&Bytes> = c.parts().collect();
            assert_eq!(parts.len(), 2);
            assert!(parts[0].len() < 40 && within(parts[1]), "not shared");
        }
    }
}
