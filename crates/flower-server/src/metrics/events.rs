//! What the round driver reports while it runs: [`RunEvent`]s handed to
//! every [`RunObserver`] (the metrics, the terminal's progress).

use std::fmt;
use std::time::Duration;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Waiting for enough clients to connect.
    Waiting,
    /// Getting initial parameters (before round 1).
    Initializing,
    /// Fit: clients train.
    Fit,
    /// Evaluate: clients evaluate the new model.
    Evaluate,
    /// The run is over.
    Done,
}

impl Phase {
    /// The name used in metrics labels and progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Initializing => "initializing",
            Phase::Fit => "fit",
            Phase::Evaluate => "evaluate",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a run, as the round driver reports it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum RunEvent<'a> {
    /// The run starts (`completed` > 0 after a resume).
    RunStarted {
        /// Rounds planned.
        num_rounds: u64,
        /// Rounds already completed (resume).
        completed: u64,
    },
    /// Waiting for clients.
    Waiting {
        /// The round about to start (0 before the first).
        round: u64,
        /// Clients needed.
        required: usize,
        /// Clients connected now.
        connected: usize,
        /// The longest the wait may last.
        bound: Duration,
    },
    /// A fit or evaluate phase starts: instructions go out.
    PhaseStarted {
        /// Round number.
        round: u64,
        /// Rounds planned.
        num_rounds: u64,
        /// [`Phase::Fit`] or [`Phase::Evaluate`].
        phase: Phase,
        /// Clients sampled.
        sampled: usize,
    },
    /// A fit or evaluate phase ended.
    PhaseEnded {
        /// Round number.
        round: u64,
        /// Rounds planned.
        num_rounds: u64,
        /// [`Phase::Fit`] or [`Phase::Evaluate`].
        phase: Phase,
        /// Clients sampled.
        sampled: usize,
        /// Results aggregated.
        results: usize,
        /// Reason of each failure (`timeout`, `closed`, `status`, ...).
        failures: &'a [&'static str],
        /// Aggregated loss (evaluate phase, when the strategy gives one).
        loss: Option<f64>,
        /// Wall time of the phase.
        elapsed: Duration,
    },
    /// A round ended.
    RoundEnded {
        /// Round number.
        round: u64,
        /// Rounds planned.
        num_rounds: u64,
        /// Aggregated evaluate loss, if any.
        loss: Option<f64>,
        /// Wall time of the round (without waiting for clients).
        elapsed: Duration,
    },
    /// The run ended (completed or not).
    RunEnded {
        /// Rounds completed.
        completed: u64,
        /// Rounds planned.
        num_rounds: u64,
        /// Wall time of the run.
        elapsed: Duration,
    },
}

impl fmt::Display for RunEvent<'_> {
    /// One readable line, e.g.
    /// `round 2/10 fit: 5 sampled, 5 results, 0 failures, 1.24 s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RunEvent::RunStarted {
                num_rounds,
                completed,
            } if completed > 0 => write!(
                f,
                "run: {num_rounds} rounds, resuming after round {completed}"
            ),
            RunEvent::RunStarted { num_rounds, .. } => write!(f, "run: {num_rounds} rounds"),
            RunEvent::Waiting {
                round,
                required,
                connected,
                bound,
            } => write!(
                f,
                "round {round}: waiting for clients ({connected}/{required} connected, at most {} s)",
                bound.as_secs()
            ),
            RunEvent::PhaseStarted {
                round,
                num_rounds,
                phase,
                sampled,
            } => write!(f, "round {round}/{num_rounds} {phase}: {sampled} sampled"),
            RunEvent::PhaseEnded {
                round,
                num_rounds,
                phase,
                sampled,
                results,
                failures,
                loss,
                elapsed,
            } => {
                write!(
                    f,
                    "round {round}/{num_rounds} {phase}: {sampled} sampled, {results} results, {} failures",
                    failures.len()
                )?;
                if let Some(loss) = loss {
                    write!(f, ", loss {loss:.4}")?;
                }
                write!(f, ", {:.2} s", elapsed.as_secs_f64())
            }
            RunEvent::RoundEnded {
                round,
                num_rounds,
                loss,
                elapsed,
            } => {
                write!(f, "round {round}/{num_rounds} done")?;
                if let Some(loss) = loss {
                    write!(f, ", loss {loss:.4}")?;
                }
                write!(f, ", {:.2} s", elapsed.as_secs_f64())
            }
            RunEvent::RunEnded {
                completed,
                num_rounds,
                elapsed,
            } => write!(
                f,
                "run ended: {completed}/{num_rounds} rounds in {:.2} s",
                elapsed.as_secs_f64()
            ),
        }
    }
}

/// Receives the driver's [`RunEvent`]s. Called on the driver's task:
/// keep it quick (no I/O that can block for long).
pub trait RunObserver: Send + Sync + 'static {
    /// One event.
    fn on_event(&self, event: &RunEvent<'_>);
}

impl fmt::Debug for dyn RunObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunObserver")
    }
}

/// Logs every event as one `info` line (target `flower_server::progress`):
/// the default progress output of the `flower-server` binary.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogProgress;

impl RunObserver for LogProgress {
    fn on_event(&self, event: &RunEvent<'_>) {
        tracing::info!(target: "flower_server::progress", "{event}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_read_well() {
        let failures = ["timeout"];
        let e = RunEvent::PhaseEnded {
            round: 2,
            num_rounds: 10,
            phase: Phase::Evaluate,
            sampled: 3,
            results: 2,
            failures: &failures,
            loss: Some(0.25),
            elapsed: Duration::from_millis(1240),
        };
        assert_eq!(
            e.to_string(),
            "round 2/10 evaluate: 3 sampled, 2 results, 1 failures, loss 0.2500, 1.24 s"
        );
        let w = RunEvent::Waiting {
            round: 1,
            required: 2,
            connected: 0,
            bound: Duration::from_secs(300),
        };
        assert_eq!(
            w.to_string(),
            "round 1: waiting for clients (0/2 connected, at most 300 s)"
        );
    }
}
