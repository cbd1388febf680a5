//! `flower-bench`: the load harness of flower-rs.
//!
//! * `compare`: one workload (K Rust clients in one separate process, P
//!   float32 parameters in 4 layers, R rounds, TLS + bearer token) against
//!   `flower-server` and against the stock Python Flower 1.42 server
//!   (`python/flower_reference_server.py`), in one run. Per server: round
//!   wall times (from the servers' own round lines), server CPU seconds
//!   (`/proc/<pid>/stat`), peak RSS (`VmHWM`), bytes on the wire (a
//!   byte-counting TCP relay), plus the machine's single-core AES-GCM
//!   throughput as a yardstick.
//! * `scale`: 10,000 concurrently connected clients with a tiny model
//!   against `flower-server`; server peak RSS and round time.
//! * `fleet`: one Flower app bundle and N stock `flower-supernode` processes
//!   against the stock `flower-superlink` 1.42 (its ServerApp running the
//!   stock FedAvg) and against `flower-server`'s Fleet API; per server the
//!   whole process tree's CPU and peak RSS, round times, wire bytes.
//! * `node`: N Rust SuperNodes (`bench-supernode`) and N stock Python
//!   SuperNodes in one `flower-server` run (message-API FedAvg, the same
//!   FAB, the same replies); per node tree CPU per round, peak RSS, wire
//!   bytes, and a check of the final model.
//! * `clients`: the client process `compare` and `scale` spawn.
//! * `aes`: only the AES-GCM baseline.
//!
//! See `crates/flower-bench/README.md` for the commands.

#![forbid(unsafe_code)]

mod aes;
mod clients;
mod compare;
mod fleet;
mod node;
mod process;
mod procstat;
mod proctree;
mod relay;
mod report;
mod run;
mod scale;
mod servers;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use rand::Rng as _;

/// Load harness of flower-rs: flower-server against the stock Python
/// Flower server, and a many-clients scale run.
#[derive(Debug, Parser)]
#[command(name = "flower-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Same workload and clients against flower-server and the stock Python
    /// server: round times, CPU, peak RSS, wire bytes, ratios.
    Compare(compare::CompareArgs),
    /// Many concurrently connected clients (tiny model) against
    /// flower-server: peak RSS and round time.
    Scale(scale::ScaleArgs),
    /// One FAB and N stock SuperNodes against the stock flower-superlink
    /// (Python ServerApp, FedAvg) and against flower-server's Fleet API:
    /// round times, server-tree CPU, peak RSS, wire bytes, ratios.
    Fleet(fleet::FleetArgs),
    /// N Rust SuperNodes and N stock Python SuperNodes in one flower-server
    /// run (same rounds, same model, same replies): per node tree CPU per
    /// round, peak RSS, wire bytes, ratios rust / stock.
    Node(node::NodeArgs),
    /// Runs K Rust clients in this process (spawned by compare/scale).
    Clients(clients::ClientsArgs),
    /// Single-core AES-GCM sealing throughput only.
    Aes {
        /// Seconds per algorithm.
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
    },
}

/// Where the workspace, the server binary and Python are.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EnvArgs {
    /// The flower-server binary [default: target/release/flower-server next
    /// to this binary, or $FLOWER_SERVER_BIN].
    #[arg(long)]
    pub(crate) server_bin: Option<PathBuf>,
    /// Python of the pinned venv (default: `$FLOWER_PYTHON`, or
    /// `<root>/.venv/bin/python`).
    #[arg(long)]
    pub(crate) python: Option<PathBuf>,
    /// Workspace root (holds python/ and .venv/) [default: $FLOWER_RS_ROOT,
    /// or the checkout this binary was built from].
    #[arg(long)]
    pub(crate) root: Option<PathBuf>,
}

/// Resolved [`EnvArgs`].
#[derive(Debug, Clone)]
pub(crate) struct Env {
    /// Workspace root.
    pub(crate) root: PathBuf,
    /// Python interpreter, when found.
    pub(crate) python: Option<PathBuf>,
    server_bin: Option<PathBuf>,
}

impl Env {
    /// Applies the defaults.
    pub(crate) fn resolve(args: &EnvArgs) -> anyhow::Result<Env> {
        let root = args
            .root
            .clone()
            .or_else(|| std::env::var_os("FLOWER_RS_ROOT").map(PathBuf::from))
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
        let root = root
            .canonicalize()
            .with_context(|| format!("workspace root {}", root.display()))?;
        let python = args
            .python
            .clone()
            .or_else(|| std::env::var_os("FLOWER_PYTHON").map(PathBuf::from))
            .unwrap_or_else(|| root.join(".venv/bin/python"));
        Ok(Env {
            python: python.exists().then_some(python),
            server_bin: args
                .server_bin
                .clone()
                .or_else(|| std::env::var_os("FLOWER_SERVER_BIN").map(PathBuf::from)),
            root,
        })
    }

    /// The release `flower-server` binary.
    pub(crate) fn server_bin(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.server_bin {
            if p.is_file() {
                return Ok(p.clone());
            }
            bail!("server binary {} not found", p.display());
        }
        let mut candidates = Vec::new();
        if let Some(dir) = std::env::current_exe()?.parent() {
            if dir.file_name().is_some_and(|n| n == "release") {
                candidates.push(dir.join("flower-server"));
            }
            candidates.push(dir.join("../release/flower-server"));
        }
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            candidates.push(PathBuf::from(t).join("release/flower-server"));
        }
        candidates.push(self.root.join("target/release/flower-server"));
        for c in &candidates {
            if c.is_file() {
                return Ok(c.canonicalize().unwrap_or_else(|_| c.clone()));
            }
        }
        bail!(
            "no release flower-server binary found (looked at {candidates:?}); \
             build it with `cargo build --release -p flower-server` or pass --server-bin"
        )
    }
}

/// A random 32-hex-digit bearer token.
pub(crate) fn random_token() -> String {
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// The given working directory (created), or a temporary one (kept alive by
/// the returned guard).
pub(crate) fn work_dir(
    given: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            Ok((d.canonicalize()?, None))
        }
        None => {
            let t = tempfile::Builder::new().prefix("flower-bench-").tempdir()?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: stop every child (servers, clients) this
/// harness started, by PID, then exit 130.
fn stop_children_on_signal() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            eprintln!("flower-bench: signal received; stopping the servers and clients it started");
            process::kill_all_children();
            std::process::exit(130);
        });
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Clients(_)) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
            )
            .with_writer(std::io::stderr)
            .try_init();
    }
    if !matches!(cli.command, Cmd::Clients(_) | Cmd::Aes { .. }) {
        stop_children_on_signal();
    }
    let result = match cli.command {
        Cmd::Compare(a) => compare::run(a),
        Cmd::Scale(a) => scale::run(a),
        Cmd::Fleet(a) => fleet::run(a),
        Cmd::Node(a) => node::run(a),
        Cmd::Clients(a) => clients::run(a),
        Cmd::Aes { secs } => {
            for aes256 in [true, false] {
                let r = aes::measure(aes256, Duration::from_secs_f64(secs));
                println!(
                    "{}: {:.3} GB/s ({} bytes in {:.3} s, one core, 16 KiB records)",
                    r.algorithm,
                    r.bytes_per_s / 1e9,
                    r.bytes,
                    r.seconds
                );
            }
            Ok(0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("flower-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
