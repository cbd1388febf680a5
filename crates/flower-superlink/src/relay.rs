//! The ServerApp's side of message exchange (the Runtime API's
//! `PushMessages`, `PushObject`, `PullMessages`, `PullObject`,
//! `ConfirmMessageReceived`), without I/O or clock.
//!
//! A ServerApp pushes instructions as metadata plus object trees, then the
//! objects the answer asks for. Once every object of an instruction is in,
//! the relay hands it out as a `flower-fleet` [`Instruction`] for the link
//! state's queue of its destination node. The outcome of that exchange (the
//! node's reply objects, or a failure) comes back through
//! [`Relay::deliver`] and waits in the run's inbox until the ServerApp
//! pulls it by the instruction's id; its objects stay until the ServerApp
//! confirms the reply.
//!
//! Departures from flwr 1.42's `LinkState`: objects are not deduplicated
//! against earlier pushes (a ServerApp pushes each round's objects again;
//! flwr's store would skip those it still holds), and a failed exchange
//! becomes an error reply at once (flwr synthesizes it when the ServerApp
//! pulls after the instruction's TTL or the node's deactivation).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use flower_fleet::state::{Content, ExchangeOutcome, Instruction};
use flower_message::HandedOver as _;
use flower_message::{
    encode_object, parse_head, validate_object, Limits, ObjectClass, ObjectId, ObjectTree,
};
use flower_proto as pb;
use prost::Message as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::runs::SUPERLINK_NODE_ID;

/// flwr's push-session lifetime, seconds.
pub const PUSH_SESSION_TTL: f64 = 180.0;
/// flwr's `ErrorCode.REPLY_MESSAGE_UNAVAILABLE`.
pub const REPLY_MESSAGE_UNAVAILABLE: i64 = 4;
/// flwr's `ErrorCode.NODE_UNAVAILABLE`.
pub const NODE_UNAVAILABLE: i64 = 5;

/// A malformed push (each one a 400-class Runtime API error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The request is malformed (the reason).
    #[error("malformed request: {0}")]
    Malformed(String),
}

#[derive(Debug)]
struct Pending {
    wire: pb::Message,
    tree: ObjectTree,
    ids: Vec<ObjectId>,
    dst: u64,
    sent: bool,
}

#[derive(Debug)]
struct Session {
    run_id: u64,
    messages: Vec<Pending>,
    expected: HashSet<ObjectId>,
    objects: HashMap<ObjectId, Bytes>,
    expires_at: f64,
}

/// A reply as the ServerApp pulls it.
#[derive(Debug, Clone)]
struct Reply {
    wire: pb::Message,
    tree: pb::ObjectTree,
    objects: HashMap<ObjectId, Bytes>,
}

/// An instruction ready for a node's queue.
#[derive(Debug)]
pub struct Outgoing {
    /// The destination node.
    pub node_id: u64,
    /// The instruction.
    pub instruction: Instruction,
}

/// What `PushMessages` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Per message, its id.
    pub message_ids: Vec<String>,
    /// Objects to push, each once, children before parents.
    pub objects_to_push: Vec<String>,
    /// The push session.
    pub session_id: String,
}

/// The relay of all runs. See the module docs.
#[derive(Debug)]
pub struct Relay {
    sessions: HashMap<String, Session>,
    /// Per run: instruction id → its reply, not yet pulled.
    inbox: HashMap<u64, HashMap<String, Reply>>,
    /// Per run: reply id → its objects, pulled but not confirmed.
    pulled: HashMap<u64, HashMap<String, HashMap<ObjectId, Bytes>>>,
    /// Instruction id → (run, metadata), while its exchange is in flight.
    in_flight: HashMap<String, (u64, pb::Metadata)>,
    limits: Limits,
    rng: ChaCha8Rng,
}

impl Relay {
    /// An empty relay; `limits` bound the pushed trees.
    pub fn new(limits: Limits, seed: u64) -> Self {
        Relay {
            sessions: HashMap::new(),
            inbox: HashMap::new(),
            pulled: HashMap::new(),
            in_flight: HashMap::new(),
            limits,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// `PushMessages` of run `run_id`: opens a push session for the
    /// messages and asks for every object of their trees.
    pub fn push_messages(
        &mut self,
        run_id: u64,
        messages: Vec<pb::Message>,
        trees: &[pb::ObjectTree],
        now: f64,
    ) -> Result<Accepted, RelayError> {
        let malformed = |why: &str| RelayError::Malformed(why.into());
        if messages.is_empty() {
            return Err(malformed("`messages_list` must not be empty"));
        }
        if messages.len() != trees.len() {
            return Err(malformed("one object tree per message"));
        }
        let mut pending = Vec::with_capacity(messages.len());
        let mut order = Vec::new();
        let mut expected = HashSet::new();
        for (message, tree) in messages.into_iter().zip(trees) {
            let metadata = message
                .metadata
                .as_ref()
                .ok_or_else(|| malformed("a message has no metadata"))?;
            if metadata.run_id != run_id {
                return Err(malformed("`Message.metadata` has mismatched `run_id`"));
            }
            if metadata.src_node_id != SUPERLINK_NODE_ID {
                return Err(malformed(
                    "the source of an instruction must be the SuperLink",
                ));
            }
            if !metadata.reply_to_message_id.is_empty() {
                return Err(malformed("an instruction cannot be a reply"));
            }
            let tree = ObjectTree::from_proto(tree, &self.limits)
                .map_err(|e| RelayError::Malformed(format!("object tree: {e}")))?;
            if tree.id.to_string() != metadata.message_id {
                return Err(malformed("the message id is not its tree's root"));
            }
            let ids = tree.unique_ids();
            for id in tree.post_order() {
                if expected.insert(id) {
                    order.push(id.to_string());
                }
            }
            pending.push(Pending {
                dst: metadata.dst_node_id,
                wire: message,
                tree,
                ids,
                sent: false,
            });
        }
        let session_id = format!("{:032x}", self.rng.gen::<u128>());
        let message_ids = pending
            .iter()
            .map(|p| p.tree.id.to_string())
            .collect::<Vec<_>>();
        self.sessions.insert(
            session_id.clone(),
            Session {
                run_id,
                messages: pending,
                expected,
                objects: HashMap::new(),
                expires_at: now + PUSH_SESSION_TTL,
            },
        );
        Ok(Accepted {
            message_ids,
            objects_to_push: order,
            session_id,
        })
    }

    /// Whether the session awaits `object_id` (checked before the caller
    /// spends time hashing the content).
    pub fn awaits(&self, run_id: u64, session_id: &str, object_id: &ObjectId) -> bool {
        self.sessions.get(session_id).is_some_and(|s| {
            s.run_id == run_id
                && s.expected.contains(object_id)
                && !s.objects.contains_key(object_id)
        })
    }

    /// `PushObject`: stores `content` if the session awaits `object_id`
    /// and it is valid (hash and head). Returns whether it was stored and
    /// the instructions this completed.
    pub fn push_object(
        &mut self,
        run_id: u64,
        session_id: &str,
        object_id: &str,
        content: Bytes,
    ) -> (bool, Vec<Outgoing>) {
        let Ok(id) = object_id.parse::<ObjectId>() else {
            return (false, Vec::new());
        };
        if validate_object(&id, &content).is_err() {
            return (false, Vec::new());
        }
        self.store_valid(run_id, session_id, id, content)
    }

    /// [`Relay::push_object`] of content the caller validated for `id`.
    pub fn store_valid(
        &mut self,
        run_id: u64,
        session_id: &str,
        id: ObjectId,
        content: Bytes,
    ) -> (bool, Vec<Outgoing>) {
        if !self.awaits(run_id, session_id, &id) {
            return (false, Vec::new());
        }
        let Some(session) = self.sessions.get_mut(session_id) else {
            return (false, Vec::new());
        };
        session.objects.insert(id, content);
        let mut out = Vec::new();
        for message in session.messages.iter_mut().filter(|m| !m.sent) {
            if !message.ids.iter().all(|i| session.objects.contains_key(i)) {
                continue;
            }
            message.sent = true;
            let mut wire = message.wire.clone();
            let metadata = wire.metadata.get_or_insert_with(Default::default);
            let expires_at = metadata.created_at + metadata.ttl;
            self.in_flight
                .insert(message.tree.id.to_string(), (run_id, metadata.clone()));
            // The node takes the payload from the objects.
            wire.content = Some(pb::RecordDict::default());
            let objects = message
                .ids
                .iter()
                .filter_map(|i| {
                    session
                        .objects
                        .get(i)
                        .map(|c| (*i, Content::from(c.clone())))
                })
                .collect();
            out.push(Outgoing {
                node_id: message.dst,
                instruction: Instruction {
                    wire,
                    tree: message.tree.clone(),
                    objects,
                    expires_at,
                },
            });
        }
        if session.messages.iter().all(|m| m.sent) {
            self.sessions.remove(session_id);
        }
        (true, out)
    }

    /// The outcome of the exchange of instruction `instruction_id`: the
    /// node's reply, or an error reply saying why there is none.
    pub fn deliver(&mut self, instruction_id: &str, outcome: ExchangeOutcome, now: f64) {
        let Some((run_id, metadata)) = self.in_flight.remove(instruction_id) else {
            return;
        };
        let reply = match outcome {
            Ok(objects) => match read_all(objects.objects)
                .and_then(|contents| reply_from_objects(objects.tree, contents))
            {
                Some(reply) => reply,
                None => error_reply(
                    &metadata,
                    REPLY_MESSAGE_UNAVAILABLE,
                    "the reply's objects do not form a message",
                    now,
                ),
            },
            Err(failure) => {
                error_reply(&metadata, failure_code(&failure), &failure.to_string(), now)
            }
        };
        self.inbox
            .entry(run_id)
            .or_default()
            .insert(instruction_id.to_string(), reply);
    }

    /// An instruction that could not be queued (its node is unknown or
    /// offline): its reply is an error at once.
    pub fn undeliverable(&mut self, instruction_id: &str, reason: &str, now: f64) {
        if let Some((run_id, metadata)) = self.in_flight.remove(instruction_id) {
            let reply = error_reply(&metadata, NODE_UNAVAILABLE, reason, now);
            self.inbox
                .entry(run_id)
                .or_default()
                .insert(instruction_id.to_string(), reply);
        }
    }

    /// `PullMessages`: the replies to `instruction_ids` that are in.
    pub fn pull_messages(
        &mut self,
        run_id: u64,
        instruction_ids: &[String],
    ) -> (Vec<pb::Message>, Vec<pb::ObjectTree>) {
        let mut messages = Vec::new();
        let mut trees = Vec::new();
        let Some(inbox) = self.inbox.get_mut(&run_id) else {
            return (messages, trees);
        };
        for id in instruction_ids {
            if let Some(reply) = inbox.remove(id) {
                self.pulled
                    .entry(run_id)
                    .or_default()
                    .insert(reply.tree.object_id.clone(), reply.objects);
                messages.push(reply.wire);
                trees.push(reply.tree);
            }
        }
        (messages, trees)
    }

    /// `PullObject`: an object of a pulled, unconfirmed reply.
    pub fn pull_object(&self, run_id: u64, object_id: &str) -> Option<Bytes> {
        let id = object_id.parse::<ObjectId>().ok()?;
        self.pulled
            .get(&run_id)?
            .values()
            .find_map(|objects| objects.get(&id).cloned())
    }

    /// `ConfirmMessageReceived`: the reply's objects are released.
    pub fn confirm(&mut self, run_id: u64, reply_id: &str) {
        if let Some(pulled) = self.pulled.get_mut(&run_id) {
            pulled.remove(reply_id);
        }
    }

    /// Forgets everything of a finished run.
    pub fn drop_run(&mut self, run_id: u64) {
        self.sessions.retain(|_, s| s.run_id != run_id);
        self.inbox.remove(&run_id);
        self.pulled.remove(&run_id);
        self.in_flight.retain(|_, (r, _)| *r != run_id);
    }

    /// Housekeeping: expired push sessions are dropped.
    pub fn tick(&mut self, now: f64) {
        self.sessions.retain(|_, s| s.expires_at > now);
    }

    /// Number of open push sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

fn failure_code(failure: &flower_fleet::state::ExchangeFailure) -> i64 {
    use flower_fleet::state::ExchangeFailure as F;
    match failure {
        F::NodeSilent(_) | F::NodeDeactivated(_) | F::NodeRemoved(_) => NODE_UNAVAILABLE,
        _ => REPLY_MESSAGE_UNAVAILABLE,
    }
}

/// The reply's contents in memory: the ServerApp pulls every object of
/// the reply, so spilled ones are read back here; `None` when one cannot
/// be (the caller then makes an error reply).
fn read_all(
    objects: HashMap<ObjectId, flower_fleet::state::Stored>,
) -> Option<HashMap<ObjectId, Bytes>> {
    objects
        .into_iter()
        .map(|(id, stored)| stored.into_content().map(|b| (id, b)))
        .collect()
}

/// The reply as the ServerApp lists it: the metadata from its `Message`
/// object (with the id filled in), the content left to the objects.
fn reply_from_objects(tree: ObjectTree, objects: HashMap<ObjectId, Bytes>) -> Option<Reply> {
    let root = objects.get(&tree.id)?;
    let head = parse_head(&tree.id, root).ok()?;
    if head.class != ObjectClass::Message {
        return None;
    }
    let mut message = pb::Message::decode(root.slice(head.body_offset..)).ok()?;
    let metadata = message.metadata.as_mut()?;
    metadata.message_id = tree.id.to_string();
    if message.error.is_none() {
        message.content = Some(pb::RecordDict::default());
    }
    Some(Reply {
        wire: message,
        tree: tree.to_proto(),
        objects,
    })
}

/// An error reply to the instruction `ins`, as flwr's LinkState makes one
/// when a node cannot answer.
fn error_reply(ins: &pb::Metadata, code: i64, reason: &str, now: f64) -> Reply {
    let mut metadata = pb::Metadata {
        run_id: ins.run_id,
        message_id: String::new(),
        src_node_id: ins.dst_node_id,
        dst_node_id: SUPERLINK_NODE_ID,
        reply_to_message_id: ins.message_id.clone(),
        group_id: ins.group_id.clone(),
        ttl: ins.ttl,
        message_type: ins.message_type.clone(),
        created_at: now,
        src_task_id: None,
        dst_task_id: ins.src_task_id,
    };
    let error = pb::Error {
        code,
        reason: reason.into(),
    };
    let body = pb::Message {
        metadata: Some(metadata.clone()),
        content: None,
        error: Some(error.clone()),
    }
    .encode_to_vec();
    let content = Bytes::from(encode_object(ObjectClass::Message, &[], &body));
    let id = ObjectId::of(&content);
    metadata.message_id = id.to_string();
    Reply {
        wire: pb::Message {
            metadata: Some(metadata),
            content: None,
            error: Some(error),
        },
        tree: ObjectTree::leaf(id).to_proto(),
        objects: [(id, content)].into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flower_fleet::state::{ExchangeFailure, ReplyObjects};

    const RUN: u64 = 7;
    const T0: f64 = 1_800_000_000.0;

    /// A `Message` object with one `ConfigRecord`-like child (any valid
    /// object will do for the relay).
    fn instruction(dst: u64, tag: &str) -> (pb::Message, pb::ObjectTree, Vec<(ObjectId, Bytes)>) {
        let child = Bytes::from(encode_object(
            ObjectClass::ConfigRecord,
            &[],
            tag.as_bytes(),
        ));
        let child_id = ObjectId::of(&child);
        let metadata = pb::Metadata {
            run_id: RUN,
            src_node_id: SUPERLINK_NODE_ID,
            dst_node_id: dst,
            ttl: 100.0,
            message_type: "train".into(),
            created_at: T0,
            ..Default::default()
        };
        let body = pb::Message {
            metadata: Some(metadata.clone()),
            content: None,
            error: None,
        }
        .encode_to_vec();
        let root = Bytes::from(encode_object(ObjectClass::Message, &[child_id], &body));
        let root_id = ObjectId::of(&root);
        let mut metadata = metadata;
        metadata.message_id = root_id.to_string();
        let tree = ObjectTree {
            id: root_id,
            children: vec![ObjectTree::leaf(child_id)],
        };
        (
            pb::Message {
                metadata: Some(metadata),
                content: Some(pb::RecordDict::default()),
                error: None,
            },
            tree.to_proto(),
            vec![(child_id, child), (root_id, root)],
        )
    }

    #[test]
    fn instructions_leave_when_complete_and_replies_come_back() {
        let mut relay = Relay::new(Limits::default(), 1);
        let (m1, t1, o1) = instruction(10, "same");
        let (m2, t2, o2) = instruction(11, "same");
        let accepted = relay
            .push_messages(RUN, vec![m1.clone(), m2], &[t1.clone(), t2], T0)
            .expect("accepted");
        assert_eq!(accepted.message_ids.len(), 2);
        // The shared child once, then the two roots.
        assert_eq!(accepted.objects_to_push.len(), 3);
        assert_eq!(accepted.objects_to_push[0], o1[0].0.to_string());
        let push = |relay: &mut Relay, (id, c): &(ObjectId, Bytes)| {
            relay.push_object(RUN, &accepted.session_id, &id.to_string(), c.clone())
        };
        let (stored, out) = push(&mut relay, &o1[0]);
        assert!(stored && out.is_empty());
        assert!(!push(&mut relay, &o1[0]).0, "stored once");
        let bad = relay.push_object(
            RUN,
            &accepted.session_id,
            &o1[1].0.to_string(),
            Bytes::from_static(b"x"),
        );
        assert!(!bad.0, "hash mismatch refused");
        let (_, out) = push(&mut relay, &o1[1]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].node_id, 10);
        assert_eq!(out[0].instruction.objects.len(), 2);
        assert_eq!(out[0].instruction.expires_at, T0 + 100.0);
        let (_, out) = push(&mut relay, &o2[1]);
        assert_eq!(out.len(), 1);
        assert_eq!(relay.sessions(), 0, "session closed once all left");

        // Node 10 replies (the reply is any Message object naming it).
        let ins_id = accepted.message_ids[0].clone();
        let (r, rt, ro) = instruction(SUPERLINK_NODE_ID, "reply");
        let _ = (r, rt);
        let tree = ObjectTree {
            id: ro[1].0,
            children: vec![ObjectTree::leaf(ro[0].0)],
        };
        relay.deliver(
            &ins_id,
            Ok(ReplyObjects {
                tree,
                objects: ro
                    .iter()
                    .map(|(id, c)| (*id, flower_fleet::state::Stored::Memory(c.clone().into())))
                    .collect(),
            }),
            T0 + 1.0,
        );
        // Node 11 went silent.
        relay.deliver(
            &accepted.message_ids[1],
            Err(ExchangeFailure::NodeSilent(11)),
            T0 + 2.0,
        );
        let (messages, trees) = relay.pull_messages(RUN, &accepted.message_ids);
        assert_eq!(messages.len(), 2);
        assert_eq!(trees[0].object_id, ro[1].0.to_string());
        assert!(messages[0].error.is_none());
        let error = messages[1].error.clone().expect("error reply");
        assert_eq!(error.code, NODE_UNAVAILABLE);
        let md = messages[1].metadata.clone().expect("metadata");
        assert_eq!(md.reply_to_message_id, accepted.message_ids[1]);
        assert_eq!(md.src_node_id, 11);
        // The error reply's root object hashes to its id.
        let root = relay
            .pull_object(RUN, &md.message_id)
            .expect("error object");
        assert!(validate_object(&md.message_id.parse().expect("id"), &root).is_ok());
        assert!(relay.pull_object(RUN, &ro[0].0.to_string()).is_some());
        relay.confirm(RUN, &ro[1].0.to_string());
        assert!(relay.pull_object(RUN, &ro[0].0.to_string()).is_none());
        assert!(
            relay.pull_messages(RUN, &accepted.message_ids).0.is_empty(),
            "pulled once"
        );
    }

    #[test]
    fn malformed_pushes_are_refused() {
        let mut relay = Relay::new(Limits::default(), 2);
        let (m, t, _) = instruction(10, "x");
        assert!(relay
            .push_messages(RUN + 1, vec![m.clone()], std::slice::from_ref(&t), T0)
            .is_err());
        assert!(relay.push_messages(RUN, vec![], &[], T0).is_err());
        let mut other = m.clone();
        if let Some(md) = other.metadata.as_mut() {
            md.message_id = "0".repeat(64);
        }
        assert!(relay
            .push_messages(RUN, vec![other], std::slice::from_ref(&t), T0)
            .is_err());
        let accepted = relay.push_messages(RUN, vec![m], &[t], T0).expect("ok");
        relay.tick(T0 + PUSH_SESSION_TTL + 1.0);
        assert_eq!(relay.sessions(), 0);
        assert!(accepted.session_id.len() == 32);
    }
}
