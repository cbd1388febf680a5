//! [`FleetNode`]: a SuperNode as the round driver sees it, and the state
//! shared by the HTTP service, the nodes and the housekeeping task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flower_core::{ClientMessage, InstructionKind};
use flower_message::{inflate, Limits, Message, VerifiedObjects};
use flower_proto as pb;
use flower_server::{
    ClientHandle, ClientId, ClientManager, ContentReply, ExchangeError, OutgoingContent,
    OutgoingMessage,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::convert::{reply_content, reply_to_client_message, ContentOptions};
use crate::outgoing::{ContentCache, SharedContent};
use crate::state::{LinkState, NodeEvent};

/// flwr's default message TTL (`DEFAULT_TTL`, 12 h), used when the driver
/// sets no round timeout.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(43_200);

/// Unix time in seconds, as flwr's timestamps.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The run as `GetRun` describes it and the FAB `GetFab` serves.
#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    pub(crate) run: pb::Run,
    pub(crate) fab: pb::Fab,
}

/// Everything the service, the nodes and the housekeeping task share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<LinkState>,
    /// The round driver's clients; `None` when runs come from elsewhere
    /// (the Control API), so nodes are not handed to a driver.
    clients: Option<ClientManager>,
    registry: Mutex<HashMap<u64, ClientId>>,
    pub(crate) cache: ContentCache,
    pub(crate) msg_cache: ContentCache<OutgoingContent>,
    pub(crate) content: Arc<ContentOptions>,
    pub(crate) limits: Limits,
    /// The server's metrics (the driver's registry's, or this link's own
    /// when there is no driver).
    metrics: flower_server::Metrics,
    /// One reply inflates at a time: assembling an array holds its chunks
    /// and the assembled copy at once, so replies that complete together
    /// would otherwise double the server's peak memory for a moment.
    inflate_gate: tokio::sync::Semaphore,
    /// Requests refused by node authentication, by reason.
    refusals: NodeRefusals,
}

/// Counts of requests refused by node authentication, by reason (the
/// `flower_fleet_node_auth_refusals_total` family).
#[derive(Debug, Default)]
pub(crate) struct NodeRefusals {
    counts: [std::sync::atomic::AtomicU64; NodeRefusals::REASONS.len()],
}

impl NodeRefusals {
    /// The reasons, as labels: [`flower_auth::node::NodeAuthError::refusal_reason`]'s,
    /// then `unbound` (a valid signature by a key that is not the node's
    /// the request names, or an unknown key not admitted).
    pub(crate) const REASONS: [&'static str; 6] = [
        "missing",
        "malformed",
        "stale",
        "bad_signature",
        "other",
        "unbound",
    ];

    /// Counts one refusal for `reason` (one of [`Self::REASONS`]).
    pub(crate) fn count(&self, reason: &str) {
        if let Some(i) = Self::REASONS.iter().position(|r| *r == reason) {
            self.counts[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// `(reason, count)` for every reason.
    pub(crate) fn samples(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Self::REASONS
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (*r, c.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

impl Shared {
    pub(crate) fn new(
        state: LinkState,
        clients: Option<ClientManager>,
        content: ContentOptions,
        limits: Limits,
    ) -> Arc<Self> {
        let metrics = clients
            .as_ref()
            .map(|c| c.metrics().clone())
            .unwrap_or_default();
        Arc::new(Shared {
            state: Mutex::new(state),
            clients,
            registry: Mutex::new(HashMap::new()),
            cache: ContentCache::default(),
            msg_cache: ContentCache::default(),
            content: Arc::new(content),
            limits,
            metrics,
            inflate_gate: tokio::sync::Semaphore::new(1),
            refusals: NodeRefusals::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        // A panic elsewhere cannot leave the state half-updated in a way
        // that matters more than stopping the whole server would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the link state, then applies the node events it queued
    /// (under the same lock, so registrations follow state changes in order).
    pub(crate) fn with_state<R>(self: &Arc<Self>, f: impl FnOnce(&mut LinkState) -> R) -> R {
        let mut state = self.lock();
        let result = f(&mut state);
        for event in state.take_events() {
            self.apply(event);
        }
        result
    }

    /// The metrics of the server's client registry.
    pub(crate) fn metrics(&self) -> &flower_server::Metrics {
        &self.metrics
    }

    /// Requests refused by node authentication.
    pub(crate) fn refusals(&self) -> &NodeRefusals {
        &self.refusals
    }

    /// SuperNodes online (active and heartbeating).
    pub(crate) fn nodes_online(&self) -> usize {
        self.read_state(|s| {
            s.nodes()
                .iter()
                .filter(|n| n.status == crate::state::NodeStatus::Online)
                .count()
        })
    }

    /// Read-only access.
    pub(crate) fn read_state<R>(&self, f: impl FnOnce(&LinkState) -> R) -> R {
        f(&self.lock())
    }

    fn apply(self: &Arc<Self>, event: NodeEvent) {
        let Some(clients) = &self.clients else {
            return;
        };
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            NodeEvent::Online(node_id) => {
                if registry.contains_key(&node_id) {
                    return;
                }
                let handle = Arc::new(FleetNode {
                    node_id,
                    shared: Arc::downgrade(self),
                });
                match clients.register(handle) {
                    Some(client) => {
                        info!(node_id, %client, "SuperNode online");
                        registry.insert(node_id, client);
                    }
                    None => warn!(node_id, "SuperNode online, but the client limit is reached"),
                }
            }
            NodeEvent::Offline(node_id) => {
                if let Some(client) = registry.remove(&node_id) {
                    info!(node_id, %client, "SuperNode offline");
                    clients.unregister(client);
                }
            }
        }
    }

    /// The driver's upload gate and the client id of `node_id`, when the
    /// node is one of the driver's clients.
    fn client_of(&self, node_id: u64) -> Option<(flower_server::UploadGate, ClientId)> {
        let clients = self.clients.as_ref()?;
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let client = *registry.get(&node_id)?;
        Some((clients.upload_gate().clone(), client))
    }

    /// The end of the run (the driver's final `ReconnectIns`).
    fn finish(self: &Arc<Self>, node_id: u64) {
        self.with_state(LinkState::finish_run);
        let client = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&node_id);
        if let (Some(client), Some(clients)) = (client, &self.clients) {
            clients.unregister(client);
        }
    }
}

/// A SuperNode behind the Fleet API, as a [`ClientHandle`].
///
/// `exchange` queues the instruction for the node's next `PullMessages` and
/// waits for its reply tree to be complete. It ends with an
/// [`ExchangeError`] when the reply is an error message or lacks the
/// records the instruction needs, when the node deactivates, is removed or
/// misses its heartbeat patience (2 × its heartbeat interval), when the
/// instruction's TTL (the round timeout, else 12 h) passes, or when the run
/// ends: never a hang. `send_only` of the final `ReconnectIns` finishes the
/// run (later calls of any SuperNode get 403, which it treats as "run not
/// running" and keeps polling).
#[derive(Debug)]
pub struct FleetNode {
    node_id: u64,
    shared: Weak<Shared>,
}

impl FleetNode {
    /// The node id the SuperNode was given at registration.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }
}

/// Cancels the exchange when the waiting future is dropped or times out.
struct CancelOnDrop {
    shared: Arc<Shared>,
    exchange: u64,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let exchange = self.exchange;
        self.shared.with_state(|s| s.cancel(exchange));
    }
}

async fn run_exchange(
    shared: Arc<Shared>,
    node_id: u64,
    message: Arc<OutgoingMessage>,
    timeout: Option<Duration>,
) -> Result<ClientMessage, ExchangeError> {
    let kind: InstructionKind = message.message().kind();
    let content = shared
        .cache
        .get(&message, &shared.content)
        .await
        .map_err(ExchangeError::Protocol)?;
    debug!(node_id, kind = %kind, "instruction queued");
    let message = round_trip(&shared, node_id, &content, timeout).await?;
    reply_to_client_message(kind, &message, &shared.content)
        .map_err(|e| ExchangeError::Protocol(flower_server::error_chain(&e)))
}

/// A message-API instruction, its reply content back as is.
async fn run_content_exchange(
    shared: Arc<Shared>,
    node_id: u64,
    message: Arc<OutgoingContent>,
    timeout: Option<Duration>,
) -> Result<ContentReply, ExchangeError> {
    let content = shared
        .msg_cache
        .get_content(&message)
        .await
        .map_err(ExchangeError::Protocol)?;
    debug!(
        node_id,
        round = message.round(),
        "message-API instruction queued"
    );
    let kind = content.message_type();
    let reply = round_trip(&shared, node_id, &content, timeout).await?;
    reply_content(kind, &reply).map_err(|e| ExchangeError::Protocol(flower_server::error_chain(&e)))
}

/// Queues `content` for the node, waits (bounded) for its complete reply
/// and inflates it.
async fn round_trip(
    shared: &Arc<Shared>,
    node_id: u64,
    content: &SharedContent,
    timeout: Option<Duration>,
) -> Result<Message, ExchangeError> {
    let now = unix_now();
    let ttl = timeout.unwrap_or(DEFAULT_TTL).as_secs_f64();
    let run_id = shared.read_state(LinkState::run_id);
    let instruction = content.instruction(run_id, node_id, ttl, now);
    let (tx, rx) = oneshot::channel();
    let exchange = shared
        .with_state(|s| s.enqueue(node_id, instruction, tx, now))
        .map_err(|e| ExchangeError::Closed(e.to_string()))?;
    let _cancel = CancelOnDrop {
        shared: shared.clone(),
        exchange,
    };
    let outcome = match timeout {
        Some(t) => tokio::time::timeout(t, rx)
            .await
            .map_err(|_| ExchangeError::Timeout(t))?,
        None => rx.await,
    };
    let reply = outcome
        .map_err(|_| ExchangeError::Closed("the Fleet API stopped".into()))?
        .map_err(|failure| ExchangeError::Closed(failure.to_string()))?;
    let limits = shared.limits.clone();
    // A reply is taken in at its turn in the driver's fold order (the
    // grpc-bidi upload gate's rule): replies that complete early wait as
    // pushed objects, which spill to disk past the memory limit, rather
    // than as inflated arrays.
    let _turn = match shared.client_of(node_id) {
        Some((gate, client)) => gate.turn(client).await,
        None => None,
    };
    // Every pushed object was hashed against its id on arrival (and the
    // server's own objects come from its deflate), so inflation only parses
    // and assembles; still off the async threads, as it copies the arrays.
    let _inflating = shared
        .inflate_gate
        .acquire()
        .await
        .map_err(|_| ExchangeError::Closed("the Fleet API stopped".into()))?;
    tokio::task::spawn_blocking(move || {
        let (tree, source) = reply.into_source();
        inflate(&tree, &VerifiedObjects(&source), &limits)
    })
    .await
    .map_err(|e| ExchangeError::Protocol(format!("inflating the reply failed: {e}")))?
    .map_err(|e| ExchangeError::Protocol(format!("invalid reply: {e}")))
}

impl ClientHandle for FleetNode {
    fn exchange(
        &self,
        message: Arc<OutgoingMessage>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<ClientMessage, ExchangeError>> {
        let shared = self.shared.upgrade();
        let node_id = self.node_id;
        async move {
            let shared =
                shared.ok_or_else(|| ExchangeError::Closed("the Fleet API stopped".into()))?;
            run_exchange(shared, node_id, message, timeout).await
        }
        .boxed()
    }

    fn send_only(&self, message: Arc<OutgoingMessage>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if message.message().kind() == InstructionKind::Reconnect {
            shared.finish(self.node_id);
        } else {
            // Only the final ReconnectIns is sent without a reply; anything
            // else still runs, its reply dropped.
            let node_id = self.node_id;
            tokio::spawn(async move {
                let _ = run_exchange(shared, node_id, message, None).await;
            });
        }
    }

    fn peer(&self) -> String {
        format!("supernode:{}", self.node_id)
    }

    fn exchange_content(
        &self,
        message: Arc<OutgoingContent>,
        timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<ContentReply, ExchangeError>> {
        let shared = self.shared.upgrade();
        let node_id = self.node_id;
        async move {
            let shared =
                shared.ok_or_else(|| ExchangeError::Closed("the Fleet API stopped".into()))?;
            run_content_exchange(shared, node_id, message, timeout).await
        }
        .boxed()
    }

    fn transport(&self) -> &'static str {
        "fleet-api"
    }
}
