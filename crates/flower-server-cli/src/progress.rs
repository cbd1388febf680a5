//! Progress on the terminal: one line per round phase (through the log),
//! and a live bar when stderr is a terminal.
//!
//! The bar and the log share stderr: log lines are written through
//! [`BarWriter`], which lifts the bar while a line is written, so neither
//! garbles the other.

use std::io::Write;
use std::time::Duration;

use flower_server::metrics::RunEvent;
use flower_server::RunObserver;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What `--progress` asked for, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Off,
    Lines,
    Bar,
}

impl Mode {
    /// `auto` is the bar on a terminal without `--log-json`, else lines.
    pub(crate) fn resolve(flag: Option<&str>, log_json: bool) -> Mode {
        use std::io::IsTerminal;
        match flag {
            Some("off") => Mode::Off,
            Some("lines") => Mode::Lines,
            Some("bar") => Mode::Bar,
            _ if std::io::stderr().is_terminal() && !log_json => Mode::Bar,
            _ => Mode::Lines,
        }
    }
}

/// A progress bar over the rounds, on stderr; hidden until the run starts.
pub(crate) fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} rounds  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// Drives the bar from the round driver's events.
#[derive(Debug)]
pub(crate) struct BarProgress {
    bar: ProgressBar,
}

impl BarProgress {
    pub(crate) fn new(bar: ProgressBar) -> Self {
        BarProgress { bar }
    }
}

impl RunObserver for BarProgress {
    fn on_event(&self, event: &RunEvent<'_>) {
        let bar = &self.bar;
        match *event {
            RunEvent::RunStarted {
                num_rounds,
                completed,
            } => {
                bar.set_length(num_rounds);
                bar.set_position(completed);
                bar.set_message("starting");
                // Keeps the spinner and the clock moving during long waits.
                bar.enable_steady_tick(Duration::from_millis(200));
            }
            RunEvent::Waiting {
                required,
                connected,
                ..
            } => bar.set_message(format!(
                "waiting for clients ({connected}/{required} connected)"
            )),
            RunEvent::PhaseStarted {
                round,
                phase,
                sampled,
                ..
            } => bar.set_message(format!("round {round} {phase}: {sampled} clients")),
            RunEvent::PhaseEnded { .. } => {}
            RunEvent::RoundEnded { round, loss, .. } => {
                bar.set_position(round);
                bar.set_message(match loss {
                    Some(loss) => format!("loss {loss:.4}"),
                    None => String::new(),
                });
            }
            RunEvent::RunEnded { .. } => bar.finish_and_clear(),
            _ => {}
        }
    }
}

/// Log output that lifts the bar while a line is written.
#[derive(Debug, Clone)]
pub(crate) struct BarWriter {
    bar: Option<ProgressBar>,
}

impl BarWriter {
    pub(crate) fn new(bar: Option<ProgressBar>) -> Self {
        BarWriter { bar }
    }
}

/// One log record, buffered and written in one go when dropped.
pub(crate) struct BarLine {
    bar: Option<ProgressBar>,
    buf: Vec<u8>,
}

impl Write for BarLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BarLine {
    fn drop(&mut self) {
        let write = || {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(&self.buf);
            let _ = stderr.flush();
        };
        match &self.bar {
            Some(bar) if !bar.is_hidden() && !bar.is_finished() => bar.suspend(write),
            _ => write(),
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BarWriter {
    type Writer = BarLine;

    fn make_writer(&'a self) -> BarLine {
        BarLine {
            bar: self.bar.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flower_server::metrics::Phase;

    #[test]
    fn the_bar_follows_rounds() {
        let bar = ProgressBar::hidden();
        let progress = BarProgress::new(bar.clone());
        progress.on_event(&RunEvent::RunStarted {
            num_rounds: 3,
            completed: 1,
        });
        assert_eq!((bar.length(), bar.position()), (Some(3), 1));
        progress.on_event(&RunEvent::PhaseStarted {
            round: 2,
            num_rounds: 3,
            phase: Phase::Fit,
            sampled: 4,
        });
        assert_eq!(bar.message(), "round 2 fit: 4 clients");
        progress.on_event(&RunEvent::RoundEnded {
            round: 2,
            num_rounds: 3,
            loss: Some(0.5),
            elapsed: Duration::from_secs(1),
        });
        assert_eq!(bar.position(), 2);
        assert_eq!(bar.message(), "loss 0.5000");
        assert_eq!(Mode::resolve(Some("off"), false), Mode::Off);
        assert_eq!(Mode::resolve(Some("bar"), true), Mode::Bar);
    }
}
