//! The set of accepted tokens, the lock-free store that holds it, and the
//! per-stream [`AuthenticatedPeer`] guard that learns about revocation.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::error::AuthError;
use crate::secret::{digest, Fingerprint, TokenDigest};

/// One accepted token: its digest and the revocation signal shared by every
/// stream that authenticated with it.
#[derive(Clone)]
struct Entry {
    digest: TokenDigest,
    fingerprint: Fingerprint,
    revocation: Arc<watch::Sender<bool>>,
}

impl Entry {
    fn new(digest: TokenDigest) -> Self {
        Self {
            digest,
            fingerprint: Fingerprint::from_digest(&digest),
            revocation: Arc::new(watch::Sender::new(false)),
        }
    }
}

/// An immutable set of accepted bearer tokens.
///
/// Tokens are kept only as SHA-256 digests; a presented token is hashed and
/// compared against every digest in constant time (no early exit on a
/// mismatching byte, no early exit on a match).
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

impl TokenSet {
    /// Builds a set from raw token values. Duplicates are merged.
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`] when a token is empty or contains
    /// whitespace / non-printable characters (it could never be sent as
    /// `Bearer <token>`).
    pub fn from_tokens<I, S>(tokens: I) -> Result<Self, AuthError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut digests = Vec::new();
        for (index, token) in tokens.into_iter().enumerate() {
            let token = token.as_ref();
            validate_token(token).map_err(|reason| AuthError::InvalidToken {
                reason: format!("token #{} {reason}", index + 1),
            })?;
            digests.push(digest(token));
        }
        Ok(Self::from_digests(digests))
    }

    /// Builds a set from raw token values, skipping (and reporting through
    /// `on_invalid`, with the token's fingerprint and the reason) those that
    /// are invalid.
    pub(crate) fn from_tokens_lenient<I, S>(
        tokens: I,
        mut on_invalid: impl FnMut(Fingerprint, &'static str),
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let digests = tokens.into_iter().filter_map(|token| {
            let token = token.as_ref();
            match validate_token(token) {
                Ok(()) => Some(digest(token)),
                Err(reason) => {
                    on_invalid(Fingerprint::of(token), reason);
                    None
                }
            }
        });
        Self::from_digests(digests)
    }

    /// Builds a set from SHA-256 digests of the tokens ("hashed tokens"), so
    /// that the raw values need not be kept anywhere. Duplicates are merged.
    pub fn from_digests<I>(digests: I) -> Self
    where
        I: IntoIterator<Item = [u8; 32]>,
    {
        let mut seen = HashSet::new();
        let entries = digests
            .into_iter()
            .filter(|d| seen.insert(*d))
            .map(Entry::new)
            .collect();
        Self { entries }
    }

    /// Builds a set from hex-encoded SHA-256 digests (64 hex characters each,
    /// e.g. the output of `sha256sum`).
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`] when an entry is not 64 hex characters.
    pub fn from_hex_digests<I, S>(digests: I) -> Result<Self, AuthError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for (index, hex_digest) in digests.into_iter().enumerate() {
            let mut d = [0u8; 32];
            hex::decode_to_slice(hex_digest.as_ref().trim(), &mut d).map_err(|_| {
                AuthError::InvalidToken {
                    reason: format!("digest #{} is not 64 hex characters", index + 1),
                }
            })?;
            out.push(d);
        }
        Ok(Self::from_digests(out))
    }

    /// Number of distinct tokens.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no token is accepted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Fingerprints of the accepted tokens (log-safe).
    #[must_use]
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        self.entries.iter().map(|e| e.fingerprint).collect()
    }

    /// True when `token` is accepted. Constant time in the token value.
    #[must_use]
    pub fn contains(&self, token: &str) -> bool {
        self.find(token).is_some()
    }

    fn find(&self, token: &str) -> Option<&Entry> {
        let presented = digest(token);
        let mut found = None;
        // Visit every entry whatever happens, so the time taken does not tell
        // which (or whether an early) entry matched.
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        found
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("len", &self.entries.len())
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
}

/// Checks that a token can be carried as `Bearer <token>` in a header value.
fn validate_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("is empty");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("contains whitespace or non-printable characters");
    }
    Ok(())
}

/// What a swap of the token set changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwapOutcome {
    /// Fingerprints of tokens that became valid.
    pub added: Vec<Fingerprint>,
    /// Fingerprints of tokens that were revoked (their live streams were told).
    pub removed: Vec<Fingerprint>,
    /// Number of tokens accepted after the swap.
    pub total: usize,
}

struct StoreInner {
    current: ArcSwap<TokenSet>,
    /// Serialises writers only; readers never touch it.
    writer: Mutex<()>,
    stats: crate::AuthStats,
}

/// Cloneable handle to the current [`TokenSet`].
///
/// Readers (the request path) load the current set without taking any lock
/// (`arc-swap`); writers replace it atomically with [`TokenStore::replace`],
/// which also revokes the live streams of removed tokens.
#[derive(Clone)]
pub struct TokenStore {
    inner: Arc<StoreInner>,
}

impl TokenStore {
    /// A store holding `set`.
    #[must_use]
    pub fn new(set: TokenSet) -> Self {
        Self {
            inner: Arc::new(StoreInner {
                current: ArcSwap::from_pointee(set),
                writer: Mutex::new(()),
                stats: crate::AuthStats::default(),
            }),
        }
    }

    /// Refusals of this store's layers and reloads of its manager, counted.
    #[must_use]
    pub fn stats(&self) -> &crate::AuthStats {
        &self.inner.stats
    }

    /// A store holding the given raw tokens (see [`TokenSet::from_tokens`]).
    ///
    /// # Errors
    /// As [`TokenSet::from_tokens`].
    pub fn from_tokens<I, S>(tokens: I) -> Result<Self, AuthError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        TokenSet::from_tokens(tokens).map(Self::new)
    }

    /// The current set.
    #[must_use]
    pub fn snapshot(&self) -> Arc<TokenSet> {
        self.inner.current.load_full()
    }

    /// Number of tokens currently accepted.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.current.load().len()
    }

    /// True when no token is currently accepted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks a presented token. On success returns the guard to attach to
    /// the call: which token authenticated it, and its revocation signal.
    #[must_use]
    pub fn authenticate(&self, token: &str) -> Option<AuthenticatedPeer> {
        let set = self.inner.current.load();
        set.find(token).map(|entry| AuthenticatedPeer {
            fingerprint: entry.fingerprint,
            revocation: entry.revocation.subscribe(),
        })
    }

    /// Atomically replaces the set. Tokens present in both sets keep their
    /// revocation signal (their streams stay alive); every live stream of a
    /// token absent from `new` is told it was revoked, after the swap.
    pub fn replace(&self, new: TokenSet) -> SwapOutcome {
        let _writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.inner.current.load_full();
        let mut added = Vec::new();
        let entries: Vec<Entry> = new
            .entries
            .into_iter()
            .map(
                |entry| match old.entries.iter().find(|o| o.digest == entry.digest) {
                    Some(kept) => kept.clone(),
                    None => {
                        added.push(entry.fingerprint);
                        entry
                    }
                },
            )
            .collect();
        let kept: HashSet<TokenDigest> = entries.iter().map(|e| e.digest).collect();
        let total = entries.len();
        self.inner.current.store(Arc::new(TokenSet { entries }));

        let mut removed = Vec::new();
        for entry in old.entries.iter().filter(|e| !kept.contains(&e.digest)) {
            entry.revocation.send_replace(true);
            removed.push(entry.fingerprint);
        }
        SwapOutcome {
            added,
            removed,
            total,
        }
    }
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenStore")
            .field(&*self.inner.current.load())
            .finish()
    }
}

/// Attached (as a request extension) to every call the auth layer let
/// through: which token authenticated it, and a way to learn that this token
/// was revoked by a later reload.
///
/// Read it in a handler with [`AuthenticatedPeer::from_request`].
#[derive(Clone)]
pub struct AuthenticatedPeer {
    fingerprint: Fingerprint,
    revocation: watch::Receiver<bool>,
}

impl AuthenticatedPeer {
    /// The guard the auth layer attached to a tonic request, if any (none
    /// when authentication is off or the method bypasses it).
    #[must_use]
    pub fn from_request<T>(request: &tonic::Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().cloned()
    }

    /// Fingerprint of the token that authenticated this call.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// True when the token has been revoked since the call was accepted.
    #[must_use]
    pub fn is_revoked(&self) -> bool {
        *self.revocation.borrow()
    }

    /// Completes when the token is revoked (at once if it already was).
    /// Never completes while the token stays valid.
    pub async fn revoked(&self) {
        self.revocation_future().await;
    }

    /// An owned (`'static`) future completing on revocation, convenient for
    /// `tokio::select!` in spawned tasks.
    pub fn revocation_future(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.revocation.clone();
        async move {
            if rx.wait_for(|revoked| *revoked).await.is_err() {
                // The store itself is gone (shutdown): nothing will ever
                // revoke this token.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl fmt::Debug for AuthenticatedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticatedPeer")
            .field("fingerprint", &self.fingerprint)
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn accepts_listed_tokens_only() {
        let set = TokenSet::from_tokens(["alpha", "beta", "alpha"]).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains("alpha"));
        assert!(set.contains("beta"));
        assert!(!set.contains("gamma"));
        assert!(!set.contains(""));
        assert!(!set.contains("alph"));
    }

    #[test]
    fn rejects_unusable_tokens() {
        assert!(TokenSet::from_tokens([""]).is_err());
        assert!(TokenSet::from_tokens(["a b"]).is_err());
        assert!(TokenSet::from_tokens(["tab\t"]).is_err());
        let err = TokenSet::from_tokens(["fine", "not fine"]).unwrap_err();
        assert!(!err.to_string().contains("not fine"));
    }

    #[test]
    fn hashed_tokens() {
        // sha256("abc")
        let set = TokenSet::from_hex_digests([
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ])
        .unwrap();
        assert!(set.contains("abc"));
        assert!(TokenSet::from_hex_digests(["zz"]).is_err());
    }

    #[tokio::test]
    async fn replace_revokes_removed_tokens_only() {
        let store = TokenStore::from_tokens(["keep", "drop"]).unwrap();
        let kept = store.authenticate("keep").unwrap();
        let dropped = store.authenticate("drop").unwrap();
        let outcome = store.replace(TokenSet::from_tokens(["keep", "new"]).unwrap());
        assert_eq!(outcome.added, vec![Fingerprint::of("new")]);
        assert_eq!(outcome.removed, vec![Fingerprint::of("drop")]);
        assert_eq!(outcome.total, 2);
        tokio::time::timeout(Duration::from_secs(1), dropped.revoked())
            .await
            .expect("revoked stream is told");
        assert!(dropped.is_revoked());
        assert!(!kept.is_revoked());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), kept.revoked())
                .await
                .is_err()
        );
        assert!(store.authenticate("drop").is_none());
        assert!(store.authenticate("new").is_some());
        // A token that is re-added later is a fresh grant.
        store.replace(TokenSet::from_tokens(["keep", "drop"]).unwrap());
        assert!(!store.authenticate("drop").unwrap().is_revoked());
    }
}
