//! Process metrics read from `/proc/self` at scrape time (Linux; on other
//! systems they are simply absent). Names as Prometheus' client libraries
//! use them, so stock dashboards work.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc` reports CPU times in USER_HZ ticks, fixed at 100 by the kernel ABI.
const USER_HZ: f64 = 100.0;

#[derive(Debug)]
pub(super) struct ProcessCollector;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    threads: Option<f64>,
    open_fds: Option<f64>,
}

/// Fields of `/proc/self/stat` after the command name (which may contain
/// spaces and parentheses, hence the split at the last `)`).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

fn status_kib(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
}

fn parse(stat: &str, status: &str, boot_time: Option<f64>) -> Reading {
    let fields = stat_fields(stat);
    // Field numbers of proc(5), minus 3: the list starts at field 3 (state).
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let cpu_seconds = num(11).zip(num(12)).map(|(u, s)| (u + s) / USER_HZ);
    let start_time_seconds = num(19).zip(boot_time).map(|(t, b)| b + t / USER_HZ);
    Reading {
        cpu_seconds,
        start_time_seconds,
        resident_bytes: status_kib(status, "VmRSS:").map(|k| k * 1024.0),
        virtual_bytes: status_kib(status, "VmSize:").map(|k| k * 1024.0),
        threads: status_kib(status, "Threads:"),
        open_fds: None,
    }
}

fn read() -> Reading {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    let mut reading = parse(&stat, &status, boot_time);
    reading.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    reading
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = read();
        if let Some(v) = r.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                r.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                r.open_fds,
            ),
            ("process_threads", "Number of OS threads", r.threads),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                r.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files_with_odd_command_names() {
        // A command name with spaces and a parenthesis, as proc(5) allows.
        let stat = "4242 (flower (srv) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456 789 18446744073709551615";
        let status = "Name:\tflower\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t7\n";
        let r = parse(stat, status, Some(1_700_000_000.0));
        assert_eq!(r.cpu_seconds, Some(3.0));
        assert_eq!(r.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(r.resident_bytes, Some(1024.0 * 1024.0));
        assert_eq!(r.virtual_bytes, Some(2048.0 * 1024.0));
        assert_eq!(r.threads, Some(7.0));
    }

    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            let r = read();
            assert!(r.resident_bytes.is_some_and(|b| b > 0.0), "{r:?}");
            assert!(r.open_fds.is_some_and(|n| n >= 3.0), "{r:?}");
        }
    }
}
