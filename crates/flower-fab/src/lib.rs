//! FAB files: reading `flwr build` output, app metadata and run config.
//!
//! A FAB (Flower App Bundle) is the zip that `flwr build` writes: the app's
//! Python files, a normalized `pyproject.toml` and a `.info/CONTENT`
//! manifest of SHA-256 hashes. A server that runs a Flower app on stock
//! `flower-supernode`s stores the FAB's bytes as they are, serves them with
//! `GetFab`, and describes the run with values read from it:
//!
//! | `Run` field       | source                                        |
//! |-------------------|-----------------------------------------------|
//! | `fab_hash`        | [`Fab::hash_str`]: SHA-256 of the bytes        |
//! | `fab_id`          | [`Fab::fab_id`]: `publisher/project.name`      |
//! | `fab_version`     | [`Fab::fab_version`]: `project.version`        |
//! | `override_config` | [`RunConfig::override_scalars`]               |
//!
//! Each SuperNode fuses `override_config` with the FAB's
//! `[tool.flwr.app.config]` and dies if an override key is unknown, so
//! [`RunConfig::new`] refuses unknown keys up front.
//!
//! The rules mirror flwr 1.42 (`flwr/cli/build.py`, `flwr/cli/install.py`,
//! `flwr/common/config.py`); the integration tests compare this crate with
//! flwr's own functions on FABs built by `flwr build`. Everything here is a
//! pure function of bytes, except the `from_file` conveniences and a
//! `--run-config` argument naming a `.toml` file.
//!
//! ```
//! # fn demo(fab_bytes: bytes::Bytes) -> Result<(), flower_fab::FabError> {
//! use flower_fab::{Fab, RunConfig};
//!
//! let fab = Fab::from_bytes(fab_bytes)?;
//! let run_config = RunConfig::from_args(&fab, &["lr=0.01 local-epochs=2"])?;
//! let override_config = run_config.override_scalars(); // -> Run.override_config
//! # let _ = override_config; Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod config;
mod fab;
mod toml_value;

use std::path::PathBuf;

pub use config::{ConfigValue, RunConfig, UserConfig};
pub use fab::{
    Components, Fab, FAB_CONFIG_FILE, FAB_CONTENT_FILE, FAB_HASH_TRUNCATION, FAB_MAX_SIZE,
    FAB_MAX_UNCOMPRESSED_SIZE,
};

/// Everything that can be wrong with a FAB or a run config.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FabError {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The FAB exceeds [`FAB_MAX_SIZE`].
    #[error("FAB is {size} bytes, more than the maximum of {max} bytes")]
    TooLarge {
        /// Size of the FAB.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The FAB's files inflate to more than [`FAB_MAX_UNCOMPRESSED_SIZE`].
    #[error("FAB files inflate to {size} bytes, more than the maximum of {max} bytes")]
    TooLargeUncompressed {
        /// Declared or read uncompressed size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The bytes are not a readable zip archive.
    #[error("FAB is not a valid zip archive")]
    Zip(#[source] zip::result::ZipError),
    /// An archive member could not be inflated.
    #[error("cannot inflate `{name}` from the FAB")]
    ReadMember {
        /// The member.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An archive member's name would escape the extraction directory.
    #[error("unsafe path in FAB archive: `{name}`")]
    UnsafePath {
        /// The member's name.
        name: String,
    },
    /// A required file is absent from the FAB.
    #[error("FAB has no `{name}`")]
    MissingFile {
        /// The file.
        name: String,
    },
    /// A text file is not UTF-8.
    #[error("`{name}` in the FAB is not UTF-8")]
    NotUtf8 {
        /// The file.
        name: String,
        /// The decoding error.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// A TOML document does not parse.
    #[error("invalid TOML in {file}")]
    Toml {
        /// What was being parsed.
        file: String,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// `pyproject.toml` fails flwr's validation.
    #[error("invalid Flower App configuration (pyproject.toml): {}", errors.join("; "))]
    InvalidConfig {
        /// flwr's error lines.
        errors: Vec<String>,
    },
    /// A config value is not bool, int, float, str or a table of those.
    #[error(
        "the value for key `{key}` is a {found}; it needs to be a bool, int, float, str, \
         or a table of those"
    )]
    InvalidConfigValue {
        /// The flattened key.
        key: String,
        /// The TOML type found.
        found: &'static str,
    },
    /// A `.info/CONTENT` line is not `path,sha256,bits`.
    #[error("malformed line {line} in .info/CONTENT: {text:?}")]
    ContentManifest {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A file listed in `.info/CONTENT` is absent or has another hash.
    #[error(
        "file hashes couldn't be verified: `{path}` expected sha256 {expected}, {}",
        actual.as_deref().map_or("file missing".to_owned(), |a| format!("found {a}"))
    )]
    ContentMismatch {
        /// The listed path.
        path: String,
        /// Hash listed in the manifest.
        expected: String,
        /// Hash of the file, `None` when it is absent.
        actual: Option<String>,
    },
    /// A `--run-config` argument is not `key=value` pairs in TOML syntax.
    #[error(
        "run config override {arg:?} is invalid; the format is e.g. \
         'key1=123 key2=false key3=\"string\"' with TOML values (bool, int, float, string)"
    )]
    OverrideSyntax {
        /// The argument.
        arg: String,
        /// The TOML parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// A `.toml` file was given next to `key=value` arguments.
    #[error("TOML files cannot be passed alongside key-value pairs (got {arg:?})")]
    TomlFileWithPairs {
        /// The offending argument.
        arg: String,
    },
    /// An override names a key the FAB's `[tool.flwr.app.config]` lacks.
    #[error(
        "unknown run config key `{key}`; the app defines: {}",
        if known.is_empty() { "no run config keys".to_owned() } else { known.join(", ") }
    )]
    UnknownConfigKey {
        /// The unknown key.
        key: String,
        /// The keys the FAB defines.
        known: Vec<String>,
    },
    /// A protobuf `Scalar` has no config-value equivalent.
    #[error("run config key `{key}` holds {kind}, which is not a config value type")]
    UnsupportedScalar {
        /// The key.
        key: String,
        /// What it held.
        kind: &'static str,
    },
}
