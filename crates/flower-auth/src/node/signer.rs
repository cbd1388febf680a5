//! The SuperNode side of node authentication: the key a Rust SuperNode signs
//! its Fleet requests with, as flwr's `NodeAuthHttpInterceptor` does.

use std::path::Path;
use std::time::SystemTime;

use super::error::NodeAuthError;
use super::key::{NodeKeyCurve, NodePublicKey, NodeSigningKey};

/// A SuperNode's signing identity: either an ephemeral P-384 key (what
/// `flower-supernode` generates when started without
/// `--auth-supernode-private-key`; the node then self-registers) or an
/// OpenSSH ECDSA private key on any NIST curve (a key pre-registered with
/// `flwr supernode register`).
///
/// [`NodeSigner::headers`] gives the three headers every Fleet request
/// carries. `Debug` shows only the public key's fingerprint.
#[derive(Debug, Clone)]
pub struct NodeSigner {
    key: NodeSigningKey,
    ephemeral: bool,
}

impl NodeSigner {
    /// A fresh random P-384 key (flwr's `generate_key_pairs`).
    #[must_use]
    pub fn ephemeral() -> Self {
        Self {
            key: NodeSigningKey::generate(NodeKeyCurve::P384),
            ephemeral: true,
        }
    }

    /// Parses an unencrypted OpenSSH private key
    /// (`-----BEGIN OPENSSH PRIVATE KEY-----`, `ssh-keygen -t ecdsa`).
    ///
    /// # Errors
    /// [`NodeAuthError::InvalidKey`] for text that is not an OpenSSH private
    /// key, a passphrase-protected one, or a bad scalar;
    /// [`NodeAuthError::UnsupportedKey`] for a non-ECDSA key.
    pub fn from_openssh(text: &str) -> Result<Self, NodeAuthError> {
        let key = match ssh_key::PrivateKey::from_openssh(text.trim()) {
            Ok(key) => key,
            Err(e) => {
                // ssh-key 0.6 refuses some valid P-521 keys (an mpint scalar
                // of 65 or 67 bytes): read those with the minimal parser.
                return match fallback::ecdsa_scalar(text) {
                    Some((curve, scalar)) => Ok(Self {
                        key: NodeSigningKey::from_secret_bytes(curve, &scalar)?,
                        ephemeral: false,
                    }),
                    None => Err(NodeAuthError::invalid_key("not an OpenSSH private key", e)),
                };
            }
        };
        if key.is_encrypted() {
            return Err(NodeAuthError::InvalidKey {
                reason:
                    "the OpenSSH private key is encrypted (flwr loads keys without a passphrase)",
                source: None,
            });
        }
        let (curve, scalar) = match key.key_data() {
            ssh_key::private::KeypairData::Ecdsa(pair) => match pair {
                ssh_key::private::EcdsaKeypair::NistP256 { private, .. } => {
                    (NodeKeyCurve::P256, private.as_slice())
                }
                ssh_key::private::EcdsaKeypair::NistP384 { private, .. } => {
                    (NodeKeyCurve::P384, private.as_slice())
                }
                ssh_key::private::EcdsaKeypair::NistP521 { private, .. } => {
                    (NodeKeyCurve::P521, private.as_slice())
                }
            },
            other => {
                return Err(NodeAuthError::UnsupportedKey {
                    what: match other.algorithm() {
                        Ok(alg) => format!("OpenSSH {alg} key (expected ECDSA)"),
                        Err(_) => "OpenSSH key of unknown algorithm (expected ECDSA)".into(),
                    },
                })
            }
        };
        let signing = NodeSigningKey::from_secret_bytes(curve, scalar)?;
        // The file's public half must be the scalar's: a mismatch means a
        // corrupted key, which the SuperLink would answer with a 401.
        if let ssh_key::public::KeyData::Ecdsa(public) = key.public_key().key_data() {
            let public = NodePublicKey::from_sec1_bytes(curve, public.as_sec1_bytes())?;
            if &public != signing.public_key() {
                return Err(NodeAuthError::InvalidKey {
                    reason: "the OpenSSH private key's public half does not match its scalar",
                    source: None,
                });
            }
        }
        let key = signing;
        Ok(Self {
            key,
            ephemeral: false,
        })
    }

    /// Reads and parses an OpenSSH private key file
    /// (`--auth-supernode-private-key`).
    ///
    /// # Errors
    /// [`NodeAuthError::Config`] when the file cannot be read; otherwise as
    /// [`NodeSigner::from_openssh`].
    pub fn from_openssh_file(path: impl AsRef<Path>) -> Result<Self, NodeAuthError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            NodeAuthError::Config(format!(
                "cannot read SuperNode private key {}: {e}",
                path.display()
            ))
        })?;
        Self::from_openssh(&text)
    }

    /// Wraps an existing signing key (not ephemeral: the node does not
    /// self-register it).
    #[must_use]
    pub fn from_signing_key(key: NodeSigningKey) -> Self {
        Self {
            key,
            ephemeral: false,
        }
    }

    /// True for a key made by [`NodeSigner::ephemeral`]: the node registers
    /// it itself (RegisterNode) and unregisters it on shutdown.
    #[must_use]
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    /// The public key.
    #[must_use]
    pub fn public_key(&self) -> &NodePublicKey {
        self.key.public_key()
    }

    /// The PEM SubjectPublicKeyInfo bytes: the `public_key` field of
    /// RegisterNode and ActivateNode (flwr's `public_key_to_bytes`).
    #[must_use]
    pub fn public_key_pem(&self) -> Vec<u8> {
        self.key.public_key().to_pem().into_bytes()
    }

    /// The headers of a request signed at `now`: `flwr-public-key` (base64
    /// PEM), `flwr-timestamp` (`datetime.now(UTC).isoformat()`) and
    /// `flwr-signature` (base64 DER ECDSA with SHA-256 over the timestamp).
    #[must_use]
    pub fn headers(&self, now: SystemTime) -> http::HeaderMap {
        self.key.signed_headers(now)
    }
}

/// A minimal reader of unencrypted OpenSSH ECDSA private keys
/// (`PROTOCOL.key`), for what ssh-key refuses.
mod fallback {
    use base64::Engine as _;

    use super::NodeKeyCurve;

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Some(head)
        }
        fn u32(&mut self) -> Option<u32> {
            let b = self.take(4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn string(&mut self) -> Option<&'a [u8]> {
            let n = usize::try_from(self.u32()?).ok()?;
            self.take(n)
        }
    }

    /// The curve and the big-endian scalar (without mpint sign padding).
    pub(super) fn ecdsa_scalar(text: &str) -> Option<(NodeKeyCurve, Vec<u8>)> {
        let body: String = text
            .trim()
            .strip_prefix("-----BEGIN OPENSSH PRIVATE KEY-----")?
            .strip_suffix("-----END OPENSSH PRIVATE KEY-----")?
            .split_whitespace()
            .collect();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body)
            .ok()?;
        let mut r = Reader(raw.strip_prefix(b"openssh-key-v1\0")?);
        // Unencrypted only: cipher and KDF "none".
        if r.string()? != b"none" || r.string()? != b"none" {
            return None;
        }
        r.string()?; // KDF options
        if r.u32()? != 1 {
            return None;
        }
        r.string()?; // public key blob
        let mut p = Reader(r.string()?);
        if p.u32()? != p.u32()? {
            return None;
        }
        let curve = match p.string()? {
            b"ecdsa-sha2-nistp256" => NodeKeyCurve::P256,
            b"ecdsa-sha2-nistp384" => NodeKeyCurve::P384,
            b"ecdsa-sha2-nistp521" => NodeKeyCurve::P521,
            _ => return None,
        };
        p.string()?; // curve name
        p.string()?; // public point
        let scalar = p.string()?;
        let scalar = scalar
            .iter()
            .position(|b| *b != 0)
            .map_or(&[][..], |i| &scalar[i..]);
        Some((curve, scalar.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::verify_node_request;
    use std::time::Duration;

    #[test]
    fn ephemeral_headers_verify() {
        let signer = NodeSigner::ephemeral();
        assert!(signer.is_ephemeral());
        assert_eq!(signer.public_key().curve(), NodeKeyCurve::P384);
        let now = SystemTime::now();
        let headers = signer.headers(now);
        let key = verify_node_request(&headers, now + Duration::from_secs(1)).expect("verifies");
        assert_eq!(&key, signer.public_key());
        let pem = String::from_utf8(signer.public_key_pem()).expect("utf8");
        assert_eq!(NodePublicKey::from_pem(&pem).expect("pem"), key);
        // Too old: refused by the verifier's window.
        assert!(verify_node_request(&headers, now + Duration::from_secs(400)).is_err());
    }

    #[test]
    fn openssh_keys_of_every_curve_sign_verifiable_headers() {
        let dir = tempfile::tempdir().expect("tempdir");
        for curve in [
            flower_testkit::flwr::Curve::P256,
            flower_testkit::flwr::Curve::P384,
            flower_testkit::flwr::Curve::P521,
        ] {
            let Some(key) = flower_testkit::flwr::generate_node_key(dir.path(), curve) else {
                return;
            };
            let signer = NodeSigner::from_openssh_file(&key.private_key)
                .unwrap_or_else(|e| panic!("{curve:?}: {e:?}"));
            assert!(!signer.is_ephemeral());
            let public = std::fs::read_to_string(&key.public_key).expect("pub");
            assert_eq!(
                signer.public_key(),
                &NodePublicKey::from_openssh(&public).expect("pub parses")
            );
            let now = SystemTime::now();
            let verified = verify_node_request(&signer.headers(now), now).expect("verifies");
            assert_eq!(&verified, signer.public_key());
        }
    }

    #[test]
    fn refuses_garbage_missing_files_and_other_algorithms() {
        assert!(matches!(
            NodeSigner::from_openssh("not a key"),
            Err(NodeAuthError::InvalidKey { .. })
        ));
        assert!(matches!(
            NodeSigner::from_openssh_file("/nonexistent/key"),
            Err(NodeAuthError::Config(_))
        ));
        // A real Ed25519 key, when ssh-keygen is installed.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ed");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if made {
            assert!(matches!(
                NodeSigner::from_openssh_file(&path),
                Err(NodeAuthError::UnsupportedKey { .. })
            ));
        }
    }
}
