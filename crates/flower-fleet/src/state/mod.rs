//! The link state: nodes, the runs, one instruction queue per node, push
//! sessions and the object store. No network and no clock: every call is
//! handed the current time (Unix seconds, as flwr's
//! `created_at`/`online_until`), so tests drive it deterministically. The
//! only I/O is the store's optional spill of pushed contents to temporary
//! files ([`SpillConfig`]).
//!
//! It follows flwr 1.42's `InMemoryLinkState` and `fleet_handlers.py` where
//! a SuperNode can tell the difference, and departs where it cannot:
//! instructions and replies are bound to one exchange of the round driver,
//! and whatever ends an exchange (reply, error, node offline, expiry, run
//! end) releases its objects.
//!
//! Changes of a node's availability are queued as [`NodeEvent`]s, which the
//! async layer drains with [`LinkState::take_events`] to (un)register the
//! node with the server's client manager.

mod store;

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use flower_message::{HandOver, Limits, ObjectId, ObjectTree};
use flower_proto as pb;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;

pub use store::{Content, Lookup, ObjectStore, SpillConfig, SpilledContent, Stored};

/// flwr's `HEARTBEAT_MIN_INTERVAL`, seconds.
pub const HEARTBEAT_MIN_INTERVAL: f64 = 10.0;
/// flwr's `HEARTBEAT_MAX_INTERVAL`, seconds.
pub const HEARTBEAT_MAX_INTERVAL: f64 = 1800.0;
/// flwr's `HEARTBEAT_PATIENCE`: a node is online until `now + patience ×
/// interval` after each heartbeat.
pub const HEARTBEAT_PATIENCE: f64 = 2.0;
/// flwr's push-session lifetime, seconds.
pub const PUSH_SESSION_TTL: f64 = 180.0;
/// flwr's `SUPERLINK_NODE_ID`: the source of every instruction.
pub const SUPERLINK_NODE_ID: u64 = 1;
/// flwr's `HEARTBEAT_DEFAULT_INTERVAL`, seconds: what a stock SuperNode
/// sends, and what a re-admitted node (see [`LinkState::readmit`]) is
/// assumed to use until its next heartbeat.
pub const HEARTBEAT_DEFAULT_INTERVAL: f64 = 30.0;

/// The node id of a public key (the canonical SEC1 bytes): the first eight
/// bytes of its SHA-256, big-endian, shifted below 2^63 (the same number in
/// every language's integers), never 0 or [`SUPERLINK_NODE_ID`].
///
/// Deterministic, so a server that restarts recognises the ids its
/// SuperNodes keep using (flwr draws them at random and keeps them in its
/// database; this server keeps no node database).
pub fn node_id_for_key(key: &[u8]) -> u64 {
    let digest = ObjectId::of(key);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest.as_bytes()[..8]);
    let id = u64::from_be_bytes(head) >> 1;
    if id <= SUPERLINK_NODE_ID {
        id + 2
    } else {
        id
    }
}

/// A node's status (flwr's `NodeStatus` without `UNREGISTERED`: an
/// unregistered node is forgotten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Known, never activated.
    Registered,
    /// Activated and heartbeating.
    Online,
    /// Deactivated, or silent past its patience.
    Offline,
}

/// The run's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Serving instructions.
    Running,
    /// Over: every Fleet call about it is refused with 403.
    Finished,
}

/// A change the async layer acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node became available for instructions.
    Online(u64),
    /// The node is no longer available (deactivated, silent, removed).
    Offline(u64),
}

/// Why an exchange ended without a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeFailure {
    /// The node missed its heartbeat patience.
    #[error("node {0} went silent (no heartbeat within its patience)")]
    NodeSilent(u64),
    /// The node deactivated or unregistered itself.
    #[error("node {0} deactivated")]
    NodeDeactivated(u64),
    /// The node's key was removed from the authorized set.
    #[error("node {0} was removed (its key is no longer authorized)")]
    NodeRemoved(u64),
    /// The instruction's TTL passed before a reply arrived.
    #[error("instruction expired before a reply arrived")]
    Expired,
    /// The push session of the reply expired before all objects arrived.
    #[error("the reply's push session expired before all its objects arrived")]
    SessionExpired,
    /// The run finished.
    #[error("the run finished")]
    RunFinished,
    /// The node pushed an object that is not what its reply named.
    #[error("invalid reply object: {0}")]
    InvalidObject(String),
}

/// A complete reply: its tree and the content of every object in it.
#[derive(Debug, Clone)]
pub struct ReplyObjects {
    /// The reply's tree (root = the reply's `Message` object).
    pub tree: ObjectTree,
    /// Content of every distinct object of the tree (in memory or spilled).
    pub objects: HashMap<ObjectId, Stored>,
}

impl ReplyObjects {
    /// The objects as an inflation source that hands each one over on its
    /// fetch, so a chunk's memory goes as soon as its array is assembled.
    pub fn into_source(self) -> (ObjectTree, HandOver<Stored>) {
        (self.tree, HandOver::new(self.objects))
    }
}

/// How an exchange ended.
pub type ExchangeOutcome = Result<ReplyObjects, ExchangeFailure>;

/// An instruction for one node, ready to be pulled.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// The `Message` as `PullMessages` lists it (metadata with
    /// `message_id` = root id, empty content).
    pub wire: pb::Message,
    /// The object tree (root = the node's `Message` object).
    pub tree: ObjectTree,
    /// Content of every distinct object in the tree; the shared subtree's
    /// contents are the same buffers for every node (array chunks: slices
    /// of the model's own bytes behind a small head).
    pub objects: Vec<(ObjectId, Content)>,
    /// Unix time after which the instruction is void (`created_at + ttl`).
    pub expires_at: f64,
}

/// Refusals, each mapped to one HTTP status by the service.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Self-registration is off (`enable_supernode_auth`).
    #[error("SuperNode authentication is enabled; SuperNodes must be pre-registered")]
    RegistrationDisabled,
    /// Unregistration through the Fleet API is off (`enable_supernode_auth`).
    #[error("SuperNode authentication is enabled; SuperNodes cannot unregister themselves")]
    UnregistrationDisabled,
    /// The key already belongs to a node.
    #[error("public key already in use")]
    KeyInUse,
    /// The key belongs to no node (or is not authorized).
    #[error("no SuperNode with this public key")]
    UnknownKey,
    /// The node id is unknown.
    #[error("unknown node {0}")]
    UnknownNode(u64),
    /// Heartbeat interval outside [10, 1800] seconds.
    #[error("heartbeat interval {0} is out of bounds [10, 1800]")]
    BadHeartbeatInterval(f64),
    /// The node cannot be (de)activated in its current status.
    #[error("node {0} cannot change to the requested status")]
    BadTransition(u64),
    /// The run is not running, or unknown.
    #[error("run {0} is not running")]
    RunNotRunning(u64),
    /// The node has no pending work (the target of an instruction must be online).
    #[error("node {0} is not online")]
    NodeNotOnline(u64),
    /// An instruction with this message id is already in flight.
    #[error("message {0} is already in flight")]
    DuplicateMessage(String),
    /// Another key already has the node id this key derives (a SHA-256
    /// prefix collision: in practice never).
    #[error("node id {0} is taken by another key")]
    IdCollision(u64),
}

/// Settings of the link state.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// The run registered as running when the state is created (the run
    /// of the Rust round driver); 0 for none (flwr never uses run id 0),
    /// as when runs come from the Control API ([`LinkState::add_run`]).
    pub run_id: u64,
    /// Refuse `RegisterNode` (and `UnregisterNode`); only keys in the
    /// authorized set may activate (flwr's `--enable-supernode-auth`).
    pub enable_supernode_auth: bool,
    /// Push-session lifetime (default [`PUSH_SESSION_TTL`]).
    pub session_ttl: f64,
    /// Bounds on reply trees (node count, object sizes).
    pub limits: Limits,
    /// When pushed contents spill to disk (default: never).
    pub spill: Option<SpillConfig>,
}

impl StateConfig {
    /// Flower's defaults for run `run_id`.
    pub fn new(run_id: u64) -> Self {
        StateConfig {
            run_id,
            enable_supernode_auth: false,
            session_ttl: PUSH_SESSION_TTL,
            limits: Limits::default(),
            spill: None,
        }
    }
}

#[derive(Debug)]
struct Node {
    key: Vec<u8>,
    status: NodeStatus,
    online_until: f64,
    heartbeat_interval: f64,
    /// Exchanges in flight, oldest first (several runs may share a node).
    exchanges: Vec<u64>,
}

/// A node as the Runtime API's `GetNodes` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSummary {
    /// The node's id.
    pub node_id: u64,
    /// Its status.
    pub status: NodeStatus,
    /// Unix time until which it counts as online.
    pub online_until: f64,
    /// Its last announced heartbeat interval, seconds.
    pub heartbeat_interval: f64,
}

/// A run as the Fleet API serves it: `GetRun` answers `run`, `GetFab`
/// answers `fab`.
#[derive(Debug, Clone)]
struct RunEntry {
    status: RunStatus,
    run: Option<pb::Run>,
    fab: Option<pb::Fab>,
}

#[derive(Debug)]
struct Exchange {
    node_id: u64,
    run_id: u64,
    instruction: Instruction,
    root: ObjectId,
    delivered: bool,
    /// The instruction's objects are still held (until confirmed or ended).
    holds_instruction: bool,
    reply: Option<Reply>,
    done: Option<oneshot::Sender<ExchangeOutcome>>,
}

#[derive(Debug)]
struct Reply {
    session: String,
    tree: ObjectTree,
    ids: Vec<ObjectId>,
    pending: HashSet<ObjectId>,
    expires_at: f64,
}

/// What `PushMessages` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAccepted {
    /// The reply's id.
    pub message_id: String,
    /// Ids the node still has to push.
    pub objects_to_push: Vec<String>,
    /// The push session (empty when the reply was not accepted).
    pub session_id: String,
}

/// What `PushObject` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Not stored (unknown session, id not pending).
    Refused,
    /// Stored; the reply still misses objects.
    Stored,
    /// Stored, and this completed the reply (the exchange ended).
    Completed,
}

/// The link state of the runs. See the module docs.
#[derive(Debug)]
pub struct LinkState {
    config: StateConfig,
    runs: HashMap<u64, RunEntry>,
    nodes: HashMap<u64, Node>,
    by_key: HashMap<Vec<u8>, u64>,
    exchanges: HashMap<u64, Exchange>,
    by_message: HashMap<ObjectId, u64>,
    sessions: HashMap<String, u64>,
    store: ObjectStore,
    events: VecDeque<NodeEvent>,
    next_exchange: u64,
    rng: ChaCha8Rng,
}

fn check_interval(interval: f64) -> Result<(), StateError> {
    if (HEARTBEAT_MIN_INTERVAL..=HEARTBEAT_MAX_INTERVAL).contains(&interval) {
        Ok(())
    } else {
        Err(StateError::BadHeartbeatInterval(interval))
    }
}

impl LinkState {
    /// An empty state with the running run `config.run_id` (none if 0);
    /// `seed` seeds session ids (node ids come from the keys:
    /// [`node_id_for_key`]).
    pub fn new(config: StateConfig, seed: u64) -> Self {
        let mut runs = HashMap::new();
        if config.run_id != 0 {
            runs.insert(
                config.run_id,
                RunEntry {
                    status: RunStatus::Running,
                    run: None,
                    fab: None,
                },
            );
        }
        LinkState {
            store: ObjectStore::with_spill(config.spill.clone()),
            config,
            runs,
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            exchanges: HashMap::new(),
            by_message: HashMap::new(),
            sessions: HashMap::new(),
            events: VecDeque::new(),
            next_exchange: 1,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The id of the run the state was created with (0: none).
    pub fn run_id(&self) -> u64 {
        self.config.run_id
    }

    /// The status of the run the state was created with.
    pub fn run_status(&self) -> RunStatus {
        self.status_of(self.config.run_id)
    }

    /// Whether the run was ever registered (running or finished).
    pub fn knows_run(&self, run_id: u64) -> bool {
        self.runs.contains_key(&run_id)
    }

    /// A run's status ([`RunStatus::Finished`] for unknown runs).
    pub fn status_of(&self, run_id: u64) -> RunStatus {
        self.runs
            .get(&run_id)
            .map_or(RunStatus::Finished, |r| r.status)
    }

    /// Registers (or replaces) a running run with what `GetRun` and
    /// `GetFab` serve for it.
    pub fn add_run(&mut self, run: pb::Run, fab: pb::Fab) {
        self.runs.insert(
            run.run_id,
            RunEntry {
                status: RunStatus::Running,
                run: Some(run),
                fab: Some(fab),
            },
        );
    }

    /// What `GetRun` serves for a running run (`None` when unknown, not
    /// running, or registered without a description).
    pub fn run_info(&self, run_id: u64) -> Option<&pb::Run> {
        let entry = self.runs.get(&run_id)?;
        (entry.status == RunStatus::Running)
            .then_some(entry.run.as_ref())
            .flatten()
    }

    /// What `GetFab` serves for a running run.
    pub fn run_fab(&self, run_id: u64) -> Option<&pb::Fab> {
        let entry = self.runs.get(&run_id)?;
        (entry.status == RunStatus::Running)
            .then_some(entry.fab.as_ref())
            .flatten()
    }

    /// Ends one run: its exchanges fail, later Fleet calls about it get 403.
    pub fn finish(&mut self, run_id: u64) {
        if let Some(entry) = self.runs.get_mut(&run_id) {
            entry.status = RunStatus::Finished;
            // The FAB is not needed once no node may fetch it.
            entry.fab = None;
        }
        let ids: Vec<u64> = self
            .exchanges
            .iter()
            .filter(|(_, ex)| ex.run_id == run_id)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end_exchange(id, Err(ExchangeFailure::RunFinished));
        }
    }

    /// Every known node, ordered by id.
    pub fn nodes(&self) -> Vec<NodeSummary> {
        let mut out: Vec<NodeSummary> = self
            .nodes
            .iter()
            .map(|(id, n)| NodeSummary {
                node_id: *id,
                status: n.status,
                online_until: n.online_until,
                heartbeat_interval: n.heartbeat_interval,
            })
            .collect();
        out.sort_by_key(|n| n.node_id);
        out
    }

    /// Whether self-registration is off.
    pub fn supernode_auth_enabled(&self) -> bool {
        self.config.enable_supernode_auth
    }

    /// The object store (for inspection).
    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    /// Node availability changes since the last call.
    pub fn take_events(&mut self) -> Vec<NodeEvent> {
        self.events.drain(..).collect()
    }

    /// A node's status.
    pub fn node_status(&self, node_id: u64) -> Option<NodeStatus> {
        self.nodes.get(&node_id).map(|n| n.status)
    }

    /// The node bound to `key` (the canonical key bytes).
    pub fn node_for_key(&self, key: &[u8]) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    /// The keys of every known node.
    pub fn node_keys(&self) -> Vec<Vec<u8>> {
        self.by_key.keys().cloned().collect()
    }

    /// Number of exchanges in flight.
    pub fn exchanges_in_flight(&self) -> usize {
        self.exchanges.len()
    }

    fn insert_node(&mut self, key: Vec<u8>) -> Result<u64, StateError> {
        let id = node_id_for_key(&key);
        if self.nodes.contains_key(&id) {
            return Err(StateError::IdCollision(id));
        }
        self.by_key.insert(key.clone(), id);
        self.nodes.insert(
            id,
            Node {
                key,
                status: NodeStatus::Registered,
                online_until: 0.0,
                heartbeat_interval: HEARTBEAT_DEFAULT_INTERVAL,
                exchanges: Vec::new(),
            },
        );
        Ok(id)
    }

    /// `RegisterNode`: a new node bound to `key` (self-registration).
    pub fn register(&mut self, key: &[u8]) -> Result<u64, StateError> {
        if self.config.enable_supernode_auth {
            return Err(StateError::RegistrationDisabled);
        }
        if self.by_key.contains_key(key) {
            return Err(StateError::KeyInUse);
        }
        self.insert_node(key.to_vec())
    }

    /// Takes back a node this state never saw (this process restarted, the
    /// SuperNode did not): a request signed with `key` names `node_id`, the
    /// id [`node_id_for_key`] derives from that key. The node is admitted as
    /// if it had registered and activated with
    /// [`HEARTBEAT_DEFAULT_INTERVAL`]; with supernode auth only if
    /// `authorized`. A stock SuperNode never activates again after a
    /// connection error, so without this it would get 401 and shut down.
    ///
    /// A no-op for a key already bound to `node_id`; refused for any other
    /// id, an unauthorized key, or a key bound to another node.
    pub fn readmit(
        &mut self,
        key: &[u8],
        node_id: u64,
        authorized: bool,
        now: f64,
    ) -> Result<(), StateError> {
        match self.by_key.get(key) {
            Some(id) if *id == node_id => return Ok(()),
            Some(_) => return Err(StateError::KeyInUse),
            None => {}
        }
        if node_id != node_id_for_key(key) {
            return Err(StateError::UnknownNode(node_id));
        }
        if self.config.enable_supernode_auth && !authorized {
            return Err(StateError::UnknownKey);
        }
        let id = self.insert_node(key.to_vec())?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.status = NodeStatus::Online;
            node.online_until = now + HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL;
        }
        self.events.push_back(NodeEvent::Online(id));
        Ok(())
    }

    /// `ActivateNode`. With supernode auth on, `authorized` says whether
    /// `key` is in the authorized set; such a key's node is created on first
    /// activation (the pre-registration flwr does through its Control API).
    pub fn activate(
        &mut self,
        key: &[u8],
        interval: f64,
        authorized: bool,
        now: f64,
    ) -> Result<u64, StateError> {
        let node_id = match self.by_key.get(key) {
            Some(id) => *id,
            None if self.config.enable_supernode_auth && authorized => {
                self.insert_node(key.to_vec())?
            }
            None => return Err(StateError::UnknownKey),
        };
        if self.config.enable_supernode_auth && !authorized {
            return Err(StateError::UnknownKey);
        }
        check_interval(interval)?;
        self.refresh_node(node_id, now);
        let node = self
            .nodes
            .get_mut(&node_id)
            .ok_or(StateError::UnknownNode(node_id))?;
        node.heartbeat_interval = interval;
        match node.status {
            NodeStatus::Registered | NodeStatus::Offline => {
                node.status = NodeStatus::Online;
                node.online_until = now + HEARTBEAT_PATIENCE * interval;
                self.events.push_back(NodeEvent::Online(node_id));
                Ok(node_id)
            }
            // A restarted SuperNode with a persistent key: flwr refuses it
            // (and the node exits) until the old session times out; taking
            // it back at once costs only the old session's instruction.
            NodeStatus::Online => {
                node.online_until = now + HEARTBEAT_PATIENCE * interval;
                self.fail_node_exchange(node_id, ExchangeFailure::NodeDeactivated(node_id));
                Ok(node_id)
            }
        }
    }

    /// `DeactivateNode`: the node goes offline; its exchange fails.
    pub fn deactivate(&mut self, node_id: u64, now: f64) -> Result<(), StateError> {
        self.refresh_node(node_id, now);
        let node = self
            .nodes
            .get_mut(&node_id)
            .ok_or(StateError::UnknownNode(node_id))?;
        if node.status != NodeStatus::Online {
            return Err(StateError::BadTransition(node_id));
        }
        node.status = NodeStatus::Offline;
        node.online_until = now;
        self.events.push_back(NodeEvent::Offline(node_id));
        self.fail_node_exchange(node_id, ExchangeFailure::NodeDeactivated(node_id));
        Ok(())
    }

    /// `UnregisterNode`: the node is forgotten.
    pub fn unregister(&mut self, node_id: u64) -> Result<(), StateError> {
        if self.config.enable_supernode_auth {
            return Err(StateError::UnregistrationDisabled);
        }
        if !self.nodes.contains_key(&node_id) {
            return Err(StateError::UnknownNode(node_id));
        }
        self.remove_node(node_id, ExchangeFailure::NodeDeactivated(node_id));
        Ok(())
    }

    /// A key left the authorized set: its node is deactivated and forgotten,
    /// and its exchange fails.
    pub fn revoke_key(&mut self, key: &[u8]) -> Option<u64> {
        let node_id = self.by_key.get(key).copied()?;
        self.remove_node(node_id, ExchangeFailure::NodeRemoved(node_id));
        Some(node_id)
    }

    fn remove_node(&mut self, node_id: u64, why: ExchangeFailure) {
        self.fail_node_exchange(node_id, why);
        if let Some(node) = self.nodes.remove(&node_id) {
            self.by_key.remove(&node.key);
            if node.status == NodeStatus::Online {
                self.events.push_back(NodeEvent::Offline(node_id));
            }
        }
    }

    /// `SendNodeHeartbeat`: `false` for unknown nodes (the SuperNode then
    /// raises, as with flwr). An offline node comes back online.
    pub fn heartbeat(&mut self, node_id: u64, interval: f64, now: f64) -> Result<bool, StateError> {
        check_interval(interval)?;
        self.refresh_node(node_id, now);
        let Some(node) = self.nodes.get_mut(&node_id) else {
            return Ok(false);
        };
        if node.status != NodeStatus::Online {
            node.status = NodeStatus::Online;
            self.events.push_back(NodeEvent::Online(node_id));
        }
        node.heartbeat_interval = interval;
        node.online_until = now + HEARTBEAT_PATIENCE * interval;
        Ok(true)
    }

    /// Marks `node_id` offline if its patience ran out.
    fn refresh_node(&mut self, node_id: u64, now: f64) {
        let silent = self
            .nodes
            .get(&node_id)
            .is_some_and(|n| n.status == NodeStatus::Online && n.online_until <= now);
        if silent {
            if let Some(node) = self.nodes.get_mut(&node_id) {
                node.status = NodeStatus::Offline;
            }
            self.events.push_back(NodeEvent::Offline(node_id));
            self.fail_node_exchange(node_id, ExchangeFailure::NodeSilent(node_id));
        }
    }

    /// Periodic housekeeping: silent nodes go offline, expired instructions
    /// and push sessions end their exchanges.
    pub fn tick(&mut self, now: f64) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.refresh_node(id, now);
        }
        let expired: Vec<(u64, ExchangeFailure)> = self
            .exchanges
            .iter()
            .filter_map(|(id, ex)| {
                if ex.instruction.expires_at <= now {
                    Some((*id, ExchangeFailure::Expired))
                } else if ex.reply.as_ref().is_some_and(|r| r.expires_at <= now) {
                    Some((*id, ExchangeFailure::SessionExpired))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in expired {
            self.end_exchange(id, Err(why));
        }
    }

    /// Ends every run: every exchange fails, later calls get 403.
    pub fn finish_run(&mut self) {
        let runs: Vec<u64> = self.runs.keys().copied().collect();
        for run_id in runs {
            self.finish(run_id);
        }
    }

    fn check_run(&self, run_id: u64) -> Result<(), StateError> {
        if self.status_of(run_id) != RunStatus::Running {
            return Err(StateError::RunNotRunning(run_id));
        }
        Ok(())
    }

    /// Whether `run_id` is a running run (`GetRun`/`GetFab`).
    pub fn check_running(&self, run_id: u64) -> Result<(), StateError> {
        self.check_run(run_id)
    }

    /// Queues `instruction` (for the run its metadata names) for `node_id`,
    /// behind the node's earlier instructions; `done` receives the outcome.
    /// Returns the exchange id (for [`LinkState::cancel`]).
    pub fn enqueue(
        &mut self,
        node_id: u64,
        instruction: Instruction,
        done: oneshot::Sender<ExchangeOutcome>,
        now: f64,
    ) -> Result<u64, StateError> {
        let run_id = instruction.wire.metadata.as_ref().map_or(0, |m| m.run_id);
        self.check_run(run_id)?;
        let root = instruction.tree.id;
        if self.by_message.contains_key(&root) {
            return Err(StateError::DuplicateMessage(root.to_string()));
        }
        self.refresh_node(node_id, now);
        let node = self
            .nodes
            .get_mut(&node_id)
            .ok_or(StateError::UnknownNode(node_id))?;
        if node.status != NodeStatus::Online {
            return Err(StateError::NodeNotOnline(node_id));
        }
        let id = self.next_exchange;
        self.next_exchange += 1;
        node.exchanges.push(id);
        for (oid, content) in &instruction.objects {
            self.store.hold(*oid, Some(content.clone()));
        }
        self.by_message.insert(root, id);
        self.exchanges.insert(
            id,
            Exchange {
                node_id,
                run_id,
                root,
                instruction,
                delivered: false,
                holds_instruction: true,
                reply: None,
                done: Some(done),
            },
        );
        Ok(id)
    }

    /// The exchange's waiter gave up (timeout, dropped): forget it.
    pub fn cancel(&mut self, exchange: u64) {
        if let Some(ex) = self.exchanges.get_mut(&exchange) {
            ex.done = None;
        }
        self.end_exchange(exchange, Err(ExchangeFailure::Expired));
    }

    fn fail_node_exchange(&mut self, node_id: u64, why: ExchangeFailure) {
        let ids = self
            .nodes
            .get(&node_id)
            .map(|n| n.exchanges.clone())
            .unwrap_or_default();
        for id in ids {
            self.end_exchange(id, Err(why.clone()));
        }
    }

    fn release_instruction(store: &mut ObjectStore, ex: &mut Exchange) {
        if ex.holds_instruction {
            ex.holds_instruction = false;
            for (id, _) in &ex.instruction.objects {
                store.release(id);
            }
        }
    }

    /// Ends an exchange: releases its objects and session, tells its waiter.
    fn end_exchange(&mut self, id: u64, outcome: ExchangeOutcome) {
        let Some(mut ex) = self.exchanges.remove(&id) else {
            return;
        };
        Self::release_instruction(&mut self.store, &mut ex);
        if let Some(reply) = ex.reply.take() {
            self.sessions.remove(&reply.session);
            for oid in &reply.ids {
                self.store.release(oid);
            }
        }
        self.by_message.remove(&ex.root);
        if let Some(node) = self.nodes.get_mut(&ex.node_id) {
            node.exchanges.retain(|e| *e != id);
        }
        if let Some(done) = ex.done.take() {
            // The waiter may be gone (timed out); nothing to tell then.
            let _ = done.send(outcome);
        }
    }

    /// `PullMessages`: at most one undelivered, unexpired instruction, the
    /// oldest of the node's queue.
    pub fn pull_messages(
        &mut self,
        node_id: u64,
        now: f64,
    ) -> Option<(pb::Message, pb::ObjectTree)> {
        self.refresh_node(node_id, now);
        let queue = self.nodes.get(&node_id)?.exchanges.clone();
        for id in queue {
            let Some(ex) = self.exchanges.get_mut(&id) else {
                continue;
            };
            if ex.delivered {
                continue;
            }
            if ex.instruction.expires_at <= now {
                self.end_exchange(id, Err(ExchangeFailure::Expired));
                continue;
            }
            ex.delivered = true;
            return Some((ex.instruction.wire.clone(), ex.instruction.tree.to_proto()));
        }
        None
    }

    /// `ConfirmMessageReceived`: the node has every object of the
    /// instruction, which no longer needs them held for it.
    pub fn confirm(
        &mut self,
        node_id: u64,
        run_id: u64,
        message_id: &str,
    ) -> Result<(), StateError> {
        self.check_run(run_id)?;
        let Ok(root) = message_id.parse::<ObjectId>() else {
            return Ok(());
        };
        if let Some(ex) = self
            .by_message
            .get(&root)
            .and_then(|id| self.exchanges.get_mut(id))
        {
            if ex.node_id == node_id {
                Self::release_instruction(&mut self.store, ex);
            }
        }
        Ok(())
    }

    /// `PullObject`.
    pub fn pull_object(&self, run_id: u64, object_id: &str) -> Result<Lookup, StateError> {
        self.check_run(run_id)?;
        Ok(match object_id.parse::<ObjectId>() {
            Ok(id) => self.store.get(&id),
            Err(_) => Lookup::NotFound,
        })
    }

    /// `PushMessages`: accepts `message` (the reply's metadata) with its
    /// `tree` if it answers the node's instruction, opens a push session and
    /// preregisters the tree. A reply that answers nothing gets an empty
    /// answer, as flwr gives (the SuperNode then pushes nothing).
    pub fn push_messages(
        &mut self,
        node_id: u64,
        message: &pb::Message,
        tree: &pb::ObjectTree,
        now: f64,
    ) -> Result<PushAccepted, StateError> {
        let metadata = message.metadata.clone().unwrap_or_default();
        self.check_run(metadata.run_id)?;
        let rejected = PushAccepted {
            message_id: metadata.message_id.clone(),
            objects_to_push: Vec::new(),
            session_id: String::new(),
        };
        let tree = match ObjectTree::from_proto(tree, &self.config.limits) {
            Ok(t) if t.id.to_string() == metadata.message_id => t,
            _ => return Ok(rejected),
        };
        let Ok(reply_to) = metadata.reply_to_message_id.parse::<ObjectId>() else {
            return Ok(rejected);
        };
        let Some(&ex_id) = self.by_message.get(&reply_to) else {
            return Ok(rejected);
        };
        let valid = self.exchanges.get(&ex_id).is_some_and(|ex| {
            ex.node_id == node_id && metadata.src_node_id == node_id && ex.delivered
        });
        if !valid {
            return Ok(rejected);
        }
        // A second push of a reply replaces the first session.
        if let Some(old) = self
            .exchanges
            .get_mut(&ex_id)
            .and_then(|ex| ex.reply.take())
        {
            self.sessions.remove(&old.session);
            for oid in &old.ids {
                self.store.release(oid);
            }
        }
        let ids = tree.unique_ids();
        let mut pending = HashSet::new();
        for oid in &ids {
            if !self.store.hold(*oid, None) {
                pending.insert(*oid);
            }
        }
        let session = format!("{:032x}", self.rng.gen::<u128>());
        let objects_to_push = ids
            .iter()
            .filter(|id| pending.contains(id))
            .map(ObjectId::to_string)
            .collect();
        let complete = pending.is_empty();
        if let Some(ex) = self.exchanges.get_mut(&ex_id) {
            ex.reply = Some(Reply {
                session: session.clone(),
                tree,
                ids,
                pending,
                expires_at: now + self.config.session_ttl,
            });
        }
        self.sessions.insert(session.clone(), ex_id);
        if complete {
            self.complete(ex_id);
        }
        Ok(PushAccepted {
            message_id: metadata.message_id,
            objects_to_push,
            session_id: session,
        })
    }

    /// Whether `object_id` is awaited in the node's push session (checked
    /// before the caller spends time hashing the content).
    pub fn is_pending(&self, node_id: u64, session_id: &str, object_id: &ObjectId) -> bool {
        self.session_exchange(node_id, session_id)
            .and_then(|id| self.exchanges.get(&id))
            .and_then(|ex| ex.reply.as_ref())
            .is_some_and(|r| r.pending.contains(object_id))
    }

    fn session_exchange(&self, node_id: u64, session_id: &str) -> Option<u64> {
        let id = if session_id.is_empty() {
            // flwr < 1.35 sent no session id: the node's (latest) exchange
            // with a reply in progress.
            let node = self.nodes.get(&node_id)?;
            *node
                .exchanges
                .iter()
                .rev()
                .find(|id| self.exchanges.get(id).is_some_and(|ex| ex.reply.is_some()))?
        } else {
            *self.sessions.get(session_id)?
        };
        let ex = self.exchanges.get(&id)?;
        (ex.node_id == node_id).then_some(id)
    }

    /// `PushObject` of content the caller validated (hash and head) for
    /// `object_id`. Completes the exchange when it was the last one.
    pub fn push_object(
        &mut self,
        node_id: u64,
        run_id: u64,
        session_id: &str,
        object_id: &ObjectId,
        content: Bytes,
    ) -> Result<PushOutcome, StateError> {
        self.check_run(run_id)?;
        let Some(ex_id) = self.session_exchange(node_id, session_id) else {
            return Ok(PushOutcome::Refused);
        };
        let Some(reply) = self
            .exchanges
            .get_mut(&ex_id)
            .and_then(|ex| ex.reply.as_mut())
        else {
            return Ok(PushOutcome::Refused);
        };
        if !reply.pending.remove(object_id) {
            return Ok(PushOutcome::Refused);
        }
        let done = reply.pending.is_empty();
        self.store.fill(object_id, content.into());
        if done {
            self.complete(ex_id);
            return Ok(PushOutcome::Completed);
        }
        Ok(PushOutcome::Stored)
    }

    /// A node pushed something that is not a valid object of its reply:
    /// the exchange fails now rather than at its timeout.
    pub fn reject_reply(&mut self, node_id: u64, session_id: &str, reason: String) {
        if let Some(id) = self.session_exchange(node_id, session_id) {
            self.end_exchange(id, Err(ExchangeFailure::InvalidObject(reason)));
        }
    }

    fn complete(&mut self, ex_id: u64) {
        let Some(reply) = self.exchanges.get(&ex_id).and_then(|ex| ex.reply.as_ref()) else {
            return;
        };
        let mut objects = HashMap::with_capacity(reply.ids.len());
        for id in &reply.ids {
            // Pushed objects are one part each, or spilled: no copy.
            if let Some(c) = self.store.stored(id) {
                objects.insert(*id, c);
            }
        }
        let tree = reply.tree.clone();
        self.end_exchange(ex_id, Ok(ReplyObjects { tree, objects }));
    }
}

#[cfg(test)]
mod tests;
