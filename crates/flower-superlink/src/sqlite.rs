//! [`SqliteStore`]: runs (their `Run` description, status and timestamps
//! included) and their logs in one SQLite file, as flwr's
//! `--database FILE` keeps its link state (`sql_linkstate.py`).
//!
//! Only runs are stored. Nodes need no table: `flower-fleet` derives a
//! node's id from its public key, so a SuperNode that outlives a restart is
//! taken back on its next signed request. Messages and objects of a run in
//! progress are not kept either: a run that was active when the server
//! stopped is restored as failed (its ServerApp process is gone).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use flower_proto as pb;
use prost::Message as _;
use rusqlite::{params, Connection};

use crate::runs::RunRecord;
use crate::{RunStore, SuperLinkError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS run (
    run_id INTEGER PRIMARY KEY,
    run BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS run_log (
    run_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
";

fn store_error(context: &str) -> impl Fn(rusqlite::Error) -> SuperLinkError + '_ {
    move |e| SuperLinkError::Store {
        context: context.to_owned(),
        source: Box::new(e),
    }
}

/// Runs in an SQLite database (see the module docs).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`; `:memory:` is a
    /// private in-memory database, as with flwr.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SuperLinkError> {
        let path = path.as_ref();
        let conn = if path == Path::new(":memory:") {
            Connection::open_in_memory()
        } else {
            Connection::open(path)
        }
        .map_err(store_error("opening the database"))?;
        conn.execute_batch(SCHEMA)
            .map_err(store_error("creating the schema"))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Run ids are below 2^63 (see `runs`), so they fit SQLite's integers.
fn sql_id(run_id: u64) -> i64 {
    i64::try_from(run_id).unwrap_or(i64::MAX)
}

impl RunStore for SqliteStore {
    fn load_runs(&self) -> Result<Vec<RunRecord>, SuperLinkError> {
        let conn = self.conn();
        let mut runs = conn
            .prepare("SELECT run_id, run FROM run ORDER BY run_id")
            .map_err(store_error("reading runs"))?;
        let rows = runs
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(store_error("reading runs"))?;
        let mut logs = conn
            .prepare("SELECT timestamp, line FROM run_log WHERE run_id = ?1 ORDER BY seq")
            .map_err(store_error("reading logs"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, blob) = row.map_err(store_error("reading runs"))?;
            let run = pb::Run::decode(blob.as_slice()).map_err(|e| SuperLinkError::Store {
                context: format!("run {id} is not a valid Run message"),
                source: Box::new(e),
            })?;
            let lines = logs
                .query_map([id], |r| Ok((r.get::<_, f64>(0)?, r.get::<_, String>(1)?)))
                .map_err(store_error("reading logs"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(store_error("reading logs"))?;
            out.push(RunRecord::restored(run, lines));
        }
        Ok(out)
    }

    fn save_run(&self, record: &RunRecord) -> Result<(), SuperLinkError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(store_error("saving a run"))?;
        let id = sql_id(record.run.run_id);
        tx.execute(
            "INSERT OR REPLACE INTO run (run_id, run) VALUES (?1, ?2)",
            params![id, record.run.encode_to_vec()],
        )
        .map_err(store_error("saving a run"))?;
        // Logs only grow: append the lines not stored yet.
        let stored: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM run_log WHERE run_id = ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(store_error("saving logs"))?;
        let skip = usize::try_from(stored).unwrap_or(0);
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO run_log (run_id, seq, timestamp, line) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(store_error("saving logs"))?;
            for (seq, (t, line)) in record.logs.iter().enumerate().skip(skip) {
                let seq = i64::try_from(seq).unwrap_or(i64::MAX);
                insert
                    .execute(params![id, seq, t, line])
                    .map_err(store_error("saving logs"))?;
            }
        }
        tx.commit().map_err(store_error("saving a run"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::runs::{NewRun, Runs, COMPLETED};

    #[test]
    fn runs_and_logs_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("superlink-sqlite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state.db");
        let _ = std::fs::remove_file(&path);
        let mut runs = Runs::new(1);
        let new = NewRun {
            fab: pb::Fab {
                hash_str: "cd".repeat(32),
                content: bytes::Bytes::from_static(b"zip"),
                verifications: BTreeMap::new(),
            },
            fab_id: "p/app".into(),
            fab_version: "1.0.0".into(),
            override_config: BTreeMap::new(),
        };
        let done = runs.create(new.clone(), 100.0);
        let active = runs.create(new, 101.0);
        let (task, _) = runs
            .acquire(&["flwr-serverapp".into()], 102.0)
            .expect("task");
        assert_eq!(task.run_id, done);
        runs.start(done, 103.0).expect("start");
        runs.push_logs(done, vec!["one\n".into()], 104.0);
        {
            let store = SqliteStore::open(&path).expect("open");
            for id in [done, active] {
                store.save_run(runs.get(id).expect("run")).expect("save");
            }
            runs.push_logs(done, vec!["two\n".into()], 105.0);
            assert!(runs.finish(done, COMPLETED, "", 106.0));
            store
                .save_run(runs.get(done).expect("run"))
                .expect("save again");
        }
        let store = SqliteStore::open(&path).expect("reopen");
        let loaded = store.load_runs().expect("load");
        assert_eq!(loaded.len(), 2);
        let mut fresh = Runs::new(2);
        assert_eq!(
            fresh.restore(loaded, 200.0),
            vec![active],
            "the active run failed"
        );
        let restored = fresh.get(done).expect("finished run kept");
        assert_eq!(restored.run, runs.get(done).expect("run").run);
        assert_eq!(fresh.logs_after(done, 0.0).0, "one\ntwo\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
