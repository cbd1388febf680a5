//! Where a run is persisted: the [`RunStore`] the round driver saves to after
//! every round and resumes from.
//!
//! [`DirectoryStore`] writes Flower-style files into a directory
//! (`model.npz`, `history.json`, `checkpoint.json`); tests and embedders can
//! inject their own store (in memory, a database, ...).

use std::path::{Path, PathBuf};

use flower_core::Parameters;

use crate::history::Checkpoint;
use crate::model_file::{parameters_from_npz, parameters_to_npz_named};
use crate::ServerError;

/// A saved run: the checkpoint and the model it points at.
#[derive(Debug, Clone)]
pub struct SavedRun {
    /// Rounds completed, strategy state and history.
    pub checkpoint: Checkpoint,
    /// The global model after `checkpoint.completed_rounds`.
    pub parameters: Parameters,
}

/// Persistence of a run, injected into the round driver.
///
/// `save` is called after round 0 (the initial model) and after every
/// completed round; `load` once at start-up when resuming.
pub trait RunStore: Send + Sync + std::fmt::Debug {
    /// Saves the state after `checkpoint.completed_rounds`. A store must never
    /// leave a checkpoint pointing at an incomplete model.
    fn save(&self, checkpoint: &Checkpoint, parameters: &Parameters) -> Result<(), ServerError>;

    /// The last saved run, or `None` when nothing was saved yet.
    fn load(&self) -> Result<Option<SavedRun>, ServerError>;

    /// Where the store writes, for messages (`None` when not on disk).
    fn location(&self) -> Option<&Path> {
        None
    }
}

/// Stores a run as files in one directory, as the `flower-server` binary's
/// `--output-dir` does: `model.npz` (what `np.savez` writes), `history.json`
/// and `checkpoint.json`, each replaced atomically.
#[derive(Debug, Clone)]
pub struct DirectoryStore {
    dir: PathBuf,
    array_names: Option<Vec<String>>,
}

impl DirectoryStore {
    /// File name of the model.
    pub const MODEL: &'static str = "model.npz";
    /// File name of the history.
    pub const HISTORY: &'static str = "history.json";
    /// File name of the checkpoint.
    pub const CHECKPOINT: &'static str = "checkpoint.json";

    /// A store writing into `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirectoryStore {
            dir: dir.into(),
            array_names: None,
        }
    }

    /// Names the model's arrays in `model.npz` (e.g. the keys of the
    /// initial `.npz`); without, or when the count differs, `arr_0`, ...
    #[must_use]
    pub fn with_array_names(mut self, names: Vec<String>) -> Self {
        self.array_names = Some(names);
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl RunStore for DirectoryStore {
    fn save(&self, checkpoint: &Checkpoint, parameters: &Parameters) -> Result<(), ServerError> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir).map_err(ServerError::io("creating", dir))?;
        let model_path = dir.join(Self::MODEL);
        let model =
            parameters_to_npz_named(parameters, self.array_names.as_deref()).map_err(|source| {
                ServerError::ModelFile {
                    path: model_path.clone(),
                    source,
                }
            })?;
        write_atomic(&model_path, &model)?;
        let history_path = dir.join(Self::HISTORY);
        let history = serde_json::to_vec_pretty(&checkpoint.history)
            .map_err(ServerError::json("writing", &history_path))?;
        write_atomic(&history_path, &history)?;
        let checkpoint_path = dir.join(Self::CHECKPOINT);
        let cp = serde_json::to_vec_pretty(checkpoint)
            .map_err(ServerError::json("writing", &checkpoint_path))?;
        // The checkpoint goes last: it only ever points at a complete model.
        write_atomic(&checkpoint_path, &cp)
    }

    fn load(&self) -> Result<Option<SavedRun>, ServerError> {
        let cp_path = self.dir.join(Self::CHECKPOINT);
        if !cp_path.exists() {
            return Ok(None);
        }
        let text =
            std::fs::read_to_string(&cp_path).map_err(ServerError::io("reading", &cp_path))?;
        let checkpoint: Checkpoint =
            serde_json::from_str(&text).map_err(ServerError::json("reading", &cp_path))?;
        let parameters = parameters_from_npz(&self.dir.join(Self::MODEL), &checkpoint.tensor_type)?;
        Ok(Some(SavedRun {
            checkpoint,
            parameters,
        }))
    }

    fn location(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, synced, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(ServerError::io("writing", path))?;
    file.write_all(bytes)
        .map_err(ServerError::io("writing", path))?;
    file.sync_all().map_err(ServerError::io("writing", path))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(ServerError::io("writing", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::History;

    #[test]
    fn directory_store_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path().join("run"));
        assert!(store.load().unwrap().is_none());
        let parameters = flower_core::ndarrays_to_parameters(&[flower_core::NdArray::from(
            ndarray::arr1(&[1.0f32, 2.0]).into_dyn(),
        )]);
        let checkpoint = Checkpoint {
            format_version: 1,
            completed_rounds: 2,
            num_rounds: 3,
            tensor_type: parameters.tensor_type.clone(),
            strategy: "FedAvg".into(),
            strategy_state: serde_json::Value::Null,
            history: History::default(),
        };
        store.save(&checkpoint, &parameters).unwrap();
        let saved = store.load().unwrap().unwrap();
        assert_eq!(saved.checkpoint, checkpoint);
        assert_eq!(saved.parameters, parameters);
    }

    #[test]
    fn array_names_are_kept_in_the_model_file() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["w".to_string(), "b".to_string()];
        let store = DirectoryStore::new(dir.path()).with_array_names(names.clone());
        let parameters = flower_core::ndarrays_to_parameters(&[
            flower_core::NdArray::from(ndarray::arr1(&[1.0f32, 2.0]).into_dyn()),
            flower_core::NdArray::from(ndarray::arr1(&[3i64]).into_dyn()),
        ]);
        let checkpoint = Checkpoint {
            format_version: 1,
            completed_rounds: 0,
            num_rounds: 1,
            tensor_type: parameters.tensor_type.clone(),
            strategy: "FedAvg".into(),
            strategy_state: serde_json::Value::Null,
            history: History::default(),
        };
        store.save(&checkpoint, &parameters).unwrap();
        let (read, read_names) = crate::read_npz_named(
            &dir.path().join(DirectoryStore::MODEL),
            &parameters.tensor_type,
        )
        .unwrap();
        assert_eq!(read_names, names);
        assert_eq!(read, parameters);
    }
}
