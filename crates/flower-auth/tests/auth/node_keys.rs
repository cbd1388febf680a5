//! SuperNode authentication (`flower_auth::node`) with real keys: made by
//! flwr's own Python code (`cryptography`, its `NodeAuthHttpInterceptor`)
//! and by the Rust crates, verified across; exact errors for every way a
//! request can be wrong; the authorized-keys set from a file (SIGUSR1,
//! bad reloads, removals) and from a real OpenBao.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use flower_auth::node::{
    node_keys_vault_config, parse_authorized_keys, verify_grpc_node_metadata, verify_node_request,
    verify_node_signature_raw, verify_signed_timestamp, NodeAuthError, NodeKeyCurve,
    NodeKeyManager, NodeKeysConfig, NodePublicKey, NodeSigningKey, PUBLIC_KEY_HEADER,
    SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use flower_auth::{AuthFlags, VaultConfig};
use flower_testkit::bao::{Bao, ROOT_TOKEN};
use http::{HeaderMap, HeaderValue};

use crate::harness::{eventually, BOUND};
use crate::logs::capture_logs;
use crate::signals::{raise_sigusr1, sigusr1_lock};

/// Makes key pairs with `cryptography` and signs a Fleet request with
/// flwr's real `NodeAuthHttpInterceptor`; prints JSON per curve.
const PY_GENERATE: &str = r#"
import base64, hashlib, json, sys
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.fleet_pb2 import PullMessagesRequest
from flwr.supercore.primitives.asymmetric import (
    private_key_to_bytes, public_key_to_bytes, sign_message,
)
from flwr.supercore.protobuf.client import ProtobufRequestContext
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1,
          "P-224": ec.SECP224R1}
out = {}
for name in sys.argv[2:]:
    sk = ec.generate_private_key(CURVES[name]())
    pk = sk.public_key()
    captured = {}
    def call_next(ctx):
        captured.update(ctx.request.headers)
        return httpx.Response(200, request=ctx.request)
    ctx = ProtobufRequestContext(
        rpc_method="PullMessages",
        message=PullMessagesRequest(),
        request=httpx.Request("POST", "http://127.0.0.1:1/v1/fleet/pull-messages"),
    )
    NodeAuthHttpInterceptor(sk, pk).intercept(ctx, call_next)
    entry = {
        "pem": public_key_to_bytes(pk).decode(),
        "private_pem": private_key_to_bytes(sk).decode(),
        "headers": {k: v for k, v in captured.items() if k.startswith("flwr-")},
        "raw_timestamp": sys.argv[1],
        "raw_signature_hex": sign_message(sk, sys.argv[1].encode("ascii")).hex(),
    }
    if name != "P-224":
        openssh = pk.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
        entry["openssh"] = openssh + " node@example"
        blob = base64.b64decode(openssh.split()[1])
        entry["fingerprint"] = "SHA256:" + base64.b64encode(
            hashlib.sha256(blob).digest()).decode().rstrip("=")
        # `flwr supernode register key.pub`: OpenSSH -> PEM.
        entry["registered_pem"] = public_key_to_bytes(
            serialization.load_ssh_public_key(openssh.encode())).decode()
    out[name] = entry
print(json.dumps(out))
"#;

/// Verifies a header triple exactly as flwr's SuperLink does
/// (`superlink/routers/fleet/node_auth.py`); prints `ok` or raises.
const PY_VERIFY: &str = r#"
import sys, datetime
from base64 import b64decode
from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature
public_key = b64decode(sys.argv[1], validate=True)
timestamp = sys.argv[2]
signature = b64decode(sys.argv[3], validate=True)
age = (datetime.datetime.now(tz=datetime.UTC) - datetime.datetime.fromisoformat(timestamp)).total_seconds()
assert -5 < age < 305, age
assert verify_signature(bytes_to_public_key(public_key), timestamp.encode("ascii"), signature)
print("ok")
"#;

/// The timestamp the Python script signs raw (gRPC variant).
const RAW_TIMESTAMP: &str = "2026-01-01T00:00:00.000001+00:00";

#[derive(Debug, Clone)]
struct PyKey {
    pem: String,
    private_pem: String,
    headers: HashMap<String, String>,
    raw_signature: Vec<u8>,
    openssh: Option<String>,
    fingerprint: Option<String>,
    registered_pem: Option<String>,
}

/// Python-made keys for P-256/384/521 and P-224, generated once per test
/// run (Python start-up is slow); `None` when the venv is absent.
fn python_keys() -> Option<&'static HashMap<String, PyKey>> {
    static KEYS: OnceLock<Option<HashMap<String, PyKey>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let python = flower_testkit::python::python()?;
        let out = flower_testkit::python::run_python(
            &python,
            PY_GENERATE,
            &[RAW_TIMESTAMP, "P-256", "P-384", "P-521", "P-224"],
        );
        let json: serde_json::Value = serde_json::from_slice(&out).expect("JSON from python");
        let text =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let map = json
            .as_object()
            .expect("object")
            .iter()
            .map(|(curve, v)| {
                let headers = v["headers"]
                    .as_object()
                    .expect("headers")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("str").to_owned()))
                    .collect();
                let key = PyKey {
                    pem: text(v, "pem").expect("pem"),
                    private_pem: text(v, "private_pem").expect("private pem"),
                    headers,
                    raw_signature: hex::decode(text(v, "raw_signature_hex").expect("sig"))
                        .expect("hex"),
                    openssh: text(v, "openssh"),
                    fingerprint: text(v, "fingerprint"),
                    registered_pem: text(v, "registered_pem"),
                };
                (curve.clone(), key)
            })
            .collect();
        Some(map)
    })
    .as_ref()
}

fn header_map(pairs: &HashMap<String, String>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    headers
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers[name].to_str().unwrap().to_owned()
}

/// The instant of an RFC 3339 timestamp, for window tests.
fn instant(ts: &str) -> SystemTime {
    let t =
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
    let nanos = u64::try_from(t.unix_timestamp_nanos()).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
}

#[test]
fn python_made_keys_and_headers_verify_in_rust() {
    let Some(keys) = python_keys() else { return };
    for curve in NodeKeyCurve::ALL {
        let py = &keys[curve.name()];
        let from_pem = NodePublicKey::from_pem(&py.pem).unwrap();
        assert_eq!(from_pem.curve(), curve);
        let openssh = py.openssh.as_deref().unwrap();
        let from_ssh = NodePublicKey::from_openssh(openssh).unwrap();
        assert_eq!(from_pem, from_ssh, "{curve}: same key from PEM and OpenSSH");
        assert_eq!(NodePublicKey::parse_any(openssh).unwrap(), from_pem);
        assert_eq!(NodePublicKey::parse_any(&py.pem).unwrap(), from_pem);
        let set: std::collections::HashSet<_> = [from_pem.clone(), from_ssh.clone()].into();
        assert_eq!(set.len(), 1, "equal keys hash alike");

        // Byte-identical PEM: as cryptography writes it, and as
        // `flwr supernode register` converts the OpenSSH key.
        assert_eq!(from_ssh.to_pem(), py.pem, "{curve}");
        assert_eq!(from_ssh.to_pem(), *py.registered_pem.as_ref().unwrap());
        assert_eq!(
            NodePublicKey::from_openssh(&from_pem.to_openssh()).unwrap(),
            from_pem
        );
        assert_eq!(from_pem.fingerprint(), py.fingerprint.as_deref().unwrap());

        // The headers flwr's interceptor attached.
        let headers = header_map(&py.headers);
        let verified = verify_node_request(&headers, SystemTime::now()).unwrap();
        assert_eq!(verified, from_pem, "{curve}");

        // The private key loads in Rust and has the same public key.
        let signer = NodeSigningKey::from_pkcs8_pem(&py.private_pem).unwrap();
        assert_eq!(*signer.public_key(), from_pem);
    }
}

#[test]
fn ssh_keygen_prints_the_same_fingerprint() {
    let Some(keys) = python_keys() else { return };
    let Ok(out) = std::process::Command::new("ssh-keygen").arg("-V").output() else {
        eprintln!("SKIPPED: ssh-keygen not installed");
        return;
    };
    let _ = out;
    let dir = tempfile::tempdir().unwrap();
    for curve in NodeKeyCurve::ALL {
        let py = &keys[curve.name()];
        let path = dir.path().join(format!("{}.pub", curve.name()));
        std::fs::write(&path, py.openssh.as_deref().unwrap()).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&path)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        let key = NodePublicKey::from_pem(&py.pem).unwrap();
        assert!(
            printed.contains(key.fingerprint()),
            "{curve}: {printed:?} vs {}",
            key.fingerprint()
        );
    }
}

#[test]
fn rust_signed_headers_verify_in_python_and_rust() {
    let python = flower_testkit::python::python();
    for curve in NodeKeyCurve::ALL {
        let signer = NodeSigningKey::generate(curve);
        let headers = signer.signed_headers(SystemTime::now());
        assert_eq!(
            verify_node_request(&headers, SystemTime::now()).unwrap(),
            *signer.public_key()
        );
        if let Some(python) = &python {
            let out = flower_testkit::python::run_python(
                python,
                PY_VERIFY,
                &[
                    &header(&headers, PUBLIC_KEY_HEADER),
                    &header(&headers, TIMESTAMP_HEADER),
                    &header(&headers, SIGNATURE_HEADER),
                ],
            );
            assert_eq!(String::from_utf8_lossy(&out).trim(), "ok", "{curve}");
        }
    }
}

#[test]
fn grpc_variant_over_raw_values() {
    let Some(keys) = python_keys() else { return };
    let now = instant(RAW_TIMESTAMP) + Duration::from_secs(1);
    for curve in NodeKeyCurve::ALL {
        let py = &keys[curve.name()];
        let key = verify_node_signature_raw(
            py.pem.as_bytes(),
            RAW_TIMESTAMP.as_bytes(),
            &py.raw_signature,
            now,
        )
        .unwrap();
        assert_eq!(key.curve(), curve);

        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert_bin(
            "flwr-public-key-bin",
            tonic::metadata::MetadataValue::from_bytes(py.pem.as_bytes()),
        );
        metadata.insert_bin(
            "flwr-signature-bin",
            tonic::metadata::MetadataValue::from_bytes(&py.raw_signature),
        );
        metadata.insert("flwr-timestamp", RAW_TIMESTAMP.parse().unwrap());
        assert_eq!(verify_grpc_node_metadata(&metadata, now).unwrap(), key);
        metadata.remove_bin("flwr-signature-bin");
        assert!(matches!(
            verify_grpc_node_metadata(&metadata, now),
            Err(NodeAuthError::MissingHeader {
                header: "flwr-signature-bin"
            })
        ));
    }
}

#[test]
fn timestamps_at_the_window_edges() {
    let signer = NodeSigningKey::generate(NodeKeyCurve::P256);
    let signed_at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_795_800_932_994_008);
    let headers = signer.signed_headers(signed_at);
    assert_eq!(
        header(&headers, TIMESTAMP_HEADER),
        "2026-11-27T17:35:32.994008+00:00",
        "Python's isoformat()"
    );
    let at = |offset_us: i64| {
        let d = Duration::from_micros(offset_us.unsigned_abs());
        if offset_us >= 0 {
            signed_at + d
        } else {
            signed_at - d
        }
    };
    let ok = |offset_us: i64| verify_node_request(&headers, at(offset_us)).is_ok();
    let age_ms = |offset_us: i64| match verify_node_request(&headers, at(offset_us)) {
        Err(NodeAuthError::TimestampOutsideWindow { age_ms }) => age_ms,
        other => panic!("{offset_us}: {other:?}"),
    };
    assert!(ok(0));
    assert!(ok(304_999_999));
    assert_eq!(age_ms(305_000_000), 305_000);
    assert_eq!(age_ms(3_600_000_000), 3_600_000);
    assert!(ok(-4_999_999), "a clock up to 5 s behind the node");
    assert_eq!(age_ms(-5_000_000), -5_000);
    assert_eq!(age_ms(-60_000_000), -60_000);

    // Python omits the fraction when microsecond == 0: accepted too.
    let key = signer.public_key();
    let ts = "2026-11-27T17:35:32+00:00";
    let sig = signer.sign_sha256(ts.as_bytes());
    assert!(verify_signed_timestamp(key, ts, &sig, instant(ts)).is_ok());
}

#[test]
fn every_malformed_request_has_its_error() {
    let alice = NodeSigningKey::generate(NodeKeyCurve::P384);
    let bob = NodeSigningKey::generate(NodeKeyCurve::P384);
    let now = SystemTime::now();
    let good = alice.signed_headers(now);
    assert!(verify_node_request(&good, now).is_ok());
    let with = |name: &str, value: &str| {
        let mut h = good.clone();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        verify_node_request(&h, now).unwrap_err()
    };

    for name in [PUBLIC_KEY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER] {
        let mut h = good.clone();
        h.remove(name);
        match verify_node_request(&h, now) {
            Err(NodeAuthError::MissingHeader { header }) => assert_eq!(header, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut h = good.clone();
    h.insert(
        TIMESTAMP_HEADER,
        HeaderValue::from_bytes(b"2026-\xff").unwrap(),
    );
    assert!(matches!(
        verify_node_request(&h, now),
        Err(NodeAuthError::InvalidHeader {
            header: TIMESTAMP_HEADER
        })
    ));

    // Bad base64 in either binary header.
    assert!(matches!(
        with(PUBLIC_KEY_HEADER, "not base64!"),
        NodeAuthError::InvalidBase64 {
            header: PUBLIC_KEY_HEADER,
            ..
        }
    ));
    assert!(matches!(
        with(SIGNATURE_HEADER, "abc"),
        NodeAuthError::InvalidBase64 {
            header: SIGNATURE_HEADER,
            ..
        }
    ));

    // Keys that are not keys, or not ours.
    assert!(matches!(
        with(PUBLIC_KEY_HEADER, &B64.encode("hello")),
        NodeAuthError::InvalidKey { .. }
    ));
    let truncated_pem = alice
        .public_key()
        .to_pem()
        .replace("\n-----END PUBLIC KEY-----\n", "");
    assert!(matches!(
        with(PUBLIC_KEY_HEADER, &B64.encode(truncated_pem)),
        NodeAuthError::InvalidKey { .. }
    ));
    if let Some(keys) = python_keys() {
        match with(PUBLIC_KEY_HEADER, &B64.encode(&keys["P-224"].pem)) {
            NodeAuthError::UnsupportedKey { what } => {
                assert!(what.contains("1.3.132.0.33"), "{what}")
            }
            other => panic!("{other:?}"),
        }
    }

    // Timestamps.
    assert!(matches!(
        with(TIMESTAMP_HEADER, "yesterday"),
        NodeAuthError::InvalidTimestamp { .. }
    ));
    assert!(matches!(
        with(TIMESTAMP_HEADER, "2026-11-27T17:35:32.994008"),
        NodeAuthError::InvalidTimestamp { .. }
    ));
    // A later timestamp (inside the window) than the one signed.
    let later = verify_node_request_text(&good);
    assert!(matches!(
        with(TIMESTAMP_HEADER, &later),
        NodeAuthError::BadSignature { .. }
    ));

    // Signatures: not DER; DER but by another key; another key presented.
    assert!(matches!(
        with(SIGNATURE_HEADER, &B64.encode([0x30, 0x03, 0x02, 0x01])),
        NodeAuthError::MalformedSignature {
            curve: NodeKeyCurve::P384,
            ..
        }
    ));
    let ts = header(&good, TIMESTAMP_HEADER);
    let by_bob = B64.encode(bob.sign_sha256(ts.as_bytes()));
    match with(SIGNATURE_HEADER, &by_bob) {
        NodeAuthError::BadSignature { fingerprint } => {
            assert_eq!(fingerprint, alice.public_key().fingerprint())
        }
        other => panic!("{other:?}"),
    }
    match with(PUBLIC_KEY_HEADER, &B64.encode(bob.public_key().to_pem())) {
        NodeAuthError::BadSignature { fingerprint } => {
            assert_eq!(fingerprint, bob.public_key().fingerprint())
        }
        other => panic!("{other:?}"),
    }
    // A P-256 signature presented with a P-384 key.
    let p256 = NodeSigningKey::generate(NodeKeyCurve::P256);
    assert!(matches!(
        with(
            SIGNATURE_HEADER,
            &B64.encode(p256.sign_sha256(ts.as_bytes()))
        ),
        NodeAuthError::BadSignature { .. } | NodeAuthError::MalformedSignature { .. }
    ));
}

/// The header's timestamp moved one second later (still in the window).
fn verify_node_request_text(headers: &HeaderMap) -> String {
    let ts = header(headers, TIMESTAMP_HEADER);
    let t = time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
        .unwrap()
        - time::Duration::seconds(1);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn openssh_lines_of_other_kinds_are_refused() {
    let ed25519 =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";
    match NodePublicKey::from_openssh(ed25519) {
        Err(NodeAuthError::UnsupportedKey { what }) => assert!(what.contains("ed25519"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        NodePublicKey::from_openssh("ecdsa-sha2-nistp256 AAAA"),
        Err(NodeAuthError::InvalidKey { .. })
    ));
    assert!(matches!(
        NodePublicKey::parse_any("-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----"),
        Err(NodeAuthError::InvalidKey { .. })
    ));
}

#[test]
fn keys_and_errors_never_show_key_material() {
    let signer = NodeSigningKey::generate(NodeKeyCurve::P521);
    let key = signer.public_key();
    let pem_body: String = key
        .to_pem()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let ssh_blob = key.to_openssh().split(' ').nth(1).unwrap().to_owned();
    let shown = format!("{key:?} {key} {signer:?}");
    assert!(shown.contains(key.fingerprint()), "{shown}");
    assert!(key.fingerprint().starts_with("SHA256:"));
    for secret in [&pem_body[..20], &ssh_blob[20..40]] {
        assert!(!shown.contains(secret), "{shown}");
    }
    let now = SystemTime::now();
    let mut headers = signer.signed_headers(now);
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(
            &B64.encode(NodeSigningKey::generate(NodeKeyCurve::P521).sign_sha256(b"x")),
        )
        .unwrap(),
    );
    let err = verify_node_request(&headers, now).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains(key.fingerprint()), "{text}");
    assert!(!text.contains(&pem_body[..20]) && !text.contains(&ssh_blob[20..40]));
}

/// An authorized-keys file mixing both forms (Python- and Rust-made keys
/// when the venv is there), comments and blank lines.
fn mixed_file(keys: &[&NodeSigningKey]) -> String {
    let mut text = String::from("# SuperNodes allowed to connect\n\n");
    for (i, k) in keys.iter().enumerate() {
        if i % 2 == 0 {
            text.push_str(&format!("{} node-{i}@site\n", k.public_key().to_openssh()));
        } else {
            text.push_str(&format!(
                "   # node {i}, as PEM\n{}\n",
                k.public_key().to_pem()
            ));
        }
    }
    text
}

#[test]
fn authorized_keys_lists_parse_both_forms_and_name_bad_lines() {
    let a = NodeSigningKey::generate(NodeKeyCurve::P256);
    let b = NodeSigningKey::generate(NodeKeyCurve::P384);
    let c = NodeSigningKey::generate(NodeKeyCurve::P521);
    let mut text = mixed_file(&[&a, &b, &c]);
    if let Some(py) = python_keys() {
        text.push_str(py["P-384"].openssh.as_deref().unwrap());
        text.push('\n');
        text.push_str(&py["P-521"].pem);
    }
    let keys = parse_authorized_keys(&text, "test list").unwrap();
    assert!(keys.contains(a.public_key()) && keys.contains(b.public_key()));
    assert!(keys.contains(c.public_key()));
    assert_eq!(keys.len(), if python_keys().is_some() { 5 } else { 3 });

    let bad = format!(
        "# header\n{}\nnot-a-key AAAA\n",
        a.public_key().to_openssh()
    );
    match parse_authorized_keys(&bad, "list.txt") {
        Err(NodeAuthError::AuthorizedKeysEntry { origin, line, .. }) => {
            assert_eq!((origin.as_str(), line), ("list.txt", 3));
        }
        other => panic!("{other:?}"),
    }
    let unterminated = format!(
        "\n\n{}",
        b.public_key()
            .to_pem()
            .replace("-----END PUBLIC KEY-----\n", "")
    );
    match parse_authorized_keys(&unterminated, "x") {
        Err(NodeAuthError::AuthorizedKeysEntry { line, source, .. }) => {
            assert_eq!(line, 3);
            assert!(source.to_string().contains("END"), "{source}");
        }
        other => panic!("{other:?}"),
    }
    assert!(parse_authorized_keys("# only\n\n", "x").unwrap().is_empty());
}

#[tokio::test]
async fn file_reloads_keep_the_last_good_set_and_report_removals() {
    let logs = capture_logs(tracing::Level::INFO);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authorized_keys");
    let a = NodeSigningKey::generate(NodeKeyCurve::P256);
    let b = NodeSigningKey::generate(NodeKeyCurve::P384);
    let c = NodeSigningKey::generate(NodeKeyCurve::P521);
    std::fs::write(&path, mixed_file(&[&a, &b])).unwrap();

    // Start-up errors are fatal and say why.
    let missing = NodeKeysConfig::new()
        .authorized_keys_file(Some(dir.path().join("nope")))
        .reload_on_sigusr1(false);
    assert!(matches!(
        NodeKeyManager::start(&missing).await,
        Err(NodeAuthError::AuthorizedKeysFile { .. })
    ));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nobody yet\n").unwrap();
    assert!(matches!(
        NodeKeyManager::start(
            &NodeKeysConfig::new()
                .authorized_keys_file(Some(&empty))
                .reload_on_sigusr1(false)
        )
        .await,
        Err(NodeAuthError::NoKeys { .. })
    ));
    assert!(matches!(
        NodeKeyManager::start(&NodeKeysConfig::new()).await,
        Err(NodeAuthError::Config(_))
    ));

    let config = NodeKeysConfig::new()
        .authorized_keys_file(Some(&path))
        .reload_on_sigusr1(false);
    let manager = NodeKeyManager::start(&config).await.unwrap();
    let keys = manager.keys();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(a.public_key()) && keys.contains(b.public_key()));
    assert!(!keys.contains(c.public_key()));
    let b_revoked = keys.revocation(b.public_key()).unwrap();
    let a_revoked = keys.revocation(a.public_key()).unwrap();
    assert!(keys.revocation(c.public_key()).is_none());
    let mut removals = keys.subscribe_removals();

    // A bad file (one bad line among good ones) keeps the last good set.
    std::fs::write(
        &path,
        format!(
            "{}\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ bad\n",
            c.public_key().to_openssh()
        ),
    )
    .unwrap();
    match manager.reload_now().await {
        Err(NodeAuthError::AuthorizedKeysEntry { line: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(b.public_key()) && !keys.contains(c.public_key()));
    assert!(!b_revoked.is_revoked());
    let path_text = path.display().to_string();
    let failures = || {
        logs.contents()
            .lines()
            .filter(|l| l.contains("node key reload failed") && l.contains(&path_text))
            .count()
    };
    assert_eq!(failures(), 1, "logged once, with the reason");
    assert!(logs.contents().contains("line 2"));

    // A good file: b removed (reported both ways), c added, a kept.
    std::fs::write(&path, mixed_file(&[&c, &a])).unwrap();
    let change = manager.reload_now().await.unwrap();
    assert_eq!(change.added, vec![c.public_key().clone()]);
    assert_eq!(change.removed, vec![b.public_key().clone()]);
    assert_eq!(change.total, 2);
    tokio::time::timeout(BOUND, b_revoked.revoked())
        .await
        .expect("the removed key's watcher is told");
    assert!(!a_revoked.is_revoked());
    let removed = tokio::time::timeout(BOUND, removals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*removed, &[b.public_key().clone()]);
    assert!(logs
        .contents()
        .lines()
        .any(|l| l.contains("node key source recovered") && l.contains(&path_text)));
    assert!(logs.contents().contains(b.public_key().fingerprint()));

    // Nothing logged shows a key itself.
    let blob = c.public_key().to_openssh();
    let blob = blob.split(' ').nth(1).unwrap();
    assert!(!logs.contents().contains(&blob[20..50]));
}

#[tokio::test]
async fn sigusr1_and_interval_reload_the_file() {
    let _signal = sigusr1_lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authorized_keys");
    let a = NodeSigningKey::generate(NodeKeyCurve::P256);
    let b = NodeSigningKey::generate(NodeKeyCurve::P384);
    std::fs::write(&path, mixed_file(&[&a])).unwrap();
    let manager = NodeKeyManager::start(&NodeKeysConfig::new().authorized_keys_file(Some(&path)))
        .await
        .unwrap();
    let keys = manager.keys();
    let a_revoked = keys.revocation(a.public_key()).unwrap();
    std::fs::write(&path, mixed_file(&[&b])).unwrap();
    raise_sigusr1();
    assert!(
        eventually(BOUND, || async { keys.contains(b.public_key()) }).await,
        "SIGUSR1 reloaded the file"
    );
    assert!(!keys.contains(a.public_key()));
    assert!(a_revoked.is_revoked());
    drop(manager);

    // No signal: a periodic reload.
    let c = NodeSigningKey::generate(NodeKeyCurve::P521);
    let periodic = NodeKeyManager::start(
        &NodeKeysConfig::new()
            .authorized_keys_file(Some(&path))
            .reload_on_sigusr1(false)
            .refresh_interval(Some(Duration::from_millis(200))),
    )
    .await
    .unwrap();
    let keys = periodic.keys();
    std::fs::write(&path, mixed_file(&[&c])).unwrap();
    assert!(eventually(BOUND, || async { keys.contains(c.public_key()) }).await);
    periodic.shutdown();
}

#[test]
fn flags_map_onto_the_node_key_config() {
    assert!(
        NodeKeysConfig::from_flags(&AuthFlags::default(), None, None)
            .unwrap()
            .is_none()
    );
    let c = NodeKeysConfig::from_flags(&AuthFlags::default(), Some("/k".into()), None)
        .unwrap()
        .unwrap();
    assert!(c.vault.is_none() && c.reload_options().interval.is_none());
    assert!(matches!(
        NodeKeysConfig::from_flags(&AuthFlags::default(), None, Some("nodes")),
        Err(NodeAuthError::Config(_))
    ));

    // Bearer tokens from a file, node keys from Vault: both work.
    let flags = AuthFlags {
        token_file: Some("/tokens".into()),
        vault_addr: Some("http://127.0.0.1:8200".into()),
        vault_token: Some("root".into()),
        vault_mount: Some("kv".into()),
        ..AuthFlags::default()
    };
    let c = NodeKeysConfig::from_flags(&flags, None, Some("/nodes/"))
        .unwrap()
        .unwrap();
    let v = c.vault.as_ref().unwrap();
    assert_eq!((v.mount.as_str(), v.secret_path.as_str()), ("kv", "nodes"));
    assert_eq!(c.reload_options().interval, Some(Duration::from_secs(60)));

    // Per-user deployment path, from the OIDC token's `sub`.
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwt = format!(
        "{}.{}.sig",
        e.encode(r#"{"alg":"none"}"#),
        e.encode(r#"{"sub":"u1"}"#)
    );
    let base = VaultConfig::builder("http://127.0.0.1:8200")
        .oidc_access_token(jwt)
        .deployment_id("dep")
        .build()
        .unwrap();
    let v = node_keys_vault_config(&base, "").unwrap();
    assert_eq!(v.secret_path, "users/u1/deployments/dep/node-keys");
    assert!(v.deployment_id.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_node_keys_are_loaded_and_deletions_reported() {
    let Some(bao) = Bao::start() else { return };
    bao.seed();
    let a = NodeSigningKey::generate(NodeKeyCurve::P256);
    let b = NodeSigningKey::generate(NodeKeyCurve::P384);
    let c = NodeSigningKey::generate(NodeKeyCurve::P521);
    bao.put(
        "node-keys/alice",
        &[("token", &a.public_key().to_openssh())],
    );
    bao.put("node-keys/bob", &[("token", &b.public_key().to_pem())]);
    bao.put(
        "federated/carol",
        &[("token", &c.public_key().to_openssh())],
    );

    let base = VaultConfig::builder(bao.addr())
        .token(ROOT_TOKEN)
        .refresh_interval(None)
        .build()
        .unwrap();
    let config = NodeKeysConfig::new()
        .vault(Some(node_keys_vault_config(&base, "node-keys").unwrap()))
        .reload_on_sigusr1(false);
    let manager = NodeKeyManager::start(&config).await.unwrap();
    let keys = manager.keys();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(a.public_key()) && keys.contains(b.public_key()));
    assert!(!keys.contains(c.public_key()), "bearer-token path not read");
    let bob = keys.revocation(b.public_key()).unwrap();
    let mut removals = keys.subscribe_removals();

    bao.delete("node-keys/bob");
    bao.put(
        "node-keys/carol",
        &[("token", &c.public_key().to_openssh())],
    );
    let change = manager.reload_now().await.unwrap();
    assert_eq!(change.removed, vec![b.public_key().clone()]);
    assert_eq!(change.added, vec![c.public_key().clone()]);
    tokio::time::timeout(BOUND, bob.revoked()).await.unwrap();
    let removed = tokio::time::timeout(BOUND, removals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*removed, &[b.public_key().clone()]);

    // A bad value keeps the last good set.
    bao.put("node-keys/mallory", &[("token", "not a key")]);
    assert!(matches!(
        manager.reload_now().await,
        Err(NodeAuthError::AuthorizedKeysEntry { .. })
    ));
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(c.public_key()));
}
