//! The run registry: runs submitted through the Control API, the one
//! ServerApp task of each, its token and its logs. No I/O and no clock:
//! every call is handed the time (Unix seconds), as in `flower-fleet`'s
//! link state.
//!
//! It follows flwr 1.42 (`server/superlink/linkstate/in_memory_linkstate.py`,
//! `supercore/corestate`): a run is `pending` until SuperExec acquires its
//! task, `starting` until the ServerApp pulls its input, `running` until the
//! ServerApp pushes its output (or the run is stopped, or its task falls
//! silent), then `finished` with a sub-status `completed`, `failed` or
//! `stopped`.

use std::collections::{BTreeMap, HashMap};

use flower_proto as pb;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::time::iso;

/// flwr's `Status.PENDING`.
pub const PENDING: &str = "pending";
/// flwr's `Status.STARTING`.
pub const STARTING: &str = "starting";
/// flwr's `Status.RUNNING`.
pub const RUNNING: &str = "running";
/// flwr's `Status.FINISHED`.
pub const FINISHED: &str = "finished";
/// flwr's `SubStatus.COMPLETED`.
pub const COMPLETED: &str = "completed";
/// flwr's `SubStatus.FAILED`.
pub const FAILED: &str = "failed";
/// flwr's `SubStatus.STOPPED`.
pub const STOPPED: &str = "stopped";
/// The task type of a ServerApp (`TaskType.SERVER_APP`).
pub const SERVERAPP_TASK: &str = "flwr-serverapp";
/// flwr's `SUPERLINK_NODE_ID`: the ServerApp's node id.
pub const SUPERLINK_NODE_ID: u64 = 1;
/// The federation every run belongs to (flwr's default federation of the
/// account-less SuperLink).
pub const DEFAULT_FEDERATION: &str = "@none/default";
/// The account id flwr records when there is no account authentication.
pub const NO_ACCOUNT: &str = "<id:none>";

/// What a new run is made of.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The FAB (hash and bytes).
    pub fab: pb::Fab,
    /// `<publisher>/<name>` from its `pyproject.toml`.
    pub fab_id: String,
    /// Its version.
    pub fab_version: String,
    /// Run config overrides (keys checked against the FAB's defaults).
    pub override_config: BTreeMap<String, pb::Scalar>,
}

/// A run, its ServerApp task and its logs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run as the Control API lists it (status and timestamps kept up
    /// to date).
    pub run: pb::Run,
    /// The FAB; dropped when the run finishes.
    pub fab: Option<pb::Fab>,
    /// Log lines pushed by the ServerApp, with their arrival times.
    pub logs: Vec<(f64, String)>,
    token: Option<String>,
    last_heartbeat: f64,
}

impl RunRecord {
    /// A record as restored from storage: finished runs only keep their
    /// description and logs.
    pub fn restored(run: pb::Run, logs: Vec<(f64, String)>) -> Self {
        RunRecord {
            run,
            fab: None,
            logs,
            token: None,
            last_heartbeat: 0.0,
        }
    }

    /// The run's status (`pending`, ..., `finished`).
    pub fn status(&self) -> &str {
        self.run.status.as_ref().map_or("", |s| s.status.as_str())
    }

    /// Whether the run is over.
    pub fn is_finished(&self) -> bool {
        self.status() == FINISHED
    }

    fn set_status(&mut self, status: &str, sub_status: &str, details: &str, now: f64) {
        self.run.status = Some(pb::RunStatus {
            status: status.into(),
            sub_status: sub_status.into(),
            details: details.into(),
        });
        let at = iso(now);
        match status {
            STARTING => self.run.starting_at = at,
            RUNNING => self.run.running_at = at,
            FINISHED => self.run.finished_at = at,
            _ => self.run.pending_at = at,
        }
    }
}

/// Refusals of the registry, each one Control or Runtime API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// No such run.
    #[error("run {0} not found")]
    NotFound(u64),
    /// The run is already finished.
    #[error("run {0} is already finished")]
    AlreadyFinished(u64),
    /// The task cannot start (not acquired, or already started/finished).
    #[error("failed to start the task of run {0}")]
    CannotStart(u64),
}

/// The run registry. See the module docs.
#[derive(Debug)]
pub struct Runs {
    runs: BTreeMap<u64, RunRecord>,
    tokens: HashMap<String, u64>,
    rng: ChaCha8Rng,
}

impl Runs {
    /// An empty registry; `seed` seeds run, series and task ids and tokens.
    pub fn new(seed: u64) -> Self {
        Runs {
            runs: BTreeMap::new(),
            tokens: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Adds runs read back from storage (a restart): runs that were not
    /// finished are marked failed, as their ServerApp is gone.
    pub fn restore(&mut self, records: Vec<RunRecord>, now: f64) -> Vec<u64> {
        let mut failed = Vec::new();
        for mut record in records {
            if !record.is_finished() {
                record.set_status(
                    FINISHED,
                    FAILED,
                    "the server restarted while the run was active",
                    now,
                );
                failed.push(record.run.run_id);
            }
            self.runs.insert(record.run.run_id, record);
        }
        failed
    }

    /// An id below 2^63 (the same number in every language's integers),
    /// never 0.
    fn fresh_id(&mut self) -> u64 {
        loop {
            let id = self.rng.gen::<u64>() >> 1;
            if id != 0 && !self.runs.contains_key(&id) {
                return id;
            }
        }
    }

    /// Registers a pending run and returns its id.
    pub fn create(&mut self, new: NewRun, now: f64) -> u64 {
        let run_id = self.fresh_id();
        let series_id = self.fresh_id();
        let task_id = self.fresh_id();
        let mut record = RunRecord {
            run: pb::Run {
                run_id,
                fab_id: new.fab_id,
                fab_version: new.fab_version,
                override_config: new.override_config,
                fab_hash: new.fab.hash_str.clone(),
                flwr_aid: NO_ACCOUNT.into(),
                federation: DEFAULT_FEDERATION.into(),
                primary_task_type: SERVERAPP_TASK.into(),
                primary_task_id: Some(task_id),
                series_id,
                ..pb::Run::default()
            },
            fab: Some(new.fab),
            logs: Vec::new(),
            token: None,
            last_heartbeat: now,
        };
        record.set_status(PENDING, "", "", now);
        self.runs.insert(run_id, record);
        run_id
    }

    /// A run.
    pub fn get(&self, run_id: u64) -> Option<&RunRecord> {
        self.runs.get(&run_id)
    }

    /// Every run, most recently submitted first (ties by id), at most
    /// `limit` after skipping `skip`.
    pub fn list(&self, limit: usize, skip: usize) -> Vec<&RunRecord> {
        let mut all: Vec<&RunRecord> = self.runs.values().collect();
        all.sort_by(|a, b| {
            b.run
                .pending_at
                .cmp(&a.run.pending_at)
                .then(b.run.run_id.cmp(&a.run.run_id))
        });
        all.into_iter().skip(skip).take(limit).collect()
    }

    /// `AcquireTask`: the oldest pending run's ServerApp task, if SuperExec
    /// can run ServerApps. The run becomes `starting` and its task gets a
    /// fresh token.
    pub fn acquire(&mut self, supported: &[String], now: f64) -> Option<(pb::Task, String)> {
        if !supported.iter().any(|t| t == SERVERAPP_TASK) {
            return None;
        }
        let run_id = self
            .runs
            .values()
            .filter(|r| r.status() == PENDING)
            .min_by(|a, b| a.run.pending_at.cmp(&b.run.pending_at))?
            .run
            .run_id;
        let token = format!(
            "{:032x}{:032x}",
            self.rng.gen::<u128>(),
            self.rng.gen::<u128>()
        );
        let record = self.runs.get_mut(&run_id)?;
        let task = pb::Task {
            task_id: record.run.primary_task_id.unwrap_or_default(),
            r#type: SERVERAPP_TASK.into(),
            run_id,
            status: Some(pb::TaskStatus {
                status: PENDING.into(),
                sub_status: String::new(),
                details: String::new(),
            }),
            pending_at: record.run.pending_at.clone(),
            fab_hash: Some(record.run.fab_hash.clone()),
            ..pb::Task::default()
        };
        record.set_status(STARTING, "", "", now);
        record.token = Some(token.clone());
        record.last_heartbeat = now;
        self.tokens.insert(token.clone(), run_id);
        Some((task, token))
    }

    /// The run whose task holds `token`.
    pub fn by_token(&self, token: &str) -> Option<u64> {
        self.tokens.get(token).copied()
    }

    /// `SendTaskHeartbeat`: `false` once the run is finished (the ServerApp
    /// then interrupts itself).
    pub fn heartbeat(&mut self, run_id: u64, now: f64) -> bool {
        match self.runs.get_mut(&run_id) {
            Some(r) if !r.is_finished() => {
                r.last_heartbeat = now;
                true
            }
            _ => false,
        }
    }

    /// `PullTaskInput`: the run becomes `running`; returns what the
    /// ServerApp starts from.
    pub fn start(&mut self, run_id: u64, now: f64) -> Result<pb::PullTaskInputResponse, RunError> {
        let record = self
            .runs
            .get_mut(&run_id)
            .ok_or(RunError::NotFound(run_id))?;
        if record.status() != STARTING {
            return Err(RunError::CannotStart(run_id));
        }
        let fab = record.fab.clone().ok_or(RunError::CannotStart(run_id))?;
        record.set_status(RUNNING, "", "", now);
        record.last_heartbeat = now;
        Ok(pb::PullTaskInputResponse {
            context: Some(pb::Context {
                run_id,
                node_id: SUPERLINK_NODE_ID,
                node_config: BTreeMap::new(),
                state: Some(pb::RecordDict::default()),
                run_config: BTreeMap::new(),
                series_id: record.run.series_id,
            }),
            run: Some(record.run.clone()),
            fab: Some(fab),
            federation_config: None,
            task_id: record.run.primary_task_id.unwrap_or_default(),
        })
    }

    /// Ends a run with `sub_status`; `false` if it was already finished.
    pub fn finish(&mut self, run_id: u64, sub_status: &str, details: &str, now: f64) -> bool {
        let Some(record) = self.runs.get_mut(&run_id) else {
            return false;
        };
        if record.is_finished() {
            return false;
        }
        let sub = match sub_status {
            COMPLETED | STOPPED => sub_status,
            _ => FAILED,
        };
        record.set_status(FINISHED, sub, details, now);
        record.fab = None;
        true
    }

    /// `StopRun`.
    pub fn stop(&mut self, run_id: u64, now: f64) -> Result<(), RunError> {
        let record = self.runs.get(&run_id).ok_or(RunError::NotFound(run_id))?;
        if record.is_finished() {
            return Err(RunError::AlreadyFinished(run_id));
        }
        self.finish(run_id, STOPPED, "", now);
        Ok(())
    }

    /// `PushLogs`.
    pub fn push_logs(&mut self, run_id: u64, lines: Vec<String>, now: f64) {
        if let Some(record) = self.runs.get_mut(&run_id) {
            record.logs.extend(lines.into_iter().map(|l| (now, l)));
        }
    }

    /// The logs that arrived after `after`, concatenated, and the time of
    /// the latest (`after` when there are none).
    pub fn logs_after(&self, run_id: u64, after: f64) -> (String, f64) {
        let mut out = String::new();
        let mut latest = after;
        if let Some(record) = self.runs.get(&run_id) {
            for (t, line) in record.logs.iter().filter(|(t, _)| *t > after) {
                out.push_str(line);
                latest = latest.max(*t);
            }
        }
        (out, latest)
    }

    /// Housekeeping: a started run whose task sent no heartbeat for
    /// `patience` seconds failed (its ServerApp died). Returns those runs.
    pub fn tick(&mut self, now: f64, patience: f64) -> Vec<u64> {
        let silent: Vec<u64> = self
            .runs
            .values()
            .filter(|r| {
                matches!(r.status(), STARTING | RUNNING) && now - r.last_heartbeat > patience
            })
            .map(|r| r.run.run_id)
            .collect();
        for id in &silent {
            self.finish(*id, FAILED, "the ServerApp stopped sending heartbeats", now);
        }
        silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_run() -> NewRun {
        NewRun {
            fab: pb::Fab {
                hash_str: "ab".repeat(32),
                content: bytes::Bytes::from_static(b"zip"),
                verifications: BTreeMap::new(),
            },
            fab_id: "flower-rs/app".into(),
            fab_version: "1.0.0".into(),
            override_config: BTreeMap::new(),
        }
    }

    const T0: f64 = 1_800_000_000.0;
    const SERVERAPP: &[&str] = &["flwr-clientapp", "flwr-serverapp"];

    fn supported() -> Vec<String> {
        SERVERAPP.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_run_goes_pending_starting_running_finished() {
        let mut runs = Runs::new(1);
        let id = runs.create(new_run(), T0);
        assert_eq!(runs.get(id).map(RunRecord::status), Some(PENDING));
        assert!(runs.acquire(&["flwr-clientapp".into()], T0).is_none());
        let (task, token) = runs.acquire(&supported(), T0 + 1.0).expect("task");
        assert_eq!(task.run_id, id);
        assert_eq!(task.r#type, SERVERAPP_TASK);
        assert_eq!(runs.by_token(&token), Some(id));
        assert!(
            runs.acquire(&supported(), T0 + 1.0).is_none(),
            "acquired once"
        );
        let input = runs.start(id, T0 + 2.0).expect("input");
        assert_eq!(input.context.map(|c| c.node_id), Some(SUPERLINK_NODE_ID));
        assert_eq!(input.fab.map(|f| f.content.len()), Some(3));
        assert_eq!(runs.start(id, T0 + 2.0), Err(RunError::CannotStart(id)));
        assert!(runs.heartbeat(id, T0 + 3.0));
        runs.push_logs(id, vec!["a\n".into(), "b\n".into()], T0 + 3.0);
        runs.push_logs(id, vec!["c\n".into()], T0 + 4.0);
        assert_eq!(runs.logs_after(id, 0.0), ("a\nb\nc\n".into(), T0 + 4.0));
        assert_eq!(runs.logs_after(id, T0 + 3.0), ("c\n".into(), T0 + 4.0));
        assert!(runs.finish(id, COMPLETED, "", T0 + 5.0));
        let record = runs.get(id).expect("run");
        assert_eq!(
            record.run.status.as_ref().map(|s| s.sub_status.as_str()),
            Some(COMPLETED)
        );
        assert!(record.fab.is_none(), "the FAB is dropped");
        assert!(
            !runs.heartbeat(id, T0 + 6.0),
            "finished: the ServerApp stops"
        );
        assert_eq!(runs.stop(id, T0 + 6.0), Err(RunError::AlreadyFinished(id)));
    }

    #[test]
    fn stop_and_silence_finish_runs() {
        let mut runs = Runs::new(2);
        let a = runs.create(new_run(), T0);
        let b = runs.create(new_run(), T0 + 1.0);
        assert_eq!(runs.list(10, 0).first().map(|r| r.run.run_id), Some(b));
        assert_eq!(runs.list(1, 1).first().map(|r| r.run.run_id), Some(a));
        let (task, _) = runs.acquire(&supported(), T0 + 2.0).expect("task");
        assert_eq!(task.run_id, a, "oldest first");
        runs.stop(b, T0 + 3.0).expect("stop");
        assert_eq!(
            runs.get(b)
                .and_then(|r| r.run.status.clone())
                .map(|s| s.sub_status),
            Some(STOPPED.to_string())
        );
        assert_eq!(runs.stop(99, T0), Err(RunError::NotFound(99)));
        assert!(runs.tick(T0 + 30.0, 60.0).is_empty());
        assert_eq!(runs.tick(T0 + 63.0, 60.0), vec![a]);
        assert!(runs.get(a).is_some_and(RunRecord::is_finished));
    }

    #[test]
    fn restored_active_runs_are_failed() {
        let mut runs = Runs::new(3);
        let id = runs.create(new_run(), T0);
        let record = runs.get(id).cloned().expect("run");
        let mut fresh = Runs::new(4);
        assert_eq!(fresh.restore(vec![record], T0 + 1.0), vec![id]);
        assert!(fresh.get(id).is_some_and(RunRecord::is_finished));
    }
}
