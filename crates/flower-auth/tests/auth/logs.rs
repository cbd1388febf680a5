//! Log capture. All tests of this binary share one process, hence one
//! global `tracing` subscriber (installed on first use, `log` records
//! included). It hands every event to each live [`LogCapture`] whose level
//! admits it, so each test chooses its own level. A capture also sees the
//! events of tests running at the same time: assertions look for lines that
//! only their own test produces (its temporary path, its server's address).

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use tracing::{Level, Metadata};
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

#[derive(Debug)]
struct Capture {
    level: Level,
    text: Mutex<Vec<u8>>,
}

/// Live captures.
static CAPTURES: Mutex<Vec<Arc<Capture>>> = Mutex::new(Vec::new());

/// Most verbose level of the live captures (see [`rank`]); 0 when none is
/// live, so that events cost next to nothing then.
static MAX_RANK: AtomicUsize = AtomicUsize::new(0);

fn rank(level: &Level) -> usize {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn update_max_rank(captures: &[Arc<Capture>]) {
    let max = captures.iter().map(|c| rank(&c.level)).max().unwrap_or(0);
    MAX_RANK.store(max, Ordering::Relaxed);
}

/// Everything the subscriber formats from now on, at `level` and above,
/// as text without colours; stops capturing when dropped.
#[derive(Debug)]
pub(crate) struct LogCapture(Arc<Capture>);

impl LogCapture {
    /// Everything captured so far.
    pub(crate) fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.text.lock().unwrap()).into_owned()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        let mut captures = CAPTURES.lock().unwrap();
        captures.retain(|c| !Arc::ptr_eq(c, &self.0));
        update_max_rank(&captures);
    }
}

/// Starts capturing the events at `level` and above.
pub(crate) fn capture_logs(level: Level) -> LogCapture {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(Router)
                    .with_filter(dynamic_filter_fn(|meta, _| {
                        rank(meta.level()) <= MAX_RANK.load(Ordering::Relaxed)
                    })),
            )
            .try_init()
            .expect("install the log capture subscriber");
    });
    let capture = Arc::new(Capture {
        level,
        text: Mutex::default(),
    });
    let mut captures = CAPTURES.lock().unwrap();
    captures.push(Arc::clone(&capture));
    update_max_rank(&captures);
    LogCapture(capture)
}

/// The subscriber's writer: one formatted event goes to every live capture
/// admitting its level.
struct Router;

impl<'a> MakeWriter<'a> for Router {
    type Writer = Fanout;

    fn make_writer(&'a self) -> Fanout {
        Fanout(CAPTURES.lock().unwrap().clone())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Fanout {
        let captures = CAPTURES.lock().unwrap();
        Fanout(
            captures
                .iter()
                .filter(|c| meta.level() <= &c.level)
                .cloned()
                .collect(),
        )
    }
}

struct Fanout(Vec<Arc<Capture>>);

impl Write for Fanout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for capture in &self.0 {
            capture.text.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
