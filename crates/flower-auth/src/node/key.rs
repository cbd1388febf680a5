//! SuperNode public keys (ECDSA on the NIST curves), parsed from PEM
//! SubjectPublicKeyInfo or OpenSSH lines, compared by curve and point; the
//! ECDSA-with-SHA-256 check every curve uses; and a signing key for tests
//! and Rust clients.

use std::fmt;
use std::hash::{Hash, Hasher};

// generic-array 0.14.9 deprecates `ArrayLength` in favour of its 1.x, which the
// ecdsa 0.16 bounds below still require: the allowance goes when ecdsa moves.
use aws_lc_rs::signature;
#[allow(deprecated)]
use ecdsa::elliptic_curve::generic_array::ArrayLength;
use ecdsa::elliptic_curve::pkcs8::der::Document;
use ecdsa::elliptic_curve::pkcs8::spki::{EncodePublicKey, SubjectPublicKeyInfoRef};
use ecdsa::elliptic_curve::pkcs8::{AssociatedOid, DecodePrivateKey, LineEnding, ObjectIdentifier};
use ecdsa::elliptic_curve::sec1::{FromEncodedPoint, ModulusSize, ToEncodedPoint};
use ecdsa::elliptic_curve::{
    AffinePoint, CurveArithmetic, FieldBytes, FieldBytesSize, NonZeroScalar, SecretKey,
};
use ecdsa::{PrimeCurve, Signature, SignatureSize};
use sha2::{Digest, Sha256};

use super::error::NodeAuthError;

/// `id-ecPublicKey` (RFC 5480), the algorithm of every EC SPKI.
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");

/// The elliptic curve of a node key. Flower accepts the NIST curves; these
/// three are the ones OpenSSH and the SuperNode use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum NodeKeyCurve {
    /// NIST P-256 (`secp256r1`, `ecdsa-sha2-nistp256`).
    P256,
    /// NIST P-384 (`secp384r1`, `ecdsa-sha2-nistp384`); the curve of the
    /// SuperNode's ephemeral keys.
    P384,
    /// NIST P-521 (`secp521r1`, `ecdsa-sha2-nistp521`).
    P521,
}

impl NodeKeyCurve {
    /// Every supported curve.
    pub const ALL: [Self; 3] = [Self::P256, Self::P384, Self::P521];

    /// The curve's name (`"P-256"`, `"P-384"`, `"P-521"`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            Self::P256 => p256::NistP256::OID,
            Self::P384 => p384::NistP384::OID,
            Self::P521 => p521::NistP521::OID,
        }
    }

    fn from_oid(oid: ObjectIdentifier) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.oid() == oid)
    }
}

impl fmt::Display for NodeKeyCurve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The point, typed by curve.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Point {
    P256(p256::PublicKey),
    P384(p384::PublicKey),
    P521(p521::PublicKey),
}

/// A SuperNode's public key: ECDSA on P-256, P-384 or P-521.
///
/// Canonical: two keys are equal (and hash alike) when they have the same
/// curve and point, whatever text they were parsed from (PEM or OpenSSH,
/// comments, line breaks). `Debug` and [`NodePublicKey::fingerprint`] show
/// the OpenSSH SHA-256 fingerprint (what `ssh-keygen -lf key.pub` prints),
/// which is what logs should name a node by.
#[derive(Clone)]
pub struct NodePublicKey {
    point: Point,
    /// Uncompressed SEC1 encoding; the identity used for `Eq`/`Hash`.
    sec1: Box<[u8]>,
    fingerprint: Box<str>,
}

impl NodePublicKey {
    fn from_point(point: Point) -> Self {
        let sec1: Box<[u8]> = match &point {
            Point::P256(k) => k.to_encoded_point(false).as_bytes().into(),
            Point::P384(k) => k.to_encoded_point(false).as_bytes().into(),
            Point::P521(k) => k.to_encoded_point(false).as_bytes().into(),
        };
        let fingerprint = ssh_key_data(&sec1)
            .map(|data| data.fingerprint(ssh_key::HashAlg::Sha256).to_string())
            // Unreachable for a valid point; a hex digest keeps it usable.
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(&sec1))));
        Self {
            point,
            sec1,
            fingerprint: fingerprint.into(),
        }
    }

    /// A key from its curve and SEC1-encoded point (compressed or not).
    ///
    /// # Errors
    /// [`NodeAuthError::InvalidKey`] when the bytes are not a point of the
    /// curve (or the point at infinity).
    pub fn from_sec1_bytes(curve: NodeKeyCurve, bytes: &[u8]) -> Result<Self, NodeAuthError> {
        let bad = |e: ecdsa::elliptic_curve::Error| {
            NodeAuthError::invalid_key("not a valid point of its curve", e)
        };
        let point = match curve {
            NodeKeyCurve::P256 => {
                Point::P256(p256::PublicKey::from_sec1_bytes(bytes).map_err(bad)?)
            }
            NodeKeyCurve::P384 => {
                Point::P384(p384::PublicKey::from_sec1_bytes(bytes).map_err(bad)?)
            }
            NodeKeyCurve::P521 => {
                Point::P521(p521::PublicKey::from_sec1_bytes(bytes).map_err(bad)?)
            }
        };
        Ok(Self::from_point(point))
    }

    /// Parses a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`),
    /// what the SuperNode sends (as Python's `cryptography` writes it).
    ///
    /// # Errors
    /// [`NodeAuthError::InvalidKey`] for anything that is not a PEM EC
    /// public key with a valid point; [`NodeAuthError::UnsupportedKey`] for
    /// another algorithm or curve.
    pub fn from_pem(pem: &str) -> Result<Self, NodeAuthError> {
        let (label, doc) = Document::from_pem(pem.trim())
            .map_err(|e| NodeAuthError::invalid_key("not a PEM document", e))?;
        if label != "PUBLIC KEY" {
            return Err(NodeAuthError::InvalidKey {
                reason: "PEM label is not PUBLIC KEY",
                source: None,
            });
        }
        Self::from_spki_der(doc.as_bytes())
    }

    /// As [`NodePublicKey::from_pem`], from bytes (the `public_key` field of
    /// `RegisterNode` / `ActivateNode`, the gRPC `flwr-public-key-bin`
    /// metadata).
    ///
    /// # Errors
    /// As [`NodePublicKey::from_pem`], and [`NodeAuthError::InvalidKey`]
    /// when the bytes are not UTF-8.
    pub fn from_pem_bytes(pem: &[u8]) -> Result<Self, NodeAuthError> {
        let text = std::str::from_utf8(pem)
            .map_err(|e| NodeAuthError::invalid_key("PEM is not UTF-8", e))?;
        Self::from_pem(text)
    }

    /// Parses a DER SubjectPublicKeyInfo.
    ///
    /// # Errors
    /// As [`NodePublicKey::from_pem`].
    pub fn from_spki_der(der: &[u8]) -> Result<Self, NodeAuthError> {
        let spki = SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| NodeAuthError::invalid_key("not a DER SubjectPublicKeyInfo", e))?;
        let (algorithm, parameters) = spki
            .algorithm
            .oids()
            .map_err(|e| NodeAuthError::invalid_key("bad algorithm identifier", e))?;
        if algorithm != ID_EC_PUBLIC_KEY {
            return Err(NodeAuthError::UnsupportedKey {
                what: format!("algorithm {algorithm} (expected an EC key)"),
            });
        }
        let curve_oid = parameters.ok_or(NodeAuthError::InvalidKey {
            reason: "EC key without a named curve",
            source: None,
        })?;
        let curve =
            NodeKeyCurve::from_oid(curve_oid).ok_or_else(|| NodeAuthError::UnsupportedKey {
                what: format!("curve {curve_oid} (expected P-256, P-384 or P-521)"),
            })?;
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or(NodeAuthError::InvalidKey {
                reason: "public key bit string has unused bits",
                source: None,
            })?;
        Self::from_sec1_bytes(curve, point)
    }

    /// Parses one OpenSSH public key line
    /// (`ecdsa-sha2-nistp256 AAAA... comment`, the content of `key.pub`).
    ///
    /// # Errors
    /// [`NodeAuthError::InvalidKey`] for a malformed line;
    /// [`NodeAuthError::UnsupportedKey`] for a non-ECDSA key (RSA, Ed25519,
    /// security keys).
    pub fn from_openssh(line: &str) -> Result<Self, NodeAuthError> {
        let key = ssh_key::PublicKey::from_openssh(line.trim())
            .map_err(|e| NodeAuthError::invalid_key("not an OpenSSH public key line", e))?;
        let ecdsa = match key.key_data() {
            ssh_key::public::KeyData::Ecdsa(ecdsa) => ecdsa,
            other => {
                return Err(NodeAuthError::UnsupportedKey {
                    what: format!("OpenSSH {} key (expected ECDSA)", other.algorithm()),
                })
            }
        };
        let curve = match ecdsa.curve() {
            ssh_key::EcdsaCurve::NistP256 => NodeKeyCurve::P256,
            ssh_key::EcdsaCurve::NistP384 => NodeKeyCurve::P384,
            ssh_key::EcdsaCurve::NistP521 => NodeKeyCurve::P521,
        };
        Self::from_sec1_bytes(curve, ecdsa.as_sec1_bytes())
    }

    /// Parses either form: a PEM block (starts with `-----BEGIN`) or one
    /// OpenSSH line.
    ///
    /// # Errors
    /// As [`NodePublicKey::from_pem`] or [`NodePublicKey::from_openssh`].
    pub fn parse_any(text: &str) -> Result<Self, NodeAuthError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            Self::from_pem(text)
        } else {
            Self::from_openssh(text)
        }
    }

    /// The curve.
    #[must_use]
    pub fn curve(&self) -> NodeKeyCurve {
        match self.point {
            Point::P256(_) => NodeKeyCurve::P256,
            Point::P384(_) => NodeKeyCurve::P384,
            Point::P521(_) => NodeKeyCurve::P521,
        }
    }

    /// The uncompressed SEC1 encoding of the point (`04 || x || y`).
    #[must_use]
    pub fn sec1_bytes(&self) -> &[u8] {
        &self.sec1
    }

    /// PEM SubjectPublicKeyInfo with `\n` line endings, byte-identical to
    /// what Python's `cryptography` writes (`public_bytes(PEM,
    /// SubjectPublicKeyInfo)`, i.e. flwr's `public_key_to_bytes`).
    #[must_use]
    pub fn to_pem(&self) -> String {
        let pem = match &self.point {
            Point::P256(k) => k.to_public_key_pem(LineEnding::LF),
            Point::P384(k) => k.to_public_key_pem(LineEnding::LF),
            Point::P521(k) => k.to_public_key_pem(LineEnding::LF),
        };
        // Encoding a valid key into a growable string cannot fail.
        pem.unwrap_or_default()
    }

    /// The OpenSSH form (`ecdsa-sha2-nistpNNN AAAA...`, no comment).
    #[must_use]
    pub fn to_openssh(&self) -> String {
        ssh_key_data(&self.sec1)
            .and_then(|data| ssh_key::PublicKey::new(data, "").to_openssh().ok())
            .unwrap_or_default()
    }

    /// Log-safe identifier: the OpenSSH SHA-256 fingerprint,
    /// `SHA256:<base64>` (as `ssh-keygen -lf` prints it).
    #[must_use]
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Verifies a DER-encoded ECDSA signature made with SHA-256 over
    /// `message`, on every curve (flwr signs with SHA-256 even on P-384 and
    /// P-521).
    ///
    /// # Errors
    /// [`NodeAuthError::MalformedSignature`] when `signature_der` is not a
    /// DER signature for this curve, [`NodeAuthError::BadSignature`] when
    /// it does not verify.
    pub fn verify_sha256(&self, message: &[u8], signature_der: &[u8]) -> Result<(), NodeAuthError> {
        // aws-lc's assembly is several times faster than the pure-Rust
        // arithmetic (and than ring's generic P-384), and every Fleet
        // request carries a signature.
        let result = match &self.point {
            Point::P256(_) => verify_native::<p256::NistP256>(
                &signature::ECDSA_P256_SHA256_ASN1,
                &self.sec1,
                message,
                signature_der,
            ),
            Point::P384(_) => verify_native::<p384::NistP384>(
                &signature::ECDSA_P384_SHA256_ASN1,
                &self.sec1,
                message,
                signature_der,
            ),
            Point::P521(_) => verify_native::<p521::NistP521>(
                &signature::ECDSA_P521_SHA256_ASN1,
                &self.sec1,
                message,
                signature_der,
            ),
        };
        match result {
            Ok(()) => Ok(()),
            Err(Verdict::Malformed(source)) => Err(NodeAuthError::MalformedSignature {
                curve: self.curve(),
                source,
            }),
            Err(Verdict::Mismatch) => Err(NodeAuthError::BadSignature {
                fingerprint: self.fingerprint().to_owned(),
            }),
        }
    }
}

fn ssh_key_data(sec1: &[u8]) -> Option<ssh_key::public::KeyData> {
    ssh_key::public::EcdsaPublicKey::from_sec1_bytes(sec1)
        .ok()
        .map(ssh_key::public::KeyData::Ecdsa)
}

enum Verdict {
    Malformed(ecdsa::Error),
    Mismatch,
}

/// `z` for ECDSA: the SHA-256 digest as an integer, left-padded to the
/// field size. This is the standard conversion when the digest is shorter
/// than the order (as OpenSSL and `cryptography` do); `ecdsa`'s own prehash
/// API refuses digests under half the field size, i.e. SHA-256 on P-521.
/// Used for signing; verification goes through aws-lc, which converts alike.
fn digest_to_field<C: PrimeCurve>(digest: &[u8]) -> FieldBytes<C> {
    let mut z = FieldBytes::<C>::default();
    let start = z.len().saturating_sub(digest.len());
    let take = z.len() - start;
    z[start..].copy_from_slice(&digest[..take]);
    z
}

/// Verifies with aws-lc after checking the DER form with `ecdsa`, so that a
/// malformed signature is still told apart from one that does not verify.
#[allow(deprecated)] // `ArrayLength`, see the import
fn verify_native<C>(
    algorithm: &'static signature::EcdsaVerificationAlgorithm,
    sec1: &[u8],
    message: &[u8],
    der: &[u8],
) -> Result<(), Verdict>
where
    C: PrimeCurve + CurveArithmetic,
    SignatureSize<C>: ArrayLength<u8>,
    ecdsa::der::MaxSize<C>: ArrayLength<u8>,
    <FieldBytesSize<C> as std::ops::Add>::Output:
        std::ops::Add<ecdsa::der::MaxOverhead> + ArrayLength<u8>,
{
    Signature::<C>::from_der(der).map_err(Verdict::Malformed)?;
    signature::UnparsedPublicKey::new(algorithm, sec1)
        .verify(message, der)
        .map_err(|_| Verdict::Mismatch)
}

impl PartialEq for NodePublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.point == other.point
    }
}

impl Eq for NodePublicKey {}

impl Hash for NodePublicKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.curve().hash(state);
        self.sec1.hash(state);
    }
}

impl fmt::Debug for NodePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodePublicKey({} {})", self.curve(), self.fingerprint)
    }
}

impl fmt::Display for NodePublicKey {
    /// The curve and fingerprint (never the key itself).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.curve(), self.fingerprint)
    }
}

impl std::str::FromStr for NodePublicKey {
    type Err = NodeAuthError;

    /// As [`NodePublicKey::parse_any`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_any(s)
    }
}

/// The secret scalar, typed by curve.
#[derive(Clone)]
enum Secret {
    P256(p256::SecretKey),
    P384(p384::SecretKey),
    P521(p521::SecretKey),
}

/// A SuperNode's private key: signs Fleet requests as flwr's
/// `NodeAuthHttpInterceptor` does (see [`NodeSigningKey::signed_headers`]).
///
/// For Rust clients and tests. `Debug` shows only the public key's
/// fingerprint.
#[derive(Clone)]
pub struct NodeSigningKey {
    secret: Secret,
    public: NodePublicKey,
}

impl NodeSigningKey {
    /// A fresh random key on `curve` (OS randomness).
    #[must_use]
    pub fn generate(curve: NodeKeyCurve) -> Self {
        let rng = &mut rand_core::OsRng;
        let secret = match curve {
            NodeKeyCurve::P256 => Secret::P256(p256::SecretKey::random(rng)),
            NodeKeyCurve::P384 => Secret::P384(p384::SecretKey::random(rng)),
            NodeKeyCurve::P521 => Secret::P521(p521::SecretKey::random(rng)),
        };
        Self::from_secret(secret)
    }

    fn from_secret(secret: Secret) -> Self {
        let point = match &secret {
            Secret::P256(s) => Point::P256(s.public_key()),
            Secret::P384(s) => Point::P384(s.public_key()),
            Secret::P521(s) => Point::P521(s.public_key()),
        };
        Self {
            secret,
            public: NodePublicKey::from_point(point),
        }
    }

    /// A key from its curve and big-endian secret scalar (as OpenSSH
    /// stores it; P-521 scalars may carry a leading zero byte).
    ///
    /// # Errors
    /// [`NodeAuthError::InvalidKey`] when the bytes are not a valid scalar.
    pub(crate) fn from_secret_bytes(
        curve: NodeKeyCurve,
        bytes: &[u8],
    ) -> Result<Self, NodeAuthError> {
        let bad = |e| NodeAuthError::invalid_key("not a valid ECDSA private scalar", e);
        let secret = match curve {
            NodeKeyCurve::P256 => Secret::P256(p256::SecretKey::from_slice(bytes).map_err(bad)?),
            NodeKeyCurve::P384 => Secret::P384(p384::SecretKey::from_slice(bytes).map_err(bad)?),
            NodeKeyCurve::P521 => Secret::P521(p521::SecretKey::from_slice(bytes).map_err(bad)?),
        };
        Ok(Self::from_secret(secret))
    }

    /// Parses an unencrypted PKCS#8 PEM private key
    /// (`-----BEGIN PRIVATE KEY-----`, flwr's `private_key_to_bytes`).
    ///
    /// # Errors
    /// [`NodeAuthError::InvalidKey`] when it is not a PKCS#8 EC key on a
    /// supported curve.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, NodeAuthError> {
        fn parse<C>(pem: &str) -> Option<SecretKey<C>>
        where
            C: AssociatedOid + CurveArithmetic,
            AffinePoint<C>: FromEncodedPoint<C> + ToEncodedPoint<C>,
            FieldBytesSize<C>: ModulusSize,
        {
            SecretKey::<C>::from_pkcs8_pem(pem).ok()
        }
        let secret = if let Some(s) = parse::<p256::NistP256>(pem) {
            Secret::P256(s)
        } else if let Some(s) = parse::<p384::NistP384>(pem) {
            Secret::P384(s)
        } else if let Some(s) = parse::<p521::NistP521>(pem) {
            Secret::P521(s)
        } else {
            return Err(NodeAuthError::InvalidKey {
                reason: "not a PKCS#8 EC private key on P-256, P-384 or P-521",
                source: None,
            });
        };
        Ok(Self::from_secret(secret))
    }

    /// The public half.
    #[must_use]
    pub fn public_key(&self) -> &NodePublicKey {
        &self.public
    }

    /// DER-encoded ECDSA signature with SHA-256 over `message` (random
    /// nonce, like `cryptography`).
    #[must_use]
    pub fn sign_sha256(&self, message: &[u8]) -> Vec<u8> {
        let digest = Sha256::digest(message);
        match &self.secret {
            Secret::P256(s) => sign_prehash(s, &digest),
            Secret::P384(s) => sign_prehash(s, &digest),
            Secret::P521(s) => sign_prehash(s, &digest),
        }
    }

    /// The three Fleet HTTP headers for a request signed at `now`:
    /// `flwr-public-key` (base64 PEM), `flwr-timestamp` (ISO 8601 with
    /// microseconds and `+00:00`), `flwr-signature` (base64 DER).
    #[must_use]
    pub fn signed_headers(&self, now: std::time::SystemTime) -> http::HeaderMap {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let timestamp = super::verify::format_timestamp(now);
        let signature = self.sign_sha256(timestamp.as_bytes());
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            (super::PUBLIC_KEY_HEADER, b64.encode(self.public.to_pem())),
            (super::TIMESTAMP_HEADER, timestamp),
            (super::SIGNATURE_HEADER, b64.encode(signature)),
        ] {
            // base64 and the timestamp are visible ASCII: always valid.
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        headers
    }
}

#[allow(deprecated)] // `ArrayLength`, see the import
fn sign_prehash<C>(secret: &SecretKey<C>, digest: &[u8]) -> Vec<u8>
where
    C: PrimeCurve + CurveArithmetic,
    SignatureSize<C>: ArrayLength<u8>,
    ecdsa::der::MaxSize<C>: ArrayLength<u8>,
    <FieldBytesSize<C> as std::ops::Add>::Output:
        std::ops::Add<ecdsa::der::MaxOverhead> + ArrayLength<u8>,
{
    let z = digest_to_field::<C>(digest);
    let d = secret.to_nonzero_scalar();
    loop {
        let k: C::Scalar = *NonZeroScalar::<C>::random(&mut rand_core::OsRng);
        // Fails only for r == 0 or s == 0 (probability ~2^-256): draw again.
        if let Ok((signature, _)) = ecdsa::hazmat::sign_prehashed::<C, _>(d.as_ref(), k, &z) {
            return signature.to_der().as_bytes().to_vec();
        }
    }
}

impl fmt::Debug for NodeSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeSigningKey({:?})", self.public)
    }
}
