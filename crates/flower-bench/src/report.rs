//! Turning a [`RunOutcome`] into the figures that are printed and written
//! as JSON.

use serde::Serialize;

use crate::clients::ClientsSummary;
use crate::run::RunOutcome;

/// One completed round.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoundRow {
    /// Round number.
    pub(crate) round: u64,
    /// Fit phase wall seconds (server's own timing).
    pub(crate) fit_s: Option<f64>,
    /// Evaluate phase wall seconds (server's own timing).
    pub(crate) evaluate_s: Option<f64>,
    /// Server CPU seconds spent since the previous round completed (for
    /// round 1: since the server was ready, so the clients' connections and
    /// handshakes are included).
    pub(crate) cpu_s: f64,
    /// Relay bytes (both ways) since the previous round completed.
    pub(crate) wire_bytes: u64,
    /// Server `VmRSS` when the round completed (MiB).
    pub(crate) rss_mib: f64,
    /// Server `VmHWM` when the round completed (MiB).
    pub(crate) hwm_mib: f64,
}

/// Everything measured about one server.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerResult {
    /// `flower_rs` or `python`.
    pub(crate) server: String,
    /// Command line (token hidden).
    pub(crate) command: String,
    /// Exit status.
    pub(crate) exit_status: Option<String>,
    /// Stopped at the timeout.
    pub(crate) timed_out: bool,
    /// Rounds that completed.
    pub(crate) completed_rounds: usize,
    /// Per-round figures.
    pub(crate) rounds: Vec<RoundRow>,
    /// CPU seconds until the server was ready (interpreter/imports, model load).
    pub(crate) startup_cpu_s: f64,
    /// CPU seconds from ready to the last completed round.
    pub(crate) rounds_cpu_s: f64,
    /// `rounds_cpu_s / completed_rounds`.
    pub(crate) cpu_per_round_s: Option<f64>,
    /// CPU seconds over the whole process life (startup, rounds, shutdown;
    /// for Python also the reference wrapper's JSON dump of the model).
    pub(crate) total_cpu_s: f64,
    /// User part of `total_cpu_s`.
    pub(crate) total_user_s: f64,
    /// System part of `total_cpu_s`.
    pub(crate) total_sys_s: f64,
    /// Peak RSS (`VmHWM`, polled every 100 ms over the whole life), MiB.
    pub(crate) peak_rss_mib: f64,
    /// `VmHWM` when the last round completed, MiB.
    pub(crate) peak_rss_at_last_round_mib: Option<f64>,
    /// How wire bytes were counted.
    pub(crate) wire_method: &'static str,
    /// Bytes clients → server (TLS records as sent).
    pub(crate) wire_to_server_bytes: Option<u64>,
    /// Bytes server → clients.
    pub(crate) wire_to_clients_bytes: Option<u64>,
    /// Both ways.
    pub(crate) wire_total_bytes: Option<u64>,
    /// TCP connections through the relay.
    pub(crate) wire_connections: Option<u64>,
    /// `/proc/<pid>/io` `rchar` (last poll before exit). Not a wire figure:
    /// it counts `read`/`readv` (files included) but not `recv`/`recvmsg`,
    /// which is how tokio (std) and grpcio read sockets.
    pub(crate) proc_io_rchar_bytes: u64,
    /// `/proc/<pid>/io` `wchar` (last poll before exit). Counts `write` and
    /// `writev` (hyper's socket writes) but not `send`/`sendmsg` (grpcio's).
    pub(crate) proc_io_wchar_bytes: u64,
    /// Model bytes moved in the completed rounds: clients × 4P × 3 per round
    /// (fit download + fit upload + evaluate download).
    pub(crate) model_bytes_moved: u64,
    /// `model_bytes_moved / rounds_cpu_s`.
    pub(crate) model_bytes_per_cpu_s: Option<f64>,
    /// Seconds from starting the clients to the server's exit.
    pub(crate) wall_s: f64,
    /// Most clients connected at once (flower-rs `client joined` lines).
    pub(crate) max_connected: Option<u64>,
    /// Seconds from starting the clients until `max_connected` was reached.
    pub(crate) all_connected_after_s: Option<f64>,
    /// The Rust clients' summary.
    pub(crate) rust_clients: Option<ClientsSummary>,
    /// CPU seconds of the Rust clients' process.
    pub(crate) rust_clients_cpu_s: f64,
    /// Peak RSS of the Rust clients' process, MiB.
    pub(crate) rust_clients_peak_rss_mib: Option<f64>,
    /// Python client processes that succeeded / failed.
    pub(crate) python_clients_ok_failed: (usize, usize),
    /// First error lines of the server.
    pub(crate) server_errors: Vec<String>,
    /// Server log file.
    pub(crate) log: String,
}

impl ServerResult {
    /// Computes the figures of `o`; `clients` is the number of clients per
    /// round and `params` the model size.
    pub(crate) fn from_outcome(
        key: &str,
        o: &RunOutcome,
        clients: usize,
        params: usize,
    ) -> ServerResult {
        let mut rounds = Vec::new();
        let (mut cpu_prev, mut wire_prev) = (o.ready.cpu_s(), 0u64);
        for r in &o.events.rounds {
            let wire = r.wire_to_server + r.wire_to_clients;
            rounds.push(RoundRow {
                round: r.round,
                fit_s: r.fit_s,
                evaluate_s: r.evaluate_s,
                cpu_s: r.cpu_s - cpu_prev,
                wire_bytes: wire.saturating_sub(wire_prev),
                rss_mib: r.rss_kib as f64 / 1024.0,
                hwm_mib: r.hwm_kib as f64 / 1024.0,
            });
            cpu_prev = r.cpu_s;
            wire_prev = wire;
        }
        let completed = rounds.len();
        let rounds_cpu_s = o
            .events
            .rounds
            .last()
            .map_or(0.0, |r| r.cpu_s - o.ready.cpu_s());
        let model_bytes_moved = (clients as u64) * 4 * (params as u64) * 3 * completed as u64;
        let peak_kib = o.server.max_hwm_kib.max(o.ready.vm_hwm_kib);
        ServerResult {
            server: key.to_string(),
            command: o.command_line.clone(),
            exit_status: o.exit_status.clone(),
            timed_out: o.timed_out,
            completed_rounds: completed,
            rounds,
            startup_cpu_s: o.ready.cpu_s(),
            rounds_cpu_s,
            cpu_per_round_s: (completed > 0).then(|| rounds_cpu_s / completed as f64),
            total_cpu_s: o.server_cpu_s,
            total_user_s: o.server_user_sys_s.0,
            total_sys_s: o.server_user_sys_s.1,
            peak_rss_mib: peak_kib as f64 / 1024.0,
            peak_rss_at_last_round_mib: o.events.rounds.last().map(|r| r.hwm_kib as f64 / 1024.0),
            wire_method: if o.wire.is_some() {
                "byte-counting TCP relay in the harness between clients and server (TLS records, both ways)"
            } else {
                "none (no relay); see proc_io_*"
            },
            wire_to_server_bytes: o.wire.map(|w| w.0),
            wire_to_clients_bytes: o.wire.map(|w| w.1),
            wire_total_bytes: o.wire.map(|w| w.0 + w.1),
            wire_connections: o.wire.map(|w| w.2),
            proc_io_rchar_bytes: o.server.last.rchar,
            proc_io_wchar_bytes: o.server.last.wchar,
            model_bytes_moved,
            model_bytes_per_cpu_s: (rounds_cpu_s > 0.0)
                .then(|| model_bytes_moved as f64 / rounds_cpu_s),
            wall_s: o.wall_s,
            max_connected: (o.events.max_connected > 0).then_some(o.events.max_connected),
            all_connected_after_s: o
                .events
                .max_connected_at_s
                .map(|t| t - o.clients_started_at_s),
            rust_clients: o.clients.clone(),
            rust_clients_cpu_s: o.clients_cpu_s,
            rust_clients_peak_rss_mib: o.clients_observed.map(|c| c.max_hwm_kib as f64 / 1024.0),
            python_clients_ok_failed: (o.python_clients_ok, o.python_clients_failed),
            server_errors: o.events.errors.clone(),
            log: o.log.display().to_string(),
        }
    }
}

/// A pass/miss line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    /// What is checked.
    pub(crate) name: String,
    /// The goal, in words.
    pub(crate) goal: String,
    /// The measured value, in words.
    pub(crate) measured: String,
    /// `Some(true)` met, `Some(false)` missed, `None` not measurable.
    pub(crate) met: Option<bool>,
}

impl std::fmt::Display for Target {
    /// `[MET] name: goal — measured` (`MISSED`, `n/a`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "n/a",
        };
        write!(
            f,
            "[{verdict}] {}: {} — {}",
            self.name, self.goal, self.measured
        )
    }
}

/// `a / b` when both are there and `b > 0`.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Bytes as MB (10^6) with one decimal.
pub(crate) fn mb(bytes: f64) -> String {
    format!("{:.1} MB", bytes / 1e6)
}

/// MiB with one decimal.
pub(crate) fn mib(v: f64) -> String {
    format!("{v:.1} MiB")
}

/// A fixed-width table: first column left-aligned, the others right-aligned.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            if i == 0 {
                out.push_str(c);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str("  ");
                out.push_str(&" ".repeat(pad));
                out.push_str(c);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(rule.iter().map(String::as_str).collect(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// Formats an optional number.
pub(crate) fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns() {
        let t = table(
            &["what", "a", "b"],
            &[vec!["x".into(), "1".into(), "22".into()]],
        );
        assert_eq!(t, "what  a   b\n----  -  --\nx     1  22\n");
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
