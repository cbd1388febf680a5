//! A JWT issuer standing in for an OIDC provider.

use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// An Ed25519 key pair minting JWTs (`EdDSA`), e.g. for OpenBao's JWT auth
/// method ([`Bao::enable_jwt`](crate::bao::Bao::enable_jwt)).
#[derive(Debug)]
pub struct JwtIssuer {
    key: Ed25519KeyPair,
}

impl JwtIssuer {
    /// A fresh key pair.
    pub fn generate() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
        Self {
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("own PKCS#8 parses"),
        }
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        // DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), then the
        // 32-byte key.
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(self.key.public_key().as_ref());
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }

    /// A signed JWT for subject `sub` and audience `aud`, valid for 10
    /// minutes.
    pub fn mint(&self, sub: &str, aud: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let header = b64.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "sub": sub, "aud": aud, "iat": now, "nbf": now - 5, "exp": now + 600,
        });
        let payload = b64.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64.encode(signature.as_ref()))
    }
}
