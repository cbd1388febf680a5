//! `flower-bench node`: the node side. One federation served by
//! `flower-server` (Fleet API only, the bench FAB, message-API FedAvg)
//! with N Rust SuperNodes (`bench-supernode`) and N stock Python
//! `flower-supernode` 1.42 processes joined at once, so both kinds do the
//! same rounds on the same model; node i of either kind gets node config
//! `index=i`, so the two kinds send the same replies.
//!
//! Each node dials its own byte-counting relay (its wire bytes) and is
//! watched as a process tree (stock: SuperNode + SuperExec + one
//! `flwr-clientapp` per message; Rust: the one process). At each of the
//! server's round markers every node tree and relay is read at once, so a
//! round's CPU is the difference between two readings. The final model
//! (`--output-dir`'s `model.npz`) must equal the initial one plus the
//! average of every node's step per round: proof that every node did the
//! same arithmetic.

mod report;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::fleet::{
    fleet_server_bin, server_args, show, spawn_flower_server, start_stock_node, stop_tree,
    venv_bin, wait_for_run, wait_port, waited_str, Bundle, FleetServer, Marker, Node, Reading,
    Recorder, Waited,
};
use crate::process::{LineHandler, Monitored};
use crate::proctree::{TreeId, Watcher};
use crate::relay::{Relay, RelayCounters};
use crate::servers::free_port;
use crate::{Env, EnvArgs};

use report::{check_run, NodeBenchResult, NodeOutcome, ServerSide, Workload};

/// Settings of `node`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct NodeArgs {
    /// Nodes of each kind: N Rust and N stock SuperNodes, node i of each
    /// kind with `index=i`.
    #[arg(long, default_value_t = 1)]
    pub(crate) nodes: usize,
    /// Model size P in float32 parameters (4 arrays: P/2, P/4, P/8, rest).
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) params: usize,
    /// Rounds R (each: train on every node, then evaluate on every node).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Time limit in seconds, from the server's start.
    #[arg(long, default_value_t = 1800.0)]
    pub(crate) timeout_secs: f64,
    /// The Flower app to bundle [default: ROOT/python/bench].
    #[arg(long)]
    pub(crate) app: Option<PathBuf>,
    /// Where to keep the logs, the FAB, the nodes' FLWR_HOMEs and the
    /// server's output (default: a temporary directory, removed at the end).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// The Rust SuperNode [default: `bench-supernode` next to this binary].
    #[arg(long)]
    pub(crate) node_bin: Option<PathBuf>,
    /// Extra argument for flower-server (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub(crate) server_args: Vec<String>,
    #[command(flatten)]
    pub(crate) env: EnvArgs,
}

/// The two kinds of SuperNode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// `flower-supernode` 1.42 running the FAB's Python ClientApp.
    Stock,
    /// `bench-supernode` (flower_client's SuperNode and ClientApp).
    Rust,
}

impl Kind {
    /// Its column label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Stock => "stock",
            Kind::Rust => "rust",
        }
    }
}

/// Every node's reading at each round marker of the server, in node order.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RoundReadings {
    /// At each round's start.
    pub(crate) starts: BTreeMap<u64, Vec<Reading>>,
    /// At each round's end, in order.
    pub(crate) ends: Vec<(u64, Vec<Reading>)>,
}

/// Takes [`RoundReadings`] from the server's line handler.
#[derive(Debug)]
struct NodeReadings {
    watcher: Arc<Watcher>,
    started: Instant,
    nodes: OnceLock<Vec<(TreeId, Arc<RelayCounters>)>>,
    seen: Mutex<RoundReadings>,
}

impl NodeReadings {
    fn read(&self) -> Vec<Reading> {
        let Some(nodes) = self.nodes.get() else {
            return Vec::new();
        };
        let trees: Vec<TreeId> = nodes.iter().map(|(t, _)| *t).collect();
        let at_s = self.started.elapsed().as_secs_f64();
        self.watcher
            .sample_many(&trees)
            .into_iter()
            .zip(nodes)
            .map(|(tree, (_, relay))| {
                let (to_server, to_nodes) = relay.bytes();
                Reading {
                    at_s,
                    tree,
                    to_server,
                    to_nodes,
                }
            })
            .collect()
    }

    fn on(&self, marker: &Marker) {
        match marker {
            Marker::RoundStart(r) => {
                let readings = self.read();
                self.lock().starts.entry(*r).or_insert(readings);
            }
            Marker::RoundEnd(r, _, _) => {
                let readings = self.read();
                self.lock().ends.push((*r, readings));
            }
            _ => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoundReadings> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the report needs of a started node besides its process.
struct Meta {
    kind: Kind,
    index: usize,
    command: String,
    log: PathBuf,
    relay: Relay,
}

/// What starting a node needs.
struct Launch<'a> {
    venv_bin: &'a Path,
    node_bin: &'a Path,
    watcher: &'a Watcher,
    dir: &'a Path,
}

impl Launch<'_> {
    /// Starts node `index` of `kind` dialing `relay`.
    fn start(&self, kind: Kind, index: usize, relay: Relay) -> anyhow::Result<(Node, Meta)> {
        let (node, command, log) = match kind {
            Kind::Stock => {
                let home = self.dir.join("stock");
                std::fs::create_dir_all(&home)?;
                let node = start_stock_node(
                    self.venv_bin,
                    self.watcher,
                    relay.address,
                    &home,
                    index,
                    index,
                )?;
                let command = format!(
                    "flower-supernode --insecure --superlink {} --port PORT --node-config index={index}",
                    relay.address
                );
                (node, command, home.join(format!("node-{index}.log")))
            }
            Kind::Rust => {
                let mut c = Command::new(self.node_bin);
                c.arg("--insecure")
                    .arg("--superlink")
                    .arg(relay.address.to_string())
                    .arg("--node-config")
                    .arg(format!("index={index}"))
                    .current_dir(self.dir);
                let command = show(&c);
                let log = self.dir.join(format!("rust-node-{index}.log"));
                let process = Monitored::spawn(&format!("rust node {index}"), c, &log, |_, _| {
                    Arc::new(|_, _: &str| {}) as LineHandler
                })?;
                let tree = self.watcher.add(process.pid);
                (Node { process, tree }, command, log)
            }
        };
        Ok((
            node,
            Meta {
                kind,
                index,
                command,
                log,
                relay,
            },
        ))
    }
}

/// The `bench-supernode` binary.
fn rust_node_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("bench-supernode"),
    };
    if !path.is_file() {
        bail!(
            "Rust SuperNode {} not found (build it with `cargo build -p flower-bench`, or pass --node-bin)",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `node`.
pub(crate) fn run(args: NodeArgs) -> anyhow::Result<i32> {
    if args.nodes == 0 || args.rounds == 0 || args.params < 4 {
        bail!("--nodes and --rounds must be at least 1 and --params at least 4");
    }
    let env = Env::resolve(&args.env)?;
    let venv_bin = venv_bin(&env, &["flower-supernode", "flwr"])?;
    let node_bin = rust_node_bin(args.node_bin.as_deref())?;
    let server_bin = fleet_server_bin(&env, &["--fleet-api-address", "--fab", "--strategy-api"])?;
    let machine = crate::compare::Machine::read();
    let (work_dir, _temp) = crate::work_dir(args.work_dir.clone())?;
    eprintln!("work directory: {}", work_dir.display());
    let bundle = Bundle::prepare(&env, &venv_bin, args.app.as_deref(), args.params, &work_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let watcher = Arc::new(Watcher::start());

    let dir = work_dir.join("run");
    std::fs::create_dir_all(&dir)?;
    let out_dir = dir.join("out");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut server_argv = server_args(
        &server_bin,
        &FleetServer {
            fleet_address: addr,
            fab: &bundle.fab,
            initial_npz: &bundle.initial_npz,
            rounds: args.rounds,
            nodes: 2 * args.nodes,
            out_dir: &out_dir,
            strategy_api: Some("message"),
        },
    )?;
    server_argv.extend(args.server_args.iter().map(OsString::from));
    let recorder = Arc::new(Recorder::new(watcher.clone()));
    let readings = Arc::new(NodeReadings {
        watcher: watcher.clone(),
        started: Instant::now(),
        nodes: OnceLock::new(),
        seen: Mutex::new(RoundReadings::default()),
    });
    eprintln!("starting {} (Fleet API on {addr})", server_bin.display());
    let rd = readings.clone();
    let (mut server, server_tree, server_command, server_log) = spawn_flower_server(
        &server_bin,
        &server_argv,
        &dir,
        &recorder,
        &watcher,
        move |m| rd.on(m),
    )?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout_secs);
    if let Err(e) = wait_port(addr, &server, &server_log) {
        stop_tree(&watcher, &mut server, server_tree);
        return Err(e);
    }

    let launch = Launch {
        venv_bin: &venv_bin,
        node_bin: &node_bin,
        watcher: &watcher,
        dir: &dir,
    };
    let (mut nodes, mut metas) = (Vec::new(), Vec::new());
    let mut start_error = None;
    'start: for index in 0..args.nodes {
        for kind in [Kind::Stock, Kind::Rust] {
            let started = runtime
                .block_on(Relay::start(addr))
                .context("starting a relay")
                .and_then(|relay| launch.start(kind, index, relay));
            match started {
                Ok((node, meta)) => {
                    nodes.push(node);
                    metas.push(meta);
                }
                Err(e) => {
                    start_error = Some(e);
                    break 'start;
                }
            }
        }
    }
    let _ = readings.nodes.set(
        nodes
            .iter()
            .zip(&metas)
            .map(|(n, m)| (n.tree, m.relay.counters.clone()))
            .collect(),
    );
    let waited = match &start_error {
        None => {
            eprintln!(
                "{n} Rust and {n} stock SuperNodes started, each against its own relay",
                n = args.nodes
            );
            wait_for_run(&server, &nodes, &recorder, deadline, || {})
        }
        Some(e) => {
            eprintln!("starting the nodes failed: {e:#}");
            Waited::NodesGone
        }
    };
    // flower-server ends by itself after the run; give it a moment.
    if matches!(waited, Waited::Finished) {
        server.wait_exit(Duration::from_secs(10));
    }
    let mut outcomes = Vec::new();
    for (mut node, meta) in nodes.into_iter().zip(metas) {
        let exited_by_itself = node.process.has_exited();
        stop_tree(&watcher, &mut node.process, node.tree);
        let (to_server, to_node) = meta.relay.counters.bytes();
        outcomes.push(NodeOutcome {
            kind: meta.kind,
            index: meta.index,
            command: meta.command,
            log: meta.log.display().to_string(),
            exited_by_itself,
            exit_status: node.process.status().map(|s| s.to_string()),
            final_totals: watcher.totals(node.tree),
            members: watcher.members(node.tree),
            wire_to_server: to_server,
            wire_to_node: to_node,
            wire_connections: meta
                .relay
                .counters
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
        });
    }
    stop_tree(&watcher, &mut server, server_tree);
    let seen = recorder.seen();
    let check = check_run(
        &crate::clients::model(args.params),
        &out_dir,
        2 * args.nodes,
        args.rounds,
        shift_per_round(args.nodes),
    );
    let result = NodeBenchResult::new(
        Workload {
            nodes_per_kind: args.nodes,
            params: args.params,
            model_bytes: 4 * args.params as u64,
            rounds: args.rounds,
            fab: bundle.fab.display().to_string(),
            fab_sha256: bundle.fab_sha256.clone(),
            app: bundle.app.display().to_string(),
        },
        machine,
        ServerSide {
            command: server_command,
            log: server_log.display().to_string(),
            waited: waited_str(&waited).into(),
            exit_status: server.status().map(|s| s.to_string()),
            totals: watcher.totals(server_tree),
            seen,
        },
        readings.lock().clone(),
        outcomes,
        check,
        start_error.map(|e| format!("{e:#}")),
    );
    result.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(if result.failed() { 1 } else { 0 })
}

/// What one FedAvg round adds to every parameter: node i of each kind adds
/// 1 + i and all replies weigh the same (`num-examples` from the run
/// config), so the mean of 1..=N.
pub(crate) fn shift_per_round(nodes_per_kind: usize) -> f64 {
    (nodes_per_kind as f64 + 1.0) / 2.0
}
