//! Child processes under observation: their output lines go to a log file
//! and to a callback, and `/proc/<pid>` is polled every 100 ms for CPU time
//! and peak RSS. The child is reaped only after its final CPU time was read
//! from the zombie's `/proc/<pid>/stat`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::procstat::{self, ProcSample};

/// PIDs of the children alive now, for the signal handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Sends SIGTERM, then (after up to 3 s) SIGKILL, to every child spawned
/// through [`Monitored::spawn`] that was not reaped yet. For the harness's
/// SIGINT/SIGTERM handler.
pub(crate) fn kill_all_children() {
    let pids: Vec<u32> = CHILDREN.lock().map(|c| c.clone()).unwrap_or_default();
    for signal in ["-TERM", "-KILL"] {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| procstat::state(*p).is_some_and(|s| s != 'Z'))
            .collect();
        if alive.is_empty() {
            return;
        }
        for pid in alive {
            let _ = Command::new("kill")
                .arg(signal)
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline
            && pids
                .iter()
                .any(|p| procstat::state(*p).is_some_and(|s| s != 'Z'))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Poll interval of `/proc/<pid>`.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Called for every output line (from the reader threads).
pub(crate) type LineHandler = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// What the poller saw.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Observed {
    /// The latest sample of the live process.
    pub(crate) last: ProcSample,
    /// Largest `VmHWM` seen (KiB).
    pub(crate) max_hwm_kib: u64,
    /// Largest `VmRSS` seen (KiB).
    pub(crate) max_rss_kib: u64,
    /// The zombie's sample (final CPU times), once the process exited.
    pub(crate) final_sample: Option<ProcSample>,
    /// True once the process exited (or vanished).
    pub(crate) exited: bool,
}

/// A running child under observation.
pub(crate) struct Monitored {
    /// Short name for messages.
    pub(crate) name: String,
    /// Its PID.
    pub(crate) pid: u32,
    /// When it was spawned.
    pub(crate) spawned: Instant,
    child: Child,
    observed: Arc<Mutex<Observed>>,
    stop_poll: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for Monitored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitored")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Wraps `program args` in `sh -c 'ulimit -n N; exec "$@"'`, so the child
/// (same PID, thanks to `exec`) may hold `nofile` descriptors.
pub(crate) fn with_nofile(nofile: u64, program: &Path, args: &[OsString]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "ulimit -n {nofile} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$@\""
        ))
        .arg("sh")
        .arg(program)
        .args(args);
    c
}

impl Monitored {
    /// Spawns `command` with piped stdout/stderr (each line handed to the
    /// handler that `make_handler` builds from the PID and the spawn time,
    /// then appended to `log` with a stream tag and a timestamp) and starts
    /// polling `/proc`.
    pub(crate) fn spawn(
        name: &str,
        mut command: Command,
        log: &Path,
        make_handler: impl FnOnce(u32, Instant) -> LineHandler,
    ) -> anyhow::Result<Monitored> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let spawned = Instant::now();
        let pid = child.id();
        let on_line = make_handler(pid, spawned);
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(pid);
        }
        let log = Arc::new(Mutex::new(
            File::create(log).with_context(|| format!("creating {}", log.display()))?,
        ));
        let mut readers = Vec::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (stream, reader) in [
            (
                Stream::Stdout,
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
            ),
            (
                Stream::Stderr,
                Box::new(stderr) as Box<dyn std::io::Read + Send>,
            ),
        ] {
            let log = log.clone();
            let on_line = on_line.clone();
            readers.push(std::thread::spawn(move || {
                let tag = if stream == Stream::Stdout {
                    "out"
                } else {
                    "err"
                };
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    on_line(stream, &line);
                    if let Ok(mut f) = log.lock() {
                        let _ = writeln!(f, "{:9.3} {tag} {line}", spawned.elapsed().as_secs_f64());
                    }
                }
            }));
        }
        let observed = Arc::new(Mutex::new(Observed::default()));
        let stop_poll = Arc::new(AtomicBool::new(false));
        let poller = {
            let observed = observed.clone();
            let stop = stop_poll.clone();
            std::thread::spawn(move || poll(pid, &observed, &stop))
        };
        Ok(Monitored {
            name: name.to_string(),
            pid,
            spawned,
            child,
            observed,
            stop_poll,
            poller: Some(poller),
            readers,
            status: None,
        })
    }

    /// What the poller saw so far.
    pub(crate) fn observed(&self) -> Observed {
        *self.observed.lock().expect("observed lock")
    }

    /// True once the process has exited.
    pub(crate) fn has_exited(&self) -> bool {
        self.status.is_some() || self.observed().exited
    }

    /// Waits up to `timeout` for the process to exit by itself. Returns
    /// false on timeout (the process is left running).
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.has_exited() {
                self.reap();
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Asks the process to stop with SIGTERM; SIGKILL if it is still there
    /// after `grace`. Then reaps it.
    pub(crate) fn terminate(&mut self, grace: Duration) {
        if !self.has_exited() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !self.wait_exit(grace) {
                let _ = self.child.kill();
            }
        }
        self.reap();
    }

    /// Reaps the child (after the poller has read the zombie's final CPU
    /// times) and joins the threads (bounded).
    fn reap(&mut self) {
        if self.status.is_some() {
            return;
        }
        // Give the poller up to 1 s to see the zombie before reaping.
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.observed().exited && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop_poll.store(true, Ordering::Relaxed);
        self.status = self.child.wait().ok();
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|p| *p != self.pid);
        }
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        // Readers end at EOF; do not hang if a grandchild kept a pipe open.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    /// The exit status, once reaped.
    pub(crate) fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Final CPU seconds (the zombie's), or the last polled value.
    pub(crate) fn cpu_s(&self) -> f64 {
        let o = self.observed();
        o.final_sample.unwrap_or(o.last).cpu_s()
    }
}

impl Drop for Monitored {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

fn poll(pid: u32, observed: &Mutex<Observed>, stop: &AtomicBool) {
    loop {
        let sample = procstat::sample(pid);
        {
            let mut o = observed.lock().expect("observed lock");
            match sample {
                None => {
                    o.exited = true;
                    return;
                }
                Some(s) if s.is_zombie() => {
                    o.final_sample = Some(s);
                    o.exited = true;
                    return;
                }
                Some(s) => {
                    o.max_hwm_kib = o.max_hwm_kib.max(s.vm_hwm_kib);
                    o.max_rss_kib = o.max_rss_kib.max(s.vm_rss_kib);
                    o.last = s;
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Sleep in small steps so that the exit is seen promptly.
        for _ in 0..5 {
            std::thread::sleep(POLL / 5);
            if matches!(procstat::state(pid), None | Some('Z' | 'X')) {
                break;
            }
        }
    }
}
