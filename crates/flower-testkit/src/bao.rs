//! A real OpenBao dev server (`bao server -dev`, the `bao` binary of the
//! pinned venv) on a free loopback port, driven through the `bao` CLI.
//!
//! Dev mode keeps everything in memory: a restarted server is empty and must
//! be seeded again.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::jwt::JwtIssuer;
use crate::process::ChildGuard;

/// Root token id of every dev server started here.
pub const ROOT_TOKEN: &str = "flower-test-root-token";

/// Policy (written by [`Bao::seed`]) letting a token read the whole
/// `secrets/` mount.
pub const READER_POLICY: &str = "flower-reader";

/// Bound of one start attempt: a loaded machine starts bao slowly.
const START_BOUND: Duration = Duration::from_secs(60);

/// Bound of one CLI call.
const CLI_BOUND: Duration = Duration::from_secs(20);

/// Finds the venv's `bao` binary, or `None` (with a printed reason) when the
/// venv is absent and not required. Panics when `FLOWER_REQUIRE_PYTHON=1`
/// and it is missing.
pub fn bao_binary() -> Option<PathBuf> {
    crate::python::venv_tool("bao")
}

/// A running `bao server -dev`, killed on drop.
#[derive(Debug)]
pub struct Bao {
    bin: PathBuf,
    port: u16,
    guard: Option<ChildGuard>,
}

impl Bao {
    /// Starts a dev server on a free port and waits (bounded) until it is
    /// unsealed and active; `None` when bao is unavailable and not required.
    /// Panics when it does not start.
    pub fn start() -> Option<Self> {
        let bin = bao_binary()?;
        let mut bao = Self {
            bin,
            port: 0,
            guard: None,
        };
        // A free port can be taken by another test between its pick and
        // bao's bind: try a few ports.
        for _ in 0..3 {
            bao.port = crate::free_port();
            if bao.try_launch() {
                return Some(bao);
            }
        }
        panic!("bao dev server did not start on three ports");
    }

    /// Starts `bao server -dev` on `self.port` and waits (bounded) until it
    /// is unsealed and active; false when it exits or never gets ready.
    fn try_launch(&mut self) -> bool {
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
        let deadline = Instant::now() + START_BOUND;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if !guard.is_running() || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.guard = Some(guard);
        // Listening is not quite ready: wait (bounded) until unsealed and active.
        while Instant::now() < deadline {
            if self.try_cli(&["status"]).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.guard = None;
        false
    }

    /// Stops the server (dev mode: all data is lost).
    pub fn stop(&mut self) {
        drop(self.guard.take());
    }

    /// Starts it again on the same port (empty, to be re-seeded). Panics
    /// when it does not start.
    pub fn restart(&mut self) {
        assert!(
            self.try_launch(),
            "bao dev server did not restart on {}",
            self.port
        );
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs the `bao` CLI as root against this server; the error carries
    /// the CLI's output.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
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
            .wait_timeout(CLI_BOUND)
            .ok_or_else(|| format!("bao {args:?} timed out"))?;
        let mut out = String::new();
        let mut err = String::new();
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

    /// Runs the `bao` CLI as root against this server and returns its
    /// stdout; panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Mounts KV version 1 at `secrets/` and writes [`READER_POLICY`].
    pub fn seed(&self) {
        self.cli(&["secrets", "enable", "-path=secrets", "-version=1", "kv"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = dir.path().join("policy.hcl");
        std::fs::write(
            &policy,
            "path \"secrets/*\" { capabilities = [\"read\", \"list\"] }\n",
        )
        .expect("write the policy file");
        self.cli(&[
            "policy",
            "write",
            READER_POLICY,
            &policy.display().to_string(),
        ]);
    }

    /// Writes `secrets/<path>` with the given `key=value` pairs.
    pub fn put(&self, path: &str, pairs: &[(&str, &str)]) {
        let mut args = vec!["kv".to_owned(), "put".into(), format!("secrets/{path}")];
        args.extend(pairs.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args);
    }

    /// Deletes `secrets/<path>`.
    pub fn delete(&self, path: &str) {
        self.cli(&["kv", "delete", &format!("secrets/{path}")]);
    }

    /// Creates a child token with [`READER_POLICY`] and the `extra` CLI flags
    /// (such as `-ttl=1h`); returns the token.
    pub fn create_token(&self, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "-field=token", "-policy", READER_POLICY];
        args.extend_from_slice(extra);
        self.cli(&args).trim().to_owned()
    }

    /// Remaining TTL (seconds) of `token`, looked up as root.
    pub fn token_ttl(&self, token: &str) -> u64 {
        let out = self.cli(&["token", "lookup", "-format=json", token]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("token lookup is JSON");
        v["data"]["ttl"].as_u64().expect("token lookup has a ttl")
    }

    /// Enables the JWT auth method at `jwt/`, trusting `issuer`'s key, with
    /// a role `flower` bound to audience `flower`, user claim `sub`, granting
    /// [`READER_POLICY`].
    pub fn enable_jwt(&self, issuer: &JwtIssuer) {
        self.cli(&["auth", "enable", "jwt"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let pem = dir.path().join("pub.pem");
        std::fs::write(&pem, issuer.public_pem()).expect("write the public key");
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
