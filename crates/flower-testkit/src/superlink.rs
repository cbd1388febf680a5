//! The venv's stock `flower-superlink` 1.42 as a child process, and runs
//! submitted to it with the stock `flwr run` (Control API, the app's
//! directory built into a FAB by the CLI).
//!
//! The SuperLink serves its Fleet, Control and Runtime APIs on one free
//! port, with `--disable-runtime-dependency-installation` (no `uv sync`, no
//! network), plain HTTP or TLS with [`DevCertificates`], optionally
//! `--enable-supernode-auth`. Its `FLWR_HOME` holds a `config.toml` with a
//! `[superlink.test]` entry for that address, so [`SuperLink::run`] and
//! [`SuperLink::register_supernode`] work offline.
//!
//! ```no_run
//! use flower_testkit::superlink::SuperLink;
//! # fn demo() {
//! let Some(link) = SuperLink::builder().start() else { return };
//! let Some(run) = link.run(&flower_testkit::flwr::app_dir("modern"), "lr=0.5") else { return };
//! let output = run.wait(std::time::Duration::from_secs(120));
//! assert!(output.contains("final w:"));
//! # }
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::flwr::flwr_env;
use crate::net::{free_port, wait_for_port};
use crate::process::ChildGuard;
use crate::python::{venv_bin, venv_tool};
use crate::tls::DevCertificates;

/// Bound on the SuperLink's start-up (its port listening).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for [`SuperLink`]; see [`SuperLink::builder`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SuperLinkBuilder {
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    supernode_auth: bool,
    port: Option<u16>,
    envs: Vec<(String, String)>,
}

impl SuperLinkBuilder {
    /// HTTPS with these certificates (`--ssl-ca-certfile`,
    /// `--ssl-certfile`, `--ssl-keyfile`); default: `--insecure`.
    pub fn tls(mut self, certs: &DevCertificates) -> Self {
        self.tls = Some((certs.ca(), certs.cert(), certs.key()));
        self
    }

    /// `--enable-supernode-auth`: only keys registered with
    /// [`SuperLink::register_supernode`] may join.
    pub fn enable_supernode_auth(mut self) -> Self {
        self.supernode_auth = true;
        self
    }

    /// Sets an environment variable of the SuperLink (and so of the
    /// ServerApp processes it starts), e.g. `FLOWER_RS_EXTRA_ELEMENTS`.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Listen on `port` instead of a free one (to restart on the same
    /// address).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Starts the SuperLink and waits (at most [`START_TIMEOUT`]) for its
    /// port. `None` when the venv is absent and not required.
    pub fn start(self) -> Option<SuperLink> {
        let program = venv_tool("flower-superlink")?;
        let bin = venv_bin()?;
        let dir = TempDir::new().expect("temp dir");
        let home = dir.path().join("flwr-home");
        std::fs::create_dir_all(&home).expect("create FLWR_HOME");
        let port = self.port.unwrap_or_else(free_port);
        let address = format!("127.0.0.1:{port}");
        let mut config = format!("[superlink.test]\naddress = \"{address}\"\n");
        match &self.tls {
            Some((ca, _, _)) => {
                config.push_str(&format!("root-certificates = \"{}\"\n", ca.display()))
            }
            None => config.push_str("insecure = true\n"),
        }
        std::fs::write(home.join("config.toml"), config).expect("write config.toml");
        let log_path = dir.path().join("superlink.log");
        let log = File::create(&log_path).expect("create SuperLink log");
        let mut cmd = Command::new(program);
        cmd.args([
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
        ])
        .args(["--port", &port.to_string()]);
        match &self.tls {
            Some((ca, cert, key)) => {
                cmd.arg("--ssl-ca-certfile")
                    .arg(ca)
                    .arg("--ssl-certfile")
                    .arg(cert)
                    .arg("--ssl-keyfile")
                    .arg(key);
            }
            None => {
                cmd.arg("--insecure");
            }
        }
        if self.supernode_auth {
            cmd.arg("--enable-supernode-auth");
        }
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        flwr_env(&mut cmd, &bin, &home);
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        // Its own process group: stopping it also stops the ServerApp
        // processes it starts.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = ChildGuard(cmd.spawn().expect("spawn flower-superlink"));
        let link = SuperLink {
            child,
            port,
            log_path,
            home,
            tls: self.tls.is_some(),
            _dir: dir,
        };
        assert!(
            wait_for_port(port, START_TIMEOUT),
            "flower-superlink did not listen on {address}:\n{}",
            link.log()
        );
        Some(link)
    }
}

/// A running stock `flower-superlink`, stopped (with its process group)
/// when dropped.
#[derive(Debug)]
pub struct SuperLink {
    child: ChildGuard,
    port: u16,
    log_path: PathBuf,
    home: PathBuf,
    tls: bool,
    _dir: TempDir,
}

impl SuperLink {
    /// Options for a SuperLink: insecure, no SuperNode auth, a free port.
    pub fn builder() -> SuperLinkBuilder {
        SuperLinkBuilder::default()
    }

    /// `127.0.0.1:<port>`: the address SuperNodes and `flwr` use.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True when started with TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `count` times, at most
    /// `timeout`.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < count {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    fn flwr(&self) -> Option<Command> {
        let flwr = venv_tool("flwr")?;
        let bin = venv_bin()?;
        let mut cmd = Command::new(flwr);
        flwr_env(&mut cmd, &bin, &self.home);
        Some(cmd)
    }

    /// `flwr supernode register <public_key> test`: pre-registers an
    /// OpenSSH public key (for `--enable-supernode-auth`). Panics if the CLI
    /// fails.
    pub fn register_supernode(&self, public_key: &Path) -> Option<()> {
        let mut cmd = self.flwr()?;
        let out = cmd
            .args(["supernode", "register"])
            .arg(public_key)
            .arg("test")
            .stdin(Stdio::null())
            .output()
            .expect("flwr supernode register runs");
        assert!(
            out.status.success(),
            "flwr supernode register failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(())
    }

    /// Submits the app in `app_dir` with `flwr run <copy> test --stream`
    /// (plus `--run-config <run_config>` unless empty); the returned
    /// [`FlwrRun`] collects the streamed logs, which include the ServerApp's
    /// output. The app is copied first, so the source tree is never written.
    pub fn run(&self, app_dir: &Path, run_config: &str) -> Option<FlwrRun> {
        let mut cmd = self.flwr()?;
        let dir = TempDir::new().expect("temp dir");
        let name = app_dir.file_name().expect("app dir name");
        let copy = dir.path().join(name);
        copy_tree(app_dir, &copy);
        let log_path = dir.path().join("flwr-run.log");
        let log = File::create(&log_path).expect("create run log");
        cmd.arg("run").arg(&copy).arg("test").arg("--stream");
        if !run_config.is_empty() {
            cmd.args(["--run-config", run_config]);
        }
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = ChildGuard(cmd.spawn().expect("spawn flwr run"));
        Some(FlwrRun {
            child,
            log_path,
            _dir: dir,
        })
    }

    /// Kills the SuperLink's process group at once (SIGKILL: a crash).
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.0.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.child.kill();
    }
}

impl Drop for SuperLink {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `flwr run --stream` in progress; killed when dropped.
#[derive(Debug)]
pub struct FlwrRun {
    child: ChildGuard,
    log_path: PathBuf,
    _dir: TempDir,
}

impl FlwrRun {
    /// The output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (at most `timeout`) for `flwr run` to exit and returns its
    /// output. Panics on a timeout or a failed exit, with the output.
    pub fn wait(mut self, timeout: Duration) -> String {
        let status = self.child.wait_timeout(timeout);
        let output = self.output();
        match status {
            Some(s) if s.success() => output,
            Some(s) => panic!("flwr run failed ({s}):\n{output}"),
            None => panic!("flwr run did not finish within {timeout:?}:\n{output}"),
        }
    }
}

/// Parses the modern app's `final <name>: <values>` lines (Python lists,
/// possibly nested) into flat f64 vectors, in order.
pub fn final_arrays(output: &str) -> Vec<(String, Vec<f64>)> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("final ")?;
            let (name, values) = rest.split_once(": ")?;
            let flat: Vec<f64> = values
                .split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().expect("a number"))
                .collect();
            Some((name.to_owned(), flat))
        })
        .collect()
}

/// Copies a directory tree, leaving out `__pycache__`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        if entry.file_name() == "__pycache__" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::final_arrays;

    #[test]
    fn final_lines_parse() {
        let out = "INFO x\nfinal w: [[1.5, 2.5], [3.0, -4e-1]]\nfinal b: [2.0, 1.0]\n";
        assert_eq!(
            final_arrays(out),
            [
                ("w".to_owned(), vec![1.5, 2.5, 3.0, -0.4]),
                ("b".to_owned(), vec![2.0, 1.0])
            ]
        );
    }
}
