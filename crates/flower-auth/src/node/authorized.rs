//! The set of authorized node keys (`--enable-supernode-auth`), its
//! lock-free store, and how a removed key is reported.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};

use super::error::NodeAuthError;
use super::key::NodePublicKey;

/// Capacity of the removal broadcast; a receiver that falls further behind
/// gets `Lagged` and must reconcile with [`AuthorizedNodeKeys::contains`].
const REMOVALS_CAPACITY: usize = 64;

/// Parses an authorized-keys list: OpenSSH public key lines and PEM
/// `PUBLIC KEY` blocks, in any mix, one key per line or per block; blank
/// lines and lines starting with `#` are ignored. Duplicates are kept (the
/// set merges them).
///
/// `origin` names the list in errors (a path, a description).
///
/// # Errors
/// [`NodeAuthError::AuthorizedKeysEntry`] for the first entry that is not a
/// supported key (with its line number), including an unterminated PEM
/// block. The whole list is refused: a partly read list would drop nodes.
pub fn parse_authorized_keys(
    content: &str,
    origin: &str,
) -> Result<Vec<NodePublicKey>, NodeAuthError> {
    let entry_error = |line: usize, source: NodeAuthError| NodeAuthError::AuthorizedKeysEntry {
        origin: origin.to_owned(),
        line,
        source: Box::new(source),
    };
    let mut keys = Vec::new();
    let mut lines = content.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    while let Some((number, line)) = lines.next() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            let label = rest.trim_end_matches('-');
            let end = format!("-----END {label}-----");
            let mut block = format!("{line}\n");
            let mut closed = false;
            for (_, inner) in lines.by_ref() {
                block.push_str(inner);
                block.push('\n');
                if inner == end {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err(entry_error(
                    number,
                    NodeAuthError::InvalidKey {
                        reason: "PEM block without its END line",
                        source: None,
                    },
                ));
            }
            keys.push(NodePublicKey::from_pem(&block).map_err(|e| entry_error(number, e))?);
        } else {
            keys.push(NodePublicKey::from_openssh(line).map_err(|e| entry_error(number, e))?);
        }
    }
    Ok(keys)
}

/// An authorized-keys file (`--authorized-keys FILE`), read on every load.
/// See [`parse_authorized_keys`] for its format.
#[derive(Debug, Clone)]
pub struct AuthorizedKeysFile {
    path: PathBuf,
}

impl AuthorizedKeysFile {
    /// The file at `path`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Path of the file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Log-safe description (`authorized-keys file /etc/flower/nodes`).
    #[must_use]
    pub fn describe(&self) -> String {
        format!("authorized-keys file {}", self.path.display())
    }

    /// Reads and parses the file.
    ///
    /// # Errors
    /// [`NodeAuthError::AuthorizedKeysFile`] when it cannot be read,
    /// [`NodeAuthError::AuthorizedKeysEntry`] for a bad entry,
    /// [`NodeAuthError::NoKeys`] when it holds no key.
    pub async fn load(&self) -> Result<Vec<NodePublicKey>, NodeAuthError> {
        let content = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| NodeAuthError::AuthorizedKeysFile {
                path: self.path.clone(),
                source,
            })?;
        let keys = parse_authorized_keys(&content, &self.path.display().to_string())?;
        if keys.is_empty() {
            return Err(NodeAuthError::NoKeys {
                source_description: self.describe(),
            });
        }
        Ok(keys)
    }
}

/// An immutable set of authorized node keys, each with the revocation
/// signal shared by everyone watching it.
#[derive(Clone, Default)]
pub struct NodeKeySet {
    entries: HashMap<NodePublicKey, Arc<watch::Sender<bool>>>,
}

impl NodeKeySet {
    /// A set of these keys (duplicates merged).
    #[must_use]
    pub fn new(keys: impl IntoIterator<Item = NodePublicKey>) -> Self {
        Self {
            entries: keys
                .into_iter()
                .map(|k| (k, Arc::new(watch::Sender::new(false))))
                .collect(),
        }
    }

    /// True when `key` is authorized.
    #[must_use]
    pub fn contains(&self, key: &NodePublicKey) -> bool {
        self.entries.contains_key(key)
    }

    /// Number of distinct keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no key is authorized.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &NodePublicKey> + '_ {
        self.entries.keys()
    }
}

impl fmt::Debug for NodeKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.entries.keys()).finish()
    }
}

/// What a swap of the authorized set changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeySetChange {
    /// Keys that became authorized.
    pub added: Vec<NodePublicKey>,
    /// Keys that are no longer authorized (their watchers were told).
    pub removed: Vec<NodePublicKey>,
    /// Number of keys authorized after the swap.
    pub total: usize,
}

struct StoreInner {
    current: ArcSwap<NodeKeySet>,
    /// Serialises writers only; readers never touch it.
    writer: Mutex<()>,
    removals: broadcast::Sender<Arc<[NodePublicKey]>>,
}

/// Cloneable handle to the live [`NodeKeySet`].
///
/// Reads ([`contains`](Self::contains), [`len`](Self::len)) take no lock
/// (`arc-swap`). [`replace`](Self::replace) swaps the set atomically and
/// reports the keys it removed in two ways, for the Fleet service to
/// deactivate those nodes and fail their pending work:
///
/// * per key: [`revocation`](Self::revocation) gives a
///   [`NodeKeyRevocation`] that completes when that key is removed;
/// * in bulk: [`subscribe_removals`](Self::subscribe_removals) receives the
///   removed keys of every swap.
#[derive(Clone)]
pub struct AuthorizedNodeKeys {
    inner: Arc<StoreInner>,
}

impl AuthorizedNodeKeys {
    /// A store holding `keys`.
    #[must_use]
    pub fn new(keys: impl IntoIterator<Item = NodePublicKey>) -> Self {
        Self::from_set(NodeKeySet::new(keys))
    }

    /// A store holding `set`.
    #[must_use]
    pub fn from_set(set: NodeKeySet) -> Self {
        Self {
            inner: Arc::new(StoreInner {
                current: ArcSwap::from_pointee(set),
                writer: Mutex::new(()),
                removals: broadcast::Sender::new(REMOVALS_CAPACITY),
            }),
        }
    }

    /// True when `key` is currently authorized. Lock-free.
    #[must_use]
    pub fn contains(&self, key: &NodePublicKey) -> bool {
        self.inner.current.load().contains(key)
    }

    /// Number of keys currently authorized.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.current.load().len()
    }

    /// True when no key is currently authorized.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The current set.
    #[must_use]
    pub fn snapshot(&self) -> Arc<NodeKeySet> {
        self.inner.current.load_full()
    }

    /// A watcher of `key`'s removal, or `None` when it is not authorized
    /// now (a key re-added later is a fresh grant with a fresh watcher).
    #[must_use]
    pub fn revocation(&self, key: &NodePublicKey) -> Option<NodeKeyRevocation> {
        let set = self.inner.current.load();
        set.entries
            .get_key_value(key)
            .map(|(k, tx)| NodeKeyRevocation {
                key: k.clone(),
                revoked: tx.subscribe(),
            })
    }

    /// Receives, for every later swap that removed keys, the removed keys.
    ///
    /// A receiver more than 64 swaps behind gets
    /// `RecvError::Lagged`; it should then re-check the keys it cares about
    /// with [`contains`](Self::contains).
    #[must_use]
    pub fn subscribe_removals(&self) -> broadcast::Receiver<Arc<[NodePublicKey]>> {
        self.inner.removals.subscribe()
    }

    /// Atomically replaces the set. Keys in both sets keep their watchers;
    /// watchers of removed keys are told after the swap, and the removed
    /// keys are broadcast.
    pub fn replace(&self, keys: impl IntoIterator<Item = NodePublicKey>) -> KeySetChange {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.inner.current.load_full();
        let mut added = Vec::new();
        let mut entries = HashMap::new();
        for key in keys {
            if entries.contains_key(&key) {
                continue;
            }
            let signal = match old.entries.get(&key) {
                Some(kept) => Arc::clone(kept),
                None => {
                    added.push(key.clone());
                    Arc::new(watch::Sender::new(false))
                }
            };
            entries.insert(key, signal);
        }
        let total = entries.len();
        let kept: HashSet<&NodePublicKey> = entries.keys().collect();
        let removed: Vec<NodePublicKey> = old
            .entries
            .keys()
            .filter(|k| !kept.contains(k))
            .cloned()
            .collect();
        self.inner.current.store(Arc::new(NodeKeySet { entries }));
        for key in &removed {
            if let Some(signal) = old.entries.get(key) {
                signal.send_replace(true);
            }
        }
        if !removed.is_empty() {
            // No receiver is not an error: nobody is listening.
            let _ = self.inner.removals.send(removed.clone().into());
        }
        KeySetChange {
            added,
            removed,
            total,
        }
    }
}

impl fmt::Debug for AuthorizedNodeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AuthorizedNodeKeys")
            .field(&*self.inner.current.load())
            .finish()
    }
}

/// Learns that one authorized key was removed by a later reload.
#[derive(Clone)]
pub struct NodeKeyRevocation {
    key: NodePublicKey,
    revoked: watch::Receiver<bool>,
}

impl NodeKeyRevocation {
    /// The key watched.
    #[must_use]
    pub fn key(&self) -> &NodePublicKey {
        &self.key
    }

    /// True when the key has been removed.
    #[must_use]
    pub fn is_revoked(&self) -> bool {
        *self.revoked.borrow()
    }

    /// Completes when the key is removed (at once if it already was);
    /// never while it stays authorized.
    pub async fn revoked(&self) {
        self.revocation_future().await;
    }

    /// An owned (`'static`) future completing on removal, for
    /// `tokio::select!` in spawned tasks.
    pub fn revocation_future(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.revoked.clone();
        async move {
            if rx.wait_for(|revoked| *revoked).await.is_err() {
                // The set dropped this key's sender without removing it
                // (the store is gone): nothing will ever revoke it.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl fmt::Debug for NodeKeyRevocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeyRevocation")
            .field("key", &self.key)
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeKeyCurve, NodeSigningKey};

    fn key(curve: NodeKeyCurve) -> NodePublicKey {
        NodeSigningKey::generate(curve).public_key().clone()
    }

    #[tokio::test]
    async fn replace_merges_duplicates_and_re_adding_is_a_fresh_grant() {
        let (a, b) = (key(NodeKeyCurve::P256), key(NodeKeyCurve::P521));
        let store = AuthorizedNodeKeys::new([a.clone(), a.clone(), b.clone()]);
        assert_eq!(store.len(), 2);
        let kept = store.revocation(&a).unwrap();
        let dropped = store.revocation(&b).unwrap();
        let mut removals = store.subscribe_removals();

        let change = store.replace([a.clone(), a.clone()]);
        assert_eq!(
            (change.added.len(), change.removed, change.total),
            (0, vec![b.clone()], 1)
        );
        assert!(dropped.is_revoked() && !kept.is_revoked());
        assert_eq!(&*removals.try_recv().unwrap(), std::slice::from_ref(&b));

        // No removal, no broadcast.
        let change = store.replace([a.clone(), b.clone()]);
        assert_eq!(change.added, vec![b.clone()]);
        assert!(removals.try_recv().is_err());
        let fresh = store.revocation(&b).unwrap();
        assert!(!fresh.is_revoked(), "a re-added key is a fresh grant");
        assert!(dropped.is_revoked(), "the old grant stays revoked");
    }
}
