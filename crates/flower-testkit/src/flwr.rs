//! The venv's stock flwr 1.42 tools for Fleet API tests: `flwr build` to
//! make FABs of the test apps under `python/apps/`, a [`SuperNode`] process
//! guard around `flower-supernode`, and [`generate_node_key`] for SuperNode
//! authentication keys.
//!
//! Everything runs offline: every command gets `FLWR_DISABLE_UPDATE_CHECK=1`,
//! `FLWR_TELEMETRY_ENABLED=0` and its own `FLWR_HOME` in a temporary
//! directory, with the venv's `bin/` first on `PATH`, because a SuperNode
//! starts `flower-superexec` and `flwr-clientapp` by name.
//!
//! Like the rest of the crate, a missing venv skips (`None`, with a printed
//! reason) unless `FLOWER_REQUIRE_PYTHON=1`, and any other failure panics.
//!
//! ```no_run
//! use flower_testkit::flwr::{app_dir, build_fab, SuperNode};
//! # fn demo(out: &std::path::Path, port: u16) {
//! let Some(fab) = build_fab(&app_dir("modern"), out) else { return };
//! let Some(node) = SuperNode::builder(format!("127.0.0.1:{port}"))
//!     .insecure()
//!     .node_config("factor=2.0 examples=30")
//!     .start()
//! else {
//!     return;
//! };
//! assert!(node.wait_for_log("Starting Flower SuperNode", std::time::Duration::from_secs(20)));
//! # let _ = fab; }
//! ```

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::net::free_port;
use crate::process::ChildGuard;
use crate::python::{venv_bin, venv_tool};
use crate::workspace_root;

/// Upper bound for `flwr build`.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`SuperNode::stop`] (and drop) waits after SIGTERM before
/// SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The directory of a test app under `python/apps/` (`"modern"`, `"legacy"`).
pub fn app_dir(name: &str) -> PathBuf {
    workspace_root().join("python/apps").join(name)
}

/// Sets the offline flwr environment on `cmd`: venv `bin/` first on `PATH`,
/// `FLWR_HOME=flwr_home`, no update check, no telemetry, unbuffered Python
/// output (so logs can be read while the process runs).
pub fn flwr_env(cmd: &mut Command, venv_bin: &Path, flwr_home: &Path) {
    let mut path = OsString::from(venv_bin);
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    cmd.env("PATH", path)
        .env("FLWR_HOME", flwr_home)
        .env("FLWR_DISABLE_UPDATE_CHECK", "1")
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .env("PYTHONUNBUFFERED", "1");
}

/// Builds the app in `app_dir` with the venv's `flwr build` and moves the
/// FAB into `out_dir` (created if needed). Returns the FAB's path, named as
/// flwr names it (`publisher.name.version.hash8.fab`).
///
/// The app is first copied to a temporary directory with the same base
/// name (flwr requires the directory name to be a valid app name: a letter,
/// then letters, digits, hyphens), leaving out `__pycache__`, `.flwr` and old
/// `.fab` files, so the source tree is never written to. `None` when the
/// venv is absent and not required; panics if the build fails or takes more
/// than [`BUILD_TIMEOUT`].
pub fn build_fab(app_dir: &Path, out_dir: &Path) -> Option<PathBuf> {
    let flwr = venv_tool("flwr")?;
    let bin = venv_bin()?;
    let name = app_dir
        .file_name()
        .unwrap_or_else(|| panic!("app dir {} has no name", app_dir.display()));
    let work = TempDir::new().expect("temp dir");
    let copy = work.path().join(name);
    copy_app(app_dir, &copy);
    let cwd = work.path().join("out");
    let home = work.path().join("flwr-home");
    for dir in [&cwd, &home, &out_dir.to_path_buf()] {
        std::fs::create_dir_all(dir).expect("create dir");
    }
    let log_path = work.path().join("build.log");
    let log = File::create(&log_path).expect("create build log");
    let mut cmd = Command::new(flwr);
    cmd.arg("build")
        .arg("--app")
        .arg(&copy)
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log);
    flwr_env(&mut cmd, &bin, &home);
    let mut child = ChildGuard(cmd.spawn().expect("spawn flwr build"));
    let status = child.wait_timeout(BUILD_TIMEOUT);
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("flwr build {} failed ({s}):\n{output}", app_dir.display()),
        None => panic!("flwr build {} timed out:\n{output}", app_dir.display()),
    }
    let fab = std::fs::read_dir(&cwd)
        .expect("read build dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "fab"))
        .unwrap_or_else(|| panic!("flwr build wrote no .fab:\n{output}"));
    let target = out_dir.join(fab.file_name().expect("fab file name"));
    // A rename across file systems fails; copy instead.
    std::fs::copy(&fab, &target).expect("copy FAB to out dir");
    Some(target)
}

/// Copies an app tree, leaving out build and cache artefacts.
fn copy_app(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create app copy");
    for entry in std::fs::read_dir(from).expect("read app dir") {
        let entry = entry.expect("app dir entry");
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str == "__pycache__" || name_str == ".flwr" || name_str.ends_with(".fab") {
            continue;
        }
        let path = entry.path();
        if entry.file_type().expect("file type").is_dir() {
            copy_app(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy app file");
        }
    }
}

/// How a [`SuperNode`] reaches the SuperLink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuperLinkTls {
    /// `--insecure`: plain HTTP.
    Insecure,
    /// `--root-certificates <path>`: HTTPS, trusting this CA.
    RootCertificates(PathBuf),
    /// Neither flag: HTTPS with the system's roots (flwr's default).
    SystemRoots,
}

/// Options for [`SuperNode`]; see [`SuperNode::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct SuperNodeBuilder {
    superlink: String,
    tls: SuperLinkTls,
    auth_private_key: Option<PathBuf>,
    node_config: Option<String>,
    isolation_process: bool,
    runtime_port: Option<u16>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl SuperNodeBuilder {
    /// Plain HTTP (`--insecure`).
    pub fn insecure(mut self) -> Self {
        self.tls = SuperLinkTls::Insecure;
        self
    }

    /// HTTPS trusting `ca` (`--root-certificates`).
    pub fn root_certificates(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls = SuperLinkTls::RootCertificates(ca.into());
        self
    }

    /// Sets the TLS mode.
    pub fn tls(mut self, tls: SuperLinkTls) -> Self {
        self.tls = tls;
        self
    }

    /// `--auth-supernode-private-key` (an OpenSSH ECDSA private key, see
    /// [`generate_node_key`]). flwr refuses it together with `--insecure`.
    pub fn auth_private_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth_private_key = Some(path.into());
        self
    }

    /// `--node-config`, e.g. `"factor=2.0 examples=30"`.
    pub fn node_config(mut self, config: impl Into<String>) -> Self {
        self.node_config = Some(config.into());
        self
    }

    /// `--isolation process` instead of the default `subprocess` (the caller
    /// then runs `flower-superexec` itself).
    pub fn isolation_process(mut self) -> Self {
        self.isolation_process = true;
        self
    }

    /// Port of the SuperNode's local Runtime API (`--port`); default: a free
    /// port, so several SuperNodes can run at once.
    pub fn runtime_port(mut self, port: u16) -> Self {
        self.runtime_port = Some(port);
        self
    }

    /// Appends a raw argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the SuperNode (after the offline
    /// defaults, so it can override them).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The `flower-supernode` arguments these options give (without the
    /// program name).
    pub fn args(&self, runtime_port: u16) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--superlink".into(), self.superlink.clone().into()];
        match &self.tls {
            SuperLinkTls::Insecure => args.push("--insecure".into()),
            SuperLinkTls::RootCertificates(ca) => {
                args.push("--root-certificates".into());
                args.push(ca.into());
            }
            SuperLinkTls::SystemRoots => {}
        }
        if let Some(key) = &self.auth_private_key {
            args.push("--auth-supernode-private-key".into());
            args.push(key.into());
        }
        if let Some(config) = &self.node_config {
            args.push("--node-config".into());
            args.push(config.into());
        }
        if self.isolation_process {
            args.push("--isolation".into());
            args.push("process".into());
        }
        args.push("--port".into());
        args.push(runtime_port.to_string().into());
        args.extend(self.args.iter().cloned());
        args
    }

    /// Starts the SuperNode. `None` when the venv is absent and not
    /// required.
    pub fn start(self) -> Option<SuperNode> {
        let program = venv_tool("flower-supernode")?;
        let bin = venv_bin()?;
        let dir = TempDir::new().expect("temp dir");
        let home = dir.path().join("flwr-home");
        std::fs::create_dir_all(&home).expect("create FLWR_HOME");
        let log_path = dir.path().join("supernode.log");
        let log = File::create(&log_path).expect("create SuperNode log");
        let runtime_port = self.runtime_port.unwrap_or_else(free_port);
        let mut cmd = Command::new(program);
        cmd.args(self.args(runtime_port))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        flwr_env(&mut cmd, &bin, &home);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        // Its own process group, so stopping it also stops the
        // flower-superexec and flwr-clientapp processes it starts.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawn flower-supernode");
        Some(SuperNode {
            child: ChildGuard(child),
            log_path,
            home,
            runtime_port,
            _dir: dir,
        })
    }
}

/// A running stock `flower-supernode` (and the processes it starts), stopped
/// when dropped. Its stdout and stderr, and those of its children, go to
/// [`SuperNode::log_path`].
#[derive(Debug)]
pub struct SuperNode {
    child: ChildGuard,
    log_path: PathBuf,
    home: PathBuf,
    runtime_port: u16,
    _dir: TempDir,
}

impl SuperNode {
    /// Options for a SuperNode connecting to `superlink` (`host:port`, no
    /// scheme). TLS defaults to flwr's default (system roots); tests usually
    /// call [`SuperNodeBuilder::insecure`] or
    /// [`SuperNodeBuilder::root_certificates`].
    pub fn builder(superlink: impl Into<String>) -> SuperNodeBuilder {
        SuperNodeBuilder {
            superlink: superlink.into(),
            tls: SuperLinkTls::SystemRoots,
            auth_private_key: None,
            node_config: None,
            isolation_process: false,
            runtime_port: None,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Process id of `flower-supernode` (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The SuperNode's Runtime API port (`--port`).
    pub fn runtime_port(&self) -> u16 {
        self.runtime_port
    }

    /// Its `FLWR_HOME` (installed apps land in `apps/` there).
    pub fn flwr_home(&self) -> &Path {
        &self.home
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, at most `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// True while `flower-supernode` has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Waits for `flower-supernode` to exit on its own, at most `timeout`;
    /// returns its exit code (`None` if it is still running, or died from a
    /// signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.0.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Stops the SuperNode's process group: SIGTERM (a SuperNode then
    /// deactivates its node), then SIGKILL after [`STOP_GRACE`].
    pub fn stop(&mut self) {
        let group = format!("-{}", self.pid());
        if self.is_running() {
            signal_group("-TERM", &group);
            let deadline = Instant::now() + STOP_GRACE;
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The group may outlive its leader (a ClientApp still running).
        signal_group("-KILL", &group);
        self.child.kill();
    }
}

/// Sends `signal` to process group `group` (`-<pgid>`) with `kill(1)`; the
/// workspace forbids the `unsafe` a direct `kill(2)` call would need.
fn signal_group(signal: &str, group: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", group])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for SuperNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// NIST curve of a SuperNode ECDSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// P-256 (`ecdsa-sha2-nistp256`).
    P256,
    /// P-384 (`ecdsa-sha2-nistp384`), what a SuperNode generates for itself.
    P384,
    /// P-521 (`ecdsa-sha2-nistp521`).
    P521,
}

impl Curve {
    fn bits(self) -> u32 {
        match self {
            Curve::P256 => 256,
            Curve::P384 => 384,
            Curve::P521 => 521,
        }
    }
}

/// A SuperNode key pair written by [`generate_node_key`].
#[derive(Debug, Clone)]
pub struct NodeKey {
    /// OpenSSH private key (`--auth-supernode-private-key`).
    pub private_key: PathBuf,
    /// OpenSSH public key (`ecdsa-sha2-nistpNNN AAAA...`, what
    /// `flwr supernode register` takes).
    pub public_key: PathBuf,
    /// The public key as PEM SubjectPublicKeyInfo: what the SuperNode sends
    /// base64-encoded in `flwr-public-key` and a SuperLink stores.
    pub public_key_pem: PathBuf,
}

/// Writes a fresh ECDSA key pair as `<dir>/<name>`, `<dir>/<name>.pub` and
/// `<dir>/<name>.pub.pem` (name: `node_key_<bits>` plus a counter if
/// taken). Uses `ssh-keygen` when present, else the venv's `cryptography`.
/// `None` only when neither is available and Python is not required.
pub fn generate_node_key(dir: &Path, curve: Curve) -> Option<NodeKey> {
    std::fs::create_dir_all(dir).expect("create key dir");
    let base = (0..)
        .map(|i| {
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("_{i}")
            };
            dir.join(format!("node_key_{}{suffix}", curve.bits()))
        })
        .find(|p| !p.exists())
        .expect("a free key name");
    let key = NodeKey {
        private_key: base.clone(),
        public_key: base.with_extension("pub"),
        public_key_pem: base.with_extension("pub.pem"),
    };
    if ssh_keygen(&key, curve) {
        return Some(key);
    }
    let python = crate::python::python()?;
    crate::python::run_python(
        &python,
        KEYGEN_SCRIPT,
        &[
            &curve.bits().to_string(),
            &key.private_key.to_string_lossy(),
            &key.public_key.to_string_lossy(),
            &key.public_key_pem.to_string_lossy(),
        ],
    );
    Some(key)
}

/// `ssh-keygen -t ecdsa`, then `-e -m PKCS8` for the PEM. False when
/// `ssh-keygen` is not installed.
fn ssh_keygen(key: &NodeKey, curve: Curve) -> bool {
    let generated = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ecdsa",
            "-b",
            &curve.bits().to_string(),
            "-N",
            "",
        ])
        .args(["-C", "flower-testkit"])
        .arg("-f")
        .arg(&key.private_key)
        .stdin(Stdio::null())
        .output();
    let Ok(out) = generated else {
        return false;
    };
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = Command::new("ssh-keygen")
        .args(["-e", "-m", "PKCS8", "-f"])
        .arg(&key.public_key)
        .output()
        .expect("ssh-keygen -e runs");
    assert!(
        pem.status.success(),
        "ssh-keygen -e failed: {}",
        String::from_utf8_lossy(&pem.stderr)
    );
    std::fs::write(&key.public_key_pem, pem.stdout).expect("write public PEM");
    true
}

/// Fallback key generator: `argv = bits, private, public, public_pem`.
const KEYGEN_SCRIPT: &str = r#"
import sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec
curve = {"256": ec.SECP256R1, "384": ec.SECP384R1, "521": ec.SECP521R1}[sys.argv[1]]()
key = ec.generate_private_key(curve)
open(sys.argv[2], "wb").write(key.private_bytes(
    s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
pub = key.public_key()
open(sys.argv[3], "wb").write(
    pub.public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH) + b" flower-testkit\n")
open(sys.argv[4], "wb").write(
    pub.public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// With nothing listening, a stock SuperNode keeps retrying (it must not
    /// exit), starts its SuperExec, and stopping it ends the whole group.
    #[test]
    fn supernode_retries_against_nothing_and_stops_cleanly() {
        // A free port that nobody listens on.
        let port = free_port();
        let Some(mut node) = SuperNode::builder(format!("127.0.0.1:{port}"))
            .insecure()
            .node_config("factor=2.0 examples=30")
            .start()
        else {
            return;
        };
        let bound = Duration::from_secs(30);
        assert!(
            node.wait_for_log("Connection attempt failed, retrying", bound),
            "no retry logged:\n{}",
            node.log()
        );
        assert!(
            node.wait_for_log("Starting Flower SuperExec", bound),
            "SuperExec not started:\n{}",
            node.log()
        );
        assert!(node.is_running(), "SuperNode exited:\n{}", node.log());
        let log = node.log();
        assert!(
            log.contains(&format!("127.0.0.1:{}", node.runtime_port())),
            "{log}"
        );
        let pid = node.pid();
        node.stop();
        assert!(!node.is_running());
        // No process of its group survives (SuperExec included); killed
        // orphans may take a moment to be reaped by init.
        let group_members = || {
            Command::new("pgrep")
                .args(["-g", &pid.to_string()])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !group_members().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(group_members(), "", "processes left in group {pid}");
        assert!(
            node.log().contains("terminated gracefully"),
            "{}",
            node.log()
        );
    }

    /// flwr refuses an explicit node key without TLS (exit code 303 in the
    /// log; the process itself exits with 1): the guard sees the exit.
    #[test]
    fn supernode_with_key_but_insecure_exits() {
        let dir = TempDir::new().expect("temp dir");
        let Some(key) = generate_node_key(dir.path(), Curve::P384) else {
            return;
        };
        let Some(mut node) = SuperNode::builder(format!("127.0.0.1:{}", free_port()))
            .insecure()
            .auth_private_key(&key.private_key)
            .start()
        else {
            return;
        };
        let code = node.wait_exit(Duration::from_secs(30));
        assert!(
            matches!(code, Some(c) if c != 0),
            "exit {code:?}:\n{}",
            node.log()
        );
        assert!(node.log().contains("Exit Code: 303"), "{}", node.log());
    }

    /// ssh-keygen (or the fallback) writes all three files for each curve.
    #[test]
    fn node_keys_are_valid_openssh_and_pem() {
        let dir = TempDir::new().expect("temp dir");
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let Some(key) = generate_node_key(dir.path(), curve) else {
                return;
            };
            let public = std::fs::read_to_string(&key.public_key).expect("public key");
            let expected = format!("ecdsa-sha2-nistp{} ", curve.bits());
            assert!(public.starts_with(&expected), "{public}");
            let pem = std::fs::read_to_string(&key.public_key_pem).expect("pem");
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
            let private = std::fs::read_to_string(&key.private_key).expect("private");
            assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        }
        // A second key of the same curve gets a new name.
        let a = generate_node_key(dir.path(), Curve::P384).expect("key");
        assert_ne!(a.private_key, dir.path().join("node_key_384"));
    }

    /// The Python fallback writes the same three formats, and they load with
    /// the functions `flower-supernode` uses (`load_ssh_private_key`).
    #[test]
    fn python_fallback_keys_load_in_flwr() {
        let Some(python) = crate::python::python() else {
            return;
        };
        let dir = TempDir::new().expect("temp dir");
        let paths = ["k", "k.pub", "k.pub.pem"].map(|n| dir.path().join(n));
        let args: Vec<String> = std::iter::once("384".to_owned())
            .chain(paths.iter().map(|p| p.to_string_lossy().into_owned()))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_python_ok(&python, KEYGEN_SCRIPT, &args);
        let check = r#"
import sys
from cryptography.hazmat.primitives import serialization as s
key = s.load_ssh_private_key(open(sys.argv[1], "rb").read(), None)
pub = s.load_ssh_public_key(open(sys.argv[2], "rb").read())
pem = s.load_pem_public_key(open(sys.argv[3], "rb").read())
assert key.public_key() == pub == pem
print(key.curve.name)
"#;
        let out = crate::python::run_python(&python, check, &args[1..]);
        assert_eq!(String::from_utf8_lossy(&out).trim(), "secp384r1");
    }

    fn run_python_ok(python: &Path, script: &str, args: &[&str]) {
        crate::python::run_python(python, script, args);
    }

    #[test]
    fn builder_maps_options_to_flags() {
        let args = SuperNode::builder("h:1")
            .root_certificates("/ca.pem")
            .auth_private_key("/k")
            .node_config("a=1")
            .isolation_process()
            .arg("--max-retries")
            .arg("3")
            .args(9);
        let args: Vec<_> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--superlink",
                "h:1",
                "--root-certificates",
                "/ca.pem",
                "--auth-supernode-private-key",
                "/k",
                "--node-config",
                "a=1",
                "--isolation",
                "process",
                "--port",
                "9",
                "--max-retries",
                "3"
            ]
        );
    }
}
