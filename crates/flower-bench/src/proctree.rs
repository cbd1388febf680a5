//! CPU time and memory of whole process trees, from `/proc`.
//!
//! The stock SuperLink runs its ServerApp in other processes (SuperLink →
//! `flower-superexec` → `flwr-serverapp`), and a SuperNode likewise
//! (`flower-supernode` → `flower-superexec` → one `flwr-clientapp` per
//! message), so a server's or a node's cost is that of its process tree.
//!
//! One thread scans `/proc` every [`POLL`]: it reads every process's parent,
//! walks down from each registered root, and remembers every member ever
//! seen (keyed by PID and start time, so a reused PID is a new member) with
//! its latest CPU times and its largest `VmHWM`. A member's CPU time is its
//! own `utime + stime`; the tree's is the sum over all members ever seen,
//! each at its last reading. A child that exits between two scans loses at
//! most one poll interval of CPU time; a zombie still shows its final times.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procstat;

/// Scan interval.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// One line of `/proc/<pid>/stat`, the fields a tree needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StatLine {
    /// `comm` (field 2, without the parentheses).
    pub(crate) comm: String,
    /// State letter (field 3).
    pub(crate) state: char,
    /// Parent PID (field 4).
    pub(crate) ppid: u32,
    /// `utime` in clock ticks (field 14).
    pub(crate) utime: u64,
    /// `stime` in clock ticks (field 15).
    pub(crate) stime: u64,
    /// Start time in clock ticks after boot (field 22).
    pub(crate) start: u64,
}

/// Parses `/proc/<pid>/stat` (the command name may hold spaces and
/// parentheses, so fields are counted after its last `)`).
pub(crate) fn parse_stat_line(text: &str) -> Option<StatLine> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3; field N is fields[N - 3].
    Some(StatLine {
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// One process of a tree, as last seen.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Member {
    /// PID.
    pub(crate) pid: u32,
    /// Parent PID when first seen.
    pub(crate) ppid: u32,
    /// `comm` (15 characters at most).
    pub(crate) comm: String,
    /// The program (first word of `/proc/<pid>/cmdline`, or of the script
    /// run by an interpreter), when readable.
    pub(crate) program: String,
    /// Seconds after the watch started when it was first seen.
    pub(crate) first_seen_s: f64,
    /// Seconds after the watch started when it was last seen alive.
    pub(crate) last_seen_s: f64,
    /// User CPU seconds, last reading.
    pub(crate) user_s: f64,
    /// System CPU seconds, last reading.
    pub(crate) sys_s: f64,
    /// Largest `VmHWM` read, KiB.
    pub(crate) max_hwm_kib: u64,
    /// `VmRSS` at the last reading, KiB (0 once exited).
    pub(crate) rss_kib: u64,
    /// True once it exited (zombie or gone).
    pub(crate) exited: bool,
}

/// Sums over one tree.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Totals {
    /// Processes seen so far.
    pub(crate) processes: usize,
    /// CPU seconds (user + system) of all members.
    pub(crate) cpu_s: f64,
    /// User part.
    pub(crate) user_s: f64,
    /// System part.
    pub(crate) sys_s: f64,
    /// Sum of every member's peak RSS (`VmHWM`), KiB: an upper bound of the
    /// tree's peak, since the members' peaks need not coincide.
    pub(crate) sum_hwm_kib: u64,
    /// The largest single member's `VmHWM`, KiB.
    pub(crate) max_hwm_kib: u64,
    /// Largest sum of the members' `VmRSS` seen in one scan, KiB: a lower
    /// bound of the tree's peak (a spike between scans is missed).
    pub(crate) peak_sum_rss_kib: u64,
}

#[derive(Debug, Default)]
struct Tree {
    root: u32,
    members: BTreeMap<(u32, u64), Member>,
    peak_sum_rss_kib: u64,
}

impl Tree {
    fn totals(&self) -> Totals {
        let mut t = Totals {
            processes: self.members.len(),
            peak_sum_rss_kib: self.peak_sum_rss_kib,
            ..Totals::default()
        };
        for m in self.members.values() {
            t.user_s += m.user_s;
            t.sys_s += m.sys_s;
            t.sum_hwm_kib += m.max_hwm_kib;
            t.max_hwm_kib = t.max_hwm_kib.max(m.max_hwm_kib);
        }
        t.cpu_s = t.user_s + t.sys_s;
        t
    }
}

#[derive(Debug, Default)]
struct State {
    trees: Vec<Tree>,
}

/// Handle of one watched tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TreeId(usize);

/// The scanner; stops when dropped.
#[derive(Debug)]
pub(crate) struct Watcher {
    state: Arc<Mutex<State>>,
    started: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts the scanning thread (with no trees yet).
    pub(crate) fn start() -> Watcher {
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    scan(&state, started);
                    std::thread::sleep(POLL);
                }
            })
        };
        Watcher {
            state,
            started,
            stop,
            thread: Some(thread),
        }
    }

    /// Watches the tree below `root` (root included) from now on; scans
    /// once right away.
    pub(crate) fn add(&self, root: u32) -> TreeId {
        let id = {
            let mut s = self.lock();
            s.trees.push(Tree {
                root,
                ..Tree::default()
            });
            TreeId(s.trees.len() - 1)
        };
        scan(&self.state, self.started);
        id
    }

    /// Scans now and returns the tree's sums (for readings taken at an
    /// event, e.g. the end of a round).
    pub(crate) fn sample(&self, id: TreeId) -> Totals {
        scan(&self.state, self.started);
        self.totals(id)
    }

    /// Scans once and returns the sums of several trees, all as of that
    /// scan.
    pub(crate) fn sample_many(&self, ids: &[TreeId]) -> Vec<Totals> {
        scan(&self.state, self.started);
        ids.iter().map(|id| self.totals(*id)).collect()
    }

    /// The tree's sums as of the last scan.
    pub(crate) fn totals(&self, id: TreeId) -> Totals {
        self.lock()
            .trees
            .get(id.0)
            .map(Tree::totals)
            .unwrap_or_default()
    }

    /// Every member seen so far, in order of appearance.
    pub(crate) fn members(&self, id: TreeId) -> Vec<Member> {
        let s = self.lock();
        let mut v: Vec<Member> = s
            .trees
            .get(id.0)
            .map(|t| t.members.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.first_seen_s.total_cmp(&b.first_seen_s));
        v
    }

    /// PIDs of the members still alive (not zombies), descendants first.
    pub(crate) fn alive(&self, id: TreeId) -> Vec<u32> {
        scan(&self.state, self.started);
        let s = self.lock();
        let mut v: Vec<(f64, u32)> = s
            .trees
            .get(id.0)
            .map(|t| {
                t.members
                    .values()
                    .filter(|m| !m.exited)
                    .map(|m| (m.first_seen_s, m.pid))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.0.total_cmp(&a.0));
        v.into_iter().map(|(_, p)| p).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads every process's stat line: `pid → (stat)`.
fn all_stats() -> HashMap<u32, StatLine> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_stat_line(&t))
        {
            out.insert(pid, s);
        }
    }
    out
}

/// The program a command line runs: the first word, or for an interpreter
/// (`python`, `sh`) the script after it.
fn program(pid: u32) -> String {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return String::new();
    };
    let words: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    let base = |w: &String| w.rsplit('/').next().unwrap_or(w).to_string();
    match words.first() {
        Some(first) if base(first).starts_with("python") || base(first) == "sh" => words
            .iter()
            .skip(1)
            .find(|w| !w.starts_with('-'))
            .map_or_else(|| base(first), base),
        Some(first) => base(first),
        None => String::new(),
    }
}

fn scan(state: &Mutex<State>, started: Instant) {
    let stats = all_stats();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, s) in &stats {
        children.entry(s.ppid).or_default().push(*pid);
    }
    let now_s = started.elapsed().as_secs_f64();
    let tick = procstat::clock_ticks();
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    for tree in &mut st.trees {
        let mut seen = Vec::new();
        let mut stack = vec![tree.root];
        while let Some(pid) = stack.pop() {
            let Some(s) = stats.get(&pid) else { continue };
            seen.push((pid, s.start));
            if let Some(c) = children.get(&pid) {
                stack.extend(c.iter().copied());
            }
        }
        let mut sum_rss = 0;
        for &(pid, start) in &seen {
            let Some(s) = stats.get(&pid) else { continue };
            let exited = matches!(s.state, 'Z' | 'X');
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let hwm = procstat::status_kib(&status, "VmHWM").unwrap_or(0);
            let rss = procstat::status_kib(&status, "VmRSS").unwrap_or(0);
            let m = tree.members.entry((pid, start)).or_insert_with(|| Member {
                pid,
                ppid: s.ppid,
                comm: s.comm.clone(),
                program: program(pid),
                first_seen_s: now_s,
                last_seen_s: now_s,
                user_s: 0.0,
                sys_s: 0.0,
                max_hwm_kib: 0,
                rss_kib: 0,
                exited: false,
            });
            m.user_s = s.utime as f64 / tick;
            m.sys_s = s.stime as f64 / tick;
            m.max_hwm_kib = m.max_hwm_kib.max(hwm);
            m.rss_kib = if exited { 0 } else { rss };
            if !exited {
                m.last_seen_s = now_s;
            }
            m.exited = exited;
            sum_rss += m.rss_kib;
        }
        // Members no longer in /proc were reaped.
        for (key, m) in tree.members.iter_mut() {
            if !seen.contains(key) {
                m.exited = true;
                m.rss_kib = 0;
            }
        }
        tree.peak_sum_rss_kib = tree.peak_sum_rss_kib.max(sum_rss);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_fields() {
        let line = "4242 (flwr (server)) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 98765 1000 50";
        let s = parse_stat_line(line).expect("parses");
        assert_eq!(s.comm, "flwr (server)");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 17);
        assert_eq!((s.utime, s.stime), (250, 37));
        assert_eq!(s.start, 98765);
        assert_eq!(parse_stat_line("1 (x) S"), None);
    }

    #[test]
    fn watches_a_child_and_its_child() {
        // sh → sleep: both are members; the tree's CPU includes the busy loop of sh.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; sleep 5 & wait")
            .spawn()
            .expect("sh");
        let w = Watcher::start();
        let id = w.add(child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while w.totals(id).processes < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let members = w.members(id);
        assert!(members.iter().any(|m| m.comm == "sleep"), "{members:?}");
        let alive = w.alive(id);
        assert_eq!(alive.last(), Some(&child.id()), "root comes last");
        let t = w.sample(id);
        assert!(t.cpu_s > 0.0 && t.max_hwm_kib > 0 && t.sum_hwm_kib >= t.max_hwm_kib);
        for pid in alive {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = child.wait();
    }
}
