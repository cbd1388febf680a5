//! Reading a process's CPU time, memory and I/O counters from `/proc`
//! (no libc calls: the workspace forbids `unsafe`).

use std::sync::OnceLock;

/// One reading of `/proc/<pid>/{stat,status,io}`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcSample {
    /// Process state letter from `stat` (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    /// User CPU seconds (`utime`).
    pub(crate) user_s: f64,
    /// System CPU seconds (`stime`).
    pub(crate) sys_s: f64,
    /// Peak resident set size (`VmHWM`) in KiB; 0 when unavailable (zombie).
    pub(crate) vm_hwm_kib: u64,
    /// Current resident set size (`VmRSS`) in KiB; 0 when unavailable.
    pub(crate) vm_rss_kib: u64,
    /// Bytes read through `read(2)`-like calls (`rchar`), sockets included.
    pub(crate) rchar: u64,
    /// Bytes written through `write(2)`-like calls (`wchar`), sockets included.
    pub(crate) wchar: u64,
}

impl ProcSample {
    /// `utime + stime` in seconds.
    pub(crate) fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    /// True when the process has exited but was not reaped yet.
    pub(crate) fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Clock ticks per second of `utime`/`stime` (`getconf CLK_TCK`; 100, Linux's
/// `USER_HZ`, when `getconf` is missing).
pub(crate) fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Parses `/proc/<pid>/stat`: state, utime and stime (fields 3, 14, 15).
/// The command name (field 2) may contain spaces and parentheses, so the
/// fields are counted after its last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<(char, u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let state = fields.first()?.chars().next()?;
    let utime = fields.get(11)?.parse().ok()?;
    let stime = fields.get(12)?.parse().ok()?;
    Some((state, utime, stime))
}

/// Value in KiB of a `Key:   123 kB` line of `/proc/<pid>/status`.
pub(crate) fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Value of a `key: 123` line of `/proc/<pid>/io`.
fn io_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// The state letter of process `pid` (`None` once it is reaped).
pub(crate) fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(state, _, _)| state)
}

/// Reads the process `pid`; `None` once it is gone (reaped).
pub(crate) fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (state, utime, stime) = parse_stat(&stat)?;
    let tick = clock_ticks();
    let mut s = ProcSample {
        state,
        user_s: utime as f64 / tick,
        sys_s: stime as f64 / tick,
        ..ProcSample::default()
    };
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        s.vm_hwm_kib = status_kib(&status, "VmHWM").unwrap_or(0);
        s.vm_rss_kib = status_kib(&status, "VmRSS").unwrap_or(0);
    }
    if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
        s.rchar = io_value(&io, "rchar").unwrap_or(0);
        s.wchar = io_value(&io, "wchar").unwrap_or(0);
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 5 1000 50";
        assert_eq!(parse_stat(line), Some(('S', 250, 37)));
    }

    #[test]
    fn status_and_io_values() {
        let status = "Name:\tx\nVmPeak:\t  9 kB\nVmHWM:\t    4242 kB\nVmRSS:\t 17 kB\n";
        assert_eq!(status_kib(status, "VmHWM"), Some(4242));
        assert_eq!(status_kib(status, "VmRSS"), Some(17));
        assert_eq!(io_value("rchar: 12\nwchar: 34\n", "wchar"), Some(34));
    }

    #[test]
    fn own_process_is_readable() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.vm_hwm_kib > 0);
        assert!(!s.is_zombie());
    }
}
