//! Child processes that never outlive their test.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Kills and reaps the wrapped child when dropped.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Waits for the child to exit, at most `timeout`; kills it on expiry and
    /// returns `None`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Kills the child now (if still running) and reaps it.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
