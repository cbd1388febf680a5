//! `flower-bench fleet`: one Flower app bundle (FAB) and N stock
//! `flower-supernode` processes, against the stock `flower-superlink` 1.42
//! (its ServerApp runs the stock message-API FedAvg) and against
//! `flower-server` with its Fleet API, in one run.
//!
//! Per server, in turn: start it, put the byte-counting relay in front of
//! its Fleet port, start N SuperNodes dialing the relay, wait for the run to
//! end, stop the nodes, stop the server. The server's cost is that of its
//! whole process tree (see [`crate::proctree`]).

mod events;
mod report;

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::process::{LineHandler, Monitored};
use crate::proctree::{TreeId, Watcher};
use crate::relay::Relay;
use crate::servers::{free_port, server_has_flag, tail};
use crate::{Env, EnvArgs};

pub(crate) use events::{
    parse_flower_rs, parse_stock, round_deltas, Marker, Reading, Recorder, Seen,
};
pub(crate) use report::{markdown_table, mib, PeakRss};
use report::{FleetResult, NodeSummary, Outcome, RepeatedResult, Workload};

/// Settings of `fleet`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FleetArgs {
    /// Stock SuperNodes (N), one `flower-supernode` process each.
    #[arg(long, default_value_t = 4)]
    pub(crate) nodes: usize,
    /// Model size P in float32 parameters (4 arrays: P/2, P/4, P/8, rest).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) params: usize,
    /// Rounds R (each: train on every node, then evaluate on every node).
    #[arg(long, default_value_t = 2)]
    pub(crate) rounds: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Run only one server: `stock` (flower-superlink) or `flower-rs`.
    #[arg(long, value_parser = ["stock", "flower-rs"])]
    pub(crate) only: Option<String>,
    /// Per-server time limit in seconds, from the server's start.
    #[arg(long, default_value_t = 1800.0)]
    pub(crate) timeout_secs: f64,
    /// The Flower app to bundle [default: ROOT/python/bench].
    #[arg(long)]
    pub(crate) app: Option<PathBuf>,
    /// Where to keep the logs, the FAB and the nodes' FLWR_HOMEs (default: a
    /// temporary directory, removed at the end).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// Give every node the same update (`index=0`), so the nodes' replies
    /// are identical and the servers may deduplicate their objects (by
    /// default node i adds 1 + i, and every reply differs).
    #[arg(long)]
    pub(crate) identical_replies: bool,
    /// Run the whole comparison this many times (stock, then flower-rs, each
    /// time, in `<work>/run-K/`) and judge the targets on the median of the
    /// per-repetition ratios.
    #[arg(long, default_value_t = 1)]
    pub(crate) repeat: usize,
    /// Extra argument for flower-server (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub(crate) server_args: Vec<String>,
    #[command(flatten)]
    pub(crate) env: EnvArgs,
}

/// How long a server may take to accept connections, and the nodes to join.
const STARTUP: Duration = Duration::from_secs(180);
/// How long a server may run on after the run ended or every node ended.
const GRACE: Duration = Duration::from_secs(60);

/// What both servers share.
struct Ctx {
    args: FleetArgs,
    env: Env,
    /// The venv's `bin/` (flower-superlink, flower-supernode, flwr).
    venv_bin: PathBuf,
    app: PathBuf,
    work_dir: PathBuf,
    initial_npz: PathBuf,
    fab: PathBuf,
    fab_sha256: String,
    watcher: Arc<Watcher>,
    runtime: tokio::runtime::Runtime,
}

impl Ctx {
    fn flwr_command(&self, program: &str, flwr_home: &Path) -> Command {
        flwr_command(&self.venv_bin, program, flwr_home)
    }
}

/// A command for a program of the venv's `bin/`, with that directory first
/// on `PATH` (the SuperLink and the SuperNodes start `flower-superexec`,
/// `flwr-serverapp` and `flwr-clientapp` by name) and Flower's network
/// features off.
pub(crate) fn flwr_command(venv_bin: &Path, program: &str, flwr_home: &Path) -> Command {
    let mut c = Command::new(venv_bin.join(program));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![venv_bin.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    if let Ok(p) = std::env::join_paths(paths) {
        c.env("PATH", p);
    }
    c.env("FLWR_HOME", flwr_home)
        .env("FLWR_DISABLE_UPDATE_CHECK", "1")
        .env("FLWR_TELEMETRY_ENABLED", "0")
        .env("PYTHONUNBUFFERED", "1");
    c
}

/// The venv's `bin/` (the directory of `python`, taken as given: the venv's
/// python may be a symlink out of the venv), checked to hold `programs`.
pub(crate) fn venv_bin(env: &Env, programs: &[&str]) -> anyhow::Result<PathBuf> {
    let python = env.python.clone().context(
        "the pinned Python venv was not found (set FLOWER_PYTHON or run scripts/setup-venv.sh)",
    )?;
    let venv_bin = python
        .parent()
        .context("python has no parent directory")?
        .to_path_buf();
    for p in programs {
        if !venv_bin.join(p).is_file() {
            bail!("{} not found next to {}", p, python.display());
        }
    }
    Ok(venv_bin)
}

/// The app, the initial model and the FAB that a run serves.
#[derive(Debug, Clone)]
pub(crate) struct Bundle {
    /// The app directory (`flwr build` / `flwr run` input).
    pub(crate) app: PathBuf,
    /// P float32 parameters in 4 arrays ([`crate::clients::model`]).
    pub(crate) initial_npz: PathBuf,
    /// The `.fab` file `flwr build` wrote.
    pub(crate) fab: PathBuf,
    /// Its SHA-256, hex.
    pub(crate) fab_sha256: String,
}

impl Bundle {
    /// Writes `<work>/initial.npz` (`params` float32) and builds the FAB of
    /// `app` (default: ROOT/python/bench) into `<work>/fab/`.
    pub(crate) fn prepare(
        env: &Env,
        venv_bin: &Path,
        app: Option<&Path>,
        params: usize,
        work_dir: &Path,
    ) -> anyhow::Result<Bundle> {
        let app = match app {
            Some(a) => a.to_path_buf(),
            None => env.root.join("python/bench"),
        };
        let app = app
            .canonicalize()
            .with_context(|| format!("app directory {}", app.display()))?;
        let initial_npz = work_dir.join("initial.npz");
        flower_core::npz::write_npz_arrays(&initial_npz, &crate::clients::model(params))
            .context("writing the initial model")?;
        let (fab, fab_sha256) = build_fab(venv_bin, &app, work_dir)?;
        eprintln!("FAB {} (sha256 {fab_sha256})", fab.display());
        Ok(Bundle {
            app,
            initial_npz,
            fab,
            fab_sha256,
        })
    }
}

/// A command line for the record: program and arguments (quoted when they
/// hold spaces), without the environment.
pub(crate) fn show(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `fleet`.
pub(crate) fn run(args: FleetArgs) -> anyhow::Result<i32> {
    if args.nodes == 0 || args.rounds == 0 || args.params < 4 {
        bail!("--nodes and --rounds must be at least 1 and --params at least 4");
    }
    let env = Env::resolve(&args.env)?;
    let venv_bin = venv_bin(&env, &["flower-superlink", "flower-supernode", "flwr"])?;
    let (work_dir, _temp) = crate::work_dir(args.work_dir.clone())?;
    eprintln!("work directory: {}", work_dir.display());
    let bundle = Bundle::prepare(&env, &venv_bin, args.app.as_deref(), args.params, &work_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut ctx = Ctx {
        args,
        env,
        venv_bin,
        app: bundle.app,
        work_dir,
        initial_npz: bundle.initial_npz,
        fab: bundle.fab,
        fab_sha256: bundle.fab_sha256,
        watcher: Arc::new(Watcher::start()),
        runtime,
    };

    let repeat = ctx.args.repeat.max(1);
    let base = ctx.work_dir.clone();
    let mut results = Vec::with_capacity(repeat);
    for k in 1..=repeat {
        if repeat > 1 {
            ctx.work_dir = base.join(format!("run-{k}"));
            std::fs::create_dir_all(&ctx.work_dir)?;
            eprintln!("repetition {k} of {repeat} in {}", ctx.work_dir.display());
        }
        results.push(run_once(&ctx)?);
    }
    let failed = if repeat == 1 {
        let result = results.remove(0);
        result.print();
        write_json(ctx.args.json.as_deref(), &result)?;
        result.failed()
    } else {
        let result = RepeatedResult::new(results);
        result.print();
        write_json(ctx.args.json.as_deref(), &result)?;
        result.failed()
    };
    Ok(if failed { 1 } else { 0 })
}

/// Writes `result` as JSON to `path`, if given.
fn write_json(path: Option<&Path>, result: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(())
}

/// One comparison: stock, then flower-rs (or the one `--only` names).
fn run_once(ctx: &Ctx) -> anyhow::Result<FleetResult> {
    let machine = crate::compare::Machine::read();
    let mut outcomes = Vec::new();
    if ctx.args.only.as_deref() != Some("flower-rs") {
        outcomes.push(run_stock(ctx)?);
    }
    if ctx.args.only.as_deref() != Some("stock") {
        match run_ours(ctx) {
            Ok(o) => outcomes.push(o),
            Err(e) if ctx.args.only.is_none() => {
                eprintln!("[flower_rs] not measured: {e:#}");
                outcomes.push(Outcome::not_run("flower_rs", format!("{e:#}")));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(FleetResult::new(
        Workload {
            nodes: ctx.args.nodes,
            params: ctx.args.params,
            model_bytes: 4 * ctx.args.params as u64,
            rounds: ctx.args.rounds,
            replies: if ctx.args.identical_replies {
                "identical: every node adds 1 (servers may deduplicate the replies' objects)".into()
            } else {
                "distinct: node i adds 1 + i to every array".into()
            },
            fab: ctx.fab.display().to_string(),
            fab_sha256: ctx.fab_sha256.clone(),
            app: ctx.app.display().to_string(),
        },
        machine,
        outcomes,
    ))
}

/// `flwr build --app APP` into `<work>/fab/`; returns the file and its
/// SHA-256.
fn build_fab(venv_bin: &Path, app: &Path, work_dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let dir = work_dir.join("fab");
    std::fs::create_dir_all(&dir)?;
    let home = work_dir.join("flwr-build-home");
    std::fs::create_dir_all(&home)?;
    let mut c = flwr_command(venv_bin, "flwr", &home);
    c.arg("build").arg("--app").arg(app).current_dir(&dir);
    let log = dir.join("flwr-build.log");
    let mut p = Monitored::spawn("flwr build", c, &log, |_, _| {
        Arc::new(|_, _: &str| {}) as LineHandler
    })?;
    if !p.wait_exit(Duration::from_secs(120)) {
        p.terminate(Duration::from_secs(3));
        bail!("flwr build did not finish within 120 s");
    }
    if !p.status().is_some_and(|s| s.success()) {
        bail!("flwr build failed:\n{}", tail(&log, 20));
    }
    let fab = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "fab"))
        .context("flwr build wrote no .fab file")?;
    let bytes = std::fs::read(&fab)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let hex = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok((fab, hex))
}

/// A started SuperNode.
pub(crate) struct Node {
    /// Its root process.
    pub(crate) process: Monitored,
    /// Its process tree.
    pub(crate) tree: TreeId,
}

/// Starts N SuperNodes dialing `dial`, each with its own FLWR_HOME under
/// `dir` and its own Runtime API port.
fn start_nodes(ctx: &Ctx, dial: SocketAddr, dir: &Path) -> anyhow::Result<Vec<Node>> {
    (0..ctx.args.nodes)
        .map(|i| {
            let index = if ctx.args.identical_replies { 0 } else { i };
            start_stock_node(&ctx.venv_bin, &ctx.watcher, dial, dir, i, index)
        })
        .collect()
}

/// Starts stock SuperNode `i` (`flower-supernode --insecure`, its own
/// FLWR_HOME `<dir>/node-i` and Runtime API port, log `<dir>/node-i.log`)
/// dialing `dial`, with node config `index=INDEX`, and watches its tree.
pub(crate) fn start_stock_node(
    venv_bin: &Path,
    watcher: &Watcher,
    dial: SocketAddr,
    dir: &Path,
    i: usize,
    index: usize,
) -> anyhow::Result<Node> {
    let home = dir.join(format!("node-{i}"));
    std::fs::create_dir_all(&home)?;
    let mut c = flwr_command(venv_bin, "flower-supernode", &home);
    c.arg("--insecure")
        .arg("--superlink")
        .arg(dial.to_string())
        .arg("--port")
        .arg(free_port()?.to_string())
        .arg("--node-config")
        .arg(format!("index={index}"));
    let log = dir.join(format!("node-{i}.log"));
    let process = Monitored::spawn(&format!("supernode {i}"), c, &log, |_, _| {
        Arc::new(|_, _: &str| {}) as LineHandler
    })?;
    let tree = watcher.add(process.pid);
    Ok(Node { process, tree })
}

/// Waits until `addr` accepts TCP connections (or `process` exits).
pub(crate) fn wait_port(addr: SocketAddr, process: &Monitored, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP;
    while Instant::now() < deadline {
        if process.has_exited() {
            bail!(
                "{} exited before it listened on {addr}; see {}\n{}",
                process.name,
                log.display(),
                tail(log, 15)
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not listen on {addr} within {STARTUP:?}",
        process.name
    )
}

/// SIGTERM (then SIGKILL after 5 s) to the given PIDs that are still alive.
/// Only descendants of processes this harness started are passed here.
fn stop_pids(pids: &[u32]) {
    for signal in ["-TERM", "-KILL"] {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| crate::procstat::state(*p).is_some_and(|s| s != 'Z' && s != 'X'))
            .collect();
        if alive.is_empty() {
            return;
        }
        for pid in &alive {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(pid.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && alive
                .iter()
                .any(|p| crate::procstat::state(*p).is_some_and(|s| s != 'Z' && s != 'X'))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Stops a root process and whatever is left of its tree.
pub(crate) fn stop_tree(watcher: &Watcher, process: &mut Monitored, tree: TreeId) {
    let descendants: Vec<u32> = watcher
        .alive(tree)
        .into_iter()
        .filter(|p| *p != process.pid)
        .collect();
    process.terminate(Duration::from_secs(10));
    stop_pids(&descendants);
}

/// Stops the nodes; returns their summary.
fn stop_nodes(ctx: &Ctx, nodes: Vec<Node>) -> NodeSummary {
    let mut summary = NodeSummary::default();
    for mut n in nodes {
        let exited_by_itself = n.process.has_exited();
        stop_tree(&ctx.watcher, &mut n.process, n.tree);
        let t = ctx.watcher.totals(n.tree);
        summary.add(&t, exited_by_itself);
    }
    summary
}

/// Shared end of a run: wait for the end marker, bounded.
pub(crate) enum Waited {
    Finished,
    ServerExited,
    NodesGone,
    TimedOut,
}

pub(crate) fn wait_for_run(
    server: &Monitored,
    nodes: &[Node],
    recorder: &Recorder,
    deadline: Instant,
    mut poll_extra: impl FnMut(),
) -> Waited {
    let mut nodes_gone_at: Option<Instant> = None;
    let mut reported = 0;
    loop {
        poll_extra();
        let seen = recorder.seen();
        for r in &seen.rounds[reported.min(seen.rounds.len())..] {
            eprintln!(
                "  round {} complete: fit {} s, evaluate {} s, server tree CPU so far {:.2} s",
                r.round,
                crate::report::opt(r.fit_s, 3),
                crate::report::opt(r.evaluate_s, 3),
                r.reading.tree.cpu_s
            );
        }
        reported = seen.rounds.len();
        if seen.finished {
            return Waited::Finished;
        }
        if server.has_exited() {
            return Waited::ServerExited;
        }
        if Instant::now() >= deadline {
            return Waited::TimedOut;
        }
        if nodes.iter().all(|n| n.process.has_exited()) {
            let t = *nodes_gone_at.get_or_insert_with(Instant::now);
            if t.elapsed() > GRACE {
                return Waited::NodesGone;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads the lines appended to a file since the last call.
struct FileTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl FileTail {
    fn new(path: PathBuf) -> FileTail {
        FileTail {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut reader = BufReader::new(f);
        loop {
            let mut buf = String::new();
            match reader.read_line(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.offset += n as u64;
                    if buf.ends_with('\n') {
                        let line = std::mem::take(&mut self.partial) + buf.trim_end();
                        out.push(line);
                    } else {
                        self.partial.push_str(&buf);
                    }
                }
            }
        }
        out
    }
}

/// The stock side: flower-superlink + `flwr run` of the FAB's directory.
fn run_stock(ctx: &Ctx) -> anyhow::Result<Outcome> {
    const LABEL: &str = "stock";
    let dir = ctx.work_dir.join("stock");
    let link_home = dir.join("superlink-home");
    let cli_home = dir.join("flwr-home");
    std::fs::create_dir_all(&link_home)?;
    std::fs::create_dir_all(&cli_home)?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = ctx.flwr_command("flower-superlink", &link_home);
    c.args([
        "--insecure",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
    ])
    .arg(port.to_string())
    .current_dir(&dir);
    let command = show(&c);
    let recorder = Arc::new(Recorder::new(ctx.watcher.clone()));
    let log = dir.join("superlink.log");
    eprintln!("[{LABEL}] starting flower-superlink on {addr}");
    let rec = recorder.clone();
    let mut server = Monitored::spawn("flower-superlink", c, &log, move |_, _| {
        Arc::new(move |_, line: &str| {
            if let Some(m) = parse_stock(line) {
                rec.on(m, line);
            }
        }) as LineHandler
    })?;
    let tree = ctx.watcher.add(server.pid);
    recorder.set_tree(tree);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(ctx.args.timeout_secs);
    wait_port(addr, &server, &log)?;
    let ready = recorder.read();
    let relay = ctx
        .runtime
        .block_on(Relay::start(addr))
        .context("starting the relay")?;
    recorder.set_relay(relay.counters.clone());
    let nodes = start_nodes(ctx, relay.address, &dir)?;
    eprintln!(
        "[{LABEL}] {} SuperNodes started against the relay {}",
        nodes.len(),
        relay.address
    );
    // Submit the run once every node is active, as an operator would.
    let join_deadline = Instant::now() + STARTUP;
    while recorder.seen().activated < ctx.args.nodes {
        if Instant::now() > join_deadline || server.has_exited() {
            let n = recorder.seen().activated;
            stop_nodes(ctx, nodes);
            stop_tree(&ctx.watcher, &mut server, tree);
            bail!(
                "only {n} of {} SuperNodes were activated within {STARTUP:?}; see {}",
                ctx.args.nodes,
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let joined = recorder.read();
    std::fs::write(
        cli_home.join("config.toml"),
        format!(
            "[superlink]\ndefault = \"bench\"\n\n[superlink.bench]\naddress = \"{addr}\"\ninsecure = true\n"
        ),
    )?;
    let bench_log = dir.join("serverapp-markers.log");
    let run_config = format!(
        "num-server-rounds={} min-nodes={} initial-npz=\"{}\" bench-log=\"{}\"",
        ctx.args.rounds,
        ctx.args.nodes,
        ctx.initial_npz.display(),
        bench_log.display()
    );
    let mut c = ctx.flwr_command("flwr", &cli_home);
    c.arg("run")
        .arg(&ctx.app)
        .arg("bench")
        .arg("--run-config")
        .arg(&run_config)
        .arg("--format")
        .arg("json")
        .current_dir(&dir);
    let flwr_run_command = show(&c);
    let run_log = dir.join("flwr-run.log");
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    let mut submit = Monitored::spawn("flwr run", c, &run_log, move |_, _| {
        Arc::new(move |_, line: &str| {
            if let Ok(mut s) = o.lock() {
                s.push_str(line);
                s.push('\n');
            }
        }) as LineHandler
    })?;
    if !submit.wait_exit(Duration::from_secs(120)) {
        submit.terminate(Duration::from_secs(3));
    }
    let submitted_ok = submit.status().is_some_and(|s| s.success());
    let submit_json: serde_json::Value =
        serde_json::from_str(&out.lock().map(|s| s.clone()).unwrap_or_default())
            .unwrap_or_default();
    let mut notes = Vec::new();
    if !submitted_ok || submit_json["success"] != serde_json::Value::Bool(true) {
        notes.push(format!(
            "flwr run did not report success; see {}",
            run_log.display()
        ));
    }
    let run_fab_hash = submit_json["fab-hash"].as_str().unwrap_or("").to_string();
    if !ctx.fab_sha256.starts_with(&run_fab_hash) || run_fab_hash.is_empty() {
        notes.push(format!(
            "flwr run built a FAB with hash prefix {run_fab_hash:?}, not the {} of the FAB given to flower-server",
            &ctx.fab_sha256[..8]
        ));
    } else {
        notes.push(format!(
            "flwr run submitted the same FAB (hash prefix {run_fab_hash}) as the file given to flower-server"
        ));
    }
    eprintln!("[{LABEL}] run submitted: {}", submit_json["run-id"]);
    let mut markers = FileTail::new(bench_log.clone());
    let waited = if submitted_ok {
        let rec = recorder.clone();
        wait_for_run(&server, &nodes, &recorder, deadline, move || {
            for line in markers.lines() {
                if let Some(m) = parse_stock(&line) {
                    rec.on(m, &line);
                }
            }
        })
    } else {
        Waited::ServerExited
    };
    let run_end = recorder.read();
    // Let the ServerApp process exit and the SuperLink record the run's end.
    if matches!(waited, Waited::Finished) {
        std::thread::sleep(Duration::from_secs(3));
    }
    let settled = recorder.read();
    let node_summary = stop_nodes(ctx, nodes);
    stop_tree(&ctx.watcher, &mut server, tree);
    let wire = relay.counters.bytes();
    let connections = relay
        .counters
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    drop(relay);
    let final_totals = ctx.watcher.totals(tree);
    notes.push(format!("submitted with: {flwr_run_command}"));
    Ok(Outcome {
        server: LABEL.into(),
        command,
        not_run: None,
        waited: waited_str(&waited).into(),
        ready: Some(ready),
        joined: Some(joined),
        run_end: Some(run_end),
        settled: Some(settled),
        final_totals,
        seen: recorder.seen(),
        members: ctx.watcher.members(tree),
        wire_to_server: wire.0,
        wire_to_nodes: wire.1,
        wire_connections: connections,
        nodes: node_summary,
        exit_status: server.status().map(|s| s.to_string()),
        log: log.display().to_string(),
        notes,
    })
}

pub(crate) fn waited_str(w: &Waited) -> &'static str {
    match w {
        Waited::Finished => "run finished",
        Waited::ServerExited => "server exited before the run finished",
        Waited::NodesGone => "every node ended before the run finished",
        Waited::TimedOut => "timed out",
    }
}

/// The run `flower-server` serves over its Fleet API alone.
pub(crate) struct FleetServer<'a> {
    /// The Fleet API's address.
    pub(crate) fleet_address: SocketAddr,
    /// `--fab`.
    pub(crate) fab: &'a Path,
    /// `--initial-parameters`.
    pub(crate) initial_npz: &'a Path,
    /// `--rounds`.
    pub(crate) rounds: u64,
    /// Nodes every round waits for (all sampled, for train and evaluate).
    pub(crate) nodes: usize,
    /// `--output-dir`.
    pub(crate) out_dir: &'a Path,
    /// `--strategy-api` (`message`: flwr.serverapp.strategy.FedAvg), or
    /// the binary's default catalog.
    pub(crate) strategy_api: Option<&'a str>,
}

/// flower-server's arguments for `run`: plaintext, FedAvg, JSON log lines
/// (which [`parse_flower_rs`] reads).
pub(crate) fn server_args(bin: &Path, run: &FleetServer<'_>) -> anyhow::Result<Vec<OsString>> {
    let n = run.nodes.to_string();
    let mut args: Vec<OsString> = vec![
        // No --address: the grpc-bidi port stays closed, the Fleet API is the only way in.
        "--insecure".into(),
        "--fleet-api-address".into(),
        run.fleet_address.to_string().into(),
        "--fab".into(),
        run.fab.into(),
        "--initial-parameters".into(),
        run.initial_npz.into(),
    ];
    if let Some(api) = run.strategy_api {
        args.push("--strategy-api".into());
        args.push(api.into());
    }
    args.extend(
        [
            "--strategy",
            "fedavg",
            "--rounds",
            &run.rounds.to_string(),
            "--min-fit-clients",
            &n,
            "--min-evaluate-clients",
            &n,
            "--min-available-clients",
            &n,
            "--client-wait-timeout",
            &STARTUP.as_secs().to_string(),
        ]
        .map(OsString::from),
    );
    args.extend([
        "--output-dir".into(),
        run.out_dir.into(),
        "--log-json".into(),
    ]);
    if server_has_flag(bin, "--fleet-message-format")? {
        // The bench ClientApp is a message-API app.
        args.push("--fleet-message-format".into());
        args.push("modern".into());
    }
    Ok(args)
}

/// The release `flower-server` binary, checked to have `flags`.
pub(crate) fn fleet_server_bin(env: &Env, flags: &[&str]) -> anyhow::Result<PathBuf> {
    let bin = env.server_bin()?;
    for flag in flags {
        if !server_has_flag(&bin, flag)? {
            bail!(
                "{} has no {flag} flag (this build cannot serve the run)",
                bin.display()
            );
        }
    }
    Ok(bin)
}

/// Starts `bin args` in `dir` (log `dir/flower-server.log`, `RUST_LOG=info`)
/// with its JSON log lines fed to `recorder` (after `on_marker`, so a
/// marker's other readings are taken first), and watches its tree. Returns
/// the process, its tree, the command line and the log.
pub(crate) fn spawn_flower_server(
    bin: &Path,
    args: &[OsString],
    dir: &Path,
    recorder: &Arc<Recorder>,
    watcher: &Watcher,
    on_marker: impl Fn(&Marker) + Send + Sync + 'static,
) -> anyhow::Result<(Monitored, TreeId, String, PathBuf)> {
    let mut c = Command::new(bin);
    c.args(args).env("RUST_LOG", "info").current_dir(dir);
    let command = show(&c);
    let log = dir.join("flower-server.log");
    let rec = recorder.clone();
    let on_marker = Arc::new(on_marker);
    let server = Monitored::spawn("flower-server", c, &log, move |_, _| {
        Arc::new(move |_, line: &str| {
            if let Some(m) = parse_flower_rs(line) {
                on_marker(&m);
                rec.on(m, line);
            }
        }) as LineHandler
    })?;
    let tree = watcher.add(server.pid);
    recorder.set_tree(tree);
    Ok((server, tree, command, log))
}

/// Our side: flower-server with its Fleet API and the FAB.
fn run_ours(ctx: &Ctx) -> anyhow::Result<Outcome> {
    const LABEL: &str = "flower_rs";
    let bin = fleet_server_bin(&ctx.env, &["--fleet-api-address", "--fab"])?;
    let dir = ctx.work_dir.join("flower-rs");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut args = server_args(
        &bin,
        &FleetServer {
            fleet_address: addr,
            fab: &ctx.fab,
            initial_npz: &ctx.initial_npz,
            rounds: ctx.args.rounds,
            nodes: ctx.args.nodes,
            out_dir: &dir.join("out"),
            strategy_api: None,
        },
    )?;
    args.extend(ctx.args.server_args.iter().map(OsString::from));
    let recorder = Arc::new(Recorder::new(ctx.watcher.clone()));
    eprintln!("[{LABEL}] starting {} (Fleet API on {addr})", bin.display());
    let (mut server, tree, command, log) =
        spawn_flower_server(&bin, &args, &dir, &recorder, &ctx.watcher, |_| {})?;
    let deadline = Instant::now() + Duration::from_secs_f64(ctx.args.timeout_secs);
    wait_port(addr, &server, &log)?;
    let ready = recorder.read();
    let relay = ctx
        .runtime
        .block_on(Relay::start(addr))
        .context("starting the relay")?;
    recorder.set_relay(relay.counters.clone());
    let nodes = start_nodes(ctx, relay.address, &dir)?;
    eprintln!(
        "[{LABEL}] {} SuperNodes started against the relay {}",
        nodes.len(),
        relay.address
    );
    let waited = wait_for_run(&server, &nodes, &recorder, deadline, || {});
    let run_end = recorder.read();
    // flower-server ends by itself after the run; give it a moment.
    if matches!(waited, Waited::Finished) {
        server.wait_exit(Duration::from_secs(10));
    }
    let settled = recorder.read();
    let node_summary = stop_nodes(ctx, nodes);
    stop_tree(&ctx.watcher, &mut server, tree);
    let wire = relay.counters.bytes();
    let connections = relay
        .counters
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    drop(relay);
    let final_totals = ctx.watcher.totals(tree);
    Ok(Outcome {
        server: LABEL.into(),
        command,
        not_run: None,
        waited: waited_str(&waited).into(),
        ready: Some(ready),
        joined: None,
        run_end: Some(run_end),
        settled: Some(settled),
        final_totals,
        seen: recorder.seen(),
        members: ctx.watcher.members(tree),
        wire_to_server: wire.0,
        wire_to_nodes: wire.1,
        wire_connections: connections,
        nodes: node_summary,
        exit_status: server.status().map(|s| s.to_string()),
        log: log.display().to_string(),
        notes: Vec::new(),
    })
}
