//! The figures of `node`: per node from its [`NodeOutcome`] and the
//! readings at the server's round markers; per kind the mean over its
//! nodes; the ratio rust / stock; the check that the run did the expected
//! arithmetic; the printed table.

use std::path::Path;

use flower_core::NdArray;
use serde::Serialize;

use super::{Kind, RoundReadings};
use crate::compare::Machine;
use crate::fleet::{markdown_table, mib, round_deltas, PeakRss, Reading, Seen};
use crate::proctree::{Member, Totals};
use crate::report::{opt, ratio};

/// The workload, for the JSON.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Workload {
    /// Nodes of each kind.
    pub(crate) nodes_per_kind: usize,
    /// float32 parameters.
    pub(crate) params: usize,
    /// Bytes of one model.
    pub(crate) model_bytes: u64,
    /// Rounds.
    pub(crate) rounds: u64,
    /// The FAB given to flower-server (the stock nodes run its ClientApp).
    pub(crate) fab: String,
    /// Its SHA-256.
    pub(crate) fab_sha256: String,
    /// The app directory.
    pub(crate) app: String,
}

/// What one node's run left behind.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeOutcome {
    /// Stock or Rust.
    pub(crate) kind: Kind,
    /// Its `index` (node config).
    pub(crate) index: usize,
    /// How it was started.
    pub(crate) command: String,
    /// Its log.
    pub(crate) log: String,
    /// It had ended before the harness stopped it.
    pub(crate) exited_by_itself: bool,
    /// Exit status of the root process.
    pub(crate) exit_status: Option<String>,
    /// The tree's sums after it was stopped (whole life).
    pub(crate) final_totals: Totals,
    /// Every process of the tree.
    pub(crate) members: Vec<Member>,
    /// Relay bytes node → server.
    pub(crate) wire_to_server: u64,
    /// Relay bytes server → node.
    pub(crate) wire_to_node: u64,
    /// TCP connections through its relay.
    pub(crate) wire_connections: u64,
}

/// What the server side did (for context and for the checks).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerSide {
    /// How flower-server was started.
    pub(crate) command: String,
    /// Its log.
    pub(crate) log: String,
    /// How the wait ended.
    pub(crate) waited: String,
    /// Its exit status.
    pub(crate) exit_status: Option<String>,
    /// Its tree's sums (the server process), whole life.
    pub(crate) totals: Totals,
    /// Round markers with the server's readings.
    pub(crate) seen: Seen,
}

/// One node's share of one round.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeRound {
    /// Round number.
    pub(crate) round: u64,
    /// Tree CPU seconds from the previous round's end (round 1: its start)
    /// to this round's end.
    pub(crate) cpu_s: f64,
    /// Relay bytes (both ways) over the same span.
    pub(crate) wire_bytes: u64,
    /// Wall seconds over the same span (the same for every node).
    pub(crate) wall_s: f64,
}

/// Everything measured about one node.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeFigures {
    /// Stock or Rust.
    pub(crate) kind: Kind,
    /// Its `index`.
    pub(crate) index: usize,
    /// Per completed round.
    pub(crate) rounds: Vec<NodeRound>,
    /// Tree CPU from the start of round 1 to the end of the last round.
    pub(crate) rounds_cpu_s: Option<f64>,
    /// `rounds_cpu_s` / completed rounds.
    pub(crate) cpu_per_round_s: Option<f64>,
    /// Tree CPU until round 1 started (start-up, joining, idle polling).
    pub(crate) cpu_before_round1_s: Option<f64>,
    /// Tree CPU over the whole life, until stopped.
    pub(crate) total_cpu_s: f64,
    /// Peak RSS of the tree.
    #[serde(flatten)]
    pub(crate) peak: PeakRss,
    /// Processes the tree had over its life.
    pub(crate) processes: usize,
    /// Relay bytes node → server, whole life.
    pub(crate) wire_to_server_bytes: u64,
    /// Relay bytes server → node, whole life.
    pub(crate) wire_to_node_bytes: u64,
    /// Both ways, from the start of round 1 to the end of the last round.
    pub(crate) wire_rounds_bytes: Option<u64>,
    /// The raw outcome.
    pub(crate) outcome: NodeOutcome,
}

impl NodeFigures {
    /// The figures of the node at position `at` of every reading.
    pub(crate) fn new(outcome: NodeOutcome, at: usize, readings: &RoundReadings) -> NodeFigures {
        let pick = |v: &Vec<Reading>| v.get(at).copied();
        let start = readings.starts.get(&1).and_then(pick);
        let (numbers, ends): (Vec<u64>, Vec<Reading>) = readings
            .ends
            .iter()
            .filter_map(|(round, v)| Some((*round, pick(v)?)))
            .unzip();
        let rounds: Vec<NodeRound> = numbers
            .into_iter()
            .zip(round_deltas(start, &ends))
            .map(|(round, d)| NodeRound {
                round,
                cpu_s: d.cpu_s,
                wire_bytes: d.wire_bytes,
                wall_s: d.wall_s,
            })
            .collect();
        let whole = start.zip(ends.last()).map(|(s, l)| l.since(&s));
        let (rounds_cpu_s, wire_rounds_bytes) =
            (whole.map(|d| d.cpu_s), whole.map(|d| d.wire_bytes));
        let completed = rounds.len();
        let t = outcome.final_totals;
        NodeFigures {
            kind: outcome.kind,
            index: outcome.index,
            rounds,
            rounds_cpu_s,
            cpu_per_round_s: rounds_cpu_s
                .filter(|_| completed > 0)
                .map(|c| c / completed as f64),
            cpu_before_round1_s: start.map(|s| s.tree.cpu_s),
            total_cpu_s: t.cpu_s,
            peak: PeakRss::from(&t),
            processes: t.processes,
            wire_to_server_bytes: outcome.wire_to_server,
            wire_to_node_bytes: outcome.wire_to_node,
            wire_rounds_bytes,
            outcome,
        }
    }
}

/// Whether the run did the expected arithmetic.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunCheck {
    /// Every check passed.
    pub(crate) ok: bool,
    /// What was checked, one line each (failures first say FAILED).
    pub(crate) lines: Vec<String>,
}

/// Largest allowed deviation from the expected float32 values, relative to
/// `1 + |shift|`: FedAvg's weighted mean rounds each round's result to f32,
/// while a node that skipped its work is off by at least half a step.
const TOLERANCE: f64 = 1e-4;

/// Checks the final model against `initial + shift` (every element).
pub(crate) fn compare_model(
    initial: &[NdArray],
    final_model: &[NdArray],
    shift: f64,
) -> Result<f64, String> {
    if initial.len() != final_model.len() {
        return Err(format!(
            "{} arrays, expected {}",
            final_model.len(),
            initial.len()
        ));
    }
    let tolerance = TOLERANCE * (1.0 + shift.abs());
    let mut max_err = 0.0f64;
    for (i, (a, b)) in initial.iter().zip(final_model).enumerate() {
        let (NdArray::F32(a), NdArray::F32(b)) = (a, b) else {
            return Err(format!("array {i} is {:?}, expected float32", b.dtype()));
        };
        if a.shape() != b.shape() {
            return Err(format!(
                "array {i} has shape {:?}, expected {:?}",
                b.shape(),
                a.shape()
            ));
        }
        for (x, y) in a.iter().zip(b.iter()) {
            max_err = max_err.max((f64::from(*y) - (f64::from(*x) + shift)).abs());
        }
    }
    if max_err > tolerance {
        return Err(format!(
            "an element is off by {max_err:.3e} (tolerance {tolerance:.1e})"
        ));
    }
    Ok(max_err)
}

/// The rounds of flower-server's `history.json`: `(round, fit results,
/// fit failures, evaluate results, evaluate failures)`, and the aggregated
/// evaluate loss per round (the `loss` metric, else `losses_distributed`).
pub(crate) fn parse_history(text: &str) -> Result<HistorySummary, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("history.json: {e}"))?;
    let rounds = v["rounds"]
        .as_array()
        .ok_or("history.json has no `rounds` list")?
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().ok_or(format!("a round has no `{k}`"));
            Ok(RoundCounts {
                round: n("round")?,
                fit_results: n("fit_results")?,
                fit_failures: n("fit_failures")?,
                evaluate_results: n("evaluate_results")?,
                evaluate_failures: n("evaluate_failures")?,
                fit_s: r["fit_seconds"].as_f64(),
                evaluate_s: r["evaluate_seconds"].as_f64(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let pairs = match v["metrics_distributed"]["loss"].as_array() {
        Some(a) => a,
        None => v["losses_distributed"].as_array().map_or(&[][..], |a| a),
    };
    let losses = pairs
        .iter()
        .filter_map(|p| Some((p[0].as_u64()?, p[1].as_f64()?)))
        .collect();
    Ok(HistorySummary { rounds, losses })
}

/// One round of `history.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RoundCounts {
    /// Round number.
    pub(crate) round: u64,
    /// Train replies aggregated.
    pub(crate) fit_results: u64,
    /// Train failures (error replies, none).
    pub(crate) fit_failures: u64,
    /// Evaluate replies aggregated.
    pub(crate) evaluate_results: u64,
    /// Evaluate failures.
    pub(crate) evaluate_failures: u64,
    /// The server's timing of the train phase.
    pub(crate) fit_s: Option<f64>,
    /// The server's timing of the evaluate phase.
    pub(crate) evaluate_s: Option<f64>,
}

/// What `history.json` says.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct HistorySummary {
    /// Per round.
    pub(crate) rounds: Vec<RoundCounts>,
    /// `(round, aggregated evaluate loss)`.
    pub(crate) losses: Vec<(u64, f64)>,
}

/// Checks the server's output directory after a run of `rounds` rounds
/// with `nodes` nodes in all, each round adding `per_round` to every
/// parameter: every reply arrived and none failed, the aggregated loss is
/// the bench ClientApp's (sum of every array's first element), and the
/// final model is `initial + rounds * per_round`.
pub(crate) fn check_run(
    initial: &[NdArray],
    out_dir: &Path,
    nodes: usize,
    rounds: u64,
    per_round: f64,
) -> (RunCheck, HistorySummary) {
    let mut lines = Vec::new();
    let mut ok = true;
    let mut say = |good: bool, text: String| {
        ok &= good;
        lines.push(if good {
            text
        } else {
            format!("FAILED: {text}")
        });
    };
    let history = std::fs::read_to_string(out_dir.join("history.json"))
        .map_err(|e| format!("{}: {e}", out_dir.join("history.json").display()))
        .and_then(|t| parse_history(&t));
    let history = match history {
        Ok(h) => h,
        Err(e) => {
            say(false, e);
            HistorySummary::default()
        }
    };
    let n = nodes as u64;
    let all_replied = history.rounds.len() as u64 == rounds
        && history.rounds.iter().all(|r| {
            (
                r.fit_results,
                r.fit_failures,
                r.evaluate_results,
                r.evaluate_failures,
            ) == (n, 0, n, 0)
        });
    say(
        all_replied,
        format!(
            "history.json: {} of {rounds} rounds, each with {n} train and {n} evaluate replies and no failure",
            if all_replied { rounds } else { history.rounds.len() as u64 }
        ),
    );
    let first: f64 = initial
        .iter()
        .filter_map(|a| match a {
            NdArray::F32(x) => x.iter().next().map(|v| f64::from(*v)),
            _ => None,
        })
        .sum();
    let arrays = initial.len() as f64;
    let losses_ok = history.losses.len() as u64 == rounds
        && history.losses.iter().all(|(r, loss)| {
            let expected = first + arrays * per_round * *r as f64;
            (loss - expected).abs() <= TOLERANCE * (1.0 + expected.abs())
        });
    say(
        losses_ok,
        format!(
            "aggregated evaluate loss per round = sum of the first elements ({:?})",
            history.losses
        ),
    );
    let shift = per_round * rounds as f64;
    let path = out_dir.join("model.npz");
    match flower_core::npz::read_npz_ordered(&path)
        .map_err(|e| format!("{}: {e}", path.display()))
        .and_then(|m| compare_model(initial, &m, shift))
    {
        Ok(err) => say(
            true,
            format!("final model = initial + {shift} in every element (max |error| {err:.1e})"),
        ),
        Err(e) => say(false, format!("final model = initial + {shift}: {e}")),
    }
    (RunCheck { ok, lines }, history)
}

/// The whole `node` result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeBenchResult {
    workload: Workload,
    machine: Machine,
    /// `/proc/loadavg` when the result was assembled.
    loadavg_at_end: String,
    server: ServerSide,
    history: HistorySummary,
    check: RunCheck,
    nodes: Vec<NodeFigures>,
    /// rust / stock of the per-kind means, per figure.
    ratios: Vec<(String, Option<f64>)>,
    /// What is measured, in words.
    method: Vec<String>,
    notes: Vec<String>,
}

const METHOD: &[&str] = &[
    "one flower-server run (Fleet API, the bench FAB, --strategy-api message --strategy fedavg, every node sampled for train and evaluate) with N Rust (bench-supernode) and N stock flower-supernode 1.42 nodes joined at once; node i of each kind has node config index=i, so both kinds send the same replies",
    "node = its whole process tree, read from /proc every 100 ms and at every round marker of the server: stock = flower-supernode + flower-superexec + one flwr-clientapp per message; rust = the bench-supernode process",
    "CPU = utime + stime of every tree member, each at its last reading (zombies keep their final times); round i = from the end of round i-1 (round 1: the server's configure_train) to the server's round complete line",
    "peak RSS = VmHWM per tree member: 'sum' adds every member's peak (an upper bound; for stock it adds the short-lived flwr-clientapp processes), 'largest process' is the largest single peak, 'peak summed VmRSS' the largest sum seen in one scan",
    "wire bytes = what a byte-counting TCP relay in the harness (one per node) copied between that node and the Fleet port, both ways (plaintext HTTP/1.1)",
    "both kinds poll for messages every 3 s (flwr's default) and share the 2-CPU machine with the server, the relays and the harness: CPU and RSS are per node tree; wall times are the round's, not a node's",
];

impl NodeBenchResult {
    /// Computes the figures.
    pub(crate) fn new(
        workload: Workload,
        machine: Machine,
        server: ServerSide,
        readings: RoundReadings,
        outcomes: Vec<NodeOutcome>,
        (check, history): (RunCheck, HistorySummary),
        start_error: Option<String>,
    ) -> Self {
        let nodes: Vec<NodeFigures> = outcomes
            .into_iter()
            .enumerate()
            .map(|(at, o)| NodeFigures::new(o, at, &readings))
            .collect();
        let mut notes = Vec::new();
        if let Some(e) = start_error {
            notes.push(format!("starting the nodes failed: {e}"));
        }
        if server.seen.rounds.len() < workload.rounds as usize {
            notes.push(format!(
                "completed {} of {} rounds ({}); the figures cover the completed rounds only",
                server.seen.rounds.len(),
                workload.rounds,
                server.waited
            ));
        }
        for n in &nodes {
            if n.outcome.exited_by_itself {
                notes.push(format!(
                    "{} node {} ended before the harness stopped it ({}); see {}",
                    n.kind.label(),
                    n.index,
                    n.outcome.exit_status.as_deref().unwrap_or("?"),
                    n.outcome.log
                ));
            }
        }
        let mut result = NodeBenchResult {
            workload,
            machine,
            loadavg_at_end: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
            server,
            history,
            check,
            nodes,
            ratios: Vec::new(),
            method: METHOD.iter().map(|s| s.to_string()).collect(),
            notes,
        };
        result.ratios = result
            .rows()
            .into_iter()
            .map(|(label, vals, _)| (label, ratio(vals[1], vals[0])))
            .collect();
        result
    }

    /// True when the run fell short or did not do the expected arithmetic.
    pub(crate) fn failed(&self) -> bool {
        !self.check.ok || self.server.seen.rounds.len() < self.workload.rounds as usize
    }

    /// Mean of `get` over the nodes of `kind` (none when a node lacks it).
    fn mean(&self, kind: Kind, get: impl Fn(&NodeFigures) -> Option<f64>) -> Option<f64> {
        let vals: Option<Vec<f64>> = self
            .nodes
            .iter()
            .filter(|n| n.kind == kind)
            .map(get)
            .collect();
        let vals = vals?;
        (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
    }

    /// `(label, [stock, rust], digits)` per table row.
    fn rows(&self) -> Vec<(String, [Option<f64>; 2], usize)> {
        let mut rows = Vec::new();
        let mut add = |label: String, get: &dyn Fn(&NodeFigures) -> Option<f64>, digits| {
            rows.push((
                label,
                [self.mean(Kind::Stock, get), self.mean(Kind::Rust, get)],
                digits,
            ));
        };
        let max_rounds = self.nodes.iter().map(|n| n.rounds.len()).max().unwrap_or(0);
        for i in 0..max_rounds {
            add(
                format!("round {} CPU s", i + 1),
                &|n| n.rounds.get(i).map(|r| r.cpu_s),
                2,
            );
        }
        for i in 0..max_rounds {
            add(
                format!("round {} wire MB", i + 1),
                &|n| n.rounds.get(i).map(|r| r.wire_bytes as f64 / 1e6),
                1,
            );
        }
        type Fig = fn(&NodeFigures) -> Option<f64>;
        let figures: [(&str, Fig, usize); 11] = [
            ("CPU s per round", |n| n.cpu_per_round_s, 2),
            ("CPU s, all rounds", |n| n.rounds_cpu_s, 2),
            (
                "CPU s before round 1 (start, join)",
                |n| n.cpu_before_round1_s,
                2,
            ),
            ("CPU s, whole life", |n| Some(n.total_cpu_s), 2),
            (
                "peak RSS MiB, tree sum of VmHWM",
                |n| Some(n.peak.sum_hwm_mib),
                1,
            ),
            (
                "peak RSS MiB, largest process",
                |n| Some(n.peak.max_hwm_mib),
                1,
            ),
            ("peak summed VmRSS MiB", |n| Some(n.peak.sum_rss_mib), 1),
            ("processes in the tree", |n| Some(n.processes as f64), 0),
            (
                "wire MB node -> server",
                |n| Some(n.wire_to_server_bytes as f64 / 1e6),
                1,
            ),
            (
                "wire MB server -> node",
                |n| Some(n.wire_to_node_bytes as f64 / 1e6),
                1,
            ),
            (
                "wire MB during the rounds",
                |n| n.wire_rounds_bytes.map(|b| b as f64 / 1e6),
                1,
            ),
        ];
        for (label, get, digits) in figures {
            add(label.to_string(), &get, digits);
        }
        rows
    }

    /// The table as Markdown: stock, rust, rust / stock.
    pub(crate) fn markdown(&self) -> String {
        let per = if self.workload.nodes_per_kind > 1 {
            format!(" (mean of {} nodes)", self.workload.nodes_per_kind)
        } else {
            String::new()
        };
        let header = [
            format!("per node{per}"),
            "stock".to_string(),
            "rust".to_string(),
            "rust / stock".to_string(),
        ];
        let rows: Vec<Vec<String>> = self
            .rows()
            .into_iter()
            .map(|(label, [s, r], digits)| {
                vec![label, opt(s, digits), opt(r, digits), opt(ratio(r, s), 3)]
            })
            .collect();
        markdown_table(&header, &rows)
    }

    /// Prints the table, the checks and the notes.
    pub(crate) fn print(&self) {
        let w = &self.workload;
        println!();
        println!(
            "flower-bench node: {n} Rust + {n} stock SuperNodes in one flower-server run (message-API FedAvg), P = {} float32 ({:.1} MB/model), R = {}, FAB sha256 {}",
            w.params,
            w.model_bytes as f64 / 1e6,
            w.rounds,
            &w.fab_sha256[..w.fab_sha256.len().min(16)],
            n = w.nodes_per_kind,
        );
        println!(
            "machine: {} CPUs, {}; load average at start {}, at end {}",
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.loadavg_at_start,
            self.loadavg_at_end
        );
        let timings: Vec<String> = self
            .history
            .rounds
            .iter()
            .map(|r| {
                format!(
                    "round {}: train {} s, evaluate {} s",
                    r.round,
                    opt(r.fit_s, 2),
                    opt(r.evaluate_s, 2)
                )
            })
            .collect();
        println!("server's timings: {}", timings.join("; "));
        println!(
            "server (flower-server) CPU {:.2} s, VmHWM {:.1} MiB, whole life",
            self.server.totals.cpu_s,
            mib(self.server.totals.max_hwm_kib)
        );
        println!();
        print!("{}", self.markdown());
        println!();
        for n in &self.nodes {
            let procs: Vec<String> = n
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
            println!(
                "{} node {} tree: {}",
                n.kind.label(),
                n.index,
                procs.join("; ")
            );
        }
        for e in &self.server.seen.errors {
            println!("server error line: {e}");
        }
        println!();
        println!("checks:");
        for l in &self.check.lines {
            println!("  {l}");
        }
        for n in &self.notes {
            println!("note: {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn f32s(v: &[f32]) -> NdArray {
        NdArray::F32(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).expect("1-D"))
    }

    fn reading(at_s: f64, cpu_s: f64, wire: u64) -> Reading {
        Reading {
            at_s,
            tree: Totals {
                cpu_s,
                ..Totals::default()
            },
            to_server: wire,
            to_nodes: 0,
        }
    }

    fn outcome(kind: Kind, cpu_s: f64, hwm_kib: u64) -> NodeOutcome {
        NodeOutcome {
            kind,
            index: 0,
            command: String::new(),
            log: String::new(),
            exited_by_itself: false,
            exit_status: None,
            final_totals: Totals {
                cpu_s,
                sum_hwm_kib: hwm_kib,
                max_hwm_kib: hwm_kib,
                processes: 1,
                ..Totals::default()
            },
            members: Vec::new(),
            wire_to_server: 0,
            wire_to_node: 0,
            wire_connections: 0,
        }
    }

    #[test]
    fn round_cpu_is_the_difference_between_readings() {
        // Node 0 (stock) and node 1 (rust), round 1 then round 2.
        let mut readings = RoundReadings::default();
        readings
            .starts
            .insert(1, vec![reading(10.0, 5.0, 100), reading(10.0, 0.5, 100)]);
        readings
            .ends
            .push((1, vec![reading(20.0, 9.0, 1100), reading(20.0, 0.75, 600)]));
        readings.ends.push((
            2,
            vec![reading(26.0, 15.0, 2100), reading(26.0, 1.25, 1100)],
        ));
        let stock = NodeFigures::new(outcome(Kind::Stock, 16.0, 4096), 0, &readings);
        let rust = NodeFigures::new(outcome(Kind::Rust, 1.5, 1024), 1, &readings);
        assert_eq!(
            stock.rounds.iter().map(|r| r.cpu_s).collect::<Vec<_>>(),
            [4.0, 6.0]
        );
        assert_eq!(stock.rounds[1].wall_s, 6.0);
        assert_eq!(stock.rounds[0].wire_bytes, 1000);
        assert_eq!(stock.cpu_per_round_s, Some(5.0));
        assert_eq!(stock.cpu_before_round1_s, Some(5.0));
        assert_eq!(rust.rounds_cpu_s, Some(0.75));
        assert_eq!(rust.wire_rounds_bytes, Some(1000));
        let result = NodeBenchResult {
            workload: Workload {
                nodes_per_kind: 1,
                params: 4,
                model_bytes: 16,
                rounds: 2,
                fab: String::new(),
                fab_sha256: String::new(),
                app: String::new(),
            },
            machine: Machine::read(),
            loadavg_at_end: String::new(),
            server: ServerSide {
                command: String::new(),
                log: String::new(),
                waited: String::new(),
                exit_status: None,
                totals: Totals::default(),
                seen: Seen::default(),
            },
            history: HistorySummary::default(),
            check: RunCheck {
                ok: true,
                lines: Vec::new(),
            },
            nodes: vec![stock, rust],
            ratios: Vec::new(),
            method: Vec::new(),
            notes: Vec::new(),
        };
        let table = result.markdown();
        let cells = |label: &str| -> Vec<String> {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| {label} ")))
                .unwrap_or_else(|| panic!("no row {label:?} in\n{table}"));
            row.split('|').map(|c| c.trim().to_string()).collect()
        };
        assert_eq!(cells("CPU s per round")[2..5], ["5.00", "0.38", "0.075"]);
        assert_eq!(cells("round 2 CPU s")[2..5], ["6.00", "0.50", "0.083"]);
        assert_eq!(
            cells("peak RSS MiB, largest process")[2..5],
            ["4.0", "1.0", "0.250"]
        );
    }

    #[test]
    fn model_must_be_shifted_everywhere() {
        let initial = vec![f32s(&[-1.0, 0.5]), f32s(&[2.0])];
        let good = vec![f32s(&[2.0, 3.5]), f32s(&[5.0])];
        assert!(compare_model(&initial, &good, 3.0).is_ok());
        // One node that did nothing: half the shift.
        let half = vec![f32s(&[0.5, 2.0]), f32s(&[3.5])];
        assert!(compare_model(&initial, &half, 3.0).is_err());
        let off_by_one_element = vec![f32s(&[2.0, 3.5]), f32s(&[5.01])];
        assert!(compare_model(&initial, &off_by_one_element, 3.0).is_err());
        assert!(compare_model(&initial, &good[..1], 3.0).is_err());
        assert!(compare_model(&initial, &[f32s(&[2.0]), f32s(&[5.0])], 3.0).is_err());
    }

    #[test]
    fn history_rounds_and_losses() {
        let text = r#"{"losses_distributed":[],"losses_centralized":[],
            "metrics_distributed_fit":{},"metrics_distributed":{"loss":[[1,-2.0],[2,2.0]]},
            "metrics_centralized":{},
            "rounds":[{"round":1,"fit_results":2,"fit_failures":0,"evaluate_results":2,
                       "evaluate_failures":0,"fit_seconds":1.5,"evaluate_seconds":0.25}]}"#;
        let h = parse_history(text).expect("parses");
        assert_eq!(h.losses, [(1, -2.0), (2, 2.0)]);
        assert_eq!(h.rounds.len(), 1);
        assert_eq!(h.rounds[0].fit_results, 2);
        assert_eq!(h.rounds[0].evaluate_s, Some(0.25));
        assert!(parse_history(r#"{"rounds":[{"round":1}]}"#).is_err());
        assert!(parse_history("not json").is_err());
    }
}
