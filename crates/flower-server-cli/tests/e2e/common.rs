//! Helpers for the server's end-to-end tests: the `flower-server` binary,
//! stock Python Flower clients from the pinned venv, and dev certificates.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub(crate) use flower_testkit::{python, ChildGuard, DevCertificates};

/// A running `flower-server` process.
pub(crate) struct Server {
    pub(crate) child: ChildGuard,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
    pub(crate) out: PathBuf,
}

impl Server {
    /// Starts the binary with `args` plus `--address 127.0.0.1:0` and waits
    /// (bounded) for its `listening` line.
    pub(crate) fn start(args: &[String], workdir: &Path) -> Server {
        Self::start_at(args, workdir, "127.0.0.1:0")
    }

    pub(crate) fn start_at(args: &[String], workdir: &Path, address: &str) -> Server {
        let log = workdir.join(format!("server-{}.log", unique()));
        let out = workdir.join(format!("server-{}.out", unique()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_flower-server"))
            .args(args)
            .args(["--address", address])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start flower-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let out_path = out.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(out_path).unwrap();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
                if let Some(addr) = line.strip_prefix("flower-server listening on ") {
                    let _ = tx.send(addr.rsplit(':').next().unwrap().parse::<u16>().unwrap());
                }
            }
        });
        let mut guard = ChildGuard(child);
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => port,
            Err(_) => {
                let _ = guard.0.kill();
                panic!(
                    "server did not listen; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Server {
            child: guard,
            port,
            log,
            out,
        }
    }

    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until `needle` appears `count` times in the log.
    pub(crate) fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.log_text().matches(needle).count() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{needle:?} x{count} not logged in {timeout:?}; log:\n{}",
            self.log_text()
        );
    }

    /// Waits for exit (bounded); panics with the log on timeout.
    pub(crate) fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match self.child.wait_timeout(timeout) {
            Some(status) => status,
            None => panic!(
                "server did not exit in {timeout:?}; log:\n{}",
                self.log_text()
            ),
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The Python scripts directory (`python/` at the workspace root).
pub(crate) fn scripts() -> PathBuf {
    flower_testkit::workspace_root().join("python")
}

/// Starts one stock Flower client (`python/flower_test_client.py`).
pub(crate) fn python_client(
    py: &Path,
    address: &str,
    ca: Option<&Path>,
    partition: usize,
    extra: &[&str],
    log: &Path,
) -> ChildGuard {
    let mut cmd = Command::new(py);
    cmd.arg(scripts().join("flower_test_client.py"))
        .args(["--address", address, "--partition", &partition.to_string()])
        .args(extra)
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    match ca {
        Some(ca) => cmd.arg("--ca").arg(ca),
        None => cmd.arg("--insecure"),
    };
    ChildGuard(cmd.spawn().expect("start python client"))
}

/// Writes the test client's initial parameters as `init.npz` with numpy.
pub(crate) fn write_initial_npz(py: &Path, path: &Path) {
    let script = format!(
        "import sys; sys.path.insert(0, {scripts:?}); import numpy as np; from flower_test_client import initial_parameters; np.savez(sys.argv[1], *initial_parameters())",
        scripts = scripts().display().to_string()
    );
    flower_testkit::run_python(py, &script, &[path.to_str().unwrap()]);
}

/// Reads the JSON history the server wrote.
pub(crate) fn history(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("history.json")).expect("history.json"))
        .unwrap()
}

/// Reads the model the server wrote as flat f64 vectors per layer.
pub(crate) fn model(dir: &Path) -> Vec<Vec<f64>> {
    let arrays = flower_core::npz::read_npz(&dir.join("model.npz")).expect("model.npz");
    arrays.into_iter().map(|(_, a)| flat(&a)).collect()
}

pub(crate) fn flat(a: &flower_core::NdArray) -> Vec<f64> {
    match a {
        flower_core::NdArray::F32(a) => a.iter().map(|v| *v as f64).collect(),
        flower_core::NdArray::F64(a) => a.iter().copied().collect(),
        other => panic!("unexpected dtype {:?}", other.dtype()),
    }
}

pub(crate) fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], rel: f64) {
    assert_eq!(got.len(), want.len(), "layer count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "layer size");
        for (a, b) in g.iter().zip(w) {
            assert!(
                (a - b).abs() <= 1e-9 + rel * b.abs(),
                "got {a}, want {b} (layers {got:?} vs {want:?})"
            );
        }
    }
}

/// Common server arguments: TLS with `certs`, output dir, initial model, N clients.
pub(crate) fn server_args(
    certs: &DevCertificates,
    out: &Path,
    init: &Path,
    rounds: u64,
    clients: usize,
) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--ssl-ca-certfile".into(),
        certs.ca().display().to_string(),
        "--ssl-certfile".into(),
        certs.cert().display().to_string(),
        "--ssl-keyfile".into(),
        certs.key().display().to_string(),
        "--output-dir".into(),
        out.display().to_string(),
        "--initial-parameters".into(),
        init.display().to_string(),
        "--rounds".into(),
        rounds.to_string(),
        "--client-wait-timeout".into(),
        "60".into(),
    ];
    for flag in [
        "--min-fit-clients",
        "--min-evaluate-clients",
        "--min-available-clients",
    ] {
        v.push(flag.into());
        v.push(clients.to_string());
    }
    v
}

/// Asserts (bounded) that every client exits with status 0.
pub(crate) fn assert_clients_succeed<'a>(clients: impl IntoIterator<Item = &'a mut ChildGuard>) {
    for (i, c) in clients.into_iter().enumerate() {
        let status = c
            .wait_timeout(Duration::from_secs(30))
            .expect("client exits");
        assert!(status.success(), "client {i} exited with {status}");
    }
}

/// Starts `n` stock Python clients (partitions 0..n) against `server` over TLS.
pub(crate) fn python_clients(
    py: &Path,
    server: &Server,
    ca: &Path,
    n: usize,
    dir: &Path,
) -> Vec<ChildGuard> {
    (0..n)
        .map(|i| {
            python_client(
                py,
                &server.address(),
                Some(ca),
                i,
                &[],
                &dir.join(format!("c{i}.log")),
            )
        })
        .collect()
}
