//! Where a run is persisted: the [`RunStore`] the round driver saves to after
//! every round and resumes from.
//!
//! [`DirectoryStore`] writes Flower-style files into a directory
//! (`model.npz`, `history.json`, `checkpoint.json`); tests and embedders can
//! inject their own store (in memory, a database, ...).

use std::path::{Path, PathBuf};

use flower_core::Parameters;
use sha2::{Digest, Sha256};

use crate::history::Checkpoint;
use crate::model_file::{npz_fingerprint, parameters_from_npz, write_npz_named};
use crate::{ModelFileError, ServerError};

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
        // Straight into the file: the model is never copied into a buffer;
        // the fingerprint reads back only the archive's directory.
        let fingerprint = write_atomic_with(&model_path, |file| {
            write_npz_named(
                parameters,
                self.array_names.as_deref(),
                std::io::BufWriter::new(file),
            )
            .and_then(|out| out.into_inner().map_err(|e| e.into_error().into()))
            .and_then(npz_fingerprint)
            .map_err(|source| ServerError::ModelFile {
                path: model_path.clone(),
                source,
            })
        })?;
        let mut checkpoint = checkpoint.clone();
        checkpoint.model_sha256 = None;
        checkpoint.model_fingerprint = Some(fingerprint);
        let history_path = dir.join(Self::HISTORY);
        let history = serde_json::to_vec_pretty(&checkpoint.history)
            .map_err(ServerError::json("writing", &history_path))?;
        write_atomic(&history_path, &history)?;
        let checkpoint_path = dir.join(Self::CHECKPOINT);
        let cp = serde_json::to_vec_pretty(&checkpoint)
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
        let model_path = self.dir.join(Self::MODEL);
        if let Some(want) = &checkpoint.model_sha256 {
            let bytes =
                std::fs::read(&model_path).map_err(ServerError::io("reading", &model_path))?;
            let got = hex::encode(Sha256::digest(&bytes));
            if &got != want {
                return Err(ServerError::Config(format!(
                    "{} does not belong to {} (its SHA-256 is {got}, the checkpoint expects \
                     {want}): refusing to resume from a model the checkpoint did not write",
                    model_path.display(),
                    cp_path.display()
                )));
            }
        }
        if let Some(want) = &checkpoint.model_fingerprint {
            let got = std::fs::File::open(&model_path)
                .map_err(ModelFileError::from)
                .and_then(npz_fingerprint)
                .map_err(|source| ServerError::ModelFile {
                    path: model_path.clone(),
                    source,
                })?;
            if &got != want {
                return Err(ServerError::Config(format!(
                    "{} does not belong to {} (its entries' fingerprint is {got}, the \
                     checkpoint expects {want}): refusing to resume from a model the checkpoint \
                     did not write",
                    model_path.display(),
                    cp_path.display()
                )));
            }
        }
        let parameters = parameters_from_npz(&model_path, &checkpoint.tensor_type)?;
        Ok(Some(SavedRun {
            checkpoint,
            parameters,
        }))
    }

    fn location(&self) -> Option<&Path> {
        Some(&self.dir)
    }
}

/// Writes `bytes` to `path` atomically: a new temporary file in the same
/// directory (unique name, created exclusively with mode 0600, so a
/// planted file or symlink is never followed), synced, renamed over the
/// target, then the directory synced so the rename survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    write_atomic_with(path, |file| {
        file.write_all(bytes)
            .map_err(ServerError::io("writing", path))
    })
}

/// Like [`write_atomic`], with the content written by `write` into the
/// temporary file (which it may seek in and read back); returns what
/// `write` returns.
pub fn write_atomic_with<T>(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<T, ServerError>,
) -> Result<T, ServerError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = || ServerError::io("writing", path);
    let mut file = tempfile::Builder::new()
        .prefix(".flower-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io())?;
    let written = write(file.as_file_mut())?;
    file.as_file().sync_all().map_err(io())?;
    file.persist(path).map_err(|e| io()(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ServerError::io("syncing", dir))?;
    Ok(written)
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
            model_sha256: None,
            model_fingerprint: None,
        };
        store.save(&checkpoint, &parameters).unwrap();
        let saved = store.load().unwrap().unwrap();
        assert_eq!(
            saved.checkpoint.completed_rounds,
            checkpoint.completed_rounds
        );
        assert!(saved.checkpoint.model_fingerprint.is_some());
        assert_eq!(saved.checkpoint.model_sha256, None);
        assert_eq!(saved.parameters, parameters);

        // Files are private to the owner; no temporary file is left behind.
        use std::os::unix::fs::PermissionsExt;
        for name in [DirectoryStore::MODEL, DirectoryStore::CHECKPOINT] {
            let mode = std::fs::metadata(store.dir().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let leftovers = std::fs::read_dir(store.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);

        // A model file swapped under the checkpoint is refused.
        let other = flower_core::ndarrays_to_parameters(&[flower_core::NdArray::from(
            ndarray::arr1(&[9.0f32, 9.0]).into_dyn(),
        )]);
        std::fs::write(
            store.dir().join(DirectoryStore::MODEL),
            crate::parameters_to_npz(&other).unwrap(),
        )
        .unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");

        // A model file whose data changed (same directory) fails its CRC.
        store.save(&checkpoint, &parameters).unwrap();
        let model_path = store.dir().join(DirectoryStore::MODEL);
        let mut bytes = std::fs::read(&model_path).unwrap();
        let at = bytes
            .windows(4)
            .position(|w| w == 2.0f32.to_le_bytes())
            .unwrap();
        bytes[at] ^= 1;
        std::fs::write(&model_path, &bytes).unwrap();
        let err = store.load().unwrap_err();
        assert!(
            crate::error_chain(&err).to_lowercase().contains("checksum"),
            "{}",
            crate::error_chain(&err)
        );

        // A checkpoint from before fingerprints is still checked by SHA-256.
        store.save(&checkpoint, &parameters).unwrap();
        let cp_path = store.dir().join(DirectoryStore::CHECKPOINT);
        let mut old: Checkpoint =
            serde_json::from_str(&std::fs::read_to_string(&cp_path).unwrap()).unwrap();
        old.model_fingerprint = None;
        old.model_sha256 = Some(hex::encode(Sha256::digest(
            std::fs::read(&model_path).unwrap(),
        )));
        std::fs::write(&cp_path, serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(store.load().is_ok());
        old.model_sha256 = Some("00".repeat(32));
        std::fs::write(&cp_path, serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(store.load().is_err());
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
            model_sha256: None,
            model_fingerprint: None,
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
