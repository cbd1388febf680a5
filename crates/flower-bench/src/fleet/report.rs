//! The figures of `fleet`: per server, from the raw [`Outcome`]; the ratios
//! flower-rs / stock; the targets; the printed table.

use serde::Serialize;

use super::events::{round_deltas, Reading, Seen};
use crate::compare::Machine;
use crate::proctree::{Member, Totals};
use crate::report::{opt, ratio, Target};

/// The workload, for the JSON.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Workload {
    /// SuperNodes.
    pub(crate) nodes: usize,
    /// float32 parameters.
    pub(crate) params: usize,
    /// Bytes of one model.
    pub(crate) model_bytes: u64,
    /// Rounds.
    pub(crate) rounds: u64,
    /// What the nodes' train replies are.
    pub(crate) replies: String,
    /// The FAB given to flower-server.
    pub(crate) fab: String,
    /// Its SHA-256.
    pub(crate) fab_sha256: String,
    /// The app directory (`flwr build` / `flwr run` input).
    pub(crate) app: String,
}

/// The SuperNodes of one server's run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct NodeSummary {
    /// Nodes.
    pub(crate) count: usize,
    /// Nodes that had ended before the harness stopped them.
    pub(crate) ended_by_themselves: usize,
    /// CPU seconds of all node trees (SuperNode + SuperExec + ClientApps).
    pub(crate) cpu_s: f64,
    /// Sum over all node trees of every member's `VmHWM`, MiB.
    pub(crate) sum_hwm_mib: f64,
    /// Processes seen in the node trees.
    pub(crate) processes: usize,
}

impl NodeSummary {
    /// Adds one node's tree.
    pub(crate) fn add(&mut self, t: &Totals, ended_by_itself: bool) {
        self.count += 1;
        self.ended_by_themselves += usize::from(ended_by_itself);
        self.cpu_s += t.cpu_s;
        self.sum_hwm_mib += t.sum_hwm_kib as f64 / 1024.0;
        self.processes += t.processes;
    }
}

/// What one server's run left behind.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    /// `stock` or `flower_rs`.
    pub(crate) server: String,
    /// How it was started.
    pub(crate) command: String,
    /// Why it was not measured, if it was not.
    pub(crate) not_run: Option<String>,
    /// How the wait ended.
    pub(crate) waited: String,
    /// Reading when its port accepted connections.
    pub(crate) ready: Option<Reading>,
    /// Reading when every SuperNode was active (stock: before `flwr run`).
    pub(crate) joined: Option<Reading>,
    /// Reading when the run's end was seen.
    pub(crate) run_end: Option<Reading>,
    /// Reading just before the harness stopped the nodes.
    pub(crate) settled: Option<Reading>,
    /// The tree's sums after it was stopped (whole life).
    pub(crate) final_totals: Totals,
    /// Rounds and markers, with the readings taken at each.
    pub(crate) seen: Seen,
    /// Every process of the tree.
    pub(crate) members: Vec<Member>,
    /// Relay bytes nodes → server.
    pub(crate) wire_to_server: u64,
    /// Relay bytes server → nodes.
    pub(crate) wire_to_nodes: u64,
    /// TCP connections through the relay.
    pub(crate) wire_connections: u64,
    /// The nodes.
    pub(crate) nodes: NodeSummary,
    /// Exit status of the root process.
    pub(crate) exit_status: Option<String>,
    /// Log of the root process.
    pub(crate) log: String,
    /// Remarks.
    pub(crate) notes: Vec<String>,
}

impl Outcome {
    /// A server that could not be measured.
    pub(crate) fn not_run(server: &str, why: String) -> Outcome {
        Outcome {
            server: server.into(),
            command: String::new(),
            not_run: Some(why),
            waited: "not run".into(),
            ready: None,
            joined: None,
            run_end: None,
            settled: None,
            final_totals: Totals::default(),
            seen: Seen::default(),
            members: Vec::new(),
            wire_to_server: 0,
            wire_to_nodes: 0,
            wire_connections: 0,
            nodes: NodeSummary::default(),
            exit_status: None,
            log: String::new(),
            notes: Vec::new(),
        }
    }
}

/// One completed round.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoundFigures {
    /// Round number.
    pub(crate) round: u64,
    /// Fit (train) phase wall seconds, the server's own timing.
    pub(crate) fit_s: Option<f64>,
    /// Evaluate phase wall seconds, the server's own timing.
    pub(crate) evaluate_s: Option<f64>,
    /// Seconds between this round's end and the previous round's end (round
    /// 1: its start), as seen by the harness.
    pub(crate) wall_s: f64,
    /// Server-tree CPU seconds over the same span.
    pub(crate) cpu_s: f64,
    /// Relay bytes (both ways) over the same span.
    pub(crate) wire_bytes: u64,
    /// The tree's summed `VmHWM` at the round's end, MiB.
    pub(crate) sum_hwm_mib: f64,
}

/// Everything measured about one server.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerFigures {
    /// `stock` or `flower_rs`.
    pub(crate) server: String,
    /// Why not measured, if not.
    pub(crate) not_run: Option<String>,
    /// Rounds completed.
    pub(crate) completed_rounds: usize,
    /// Per round.
    pub(crate) rounds: Vec<RoundFigures>,
    /// Tree CPU from the start of round 1 to the end of the last round.
    pub(crate) rounds_cpu_s: Option<f64>,
    /// `rounds_cpu_s / completed_rounds`.
    pub(crate) cpu_per_round_s: Option<f64>,
    /// Tree CPU until the port accepted connections.
    pub(crate) startup_cpu_s: Option<f64>,
    /// Tree CPU until round 1 started (startup, nodes joining; stock also
    /// the run submission and the ServerApp process's start and model load).
    pub(crate) cpu_before_round1_s: Option<f64>,
    /// Tree CPU over the whole life, until stopped.
    pub(crate) total_cpu_s: f64,
    /// Peak RSS of the tree.
    #[serde(flatten)]
    pub(crate) peak: PeakRss,
    /// Relay bytes nodes → server, whole run.
    pub(crate) wire_to_server_bytes: u64,
    /// Relay bytes server → nodes, whole run.
    pub(crate) wire_to_nodes_bytes: u64,
    /// Both ways.
    pub(crate) wire_total_bytes: u64,
    /// Both ways, from the start of round 1 to the end of the last round.
    pub(crate) wire_rounds_bytes: Option<u64>,
    /// TCP connections through the relay.
    pub(crate) wire_connections: u64,
    /// Wall seconds from the start of round 1 to the end of the last round
    /// (harness clock).
    pub(crate) rounds_wall_s: Option<f64>,
    /// The SuperNodes' side.
    pub(crate) nodes: NodeSummary,
    /// How the wait ended.
    pub(crate) waited: String,
    /// The raw outcome (readings, processes, command, log).
    pub(crate) outcome: Outcome,
    /// First error lines.
    pub(crate) errors: Vec<String>,
}

/// Peak RSS of a process tree, MiB.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct PeakRss {
    /// Sum over the tree's processes of each one's `VmHWM` (an upper
    /// bound: the peaks need not coincide).
    #[serde(rename = "peak_rss_sum_hwm_mib")]
    pub(crate) sum_hwm_mib: f64,
    /// `VmHWM` of the largest single process.
    #[serde(rename = "peak_rss_max_hwm_mib")]
    pub(crate) max_hwm_mib: f64,
    /// Largest summed `VmRSS` of the tree seen in one scan (a lower bound).
    #[serde(rename = "peak_rss_sum_rss_mib")]
    pub(crate) sum_rss_mib: f64,
}

impl From<&Totals> for PeakRss {
    fn from(t: &Totals) -> Self {
        PeakRss {
            sum_hwm_mib: mib(t.sum_hwm_kib),
            max_hwm_mib: mib(t.max_hwm_kib),
            sum_rss_mib: mib(t.peak_sum_rss_kib),
        }
    }
}

/// KiB as MiB.
pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl ServerFigures {
    fn from_outcome(o: Outcome) -> ServerFigures {
        let start = o.seen.starts.get(&1).copied();
        let ends: Vec<Reading> = o.seen.rounds.iter().map(|r| r.reading).collect();
        let rounds = o
            .seen
            .rounds
            .iter()
            .zip(round_deltas(start, &ends))
            .map(|(r, d)| RoundFigures {
                round: r.round,
                fit_s: r.fit_s,
                evaluate_s: r.evaluate_s,
                wall_s: d.wall_s,
                cpu_s: d.cpu_s,
                wire_bytes: d.wire_bytes,
                sum_hwm_mib: mib(r.reading.tree.sum_hwm_kib),
            })
            .collect();
        let whole = start.zip(ends.last()).map(|(s, l)| l.since(&s));
        let (rounds_cpu_s, wire_rounds_bytes, rounds_wall_s) = (
            whole.map(|d| d.cpu_s),
            whole.map(|d| d.wire_bytes),
            whole.map(|d| d.wall_s),
        );
        let completed = o.seen.rounds.len();
        let t = o.final_totals;
        ServerFigures {
            server: o.server.clone(),
            not_run: o.not_run.clone(),
            completed_rounds: completed,
            rounds,
            rounds_cpu_s,
            cpu_per_round_s: rounds_cpu_s
                .filter(|_| completed > 0)
                .map(|c| c / completed as f64),
            startup_cpu_s: o.ready.map(|r| r.tree.cpu_s),
            cpu_before_round1_s: start.map(|r| r.tree.cpu_s),
            total_cpu_s: t.cpu_s,
            peak: PeakRss::from(&t),
            wire_to_server_bytes: o.wire_to_server,
            wire_to_nodes_bytes: o.wire_to_nodes,
            wire_total_bytes: o.wire_to_server + o.wire_to_nodes,
            wire_rounds_bytes,
            wire_connections: o.wire_connections,
            rounds_wall_s,
            nodes: o.nodes,
            waited: o.waited.clone(),
            errors: o.seen.errors.clone(),
            outcome: o,
        }
    }
}

/// The whole `fleet` result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FleetResult {
    workload: Workload,
    machine: Machine,
    /// `/proc/loadavg` when the result was assembled.
    loadavg_at_end: String,
    servers: Vec<ServerFigures>,
    /// flower-rs / stock, per figure.
    ratios: Vec<(String, Option<f64>)>,
    targets: Vec<Target>,
    /// What is measured, in words.
    method: Vec<String>,
    notes: Vec<String>,
}

const METHOD: &[&str] = &[
    "server = its whole process tree, read from /proc every 100 ms: stock = flower-superlink + the flower-superexec it starts + the flwr-serverapp that SuperExec starts for the run; flower-rs = the flower-server process",
    "CPU = utime + stime of every tree member, each at its last reading (zombies keep their final times); summed",
    "CPU per round = tree CPU from the start of round 1 (stock: the ServerApp's configure_train; flower-rs: the configure_fit log line) to the end of the last round (stock: aggregate_evaluate; flower-rs: round complete), divided by the rounds",
    "peak RSS = VmHWM per tree member; 'sum' adds every member's peak (an upper bound: the peaks need not coincide), 'max' is the largest single process, 'peak summed VmRSS' the largest sum seen in one scan",
    "round wall time = the server's own timing of the fit and evaluate phases (stock: the bench ServerApp's TimedFedAvg around FedAvg's configure/aggregate calls; flower-rs: fit_s/evaluate_s of its round complete line)",
    "wire bytes = what a byte-counting TCP relay in the harness copied between the SuperNodes and the server's Fleet port (plaintext HTTP/1.1, both ways); the stock ServerApp's and flwr run's traffic to the SuperLink does not pass the relay",
    "the SuperNodes (each: flower-supernode + flower-superexec + one flwr-clientapp per message), the relay and the harness share the machine with the server; their CPU is reported separately",
];

impl FleetResult {
    /// Computes the figures.
    pub(crate) fn new(workload: Workload, machine: Machine, outcomes: Vec<Outcome>) -> Self {
        let servers: Vec<ServerFigures> = outcomes
            .into_iter()
            .map(ServerFigures::from_outcome)
            .collect();
        let stock = servers
            .iter()
            .find(|s| s.server == "stock" && s.not_run.is_none());
        let ours = servers
            .iter()
            .find(|s| s.server == "flower_rs" && s.not_run.is_none());
        let mut notes = Vec::new();
        for s in &servers {
            notes.extend(s.outcome.notes.iter().map(|n| format!("{}: {n}", s.server)));
            if let Some(why) = &s.not_run {
                notes.push(format!("{}: not measured: {why}", s.server));
            } else if s.completed_rounds < workload.rounds as usize {
                notes.push(format!(
                    "{}: completed {} of {} rounds ({}); its figures cover the completed rounds only",
                    s.server, s.completed_rounds, workload.rounds, s.waited
                ));
            }
        }
        let (ratios, targets) = match (ours, stock) {
            (Some(o), Some(s)) => (ratio_list(o, s), targets(o, s)),
            _ => (Vec::new(), Vec::new()),
        };
        FleetResult {
            workload,
            machine,
            loadavg_at_end: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
            servers,
            ratios,
            targets,
            method: METHOD.iter().map(|s| s.to_string()).collect(),
            notes,
        }
    }

    /// True when a measured server completed no round.
    pub(crate) fn failed(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.not_run.is_none() && s.completed_rounds < self.workload.rounds as usize)
            || self.servers.iter().all(|s| s.not_run.is_some())
    }

    /// Prints the table, the targets and the notes.
    pub(crate) fn print(&self) {
        let w = &self.workload;
        println!();
        println!(
            "flower-bench fleet: {} stock SuperNodes, P = {} float32 ({:.1} MB/model), R = {}, FAB sha256 {}",
            w.nodes,
            w.params,
            w.model_bytes as f64 / 1e6,
            w.rounds,
            &w.fab_sha256[..w.fab_sha256.len().min(16)]
        );
        println!("train replies: {}", w.replies);
        println!(
            "machine: {} CPUs, {}; load average at start {}, at end {}",
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.loadavg_at_start,
            self.loadavg_at_end
        );
        println!();
        print!("{}", self.markdown());
        println!();
        for s in &self.servers {
            if s.not_run.is_some() {
                continue;
            }
            let procs: Vec<String> = s
                .outcome
                .members
                .iter()
                .map(|m| {
                    format!(
                        "{} (pid {}): {:.2} s CPU, VmHWM {:.1} MiB",
                        if m.program.is_empty() {
                            &m.comm
                        } else {
                            &m.program
                        },
                        m.pid,
                        m.user_s + m.sys_s,
                        mib(m.max_hwm_kib)
                    )
                })
                .collect();
            println!("{} tree: {}", s.server, procs.join("; "));
            for e in &s.errors {
                println!("  {} error line: {e}", s.server);
            }
        }
        println!();
        println!("targets:");
        for t in &self.targets {
            println!("  {t}");
        }
        for n in &self.notes {
            println!("note: {n}");
        }
    }

    /// The result table as Markdown.
    pub(crate) fn markdown(&self) -> String {
        let measured: Vec<&ServerFigures> = self
            .servers
            .iter()
            .filter(|s| s.not_run.is_none())
            .collect();
        let both = measured.len() == 2
            && measured[0].server == "stock"
            && measured[1].server == "flower_rs";
        let mut header = vec!["figure".to_string()];
        header.extend(measured.iter().map(|s| s.server.clone()));
        if both {
            header.push("flower_rs / stock".into());
        }
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut add = |label: String, vals: Vec<Option<f64>>, digits: usize| {
            let mut row = vec![label];
            row.extend(vals.iter().map(|v| opt(*v, digits)));
            if both {
                row.push(opt(ratio(vals[1], vals[0]), 3));
            }
            rows.push(row);
        };
        let max_rounds = measured.iter().map(|s| s.rounds.len()).max().unwrap_or(0);
        for i in 0..max_rounds {
            type Get = fn(&RoundFigures) -> Option<f64>;
            let getters: [(&str, Get, usize); 5] = [
                ("fit s (server's timing)", |r| r.fit_s, 2),
                ("evaluate s (server's timing)", |r| r.evaluate_s, 2),
                ("wall s (harness)", |r| Some(r.wall_s), 2),
                ("server CPU s", |r| Some(r.cpu_s), 2),
                ("wire MB", |r| Some(r.wire_bytes as f64 / 1e6), 1),
            ];
            for (label, get, d) in getters {
                add(
                    format!("round {} {label}", i + 1),
                    measured
                        .iter()
                        .map(|s| s.rounds.get(i).and_then(get))
                        .collect(),
                    d,
                );
            }
        }
        type Fig = fn(&ServerFigures) -> Option<f64>;
        let figures: [(&str, Fig, usize); 15] = [
            ("completed rounds", |s| Some(s.completed_rounds as f64), 0),
            ("server CPU s per round", |s| s.cpu_per_round_s, 2),
            ("server CPU s, all rounds", |s| s.rounds_cpu_s, 2),
            ("server CPU s before round 1", |s| s.cpu_before_round1_s, 2),
            ("server CPU s, whole life", |s| Some(s.total_cpu_s), 2),
            (
                "peak RSS MiB, tree sum of VmHWM",
                |s| Some(s.peak.sum_hwm_mib),
                1,
            ),
            (
                "peak RSS MiB, largest process",
                |s| Some(s.peak.max_hwm_mib),
                1,
            ),
            ("peak summed VmRSS MiB", |s| Some(s.peak.sum_rss_mib), 1),
            (
                "wire MB nodes -> server",
                |s| Some(s.wire_to_server_bytes as f64 / 1e6),
                1,
            ),
            (
                "wire MB server -> nodes",
                |s| Some(s.wire_to_nodes_bytes as f64 / 1e6),
                1,
            ),
            (
                "wire MB total",
                |s| Some(s.wire_total_bytes as f64 / 1e6),
                1,
            ),
            (
                "wire MB during the rounds",
                |s| s.wire_rounds_bytes.map(|b| b as f64 / 1e6),
                1,
            ),
            ("rounds wall s (harness)", |s| s.rounds_wall_s, 2),
            (
                "SuperNode trees CPU s (all nodes)",
                |s| Some(s.nodes.cpu_s),
                2,
            ),
            (
                "SuperNode trees sum of VmHWM MiB",
                |s| Some(s.nodes.sum_hwm_mib),
                1,
            ),
        ];
        for (label, get, d) in figures {
            add(
                label.to_string(),
                measured.iter().map(|s| get(s)).collect(),
                d,
            );
        }
        markdown_table(&header, &rows)
    }
}

/// `| a | b |` rows with a `|---|` rule; first column left-aligned, the
/// others right-aligned.
pub(crate) fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (c, cell) in r.iter().enumerate().take(cols) {
            widths[c] = widths[c].max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .take(cols)
            .map(|(c, cell)| {
                let pad = " ".repeat(widths[c].saturating_sub(cell.chars().count()));
                if c == 0 {
                    format!("{cell}{pad}")
                } else {
                    format!("{pad}{cell}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn ratio_list(o: &ServerFigures, s: &ServerFigures) -> Vec<(String, Option<f64>)> {
    let mut v = Vec::new();
    for (a, b) in o.rounds.iter().zip(&s.rounds) {
        v.push((format!("round {} fit_s", a.round), ratio(a.fit_s, b.fit_s)));
        v.push((
            format!("round {} evaluate_s", a.round),
            ratio(a.evaluate_s, b.evaluate_s),
        ));
        v.push((
            format!("round {} cpu_s", a.round),
            ratio(Some(a.cpu_s), Some(b.cpu_s)),
        ));
    }
    let f = |x: &ServerFigures| -> [(&'static str, Option<f64>); 7] {
        [
            ("cpu_per_round_s", x.cpu_per_round_s),
            ("total_cpu_s", Some(x.total_cpu_s)),
            ("peak_rss_sum_hwm_mib", Some(x.peak.sum_hwm_mib)),
            ("peak_rss_max_hwm_mib", Some(x.peak.max_hwm_mib)),
            ("peak_rss_sum_rss_mib", Some(x.peak.sum_rss_mib)),
            ("wire_total_bytes", Some(x.wire_total_bytes as f64)),
            ("rounds_wall_s", x.rounds_wall_s),
        ]
    };
    for ((name, a), (_, b)) in f(o).into_iter().zip(f(s)) {
        v.push((name.to_string(), ratio(a, b)));
    }
    v
}

fn targets(o: &ServerFigures, s: &ServerFigures) -> Vec<Target> {
    let r = ratio(Some(o.peak.sum_hwm_mib), Some(s.peak.sum_hwm_mib));
    let r_max = ratio(Some(o.peak.max_hwm_mib), Some(s.peak.max_hwm_mib));
    let c = ratio(o.cpu_per_round_s, s.cpu_per_round_s);
    vec![
        Target {
            name: "server peak RSS (tree sum of VmHWM)".into(),
            goal: "flower-rs <= 1/5 of the stock SuperLink + ServerApp".into(),
            measured: format!(
                "{:.1} MiB vs {:.1} MiB (ratio {}); largest single process {:.1} vs {:.1} MiB (ratio {})",
                o.peak.sum_hwm_mib,
                s.peak.sum_hwm_mib,
                opt(r, 3),
                o.peak.max_hwm_mib,
                s.peak.max_hwm_mib,
                opt(r_max, 3)
            ),
            met: r.map(|r| r <= 0.2),
        },
        Target {
            name: "server CPU-seconds per round (tree)".into(),
            goal: "flower-rs <= 1/5 of the stock SuperLink + ServerApp".into(),
            measured: format!(
                "{} s vs {} s (ratio {})",
                opt(o.cpu_per_round_s, 2),
                opt(s.cpu_per_round_s, 2),
                opt(c, 3)
            ),
            met: c.map(|c| c <= 0.2),
        },
    ]
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One figure over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Spread {
    /// The figure.
    pub(crate) figure: String,
    /// Stock's value in each repetition.
    pub(crate) stock: Vec<f64>,
    /// flower-rs's value in each repetition.
    pub(crate) flower_rs: Vec<f64>,
    /// flower-rs / stock within each repetition (the two ran back to back).
    pub(crate) ratios: Vec<f64>,
    /// The median of `ratios`.
    pub(crate) median_ratio: Option<f64>,
}

/// Several repetitions of the whole comparison, summarized: the stock
/// SuperLink's own CPU per round varies by a third or more between runs on
/// one machine, so one run's ratio says less than the median of several.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RepeatedResult {
    /// Each repetition, in order (stock first, then flower-rs, each time).
    pub(crate) runs: Vec<FleetResult>,
    /// The figures the targets are about.
    pub(crate) spreads: Vec<Spread>,
    /// The targets, judged on the median per-repetition ratio.
    pub(crate) targets: Vec<Target>,
}

impl RepeatedResult {
    /// Summarizes `runs`.
    pub(crate) fn new(runs: Vec<FleetResult>) -> Self {
        type Get = fn(&ServerFigures) -> Option<f64>;
        let figures: [(&str, Get); 3] = [
            ("server CPU s per round", |s| s.cpu_per_round_s),
            ("peak RSS MiB, tree sum of VmHWM", |s| {
                Some(s.peak.sum_hwm_mib)
            }),
            ("peak RSS MiB, largest process", |s| {
                Some(s.peak.max_hwm_mib)
            }),
        ];
        let spreads: Vec<Spread> = figures
            .iter()
            .map(|(name, get)| {
                let mut spread = Spread {
                    figure: name.to_string(),
                    stock: Vec::new(),
                    flower_rs: Vec::new(),
                    ratios: Vec::new(),
                    median_ratio: None,
                };
                for run in &runs {
                    let value = |server: &str| {
                        run.servers
                            .iter()
                            .find(|s| s.server == server && s.not_run.is_none())
                            .and_then(get)
                    };
                    let (stock, ours) = (value("stock"), value("flower_rs"));
                    spread.stock.extend(stock);
                    spread.flower_rs.extend(ours);
                    spread.ratios.extend(ratio(ours, stock));
                }
                spread.median_ratio = median(&spread.ratios);
                spread
            })
            .collect();
        let target = |spread: &Spread, name: &str| Target {
            name: format!("{name}, median of {} repetitions", spread.ratios.len()),
            goal: "flower-rs <= 1/5 of the stock SuperLink + ServerApp".into(),
            measured: format!(
                "per-repetition ratios {}; medians {} vs {}",
                spread
                    .ratios
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                opt(median(&spread.flower_rs), 2),
                opt(median(&spread.stock), 2),
            ),
            met: spread.median_ratio.map(|r| r <= 0.2),
        };
        let targets = vec![
            target(&spreads[1], "server peak RSS (tree sum of VmHWM)"),
            target(&spreads[0], "server CPU-seconds per round (tree)"),
        ];
        RepeatedResult {
            runs,
            spreads,
            targets,
        }
    }

    /// True when any repetition failed.
    pub(crate) fn failed(&self) -> bool {
        self.runs.iter().any(FleetResult::failed)
    }

    /// Prints every repetition, then the summary.
    pub(crate) fn print(&self) {
        for (i, run) in self.runs.iter().enumerate() {
            println!("\n=== repetition {} of {} ===", i + 1, self.runs.len());
            run.print();
        }
        println!("\n=== over {} repetitions ===\n", self.runs.len());
        let header: Vec<String> = [
            "figure",
            "stock",
            "flower_rs",
            "flower_rs / stock",
            "median ratio",
        ]
        .iter()
        .map(|h| h.to_string())
        .collect();
        let list = |v: &[f64], d: usize| {
            v.iter()
                .map(|x| format!("{x:.d$}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let rows: Vec<Vec<String>> = self
            .spreads
            .iter()
            .map(|s| {
                vec![
                    s.figure.clone(),
                    list(&s.stock, 2),
                    list(&s.flower_rs, 2),
                    list(&s.ratios, 3),
                    opt(s.median_ratio, 3),
                ]
            })
            .collect();
        print!("{}", markdown_table(&header, &rows));
        println!();
        println!("targets (median of the per-repetition ratios):");
        for t in &self.targets {
            println!("  {t}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn markdown_rows_have_pipes_and_a_rule() {
        let t = markdown_table(
            &["what".into(), "a".into()],
            &[vec!["x".into(), "12".into()]],
        );
        assert_eq!(t, "| what |  a |\n|------|----|\n| x    | 12 |\n");
    }
}
