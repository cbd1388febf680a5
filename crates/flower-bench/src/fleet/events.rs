//! What the servers say about their rounds, and the readings taken when
//! they say it.
//!
//! * stock: the bench ServerApp's marker lines (`bench-serverapp
//!   round=N fit_start`, `... fit_s=X`, `... evaluate_s=X`, `done`), read from
//!   the file named by run config `bench-log`; the SuperLink's own log for
//!   `[Fleet.ActivateNode] Activated node_id=` lines;
//! * flower-server: its JSON log lines `configure_fit` or, with a
//!   message-API strategy, `configure_train` (round start),
//!   `round complete` (`fit_s`, `evaluate_s`) and `run finished`.
//!
//! Each round start and round end takes a reading of the server's process
//! tree and of the relay's counters at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

use crate::proctree::{Totals, TreeId, Watcher};
use crate::relay::RelayCounters;

/// A reading at one event.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Reading {
    /// Seconds since the server was started.
    pub(crate) at_s: f64,
    /// The server tree's sums.
    pub(crate) tree: Totals,
    /// Relay bytes nodes → server so far.
    pub(crate) to_server: u64,
    /// Relay bytes server → nodes so far.
    pub(crate) to_nodes: u64,
}

impl Reading {
    /// What changed from `base` (an earlier reading) to this one.
    pub(crate) fn since(&self, base: &Reading) -> Delta {
        Delta {
            wall_s: self.at_s - base.at_s,
            cpu_s: self.tree.cpu_s - base.tree.cpu_s,
            wire_bytes: (self.to_server + self.to_nodes)
                .saturating_sub(base.to_server + base.to_nodes),
        }
    }
}

/// What changed between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Delta {
    /// Wall seconds.
    pub(crate) wall_s: f64,
    /// Tree CPU seconds.
    pub(crate) cpu_s: f64,
    /// Relay bytes, both ways.
    pub(crate) wire_bytes: u64,
}

/// Per round, from the previous round's end (round 1: `start`, when
/// known) to its end, given the readings at the rounds' ends in order.
pub(crate) fn round_deltas(start: Option<Reading>, ends: &[Reading]) -> Vec<Delta> {
    let mut prev = start;
    ends.iter()
        .map(|end| {
            let d = end.since(prev.as_ref().unwrap_or(end));
            prev = Some(*end);
            d
        })
        .collect()
}

/// One completed round.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoundEnd {
    /// Round number.
    pub(crate) round: u64,
    /// Fit phase wall seconds (the server's own timing).
    pub(crate) fit_s: Option<f64>,
    /// Evaluate phase wall seconds (the server's own timing).
    pub(crate) evaluate_s: Option<f64>,
    /// The reading when the round's end was seen.
    pub(crate) reading: Reading,
}

/// Everything seen so far.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Seen {
    /// Readings at round starts.
    pub(crate) starts: BTreeMap<u64, Reading>,
    /// Completed rounds in order.
    pub(crate) rounds: Vec<RoundEnd>,
    /// Fit seconds of rounds whose end was not seen yet (stock).
    #[serde(skip)]
    pending_fit: BTreeMap<u64, f64>,
    /// SuperNodes the stock SuperLink activated.
    pub(crate) activated: usize,
    /// The run ended (stock `done`, flower-server `run finished`).
    pub(crate) finished: bool,
    /// The first few error lines.
    pub(crate) errors: Vec<String>,
}

impl Seen {
    fn note_error(&mut self, line: &str) {
        if self.errors.len() < 8 {
            self.errors.push(line.chars().take(400).collect());
        }
    }
}

/// Takes readings and keeps what was seen; shared with the line handlers.
#[derive(Debug)]
pub(crate) struct Recorder {
    watcher: Arc<Watcher>,
    tree: OnceLock<TreeId>,
    relay: OnceLock<Arc<RelayCounters>>,
    started: Instant,
    seen: Mutex<Seen>,
}

/// A parsed marker line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Marker {
    /// A round began.
    RoundStart(u64),
    /// The fit phase of a round ended (stock: the round goes on).
    Fit(u64, f64),
    /// The evaluate phase ended, which ends the round (stock).
    Evaluate(u64, f64),
    /// A whole round ended (flower-server).
    RoundEnd(u64, Option<f64>, Option<f64>),
    /// The run ended.
    Finished,
    /// The stock SuperLink activated a SuperNode.
    Activated,
    /// An error line.
    Error,
}

/// Parses one line of the bench ServerApp (`bench-serverapp ...`) or of the
/// stock SuperLink.
pub(crate) fn parse_stock(line: &str) -> Option<Marker> {
    if line.contains("[Fleet.ActivateNode] Activated node_id=") {
        return Some(Marker::Activated);
    }
    if line.contains("Traceback") || line.contains("ERROR") {
        return Some(Marker::Error);
    }
    let rest = line.trim().strip_prefix("bench-serverapp ")?;
    if rest == "done" {
        return Some(Marker::Finished);
    }
    let rest = rest.strip_prefix("round=")?;
    let (round, what) = rest.split_once(' ')?;
    let round: u64 = round.parse().ok()?;
    if what == "fit_start" {
        return Some(Marker::RoundStart(round));
    }
    let (key, value) = what.split_once('=')?;
    let value: f64 = value.trim().parse().ok()?;
    match key {
        "fit_s" => Some(Marker::Fit(round, value)),
        "evaluate_s" => Some(Marker::Evaluate(round, value)),
        _ => None,
    }
}

fn json_f64(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses one JSON log line of flower-server (`--log-json`).
pub(crate) fn parse_flower_rs(line: &str) -> Option<Marker> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = &v["fields"];
    match fields["message"].as_str() {
        // `configure_train` with `--strategy-api message`.
        Some("configure_fit" | "configure_train") => {
            Some(Marker::RoundStart(fields["round"].as_u64()?))
        }
        Some("round complete") => Some(Marker::RoundEnd(
            fields["round"].as_u64()?,
            json_f64(&fields["fit_s"]),
            json_f64(&fields["evaluate_s"]),
        )),
        Some("run finished") => Some(Marker::Finished),
        _ if v["level"].as_str() == Some("ERROR") => Some(Marker::Error),
        _ => None,
    }
}

impl Recorder {
    /// A recorder whose clock starts now; the tree and the relay are set
    /// once they exist.
    pub(crate) fn new(watcher: Arc<Watcher>) -> Recorder {
        Recorder {
            watcher,
            tree: OnceLock::new(),
            relay: OnceLock::new(),
            started: Instant::now(),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Sets the server's tree.
    pub(crate) fn set_tree(&self, id: TreeId) {
        let _ = self.tree.set(id);
    }

    /// Sets the relay's counters.
    pub(crate) fn set_relay(&self, counters: Arc<RelayCounters>) {
        let _ = self.relay.set(counters);
    }

    /// Takes a reading now.
    pub(crate) fn read(&self) -> Reading {
        let tree = self
            .tree
            .get()
            .map(|id| self.watcher.sample(*id))
            .unwrap_or_default();
        let (to_server, to_nodes) = self.relay.get().map_or((0, 0), |r| r.bytes());
        Reading {
            at_s: self.started.elapsed().as_secs_f64(),
            tree,
            to_server,
            to_nodes,
        }
    }

    /// A copy of what was seen.
    pub(crate) fn seen(&self) -> Seen {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a marker (taking a reading for round starts and ends).
    pub(crate) fn on(&self, marker: Marker, line: &str) {
        match marker {
            Marker::RoundStart(r) => {
                let reading = self.read();
                self.lock().starts.entry(r).or_insert(reading);
            }
            Marker::Fit(r, s) => {
                self.lock().pending_fit.insert(r, s);
            }
            Marker::Evaluate(r, s) => {
                let reading = self.read();
                let mut seen = self.lock();
                let fit_s = seen.pending_fit.remove(&r);
                seen.rounds.push(RoundEnd {
                    round: r,
                    fit_s,
                    evaluate_s: Some(s),
                    reading,
                });
            }
            Marker::RoundEnd(r, fit_s, evaluate_s) => {
                let reading = self.read();
                self.lock().rounds.push(RoundEnd {
                    round: r,
                    fit_s,
                    evaluate_s,
                    reading,
                });
            }
            Marker::Finished => self.lock().finished = true,
            Marker::Activated => self.lock().activated += 1,
            Marker::Error => self.lock().note_error(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_lines() {
        assert_eq!(
            parse_stock("bench-serverapp round=1 fit_start"),
            Some(Marker::RoundStart(1))
        );
        assert_eq!(
            parse_stock("bench-serverapp round=2 fit_s=6.5"),
            Some(Marker::Fit(2, 6.5))
        );
        assert_eq!(
            parse_stock("bench-serverapp round=2 evaluate_s=0.25\n"),
            Some(Marker::Evaluate(2, 0.25))
        );
        assert_eq!(parse_stock("bench-serverapp done"), Some(Marker::Finished));
        assert_eq!(
            parse_stock(
                "\u{1b}[92mINFO \u{1b}[0m:      [Fleet.ActivateNode] Activated node_id=117"
            ),
            Some(Marker::Activated)
        );
        assert_eq!(parse_stock("bench-serverapp ready arrays=4"), None);
        assert_eq!(parse_stock("INFO [ROUND 1/2]"), None);
    }

    #[test]
    fn flower_rs_lines() {
        let start = r#"{"level":"INFO","fields":{"message":"configure_fit","round":1,"sampled":4,"available":4}}"#;
        assert_eq!(parse_flower_rs(start), Some(Marker::RoundStart(1)));
        let start =
            r#"{"level":"INFO","fields":{"message":"configure_train","round":3,"sampled":2}}"#;
        assert_eq!(parse_flower_rs(start), Some(Marker::RoundStart(3)));
        let end =
            r#"{"level":"INFO","fields":{"message":"round complete","round":3,"fit_results":2}}"#;
        assert_eq!(parse_flower_rs(end), Some(Marker::RoundEnd(3, None, None)));
        let end = r#"{"level":"INFO","fields":{"message":"round complete","round":2,"fit_s":"1.250","evaluate_s":"0.125"}}"#;
        assert_eq!(
            parse_flower_rs(end),
            Some(Marker::RoundEnd(2, Some(1.25), Some(0.125)))
        );
        let fin = r#"{"level":"INFO","fields":{"message":"run finished","rounds":2}}"#;
        assert_eq!(parse_flower_rs(fin), Some(Marker::Finished));
        let err = r#"{"level":"ERROR","fields":{"message":"boom"}}"#;
        assert_eq!(parse_flower_rs(err), Some(Marker::Error));
        assert_eq!(parse_flower_rs("not json"), None);
    }

    #[test]
    fn stock_round_pairs_fit_with_evaluate() {
        let rec = Recorder::new(Arc::new(Watcher::start()));
        rec.set_tree(rec.watcher.add(std::process::id()));
        for line in [
            "bench-serverapp round=1 fit_start",
            "bench-serverapp round=1 fit_s=2.5",
            "bench-serverapp round=1 evaluate_s=0.5",
            "bench-serverapp done",
        ] {
            if let Some(m) = parse_stock(line) {
                rec.on(m, line);
            }
        }
        let seen = rec.seen();
        assert!(seen.finished);
        assert_eq!(seen.rounds.len(), 1);
        assert_eq!(seen.rounds[0].fit_s, Some(2.5));
        assert_eq!(seen.rounds[0].evaluate_s, Some(0.5));
        let start = seen.starts[&1];
        assert!(seen.rounds[0].reading.tree.cpu_s >= start.tree.cpu_s);
        assert!(seen.rounds[0].reading.tree.max_hwm_kib > 0);
    }
}
