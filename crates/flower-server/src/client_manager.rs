//! Registry of connected clients, bounded waiting, and seeded sampling.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flower_strategy::{ClientId, ClientSampler};
use futures::future::BoxFuture;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;

use crate::grpc::UploadGate;
use crate::metrics::Metrics;
use crate::node::{ClientHandle, ExchangeError, OutgoingMessage};
use flower_core::{ClientMessage, ServerMessage};

/// Connected clients, keyed by an id assigned in join order.
///
/// Cloning is cheap; clones share the registry.
#[derive(Clone)]
pub struct ClientManager {
    inner: Arc<Inner>,
}

struct Inner {
    upload_gate: UploadGate,
    clients: Mutex<BTreeMap<ClientId, Arc<dyn ClientHandle>>>,
    next_id: AtomicU64,
    count: watch::Sender<usize>,
    max_clients: Option<usize>,
    metrics: Metrics,
}

impl std::fmt::Debug for ClientManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientManager")
            .field("connected", &self.len())
            .finish()
    }
}

impl Default for ClientManager {
    fn default() -> Self {
        Self::new(None)
    }
}

impl ClientManager {
    /// An empty registry; `max_clients` caps simultaneous clients (no cap when `None`).
    pub fn new(max_clients: Option<usize>) -> Self {
        Self::with_upload_limit(max_clients, None)
    }

    /// Like [`ClientManager::new`], and receives at most `max_uploads` large
    /// (≥ 1 MiB) client messages at once, admitted in fold order (see
    /// [`UploadGate`]): receive memory stays near `max_uploads` × model size.
    pub fn with_upload_limit(max_clients: Option<usize>, max_uploads: Option<usize>) -> Self {
        Self::with_metrics(max_clients, max_uploads, Metrics::new())
    }

    /// Like [`ClientManager::with_upload_limit`], reporting joins, departures
    /// and the upload gate's load to `metrics` (transports reach the handle
    /// through [`ClientManager::metrics`]).
    pub fn with_metrics(
        max_clients: Option<usize>,
        max_uploads: Option<usize>,
        metrics: Metrics,
    ) -> Self {
        let (count, _) = watch::channel(0);
        let upload_gate = UploadGate::new(max_uploads);
        let gate = upload_gate.clone();
        metrics.gauge_fn(
            "flower_upload_gate",
            "Upload gate: large uploads being received (state=active), waiting for a permit (state=waiting), results still to fold (state=pending)",
            move || {
                let load = gate.load();
                vec![
                    (vec![("state", "active".to_string())], load.active as f64),
                    (vec![("state", "waiting".to_string())], load.waiting as f64),
                    (vec![("state", "pending".to_string())], load.pending as f64),
                ]
            },
        );
        ClientManager {
            inner: Arc::new(Inner {
                upload_gate,
                clients: Mutex::new(BTreeMap::new()),
                next_id: AtomicU64::new(1),
                count,
                max_clients,
                metrics,
            }),
        }
    }

    /// The metrics this registry (and every transport over it) reports to.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ClientId, Arc<dyn ClientHandle>>> {
        // A poisoned lock only means another thread panicked mid-insert; the
        // map itself is still consistent.
        self.inner.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gate shared by the transport (which waits on it) and the round
    /// driver (which says in which order it folds results).
    pub fn upload_gate(&self) -> &UploadGate {
        &self.inner.upload_gate
    }

    /// Registers a client; `None` when the configured cap is reached.
    pub fn register(&self, handle: Arc<dyn ClientHandle>) -> Option<ClientId> {
        let mut clients = self.lock();
        if self.inner.max_clients.is_some_and(|m| clients.len() >= m) {
            return None;
        }
        let id = ClientId::from(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        self.inner.metrics.client_joined(handle.transport());
        clients.insert(id, handle);
        self.inner.count.send_replace(clients.len());
        Some(id)
    }

    /// Removes a client (idempotent).
    pub fn unregister(&self, id: ClientId) {
        let mut clients = self.lock();
        if let Some(handle) = clients.remove(&id) {
            self.inner.metrics.client_left(handle.transport());
            self.inner.count.send_replace(clients.len());
        }
    }

    /// Number of connected clients.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The handle of one client.
    pub fn get(&self, id: ClientId) -> Option<Arc<dyn ClientHandle>> {
        self.lock().get(&id).cloned()
    }

    /// Every connected client, in id order.
    pub fn all(&self) -> Vec<(ClientId, Arc<dyn ClientHandle>)> {
        self.lock().iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Waits until at least `n` clients are connected, at most `timeout`.
    /// Returns whether the condition was met.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.inner.count.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until at most `n` clients are connected, at most `timeout`.
    pub async fn wait_until_at_most(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.inner.count.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c <= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until none of `ids` is connected any more, at most `timeout`.
    /// Returns whether they all left.
    pub async fn wait_until_gone(&self, ids: &BTreeSet<ClientId>, timeout: Duration) -> bool {
        let mut rx = self.inner.count.subscribe();
        // Every register/unregister bumps the count channel, so re-checking
        // on each change sees every departure.
        let all_gone = async {
            loop {
                if !self.lock().keys().any(|id| ids.contains(id)) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, all_gone).await.is_ok()
    }

    /// A sampler over the clients connected now, drawing from `rng`.
    pub fn sampler(&self, rng: ChaCha8Rng) -> SnapshotSampler {
        SnapshotSampler {
            ids: self.lock().keys().copied().collect(),
            rng,
        }
    }
}

/// [`ClientSampler`] over a snapshot of the connected clients.
#[derive(Debug)]
pub struct SnapshotSampler {
    ids: Vec<ClientId>,
    rng: ChaCha8Rng,
}

impl SnapshotSampler {
    /// A sampler over explicit ids (used by tests and by the driver).
    pub fn new(ids: Vec<ClientId>, seed: u64) -> Self {
        SnapshotSampler {
            ids,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl ClientSampler for SnapshotSampler {
    fn num_available(&self) -> usize {
        self.ids.len()
    }

    fn all(&self) -> Vec<ClientId> {
        self.ids.clone()
    }

    fn sample(&mut self, num_clients: usize, min_num_clients: usize) -> Vec<ClientId> {
        if num_clients > self.ids.len() || min_num_clients > self.ids.len() {
            return Vec::new();
        }
        self.ids
            .choose_multiple(&mut self.rng, num_clients)
            .copied()
            .collect()
    }
}

/// An in-process client for tests of the round logic without sockets.
///
/// The closure answers each instruction; it runs on the caller's task.
pub struct FnClient<F> {
    answer: F,
}

impl<F> std::fmt::Debug for FnClient<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnClient")
    }
}

impl<F> FnClient<F>
where
    F: Fn(ServerMessage) -> Result<ClientMessage, ExchangeError> + Send + Sync + 'static,
{
    /// Wraps an answering function.
    pub fn new(answer: F) -> Self {
        FnClient { answer }
    }
}

impl<F> ClientHandle for FnClient<F>
where
    F: Fn(ServerMessage) -> Result<ClientMessage, ExchangeError> + Send + Sync + 'static,
{
    fn exchange(
        &self,
        message: Arc<OutgoingMessage>,
        _timeout: Option<Duration>,
    ) -> BoxFuture<'static, Result<ClientMessage, ExchangeError>> {
        let result = (self.answer)(message.message().clone());
        Box::pin(async move { result })
    }

    fn send_only(&self, message: Arc<OutgoingMessage>) {
        let _ = (self.answer)(message.message().clone());
    }

    fn peer(&self) -> String {
        "in-process".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dummy() -> Arc<dyn ClientHandle> {
        Arc::new(FnClient::new(|_| Err(ExchangeError::Closed("x".into()))))
    }

    #[tokio::test]
    async fn ids_follow_join_order_and_wait_is_bounded() {
        let m = ClientManager::default();
        let a = m.register(dummy()).unwrap();
        let b = m.register(dummy()).unwrap();
        assert!(a < b);
        assert!(m.wait_for(2, Duration::from_millis(10)).await);
        assert!(!m.wait_for(3, Duration::from_millis(20)).await);
        m.unregister(a);
        m.unregister(a);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn cap_refuses_extra_clients() {
        let m = ClientManager::new(Some(1));
        assert!(m.register(dummy()).is_some());
        assert!(m.register(dummy()).is_none());
    }

    #[test]
    fn sampling_is_seeded_and_without_replacement() {
        let ids: Vec<ClientId> = (1..=10u64).map(ClientId::from).collect();
        let a = SnapshotSampler::new(ids.clone(), 7).sample(5, 2);
        let b = SnapshotSampler::new(ids.clone(), 7).sample(5, 2);
        assert_eq!(a, b);
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 5);
        assert!(SnapshotSampler::new(ids.clone(), 7)
            .sample(11, 2)
            .is_empty());
        assert!(SnapshotSampler::new(ids, 7).sample(2, 11).is_empty());
    }
}
