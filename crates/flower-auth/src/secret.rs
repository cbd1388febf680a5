//! Secret strings and token fingerprints: the only way a token shows up in
//! logs or `Debug` output.

use std::fmt;

use sha2::{Digest, Sha256};

/// SHA-256 digest of a token, the form in which tokens are stored and
/// compared.
pub(crate) type TokenDigest = [u8; 32];

/// SHA-256 digest of `token`.
pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Short, log-safe identifier of a token: the first 8 hex characters of its
/// SHA-256 digest.
///
/// Two different tokens may (rarely) share a fingerprint; it identifies a
/// token in logs, it never authenticates anything.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 4]);

impl Fingerprint {
    /// Fingerprint of a token value.
    #[must_use]
    pub fn of(token: &str) -> Self {
        Self::from_digest(&digest(token))
    }

    /// Fingerprint of an already computed SHA-256 digest.
    #[must_use]
    pub(crate) fn from_digest(digest: &TokenDigest) -> Self {
        Self([digest[0], digest[1], digest[2], digest[3]])
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
    fn fingerprint_is_8_hex_chars_of_sha256() {
        // sha256("abc") = ba7816bf...
        assert_eq!(Fingerprint::of("abc").to_string(), "ba7816bf");
    }

    #[test]
    fn secret_debug_hides_value() {
        let s = SecretString::new("super-secret-value");
        let shown = format!("{s:?}");
        assert!(!shown.contains("super-secret-value"));
        assert!(shown.contains(&s.fingerprint().to_string()));
    }
}
