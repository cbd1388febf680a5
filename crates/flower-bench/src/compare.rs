//! `flower-bench compare`: the same workload and the same clients against
//! flower-server and the stock Python Flower server, in one run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::aes::{self, AesResult};
use crate::report::{self, mb, mib, opt, ratio, ServerResult, Target};
use crate::run::{self, ClientsPlan};
use crate::servers::{server_has_flag, CertDir, Flavor, ServerProcess, ServerSpec};
use crate::{Env, EnvArgs};

/// Settings of `compare`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CompareArgs {
    /// Rust clients (K), all in one `flower-bench clients` process.
    #[arg(long, default_value_t = 10)]
    pub(crate) clients: usize,
    /// Model size P in float32 parameters (4 layers: P/2, P/4, P/8, rest).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) params: usize,
    /// Rounds R.
    #[arg(long, default_value_t = 2)]
    pub(crate) rounds: u64,
    /// Stock Python Flower clients joining as well (one process each).
    #[arg(long, default_value_t = 0)]
    pub(crate) python_clients: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Run only one server: `flower-rs` or `python`.
    #[arg(long, value_parser = ["flower-rs", "python"])]
    pub(crate) only: Option<String>,
    /// Plaintext and no token (default: TLS 1.3 + bearer token).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Connect the clients to the servers directly (no byte-counting relay;
    /// wire bytes then only from `/proc/<pid>/io`).
    #[arg(long)]
    pub(crate) no_relay: bool,
    /// Per-server time limit in seconds, counted from the clients' start.
    #[arg(long, default_value_t = 1800.0)]
    pub(crate) timeout_secs: f64,
    /// Seconds of AES-GCM sealing for the throughput baseline.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) aes_secs: f64,
    /// Tokio worker threads of the clients process.
    #[arg(long, default_value_t = 2)]
    pub(crate) client_threads: usize,
    /// Where to keep logs and certificates (default: a temporary directory,
    /// removed at the end).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// Extra argument for flower-server (repeatable, e.g.
    /// `--server-arg=--aggregation-order --server-arg=arrival`).
    #[arg(long = "server-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub(crate) server_args: Vec<String>,
    #[command(flatten)]
    pub(crate) env: EnvArgs,
}

/// The workload, for the JSON.
#[derive(Debug, Clone, Serialize)]
struct Workload {
    rust_clients: usize,
    python_clients: usize,
    params: usize,
    model_bytes: u64,
    rounds: u64,
    transport: String,
    clients_process: String,
}

/// The whole `compare` result.
#[derive(Debug, Clone, Serialize)]
struct CompareResult {
    workload: Workload,
    machine: Machine,
    aes_gcm: Vec<AesResult>,
    servers: Vec<ServerResult>,
    /// ours / Python, per figure.
    ratios: Vec<(String, Option<f64>)>,
    targets: Vec<Target>,
    notes: Vec<String>,
}

/// What the machine is.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// Logical CPUs.
    pub(crate) cpus: usize,
    /// `model name` of /proc/cpuinfo.
    pub(crate) cpu_model: String,
    /// 1-minute load average when the run started.
    pub(crate) loadavg_at_start: String,
}

impl Machine {
    /// Reads /proc.
    pub(crate) fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or_else(String::new, |(_, m)| m.trim().to_string()),
            loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// Runs `compare`.
pub(crate) fn run(args: CompareArgs) -> anyhow::Result<i32> {
    let env = Env::resolve(&args.env)?;
    let machine = Machine::read();
    let mut notes = Vec::new();
    let run_ours = args.only.as_deref() != Some("python");
    let run_python = args.only.as_deref() != Some("flower-rs");

    let (work_dir, _temp) = crate::work_dir(args.work_dir.clone())?;
    eprintln!("work directory: {}", work_dir.display());

    // Baseline first, on an otherwise idle harness.
    eprintln!("measuring single-core AES-GCM throughput ...");
    let secs = Duration::from_secs_f64(args.aes_secs);
    let aes = vec![aes::measure(true, secs), aes::measure(false, secs)];
    for a in &aes {
        eprintln!("  {}: {:.2} GB/s", a.algorithm, a.bytes_per_s / 1e9);
    }

    let tls = if args.insecure {
        None
    } else {
        Some(CertDir::generate(&work_dir.join("certs"))?)
    };
    let token = (!args.insecure).then(crate::random_token);
    let total_clients = args.clients + args.python_clients;
    let initial_npz = work_dir.join("initial.npz");
    flower_core::npz::write_npz_arrays(&initial_npz, &crate::clients::model(args.params))
        .context("writing the initial model")?;

    let spec = ServerSpec {
        clients: total_clients,
        rounds: args.rounds,
        params: args.params,
        tls: tls.clone(),
        token: token.clone(),
        initial_npz,
        work_dir: work_dir.clone(),
        nofile: 65536,
        client_wait_timeout: 300.0,
        round_timeout: None,
        extra_args: args.server_args.clone(),
    };
    let plan = ClientsPlan {
        rust_clients: args.clients,
        python_clients: args.python_clients,
        params: args.params,
        tls: tls.clone(),
        token: token.clone(),
        ramp_per_sec: 0,
        max_retries: 3,
        nofile: 65536,
        threads: args.client_threads,
        relay: !args.no_relay,
        python: env.python.clone(),
        root: env.root.clone(),
        work_dir: work_dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs_f64(args.timeout_secs);

    let mut results = Vec::new();
    if run_ours {
        let bin = env.server_bin()?;
        let token_flag = server_has_flag(&bin, "--token")?;
        if token.is_some() && !token_flag {
            notes.push(format!(
                "{} has no --token flag yet: flower-rs ran without token checks (clients still sent the token)",
                bin.display()
            ));
        }
        eprintln!("[flower_rs] starting {}", bin.display());
        let server = ServerProcess::start_flower_rs(&bin, &spec, token_flag)?;
        let outcome = run::run(server, &plan, timeout, &runtime)?;
        results.push(ServerResult::from_outcome(
            Flavor::FlowerRs.key(),
            &outcome,
            total_clients,
            args.params,
        ));
    }
    if run_python {
        let python = env.python.clone().context(
            "the pinned Python venv was not found (set FLOWER_PYTHON or run scripts/setup-venv.sh)",
        )?;
        let script = env.root.join("python/flower_reference_server.py");
        eprintln!("[python] starting {}", script.display());
        let server = ServerProcess::start_python(&python, &script, &spec)?;
        let outcome = run::run(server, &plan, timeout, &runtime)?;
        results.push(ServerResult::from_outcome(
            Flavor::Python.key(),
            &outcome,
            total_clients,
            args.params,
        ));
    }
    runtime.shutdown_timeout(Duration::from_secs(2));

    let ours = results.iter().find(|r| r.server == "flower_rs");
    let py = results.iter().find(|r| r.server == "python");
    let aes256 = aes[0].bytes_per_s;
    let ratios = ratio_list(ours, py);
    let targets = targets(ours, py, aes256);
    if results
        .iter()
        .any(|r| r.completed_rounds < args.rounds as usize)
    {
        notes.push("a server completed fewer rounds than asked; its figures cover the completed rounds only".into());
    }
    notes.push(
        "CPU per round = server CPU from 'ready' to the last 'round complete' line / rounds; \
         total CPU also holds startup and shutdown (for Python: interpreter start, imports, and the \
         reference wrapper's JSON dump of the final model)"
            .into(),
    );
    notes.push(format!(
        "the harness (relay), the clients process and the server share this {}-CPU machine",
        machine.cpus
    ));

    let result = CompareResult {
        workload: Workload {
            rust_clients: args.clients,
            python_clients: args.python_clients,
            params: args.params,
            model_bytes: 4 * args.params as u64,
            rounds: args.rounds,
            transport: if args.insecure {
                "plaintext HTTP/2, no token".into()
            } else {
                "TLS 1.3 (rustls clients; AES-256-GCM negotiated by default) + bearer token".into()
            },
            clients_process: format!(
                "one flower-bench clients process, {} start_client tasks, {} Tokio workers",
                args.clients, args.client_threads
            ),
        },
        machine,
        aes_gcm: aes,
        servers: results,
        ratios,
        targets,
        notes,
    };
    print_result(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    let failed = result
        .servers
        .iter()
        .any(|s| s.completed_rounds == 0 || s.timed_out);
    Ok(if failed { 1 } else { 0 })
}

fn ratio_list(
    ours: Option<&ServerResult>,
    py: Option<&ServerResult>,
) -> Vec<(String, Option<f64>)> {
    let (Some(o), Some(p)) = (ours, py) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for (a, b) in o.rounds.iter().zip(&p.rounds) {
        v.push((format!("round {} fit_s", a.round), ratio(a.fit_s, b.fit_s)));
        v.push((
            format!("round {} evaluate_s", a.round),
            ratio(a.evaluate_s, b.evaluate_s),
        ));
    }
    v.push((
        "cpu_per_round_s".into(),
        ratio(o.cpu_per_round_s, p.cpu_per_round_s),
    ));
    v.push((
        "total_cpu_s".into(),
        ratio(Some(o.total_cpu_s), Some(p.total_cpu_s)),
    ));
    v.push((
        "peak_rss_mib".into(),
        ratio(Some(o.peak_rss_mib), Some(p.peak_rss_mib)),
    ));
    v.push((
        "wire_total_bytes".into(),
        ratio(
            o.wire_total_bytes.map(|b| b as f64),
            p.wire_total_bytes.map(|b| b as f64),
        ),
    ));
    v.push((
        "model_bytes_per_cpu_s".into(),
        ratio(o.model_bytes_per_cpu_s, p.model_bytes_per_cpu_s),
    ));
    v
}

fn targets(ours: Option<&ServerResult>, py: Option<&ServerResult>, aes256: f64) -> Vec<Target> {
    let mut t = Vec::new();
    if let (Some(o), Some(p)) = (ours, py) {
        let r = ratio(Some(o.peak_rss_mib), Some(p.peak_rss_mib));
        t.push(Target {
            name: "peak RSS".into(),
            goal: "flower-rs <= 1/10 of Python".into(),
            measured: format!(
                "{} vs {} (ratio {})",
                mib(o.peak_rss_mib),
                mib(p.peak_rss_mib),
                opt(r, 3)
            ),
            met: r.map(|r| r <= 0.1),
        });
        let r = ratio(o.cpu_per_round_s, p.cpu_per_round_s);
        t.push(Target {
            name: "server CPU-seconds per round".into(),
            goal: "flower-rs <= 1/10 of Python".into(),
            measured: format!(
                "{} s vs {} s (ratio {})",
                opt(o.cpu_per_round_s, 2),
                opt(p.cpu_per_round_s, 2),
                opt(r, 3)
            ),
            met: r.map(|r| r <= 0.1),
        });
    }
    if let Some(o) = ours {
        let frac = o.model_bytes_per_cpu_s.map(|b| b / aes256);
        t.push(Target {
            name: "model bytes per server CPU-second".into(),
            goal: ">= 50% of single-core AES-256-GCM".into(),
            measured: format!(
                "{} GB/s = {} of {:.2} GB/s",
                opt(o.model_bytes_per_cpu_s.map(|b| b / 1e9), 2),
                frac.map_or_else(|| "-".into(), |f| format!("{:.1}%", f * 100.0)),
                aes256 / 1e9
            ),
            met: frac.map(|f| f >= 0.5),
        });
    }
    t
}

fn print_result(r: &CompareResult) {
    let w = &r.workload;
    println!();
    println!(
        "flower-bench compare: {} Rust + {} Python clients, P = {} float32 ({}/model), R = {}, {}",
        w.rust_clients,
        w.python_clients,
        w.params,
        mb(w.model_bytes as f64),
        w.rounds,
        w.transport
    );
    println!(
        "machine: {} CPUs, {}; load at start {}",
        r.machine.cpus, r.machine.cpu_model, r.machine.loadavg_at_start
    );
    for a in &r.aes_gcm {
        println!(
            "single-core {} (ring, 16 KiB records): {:.2} GB/s",
            a.algorithm,
            a.bytes_per_s / 1e9
        );
    }
    println!();
    let names: Vec<&str> = r.servers.iter().map(|s| s.server.as_str()).collect();
    let both = r.servers.len() == 2;
    let mut header = vec!["figure"];
    header.extend(names.iter().copied());
    if both {
        header.push("ours/python");
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut add = |label: String, vals: Vec<String>, rat: Option<f64>| {
        let mut row = vec![label];
        row.extend(vals);
        if both {
            row.push(opt(rat, 3));
        }
        rows.push(row);
    };
    let max_rounds = r.servers.iter().map(|s| s.rounds.len()).max().unwrap_or(0);
    for i in 0..max_rounds {
        let get = |s: &ServerResult, f: &dyn Fn(&report::RoundRow) -> Option<f64>| {
            s.rounds.get(i).and_then(f)
        };
        type Getter = (&'static str, fn(&report::RoundRow) -> Option<f64>, usize);
        let getters: [Getter; 4] = [
            ("fit_s (wall)", |x| x.fit_s, 3),
            ("evaluate_s (wall)", |x| x.evaluate_s, 3),
            ("server CPU s", |x| Some(x.cpu_s), 2),
            ("wire MB", |x| Some(x.wire_bytes as f64 / 1e6), 1),
        ];
        for (label, f, d) in getters {
            let vals: Vec<Option<f64>> = r.servers.iter().map(|s| get(s, &f)).collect();
            add(
                format!("round {} {label}", i + 1),
                vals.iter().map(|v| opt(*v, d)).collect(),
                if both { ratio(vals[0], vals[1]) } else { None },
            );
        }
    }
    let fig = |f: &dyn Fn(&ServerResult) -> Option<f64>| -> Vec<Option<f64>> {
        r.servers.iter().map(f).collect()
    };
    type Figure<'a> = (&'a str, Box<dyn Fn(&ServerResult) -> Option<f64>>, usize);
    let figures: Vec<Figure> = vec![
        (
            "completed rounds",
            Box::new(|s| Some(s.completed_rounds as f64)),
            0,
        ),
        (
            "startup CPU s (until ready)",
            Box::new(|s| Some(s.startup_cpu_s)),
            2,
        ),
        (
            "server CPU s, all rounds",
            Box::new(|s| Some(s.rounds_cpu_s)),
            2,
        ),
        ("server CPU s per round", Box::new(|s| s.cpu_per_round_s), 2),
        (
            "server CPU s, whole life",
            Box::new(|s| Some(s.total_cpu_s)),
            2,
        ),
        ("  of which user", Box::new(|s| Some(s.total_user_s)), 2),
        ("  of which sys", Box::new(|s| Some(s.total_sys_s)), 2),
        (
            "server peak RSS MiB (VmHWM)",
            Box::new(|s| Some(s.peak_rss_mib)),
            1,
        ),
        (
            "  VmHWM at last round MiB",
            Box::new(|s| s.peak_rss_at_last_round_mib),
            1,
        ),
        (
            "wire MB to server (relay)",
            Box::new(|s| s.wire_to_server_bytes.map(|b| b as f64 / 1e6)),
            1,
        ),
        (
            "wire MB to clients (relay)",
            Box::new(|s| s.wire_to_clients_bytes.map(|b| b as f64 / 1e6)),
            1,
        ),
        (
            "wire MB total (relay)",
            Box::new(|s| s.wire_total_bytes.map(|b| b as f64 / 1e6)),
            1,
        ),
        (
            "model MB moved",
            Box::new(|s| Some(s.model_bytes_moved as f64 / 1e6)),
            1,
        ),
        (
            "model GB per server CPU-s",
            Box::new(|s| s.model_bytes_per_cpu_s.map(|b| b / 1e9)),
            3,
        ),
        (
            "wall s, clients start -> exit",
            Box::new(|s| Some(s.wall_s)),
            2,
        ),
        (
            "clients process CPU s",
            Box::new(|s| Some(s.rust_clients_cpu_s)),
            2,
        ),
        (
            "clients process peak RSS MiB",
            Box::new(|s| s.rust_clients_peak_rss_mib),
            1,
        ),
    ];
    for (label, f, d) in figures {
        let vals = fig(&*f);
        add(
            label.to_string(),
            vals.iter().map(|v| opt(*v, d)).collect(),
            if both { ratio(vals[0], vals[1]) } else { None },
        );
    }
    print!("{}", report::table(&header, &rows));
    println!();
    for s in &r.servers {
        let c = s.rust_clients.as_ref();
        println!(
            "{}: {}, Rust clients ok {}/{} (errors: {:?}), Python clients ok/failed {:?}{}",
            s.server,
            s.exit_status.as_deref().unwrap_or("?"),
            c.map_or(0, |c| c.ok),
            c.map_or(0, |c| c.clients),
            c.map(|c| &c.errors),
            s.python_clients_ok_failed,
            if s.timed_out { ", TIMED OUT" } else { "" }
        );
        for e in &s.server_errors {
            println!("  server error line: {e}");
        }
    }
    println!();
    println!("targets:");
    for t in &r.targets {
        println!("  {t}");
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}
