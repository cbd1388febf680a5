//! SuperNodes of flwr 1.13 to 1.22 (but 1.19) over gRPC: `CreateNode`,
//! `DeleteNode`, `Ping`, and, for the nodes created so, the RPCs whose
//! names 1.23+ kept (`PullMessages`, `GetRun`, ...), following flwr's
//! `grpc_rere` servicer and `message_handler.py` of those releases. Three
//! eras, each wire-compatible with its release's protos:
//!
//! * 1.13/1.14: `PullTaskIns`/`PushTaskRes`, the content inline as a
//!   `RecordSet` in a `Task`; `Ping` as the heartbeat.
//! * 1.15-1.18: `PullMessages`/`PushMessages` with the content inline as a
//!   `RecordSet` in the `Message`; `Ping`.
//! * 1.20-1.22: the messages and objects of 1.23+, answered by the HTTP
//!   service's handlers (see [`super`]); `SendNodeHeartbeat`.
//!
//! `CreateNode` looks the same in every era: a node's era shows in its
//! calls (`PullTaskIns`; `Ping` or `SendNodeHeartbeat` before its first
//! `PullMessages`, which stays empty until then).
//!
//! flwr 1.19 is detected and refused. Its protos (`flwr/proto/*_pb2.py`)
//! and calls equal 1.20's (`CreateNode`, `SendNodeHeartbeat`, the object
//! RPCs, identical requests, `message.proto` unchanged, no version in the
//! metadata) except in two answers and one object body:
//!
//! * `PullMessagesResponse` field 3 is `map<string, ObjectIDs>
//!   objects_to_pull` (message id → the ids of all its descendants), not
//!   `repeated ObjectTree message_object_trees`; the node pulls those ids
//!   plus the message id (concurrently, hashes unchecked) and inflates.
//! * `PushMessagesResponse` field 3 is `map<string, ObjectIDs>
//!   objects_to_push` (reply id → ids to push), not `repeated string`.
//! * An `Array` object has no children: its body is the `Array` proto
//!   (`dtype`, `shape`, `stype`, `data`, deterministic encoding), not the
//!   JSON of 1.20+ (`arraychunk_ids` into `ArrayChunk` children); 1.19
//!   knows no `ArrayChunk` class (`KeyError: 'ArrayChunk'` when given
//!   one). Every other object (`Message`, `RecordDict`, `ArrayRecord`,
//!   `ConfigRecord`, `MetricRecord`) is deflated as by 1.20, so only the
//!   ids above an array differ; a message without arrays has the same
//!   objects and ids in both.
//!
//! Nothing a 1.19 node sends before its first instruction tells it from
//! 1.20-1.22, so while an objects-era node is not known to be 1.20+, its
//! `PullMessages` answer carries, after the message's tree, one more
//! tree `{root, children: [probe]}` ([`add_probe`]): 1.20-1.22 read the
//! first tree only; 1.19 reads each tree as a map entry keyed by its root
//! whose value merges the children's ids, the later entry replacing the
//! earlier, so it pulls the probe ([`probe_id`]) and the root. A node
//! that pulls the probe is 1.19: it leaves the link state (its
//! instruction's exchange fails at once), the server logs why, and it and
//! all its later calls get `FAILED_PRECONDITION` with the reason (the
//! node logs it when its `ConfirmMessageReceived` is refused, calls
//! `DeleteNode` and exits). A node that confirms an instruction or pushes
//! a reply without having pulled it is 1.20+ (1.19's pulls all end before
//! it confirms) and is not probed again. Serving 1.19 instead would mean
//! re-deflating each instruction in its form (one `Array` object per
//! array, new ids up to the root, the `objects_to_pull` list), answering
//! its `PullObject`s from that, and collecting its reply's objects
//! (answered with the `objects_to_push` map) to inflate and re-deflate
//! them before they enter the link state.
//!
//! Keys: 1.15 signs every call as 1.23+ does under other metadata names
//! (`public-key-bin`, `signature-bin`, `timestamp`), 1.16-1.22 under the
//! same names (`flwr-public-key-bin`, ...), with a key of their own or one
//! generated at start: such a node is registered and activated under its
//! key at `CreateNode` (with SuperNode authentication on, only an
//! authorized key), and every later call must be signed by it. 1.13/1.14
//! nodes have no key unless started with `--auth-supernode-*`, whose scheme
//! (an ECDH secret with the SuperLink's key, HMACs in `public-key` and
//! `auth-token` metadata) this server does not implement: such a node is
//! refused with `UNAUTHENTICATED`, and so is every keyless node when
//! SuperNode authentication is on. A keyless node is entered in the link
//! state under a random stand-in key, so its id is derived as for every
//! self-registered node ([`node_id_for_key`](crate::state::node_id_for_key)),
//! and its calls must carry no signature.
//!
//! Inline instructions are inflated from the instruction's objects and
//! translated (a `RecordDict` becomes a `RecordSet`); an inline reply is
//! translated back, deflated, and its objects stored through the same push
//! session a 1.23+ SuperNode's reply uses.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use flower_auth::node::{NodePublicKey, INVALID_NODE_AUTH_MESSAGE};
use flower_message::{
    deflate, inflate, ArrayRecord, ConfigRecord, ConfigValue, HandedOver as _, Message,
    MessageError, Metadata, MetricRecord, MetricValue, ObjectId, ObjectTree, Payload, Record,
    RecordDict, VerifiedObjects,
};
use flower_proto as pb;
use prost::Message as _;
use tonic::metadata::MetadataMap;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::node::{unix_now, Shared};
use crate::state::{
    PushOutcome, HEARTBEAT_MAX_INTERVAL, HEARTBEAT_MIN_INTERVAL, SUPERLINK_NODE_ID,
};
use crate::FleetError;

/// flwr ≤ 1.22's node-authentication metadata keys.
const OLD_AUTH_KEYS: [&str; 2] = ["public-key", "auth-token"];

/// What flwr's SuperLink answers in `PushTaskResResponse.reconnect`.
const RECONNECT_SECONDS: u64 = 5;

/// Prefix of the stand-in keys of keyless nodes: never a SEC1 public key
/// (those start with 0x02, 0x03 or 0x04), so never one a keyed node has.
const STAND_IN_PREFIX: &[u8] = b"flwr-keyless-node:";

/// Instructions remembered per node for their replies: a node works on one
/// at a time, so older ones were abandoned (their exchanges expire).
const MAX_AWAITED: usize = 8;

/// What is kept per node of flwr ≤ 1.22 besides the link state's entry.
#[derive(Debug, Default)]
struct OldNode {
    /// The key the link state knows the node by: its public key's SEC1
    /// bytes, or a keyless node's stand-in.
    key: Vec<u8>,
    /// Whether `key` is the node's public key (its calls are signed).
    keyed: bool,
    /// Delivered instructions awaiting a reply, oldest first: their
    /// metadata, for the reply's task ids (at most [`MAX_AWAITED`]).
    delivered: VecDeque<pb::Metadata>,
    /// Runs the node was told about (`GetRun`): `GetFab` of flwr 1.13
    /// names only the FAB's hash.
    runs: Vec<u64>,
    /// It called `Ping` (flwr ≤ 1.18).
    pinged: bool,
    /// It called `SendNodeHeartbeat` (flwr 1.19-1.22).
    heartbeats: bool,
    /// It confirmed an instruction offered with the flwr 1.19 probe
    /// without pulling the probe: flwr 1.20-1.22.
    past_1_19: bool,
    /// It pulled the probe: flwr 1.19, refused (see [`refusal_1_19`]).
    is_1_19: bool,
}

/// How an old node's `PullMessages`/`PushMessages` look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Era {
    /// flwr 1.15-1.18: `RecordSet` content inline.
    Inline,
    /// flwr 1.20-1.22 (or 1.19 until it shows): objects, as 1.23+.
    Objects,
    /// flwr 1.19: refused.
    V119,
}

/// The object only flwr 1.19 pulls (see the module docs): a fixed id that
/// no object of a message has in practice (SHA-256 of a marker text, not
/// an object's content).
pub(crate) fn probe_id() -> ObjectId {
    ObjectId::of(b"flower-rs: the object only a flwr 1.19 SuperNode pulls")
}

/// What a flwr 1.19 node is told, on every call once it showed its era.
pub(crate) fn refusal_1_19() -> Status {
    Status::failed_precondition(
        "flwr 1.19 SuperNodes are not supported by this server (1.19's message objects \
         differ from those of 1.20+); use flwr 1.13-1.18 or >= 1.20",
    )
}

/// The nodes of the gRPC Fleet service created with `CreateNode` (flwr
/// ≤ 1.22).
#[derive(Debug, Default)]
pub(crate) struct OldNodes {
    nodes: Mutex<HashMap<u64, OldNode>>,
}

/// A peer's malformed request.
fn invalid(what: impl std::fmt::Display) -> Status {
    Status::invalid_argument(what.to_string())
}

fn unknown_node(node_id: u64) -> Status {
    debug!(
        node_id,
        "flwr <= 1.22 call for a node this server does not know"
    );
    Status::unauthenticated("unknown node")
}

fn run_refused() -> Status {
    Status::permission_denied("Run status not allowed.")
}

/// The 1.23+ `Node` of a request as flwr ≤ 1.22's.
fn legacy_node(node: pb::Node) -> pb::LegacyNode {
    pb::LegacyNode {
        node_id: node.node_id,
        anonymous: false,
    }
}

/// flwr 1.13 accepts any ping interval; the link state takes [10, 1800] s.
fn interval(seconds: f64) -> f64 {
    if seconds.is_nan() {
        return crate::state::HEARTBEAT_DEFAULT_INTERVAL;
    }
    seconds.clamp(HEARTBEAT_MIN_INTERVAL, HEARTBEAT_MAX_INTERVAL)
}

impl OldNodes {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, OldNode>> {
        // The map is only ever changed by whole-entry operations.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node id of a request from `caller` (`None`: unsigned), if it
    /// names an old node that `caller` may speak for.
    fn known(
        &self,
        node: Option<pb::LegacyNode>,
        caller: Option<&NodePublicKey>,
    ) -> Result<u64, Status> {
        let node_id = node.unwrap_or_default().node_id;
        let nodes = self.lock();
        let Some(entry) = nodes.get(&node_id) else {
            return Err(unknown_node(node_id));
        };
        let allowed = match caller {
            Some(key) => entry.keyed && entry.key == key.sec1_bytes(),
            None => !entry.keyed,
        };
        if allowed {
            Ok(node_id)
        } else {
            debug!(node_id, "call not signed by the node's key");
            Err(Status::unauthenticated(INVALID_NODE_AUTH_MESSAGE))
        }
    }

    /// Whether `key` belongs to a node created with `CreateNode`, and its
    /// era once known.
    pub(crate) fn owner(&self, key: &NodePublicKey) -> Option<Option<Era>> {
        let nodes = self.lock();
        let (_, node) = nodes
            .iter()
            .find(|(_, n)| n.keyed && n.key == key.sec1_bytes())?;
        Some(Self::era_of(node))
    }

    fn era_of(node: &OldNode) -> Option<Era> {
        if node.is_1_19 {
            Some(Era::V119)
        } else if node.heartbeats {
            Some(Era::Objects)
        } else if node.pinged {
            Some(Era::Inline)
        } else {
            None
        }
    }

    /// The node's message era, once its heartbeat RPC told.
    fn era(&self, node_id: u64) -> Option<Era> {
        self.lock().get(&node_id).and_then(Self::era_of)
    }

    /// Whether the instructions pulled by `key`'s node must carry the flwr
    /// 1.19 probe: an objects-era node not yet known to be 1.20+.
    pub(crate) fn needs_probe(&self, key: &NodePublicKey) -> bool {
        self.lock()
            .values()
            .any(|n| n.keyed && n.key == key.sec1_bytes() && n.heartbeats && !n.past_1_19)
    }

    /// `key`'s node confirmed an instruction or pushed a reply as 1.20+
    /// does: a 1.19 node pulls the probe before either (its pulls all end
    /// before it confirms), so it is 1.20+ unless it pulled it already.
    pub(crate) fn objects_used(&self, key: &NodePublicKey) {
        let mut nodes = self.lock();
        if let Some(node) = nodes
            .values_mut()
            .find(|n| n.keyed && n.key == key.sec1_bytes() && n.heartbeats && !n.is_1_19)
        {
            node.past_1_19 = true;
        }
    }

    /// `key`'s node pulled the probe: it is flwr 1.19. It leaves the link
    /// state (its instruction's exchange fails at once) and every later
    /// call of it is refused with [`refusal_1_19`]. Returns whether `key`
    /// belongs to an old node (a 1.23+ node pulling the probe is only
    /// told that no such object exists).
    pub(crate) fn refuse_1_19(&self, shared: &Arc<Shared>, key: &NodePublicKey) -> bool {
        let mut nodes = self.lock();
        let Some((&node_id, node)) = nodes
            .iter_mut()
            .find(|(_, n)| n.keyed && n.key == key.sec1_bytes())
        else {
            return false;
        };
        if !node.is_1_19 {
            node.is_1_19 = true;
            let sec1 = node.key.clone();
            drop(nodes);
            warn!(
                node_id,
                key = key.fingerprint(),
                "refused a flwr 1.19 SuperNode: its message objects (arrays without \
                 chunks, object lists keyed by message id) differ from those of 1.20+, \
                 which this server serves; use flwr 1.13-1.18 or >= 1.20"
            );
            shared.with_state(|s| s.revoke_key(&sec1));
        }
        true
    }

    /// Remembers a delivered inline instruction (for its reply).
    fn delivered(&self, node_id: u64, metadata: pb::Metadata) {
        if let Some(node) = self.lock().get_mut(&node_id) {
            if node.delivered.len() >= MAX_AWAITED {
                node.delivered.pop_front();
            }
            node.delivered.push_back(metadata);
        }
    }

    /// `CreateNode`: a node online at once (flwr ≤ 1.22 has no separate
    /// activation), under `caller`'s key (`authorized`: in the authorized
    /// set) or, unsigned, keyless.
    pub(crate) fn create_node(
        &self,
        shared: &Arc<Shared>,
        metadata: &MetadataMap,
        caller: Option<&NodePublicKey>,
        authorized: bool,
        req: &pb::CreateNodeRequest,
    ) -> Result<pb::CreateNodeResponse, Status> {
        if OLD_AUTH_KEYS.iter().any(|k| metadata.contains_key(*k)) {
            warn!(
                "refused a flwr <= 1.22 SuperNode that authenticates with \
                 --auth-supernode-private-key/--auth-supernode-public-key: this server \
                 cannot verify that scheme (public-key/auth-token metadata); start \
                 it without those flags, or use flwr >= 1.23"
            );
            return Err(Status::unauthenticated(
                "SuperNode authentication of flwr <= 1.22 is not supported by this server",
            ));
        }
        if let Some(key) = caller {
            return self.create_keyed_node(shared, key, authorized, req);
        }
        if shared.read_state(|s| s.supernode_auth_enabled()) {
            warn!(
                "refused a keyless flwr <= 1.22 SuperNode: SuperNode authentication is \
                 enabled and such a node cannot prove a key (use flwr >= 1.23)"
            );
            return Err(Status::unauthenticated(
                "SuperNode authentication is enabled; keyless SuperNodes are refused",
            ));
        }
        let mut key = STAND_IN_PREFIX.to_vec();
        key.extend_from_slice(&rand::random::<[u8; 16]>());
        let now = unix_now();
        let seconds = interval(req.ping_interval);
        let node_id = shared
            .with_state(|s| {
                let id = s.register(&key)?;
                s.activate(&key, seconds, false, now)?;
                Ok::<_, crate::state::StateError>(id)
            })
            .map_err(|e| {
                warn!(error = %e, "keyless SuperNode not created");
                Status::unavailable("Service unavailable.")
            })?;
        self.lock().insert(
            node_id,
            OldNode {
                key,
                ..OldNode::default()
            },
        );
        info!(node_id, "keyless SuperNode (flwr <= 1.22) created");
        Ok(pb::CreateNodeResponse {
            node: Some(pb::LegacyNode {
                node_id,
                anonymous: false,
            }),
        })
    }

    fn create_keyed_node(
        &self,
        shared: &Arc<Shared>,
        key: &NodePublicKey,
        authorized: bool,
        req: &pb::CreateNodeRequest,
    ) -> Result<pb::CreateNodeResponse, Status> {
        let sec1 = key.sec1_bytes().to_vec();
        let now = unix_now();
        let seconds = interval(req.ping_interval);
        let node_id = shared
            .with_state(|s| {
                // A node restarted with the same key is taken back.
                if !s.supernode_auth_enabled() && s.node_for_key(&sec1).is_none() {
                    s.register(&sec1)?;
                }
                s.activate(&sec1, seconds, authorized, now)
            })
            .map_err(|e| {
                warn!(key = key.fingerprint(), error = %e, "SuperNode (flwr <= 1.22) refused");
                Status::unauthenticated(INVALID_NODE_AUTH_MESSAGE)
            })?;
        self.lock().insert(
            node_id,
            OldNode {
                key: sec1,
                keyed: true,
                ..OldNode::default()
            },
        );
        info!(
            node_id,
            key = key.fingerprint(),
            "SuperNode (flwr <= 1.22) created"
        );
        Ok(pb::CreateNodeResponse {
            node: Some(pb::LegacyNode {
                node_id,
                anonymous: false,
            }),
        })
    }

    /// `DeleteNode`: the node is forgotten; its exchange fails.
    pub(crate) fn delete_node(
        &self,
        shared: &Arc<Shared>,
        caller: Option<&NodePublicKey>,
        req: &pb::DeleteNodeRequest,
    ) -> Result<pb::DeleteNodeResponse, Status> {
        let node_id = self.known(req.node, caller)?;
        let removed = self.lock().remove(&node_id);
        if let Some(node) = removed {
            shared.with_state(|s| s.revoke_key(&node.key));
            info!(node_id, "SuperNode (flwr <= 1.22) deleted");
        }
        Ok(pb::DeleteNodeResponse {})
    }

    /// `Ping`: the heartbeat of flwr ≤ 1.18.
    pub(crate) fn ping(
        &self,
        shared: &Arc<Shared>,
        caller: Option<&NodePublicKey>,
        req: &pb::PingRequest,
    ) -> Result<pb::PingResponse, Status> {
        let node_id = self.known(req.node, caller)?;
        if let Some(node) = self.lock().get_mut(&node_id) {
            node.pinged = true;
        }
        let seconds = interval(req.ping_interval);
        let success = shared
            .with_state(|s| s.heartbeat(node_id, seconds, unix_now()))
            .unwrap_or(false);
        Ok(pb::PingResponse { success })
    }

    /// `SendNodeHeartbeat` of an old node (flwr 1.20-1.22).
    pub(crate) fn send_node_heartbeat(
        &self,
        shared: &Arc<Shared>,
        caller: Option<&NodePublicKey>,
        req: &pb::SendNodeHeartbeatRequest,
    ) -> Result<pb::SendNodeHeartbeatResponse, Status> {
        let node_id = self.known(req.node.map(legacy_node), caller)?;
        if let Some(node) = self.lock().get_mut(&node_id) {
            node.heartbeats = true;
        }
        let seconds = interval(req.heartbeat_interval);
        let success = shared
            .with_state(|s| s.heartbeat(node_id, seconds, unix_now()))
            .unwrap_or(false);
        Ok(pb::SendNodeHeartbeatResponse { success })
    }

    /// `PullMessages` of an old node: in its era's form, nothing while its
    /// era is unknown.
    pub(crate) async fn pull_messages(
        &self,
        shared: &Arc<Shared>,
        caller: Option<&NodePublicKey>,
        req: &pb::PullMessagesRequest,
    ) -> Result<pb::PullMessagesWireResponse, Status> {
        let node_id = self.known(req.node.map(legacy_node), caller)?;
        match self.era(node_id) {
            None => Ok(pb::PullMessagesWireResponse::default()),
            Some(Era::Inline) => {
                let Some(message) = next_instruction(shared, node_id).await else {
                    return Ok(pb::PullMessagesWireResponse::default());
                };
                let legacy = match legacy_message(&message) {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(node_id, error = %e, "instruction has no flwr 1.15 form");
                        return Ok(pb::PullMessagesWireResponse::default());
                    }
                };
                let metadata = pb::Metadata::from(&message.metadata);
                let _ = shared
                    .with_state(|s| s.confirm(node_id, metadata.run_id, &metadata.message_id));
                self.delivered(node_id, metadata);
                Ok(pb::PullMessagesWireResponse {
                    reconnect: None,
                    messages_list: vec![Bytes::from(legacy.encode_to_vec())],
                    message_object_trees: Vec::new(),
                })
            }
            // Routed to the 1.23+ handler (see `super`).
            Some(Era::Objects) => Ok(pb::PullMessagesWireResponse::default()),
            Some(Era::V119) => Err(refusal_1_19()),
        }
    }

    /// `PushMessages` of a flwr 1.15-1.18 node: its reply inline.
    pub(crate) fn push_messages(
        &self,
        shared: &Arc<Shared>,
        caller: Option<&NodePublicKey>,
        req: pb::PushMessagesWireRequest,
    ) -> Result<pb::PushMessagesResponse, Status> {
        let node_id = self.known(req.node, caller)?;
        let first = req
            .messages_list
            .first()
            .ok_or_else(|| invalid("PushMessages without a message"))?;
        let message = pb::LegacyMessage::decode(first.clone()).map_err(invalid)?;
        let reply_to = message
            .metadata
            .as_ref()
            .map(|m| m.reply_to_message_id.clone())
            .unwrap_or_default();
        let results = match self.take_delivered(node_id, &reply_to) {
            Some(instruction) => {
                let reply = reply_message(LegacyReply::from(message), node_id, &instruction)
                    .map_err(|e| {
                        warn!(node_id, error = %e, "unreadable reply");
                        invalid(e)
                    })?;
                let message_id = store_reply(shared, node_id, &reply)?;
                [(message_id, 0)].into_iter().collect()
            }
            None => {
                debug!(node_id, "reply answers no delivered instruction");
                BTreeMap::new()
            }
        };
        Ok(pb::PushMessagesResponse {
            reconnect: Some(pb::Reconnect {
                reconnect: RECONNECT_SECONDS,
            }),
            results,
            objects_to_push: Vec::new(),
            session_id: String::new(),
        })
    }

    fn take_delivered(&self, node_id: u64, message_id: &str) -> Option<pb::Metadata> {
        self.lock().get_mut(&node_id).and_then(|n| {
            let at = n
                .delivered
                .iter()
                .position(|m| m.message_id == message_id)?;
            n.delivered.remove(at)
        })
    }

    /// `GetRun` of a keyless node.
    pub(crate) fn get_run(
        &self,
        shared: &Arc<Shared>,
        caller: Option<&NodePublicKey>,
        req: &pb::GetRunRequest,
    ) -> Result<pb::GetRunResponse, Status> {
        let node_id = self.known(req.node.map(legacy_node), caller)?;
        let run = shared
            .read_state(|s| s.run_info(req.run_id).cloned())
            .ok_or_else(run_refused)?;
        if let Some(node) = self.lock().get_mut(&node_id) {
            if !node.runs.contains(&req.run_id) {
                node.runs.push(req.run_id);
            }
        }
        Ok(pb::GetRunResponse { run: Some(run) })
    }

    /// `GetFab` of a keyless node: flwr 1.13 names the hash only, so the
    /// FAB of a running run the node asked about.
    pub(crate) fn get_fab(
        &self,
        shared: &Arc<Shared>,
        caller: Option<&NodePublicKey>,
        req: &pb::GetFabRequest,
    ) -> Result<pb::GetFabResponse, Status> {
        let node_id = self.known(req.node.map(legacy_node), caller)?;
        let mut runs = self
            .lock()
            .get(&node_id)
            .map(|n| n.runs.clone())
            .unwrap_or_default();
        if req.run_id != 0 {
            runs = vec![req.run_id];
        }
        let fab = shared.read_state(|s| {
            runs.iter()
                .filter_map(|r| s.run_fab(*r))
                .find(|f| f.hash_str == req.hash_str)
                .cloned()
        });
        match fab {
            Some(fab) => Ok(pb::GetFabResponse { fab: Some(fab) }),
            None => Err(run_refused()),
        }
    }

    /// `PullTaskIns`: the node's next instruction, whole.
    pub(crate) async fn pull_task_ins(
        &self,
        shared: &Arc<Shared>,
        caller: Option<&NodePublicKey>,
        req: &pb::PullTaskInsRequest,
    ) -> Result<pb::PullTaskInsResponse, Status> {
        let node_id = self.known(req.node, caller)?;
        let Some(message) = next_instruction(shared, node_id).await else {
            return Ok(pb::PullTaskInsResponse::default());
        };
        let metadata = pb::Metadata::from(&message.metadata);
        let task_ins = match task_ins(&message, node_id) {
            Ok(t) => t,
            Err(e) => {
                // The exchange then ends at the instruction's TTL.
                warn!(node_id, error = %e, "instruction has no flwr 1.13 form");
                return Ok(pb::PullTaskInsResponse::default());
            }
        };
        // The node now has the whole instruction: its objects need not wait
        // for a `ConfirmMessageReceived` that never comes.
        let _ = shared.with_state(|s| s.confirm(node_id, metadata.run_id, &metadata.message_id));
        self.delivered(node_id, metadata);
        Ok(pb::PullTaskInsResponse {
            reconnect: None,
            task_ins_list: vec![task_ins],
        })
    }

    /// `PushTaskRes`: the reply, translated and stored as if pushed as
    /// objects.
    pub(crate) fn push_task_res(
        &self,
        shared: &Arc<Shared>,
        caller: Option<&NodePublicKey>,
        req: pb::PushTaskResRequest,
    ) -> Result<pb::PushTaskResResponse, Status> {
        let node_id = self.known(req.node, caller)?;
        let res = req
            .task_res_list
            .into_iter()
            .next()
            .ok_or_else(|| invalid("PushTaskRes without a TaskRes"))?;
        let reply_to = res
            .task
            .as_ref()
            .and_then(|t| t.ancestry.first())
            .cloned()
            .unwrap_or_default();
        let Some(instruction) = self.take_delivered(node_id, &reply_to) else {
            // Like flwr, a reply to nothing known is dropped.
            debug!(node_id, "TaskRes answers no delivered instruction");
            return Ok(pb::PushTaskResResponse {
                reconnect: Some(pb::Reconnect {
                    reconnect: RECONNECT_SECONDS,
                }),
                results: BTreeMap::new(),
            });
        };
        let reply = reply_message(LegacyReply::from(res), node_id, &instruction).map_err(|e| {
            warn!(node_id, error = %e, "unreadable TaskRes");
            invalid(e)
        })?;
        let message_id = store_reply(shared, node_id, &reply)?;
        Ok(pb::PushTaskResResponse {
            reconnect: Some(pb::Reconnect {
                reconnect: RECONNECT_SECONDS,
            }),
            results: [(message_id, 0)].into_iter().collect(),
        })
    }
}

/// Adds the flwr 1.19 probe to a `PullMessages` answer for an objects-era
/// node: after the message's trees, one more per message, `{id: root,
/// children: [{id: probe}]}`. flwr 1.20+ reads the first tree only; flwr
/// 1.19 reads field 3 as `map<string, ObjectIDs> objects_to_pull`, each
/// tree an entry keyed by its root whose value merges its children's ids,
/// the later entry for a key replacing the earlier: it pulls the probe and
/// the root.
pub(crate) fn add_probe(response: &mut pb::PullMessagesWireResponse) {
    let probe = probe_id().to_string();
    let entries: Vec<pb::ObjectTree> = response
        .message_object_trees
        .iter()
        .map(|t| pb::ObjectTree {
            object_id: t.object_id.clone(),
            children: vec![pb::ObjectTree {
                object_id: probe.clone(),
                children: Vec::new(),
            }],
        })
        .collect();
    response.message_object_trees.extend(entries);
}

/// The node's next undelivered instruction, inflated from its objects.
async fn next_instruction(shared: &Arc<Shared>, node_id: u64) -> Option<Message> {
    let limits = shared.limits.clone();
    let now = unix_now();
    let (tree, contents) = shared.with_state(|s| {
        let (_, tree) = s.pull_messages(node_id, now)?;
        let tree = ObjectTree::from_proto(&tree, &limits).ok()?;
        let contents: Vec<_> = tree
            .unique_ids()
            .into_iter()
            .filter_map(|id| s.store().stored(&id).map(|c| (id, c)))
            .collect();
        Some((tree, contents))
    })?;
    // Joining a chunk's parts and parsing the arrays: off the async threads.
    let inflated = tokio::task::spawn_blocking(move || {
        // Instruction objects are the server's own, in memory.
        let objects: BTreeMap<ObjectId, Bytes> = contents
            .into_iter()
            .filter_map(|(id, c)| c.into_content().map(|b| (id, b)))
            .collect();
        // Our own instruction's objects, made by `deflate`.
        inflate(&tree, &VerifiedObjects(&objects), &limits)
    })
    .await;
    match inflated {
        Ok(Ok(message)) => Some(message),
        Ok(Err(e)) => {
            warn!(node_id, error = %e, "instruction objects do not inflate");
            None
        }
        Err(e) => {
            warn!(node_id, error = %e, "inflating an instruction failed");
            None
        }
    }
}

/// Deflates `reply` and stores it through a push session of the node's
/// exchange. Returns the reply's message id.
fn store_reply(shared: &Arc<Shared>, node_id: u64, reply: &Message) -> Result<String, Status> {
    let deflated = deflate(reply);
    let mut wire = reply.to_wire_proto();
    let message_id = deflated.root.to_string();
    if let Some(m) = wire.metadata.as_mut() {
        m.message_id = message_id.clone();
    }
    let run_id = reply.metadata.run_id;
    let tree = deflated.tree.to_proto();
    let now = unix_now();
    shared
        .with_state(|s| {
            let accepted = s.push_messages(node_id, &wire, &tree, now)?;
            if accepted.session_id.is_empty() {
                debug!(node_id, "reply not accepted (its exchange is over)");
                return Ok(());
            }
            for id in &accepted.objects_to_push {
                let Ok(oid) = id.parse::<ObjectId>() else {
                    continue;
                };
                let Some(content) = deflated.objects.get(&oid) else {
                    continue;
                };
                let outcome =
                    s.push_object(node_id, run_id, &accepted.session_id, &oid, content.clone())?;
                if outcome == PushOutcome::Completed {
                    break;
                }
            }
            Ok(())
        })
        .map_err(|e: crate::state::StateError| {
            debug!(node_id, error = %e, "reply refused");
            run_refused()
        })?;
    Ok(message_id)
}

/// A `RecordDict` as flwr 1.13's `RecordSet` (`ArrayRecord` =
/// `ParametersRecord`, `MetricRecord` = `MetricsRecord`, `ConfigRecord` =
/// `ConfigsRecord`).
pub(crate) fn record_set(content: &RecordDict) -> Result<pb::RecordSet, FleetError> {
    let mut set = pb::RecordSet::default();
    for (key, record) in content.iter() {
        match record {
            Record::Array(r) => {
                let mut p = pb::ParametersRecord::default();
                for (k, a) in r.iter() {
                    p.data_keys.push(k.clone());
                    p.data_values
                        .push(pb::Array::try_from(a).map_err(FleetError::Codec)?);
                }
                set.parameters.insert(key.clone(), p);
            }
            Record::Metric(r) => {
                let data = r.iter().map(|(k, v)| (k.clone(), v.to_proto())).collect();
                set.metrics.insert(key.clone(), pb::MetricsRecord { data });
            }
            Record::Config(r) => {
                let data = r.iter().map(|(k, v)| (k.clone(), v.to_proto())).collect();
                set.configs.insert(key.clone(), pb::ConfigsRecord { data });
            }
        }
    }
    Ok(set)
}

/// flwr 1.13's `RecordSet` as a `RecordDict`: arrays, then metrics, then
/// configs (the order flwr 1.13 iterates them in).
pub(crate) fn record_dict(set: pb::RecordSet) -> Result<RecordDict, FleetError> {
    let mut out = RecordDict::new();
    for (key, p) in set.parameters {
        if p.data_keys.len() != p.data_values.len() {
            return Err(FleetError::Codec(flower_message::Error::InvalidValue(
                format!("ParametersRecord {key:?}: keys and values differ in number"),
            )));
        }
        let record = p
            .data_keys
            .into_iter()
            .zip(p.data_values)
            .map(|(k, a)| Ok((k, flower_message::Array::try_from(a)?)))
            .collect::<Result<ArrayRecord, flower_message::Error>>()
            .map_err(FleetError::Codec)?;
        out.insert(key, Record::Array(record));
    }
    for (key, m) in set.metrics {
        let record = m
            .data
            .into_iter()
            .map(|(k, v)| Ok((k, MetricValue::try_from(v)?)))
            .collect::<Result<MetricRecord, flower_message::Error>>()
            .map_err(FleetError::Codec)?;
        out.insert(key, Record::Metric(record));
    }
    for (key, c) in set.configs {
        let record = c
            .data
            .into_iter()
            .map(|(k, v)| Ok((k, ConfigValue::try_from(v)?)))
            .collect::<Result<ConfigRecord, flower_message::Error>>()
            .map_err(FleetError::Codec)?;
        out.insert(key, Record::Config(record));
    }
    Ok(out)
}

/// An instruction as flwr 1.13's SuperLink hands it out
/// (`message_to_taskins` plus the task id): from an anonymous producer to
/// the node.
pub(crate) fn task_ins(message: &Message, node_id: u64) -> Result<pb::TaskIns, FleetError> {
    let md = &message.metadata;
    let (recordset, error) = match &message.payload {
        Payload::Content(c) => (Some(record_set(c)?), None),
        Payload::Error(e) => (None, Some(pb::Error::from(e))),
    };
    Ok(pb::TaskIns {
        task_id: md.message_id.clone(),
        group_id: md.group_id.clone(),
        run_id: md.run_id,
        task: Some(pb::LegacyTask {
            producer: Some(pb::LegacyNode {
                node_id: 0,
                anonymous: true,
            }),
            consumer: Some(pb::LegacyNode {
                node_id,
                anonymous: false,
            }),
            created_at: md.created_at,
            delivered_at: String::new(),
            pushed_at: 0.0,
            ttl: md.ttl,
            ancestry: if md.reply_to_message_id.is_empty() {
                Vec::new()
            } else {
                vec![md.reply_to_message_id.clone()]
            },
            task_type: md.message_type.clone(),
            recordset,
            error,
        }),
    })
}

/// An instruction as flwr 1.15-1.18's SuperLink sends it: the `Message`
/// with its content inline as a `RecordSet`.
pub(crate) fn legacy_message(message: &Message) -> Result<pb::LegacyMessage, FleetError> {
    let (content, error) = match &message.payload {
        Payload::Content(c) => (Some(record_set(c)?), None),
        Payload::Error(e) => (None, Some(pb::Error::from(e))),
    };
    Ok(pb::LegacyMessage {
        metadata: Some(pb::Metadata::from(&message.metadata)),
        content,
        error,
    })
}

/// What a reply of flwr ≤ 1.18 says, from a `TaskRes` or a `Message`.
#[derive(Debug, Clone, Default)]
pub(crate) struct LegacyReply {
    /// The node that sent it.
    producer: u64,
    run_id: u64,
    group_id: String,
    ttl: f64,
    message_type: String,
    created_at: f64,
    content: Option<pb::RecordSet>,
    error: Option<pb::Error>,
}

impl From<pb::TaskRes> for LegacyReply {
    fn from(res: pb::TaskRes) -> Self {
        let task = res.task.unwrap_or_default();
        LegacyReply {
            producer: task.producer.unwrap_or_default().node_id,
            run_id: res.run_id,
            group_id: res.group_id,
            ttl: task.ttl,
            message_type: task.task_type,
            created_at: task.created_at,
            content: task.recordset,
            error: task.error,
        }
    }
}

impl From<pb::LegacyMessage> for LegacyReply {
    fn from(m: pb::LegacyMessage) -> Self {
        let md = m.metadata.unwrap_or_default();
        LegacyReply {
            producer: md.src_node_id,
            run_id: md.run_id,
            group_id: md.group_id,
            ttl: md.ttl,
            message_type: md.message_type,
            created_at: md.created_at,
            content: m.content,
            error: m.error,
        }
    }
}

/// A node's reply to `instruction`: from the node to the SuperLink, with
/// the instruction's task ids swapped (as flwr 1.42's
/// `Message.create_reply` sets them).
pub(crate) fn reply_message(
    reply: LegacyReply,
    node_id: u64,
    instruction: &pb::Metadata,
) -> Result<Message, FleetError> {
    if reply.producer != node_id {
        return Err(FleetError::Codec(flower_message::Error::InvalidValue(
            format!("reply of node {} pushed by node {node_id}", reply.producer),
        )));
    }
    let metadata = Metadata {
        run_id: reply.run_id,
        message_id: String::new(),
        src_node_id: node_id,
        dst_node_id: SUPERLINK_NODE_ID,
        reply_to_message_id: instruction.message_id.clone(),
        group_id: reply.group_id,
        ttl: reply.ttl,
        message_type: reply.message_type,
        created_at: reply.created_at,
        src_task_id: instruction.dst_task_id,
        dst_task_id: instruction.src_task_id,
    };
    Ok(match (reply.content, reply.error) {
        (_, Some(e)) => Message::with_error(metadata, MessageError::from(e)),
        (Some(set), None) => Message::new(metadata, record_dict(set)?),
        (None, None) => Message::new(metadata, RecordDict::new()),
    })
}

#[cfg(test)]
mod tests;
