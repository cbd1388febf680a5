//! One measured run: a started server, the relay, the client processes,
//! and what was observed until the server exited.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::clients::{ClientsSummary, SUMMARY_PREFIX, TOKEN_ENV};
use crate::process::{with_nofile, LineHandler, Monitored, Observed, Stream};
use crate::procstat::{self, ProcSample};
use crate::relay::Relay;
use crate::servers::{CertDir, ServerEvents, ServerProcess};

/// Which clients join, and how.
#[derive(Debug, Clone)]
pub(crate) struct ClientsPlan {
    /// Rust clients, all in one `flower-bench clients` process.
    pub(crate) rust_clients: usize,
    /// Stock Python Flower clients (`python/flower_test_client.py`), one
    /// process each.
    pub(crate) python_clients: usize,
    /// Model size.
    pub(crate) params: usize,
    /// TLS material (`None`: plaintext).
    pub(crate) tls: Option<CertDir>,
    /// Bearer token sent by every client.
    pub(crate) token: Option<String>,
    /// Rust clients started per second (0: all at once).
    pub(crate) ramp_per_sec: u64,
    /// Connection retries per Rust client.
    pub(crate) max_retries: u32,
    /// File-descriptor limit of the clients process.
    pub(crate) nofile: u64,
    /// Tokio worker threads of the clients process.
    pub(crate) threads: usize,
    /// Route the clients through the byte-counting relay.
    pub(crate) relay: bool,
    /// Python interpreter (for Python clients).
    pub(crate) python: Option<PathBuf>,
    /// Workspace root (for `python/flower_test_client.py`).
    pub(crate) root: PathBuf,
    /// Where client logs go.
    pub(crate) work_dir: PathBuf,
}

/// What one run observed.
#[derive(Debug)]
pub(crate) struct RunOutcome {
    /// The server's `/proc` sample once it was ready (startup cost).
    pub(crate) ready: ProcSample,
    /// The server's parsed output.
    pub(crate) events: ServerEvents,
    /// What the server's poller saw (peak RSS over its whole life).
    pub(crate) server: Observed,
    /// Final CPU seconds of the server (from the zombie's `/proc` entry).
    pub(crate) server_cpu_s: f64,
    /// Final user / sys CPU seconds of the server.
    pub(crate) server_user_sys_s: (f64, f64),
    /// Exit status of the server.
    pub(crate) exit_status: Option<String>,
    /// True if the server had to be stopped at the timeout.
    pub(crate) timed_out: bool,
    /// Relay byte counts `(to_server, to_clients, connections)`.
    pub(crate) wire: Option<(u64, u64, u64)>,
    /// The Rust clients' own summary.
    pub(crate) clients: Option<ClientsSummary>,
    /// What the Rust clients' process used.
    pub(crate) clients_observed: Option<Observed>,
    /// CPU seconds of the Rust clients' process.
    pub(crate) clients_cpu_s: f64,
    /// Python client processes that exited 0 / otherwise.
    pub(crate) python_clients_ok: usize,
    /// Python client processes that failed.
    pub(crate) python_clients_failed: usize,
    /// Seconds from starting the clients to the server's exit.
    pub(crate) wall_s: f64,
    /// Seconds from server spawn to starting the clients.
    pub(crate) clients_started_at_s: f64,
    /// The server's command line (token hidden).
    pub(crate) command_line: String,
    /// The server's log file.
    pub(crate) log: PathBuf,
}

/// Starts the clients against `server` (already spawned), waits for the
/// server to finish (at most `timeout` after the clients started), then for
/// the clients, and gathers the observations.
pub(crate) fn run(
    mut server: ServerProcess,
    plan: &ClientsPlan,
    timeout: Duration,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<RunOutcome> {
    let label = server.flavor.key();
    let addr = server.wait_ready(Duration::from_secs(180))?;
    let ready = procstat::sample(server.process.pid).unwrap_or_default();
    eprintln!(
        "[{label}] ready on {addr} after {:.1} s (startup CPU {:.2} s)",
        server.process.spawned.elapsed().as_secs_f64(),
        ready.cpu_s()
    );
    let relay = if plan.relay {
        let r = runtime
            .block_on(Relay::start(addr))
            .context("starting the relay")?;
        let _ = server.relay.set(r.counters.clone());
        Some(r)
    } else {
        None
    };
    let dial = relay.as_ref().map_or(addr, |r| r.address).to_string();

    let clients_started = Instant::now();
    let clients_started_at_s = server.process.spawned.elapsed().as_secs_f64();
    let summary: Arc<Mutex<Option<ClientsSummary>>> = Arc::new(Mutex::new(None));
    let mut rust_clients = if plan.rust_clients > 0 {
        Some(spawn_rust_clients(plan, &dial, timeout, summary.clone())?)
    } else {
        None
    };
    let mut python_clients = Vec::new();
    for i in 0..plan.python_clients {
        python_clients.push(spawn_python_client(plan, &dial, i)?);
    }
    eprintln!(
        "[{label}] {} Rust + {} Python clients started against {dial}",
        plan.rust_clients, plan.python_clients
    );

    // Progress while waiting: one line per completed round.
    let deadline = clients_started + timeout;
    let mut reported = 0;
    let mut timed_out = false;
    let mut clients_gone_at: Option<Instant> = None;
    loop {
        reported = report_rounds(label, &server, reported);
        if server.process.wait_exit(Duration::from_millis(250)) {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("[{label}] server still running after {timeout:?}: stopping it");
            timed_out = true;
            server.process.terminate(Duration::from_secs(10));
            break;
        }
        // A server that outlives all its clients by a minute is stuck.
        let all_gone = rust_clients.as_ref().is_none_or(Monitored::has_exited)
            && python_clients.iter().all(Monitored::has_exited);
        match (all_gone, clients_gone_at) {
            (true, None) => clients_gone_at = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() > CLIENTS_GONE_GRACE => {
                eprintln!(
                    "[{label}] every client ended {CLIENTS_GONE_GRACE:?} ago but the server is still running: stopping it"
                );
                timed_out = true;
                server.process.terminate(Duration::from_secs(10));
                break;
            }
            _ => {}
        }
    }
    report_rounds(label, &server, reported);
    let wall_s = clients_started.elapsed().as_secs_f64();
    let server_observed = server.process.observed();
    let final_sample = server_observed.final_sample.unwrap_or(server_observed.last);

    // The clients end once the server said goodbye (or went away).
    let mut clients_observed = None;
    let mut clients_cpu_s = 0.0;
    if let Some(c) = rust_clients.as_mut() {
        if !c.wait_exit(Duration::from_secs(60)) {
            eprintln!("[{label}] Rust clients still running 60 s after the server: stopping them");
            c.terminate(Duration::from_secs(5));
        }
        clients_observed = Some(c.observed());
        clients_cpu_s = c.cpu_s();
    }
    let (mut py_ok, mut py_failed) = (0, 0);
    for p in &mut python_clients {
        if !p.wait_exit(Duration::from_secs(30)) {
            p.terminate(Duration::from_secs(5));
        }
        if p.status().is_some_and(|s| s.success()) {
            py_ok += 1;
        } else {
            py_failed += 1;
        }
    }
    let wire = relay.as_ref().map(|r| {
        let (a, b) = r.counters.bytes();
        (
            a,
            b,
            r.counters
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    });
    drop(relay);
    let clients = summary.lock().expect("summary").take();
    Ok(RunOutcome {
        ready,
        events: server.events(),
        server: server_observed,
        server_cpu_s: final_sample.cpu_s(),
        server_user_sys_s: (final_sample.user_s, final_sample.sys_s),
        exit_status: server.process.status().map(|s| s.to_string()),
        timed_out,
        wire,
        clients,
        clients_observed,
        clients_cpu_s,
        python_clients_ok: py_ok,
        python_clients_failed: py_failed,
        wall_s,
        clients_started_at_s,
        command_line: server.command_line.clone(),
        log: server.log.clone(),
    })
}

/// How long a server may run on after every client ended.
const CLIENTS_GONE_GRACE: Duration = Duration::from_secs(60);

/// Prints the rounds completed since `reported`; returns the new count.
fn report_rounds(label: &str, server: &ServerProcess, reported: usize) -> usize {
    let events = server.events();
    for r in &events.rounds[reported.min(events.rounds.len())..] {
        eprintln!(
            "[{label}] round {} complete: fit {:.3} s, evaluate {:.3} s, server CPU so far {:.2} s, VmHWM {:.0} MiB",
            r.round,
            r.fit_s.unwrap_or(f64::NAN),
            r.evaluate_s.unwrap_or(f64::NAN),
            r.cpu_s,
            r.hwm_kib as f64 / 1024.0
        );
    }
    events.rounds.len()
}

fn spawn_rust_clients(
    plan: &ClientsPlan,
    dial: &str,
    timeout: Duration,
    summary: Arc<Mutex<Option<ClientsSummary>>>,
) -> anyhow::Result<Monitored> {
    let exe = std::env::current_exe().context("locating the flower-bench binary")?;
    let mut args: Vec<OsString> = vec![
        "clients".into(),
        "--address".into(),
        dial.into(),
        "--count".into(),
        plan.rust_clients.to_string().into(),
        "--params".into(),
        plan.params.to_string().into(),
        "--ramp-per-sec".into(),
        plan.ramp_per_sec.to_string().into(),
        "--threads".into(),
        plan.threads.to_string().into(),
        "--max-retries".into(),
        plan.max_retries.to_string().into(),
        "--timeout-secs".into(),
        (timeout.as_secs_f64() + 30.0).to_string().into(),
    ];
    match &plan.tls {
        Some(c) => {
            args.push("--ca".into());
            args.push(c.ca().into());
        }
        None => args.push("--allow-insecure-auth".into()),
    }
    let mut command = with_nofile(plan.nofile, &exe, &args);
    if let Some(t) = &plan.token {
        command.env(TOKEN_ENV, t);
    }
    command.env(
        "RUST_LOG",
        std::env::var("FLOWER_BENCH_CLIENT_LOG").unwrap_or_else(|_| "error".into()),
    );
    let log = plan.work_dir.join("rust-clients.log");
    Monitored::spawn("Rust clients", command, &log, move |_, _| {
        Arc::new(move |stream, line: &str| {
            if stream == Stream::Stdout {
                if let Some(json) = line.strip_prefix(SUMMARY_PREFIX) {
                    if let Ok(s) = serde_json::from_str(json) {
                        *summary.lock().expect("summary") = Some(s);
                    }
                }
            }
        }) as LineHandler
    })
}

fn spawn_python_client(plan: &ClientsPlan, dial: &str, index: usize) -> anyhow::Result<Monitored> {
    let python = plan
        .python
        .as_ref()
        .context("Python clients need the pinned venv (FLOWER_PYTHON or .venv)")?;
    let mut command = std::process::Command::new(python);
    command
        .arg(plan.root.join("python/flower_test_client.py"))
        .arg("--address")
        .arg(dial)
        .arg("--partition")
        .arg(index.to_string())
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .env("FLOWER_TEST_PARAMS", plan.params.to_string());
    match &plan.tls {
        Some(c) => {
            command.arg("--ca").arg(c.ca());
        }
        None => {
            command.arg("--insecure");
        }
    }
    if let Some(t) = &plan.token {
        command.arg("--token").arg(t);
    }
    let log = plan.work_dir.join(format!("python-client-{index}.log"));
    Monitored::spawn(&format!("python client {index}"), command, &log, |_, _| {
        Arc::new(|_, _: &str| {}) as LineHandler
    })
}
