//! Test support shared by flower-rs test suites.
//!
//! * [`python`] finds the pinned Python virtual environment (`.venv` at the
//!   workspace root, or `FLOWER_PYTHON`). When `FLOWER_REQUIRE_PYTHON=1` (set by
//!   the README's test command) a missing interpreter fails the test; otherwise
//!   the test is skipped with a printed reason.
//! * [`free_port`] picks a free loopback TCP port.
//! * [`DevCertificates`] generates a throwaway CA and a server certificate for
//!   `localhost`, `127.0.0.1` and `::1`.
//! * [`ChildGuard`] kills a child process (by its PID) when dropped, so a
//!   failing test never leaves a server behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// True when the README's test command asked for the Python-backed tests.
pub fn python_required() -> bool {
    std::env::var("FLOWER_REQUIRE_PYTHON").is_ok_and(|v| v == "1")
}

/// Path of the pinned Python interpreter, or `None` (with a printed reason)
/// when it is absent and not required. Panics when required but missing.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("FLOWER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    if candidate.exists() {
        return Some(candidate);
    }
    let reason = format!(
        "pinned Python venv not found at {} (run scripts/test.sh to create it)",
        candidate.display()
    );
    if python_required() {
        panic!("FLOWER_REQUIRE_PYTHON=1 but {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// Directory holding the `bao` binary of the pinned venv, if any.
pub fn venv_bin() -> Option<PathBuf> {
    python().and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Runs a Python snippet with the pinned interpreter and returns stdout.
/// Panics with stderr when the script fails.
pub fn run_python(python: &Path, script: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Waits (bounded) until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Kills and reaps the wrapped child when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Waits for the child to exit, at most `timeout`; kills it on expiry and
    /// returns `None`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A throwaway CA and a server certificate for localhost, 127.0.0.1 and ::1,
/// written as PEM files into a temporary directory.
#[derive(Debug)]
pub struct DevCertificates {
    dir: tempfile::TempDir,
}

impl DevCertificates {
    /// Generates the CA and the server certificate.
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flower-rs test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");

        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .subject_alt_names
            .push(SanType::IpAddress("::1".parse().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");

        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    /// CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    /// Server certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    /// Server private key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}
