//! Secret strings and token fingerprints: the only way a token shows up in
//! logs or `Debug` output.

use std::fmt;
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// SHA-256 digest of a token, the form in which tokens are stored and
/// compared.
pub(crate) type TokenDigest = [u8; 32];

/// SHA-256 digest of `token`.
pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Short, log-safe identifier of a token: the first 8 bytes (16 hex
/// characters) of HMAC-SHA-256 of its digest, keyed with a random key drawn
/// once per process.
///
/// Keyed, so a fingerprint seen in a log cannot be used to test guesses of
/// the token offline (an unkeyed 32-bit hash prefix could); the same token
/// has the same fingerprint within one process only. It identifies a token
/// in logs, it never authenticates anything.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 8]);

/// The per-process fingerprint key.
fn fingerprint_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        key
    })
}

impl Fingerprint {
    /// Fingerprint of a token value.
    #[must_use]
    pub fn of(token: &str) -> Self {
        Self::from_digest(&digest(token))
    }

    /// Fingerprint of an already computed SHA-256 digest.
    #[must_use]
    pub(crate) fn from_digest(digest: &TokenDigest) -> Self {
        Self::keyed(fingerprint_key(), digest)
    }

    fn keyed(key: &[u8; 32], digest: &TokenDigest) -> Self {
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(digest);
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(&tag[..8]);
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A string that must never be printed: a bearer token, a Vault token, an
/// OIDC access token.
///
/// `Debug` shows only its [`Fingerprint`]; there is deliberately no
/// `Display`. Use [`SecretString::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Log-safe fingerprint of the value.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.0)
    }

    /// True when the value is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretString(sha256:{}…)", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_keyed_hmacs() {
        let fp = Fingerprint::of("abc");
        assert_eq!(fp.to_string().len(), 16);
        // Stable within the process, and not the unkeyed SHA-256 prefix.
        assert_eq!(fp, Fingerprint::of("abc"));
        assert!(!fp.to_string().starts_with("ba7816bf"));
        assert_ne!(fp, Fingerprint::of("abd"));
        // Another key, another fingerprint.
        let d = digest("abc");
        assert_ne!(
            Fingerprint::keyed(&[1; 32], &d),
            Fingerprint::keyed(&[2; 32], &d)
        );
        // The first 8 bytes of HMAC-SHA-256(key, sha256(token)).
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[7; 32]).unwrap();
        mac.update(&d);
        let tag = mac.finalize().into_bytes();
        assert_eq!(Fingerprint::keyed(&[7; 32], &d).0, tag[..8]);
    }

    #[test]
    fn secret_debug_hides_value() {
        let s = SecretString::new("super-secret-value");
        let shown = format!("{s:?}");
        assert!(!shown.contains("super-secret-value"));
        assert!(shown.contains(&s.fingerprint().to_string()));
    }
}
