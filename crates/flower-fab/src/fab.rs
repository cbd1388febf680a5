//! Reading and checking a FAB (the zip that `flwr build` writes).

use std::io::{Cursor, Read};
use std::path::Path;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use zip::ZipArchive;

use crate::config::{flatten, UserConfig};
use crate::toml_value::{parse_document, Table, TomlValue};
use crate::FabError;

/// Largest FAB Flower accepts, in bytes (`FAB_MAX_SIZE` in
/// `flwr/common/constant.py`: 10 MiB, checked with `>`).
pub const FAB_MAX_SIZE: usize = 10 * 1024 * 1024;

/// Largest total uncompressed size of the files we read from a FAB. flwr has
/// no such cap; a server must not inflate a 10 MiB zip bomb into gigabytes
/// just to check hashes. Generous: a FAB is source code.
pub const FAB_MAX_UNCOMPRESSED_SIZE: u64 = 256 * 1024 * 1024;

/// The app's config file inside a FAB (normalized by `flwr build`).
pub const FAB_CONFIG_FILE: &str = "pyproject.toml";

/// The manifest `flwr build` writes: one `path,sha256,size_in_bits` line per
/// file. `flwr-clientapp` refuses a FAB whose files do not match it.
pub const FAB_CONTENT_FILE: &str = ".info/CONTENT";

/// How many hex chars of the hash name an installed app or a `.fab` file.
pub const FAB_HASH_TRUNCATION: usize = 8;

/// The `[tool.flwr.app.components]` table: object references
/// (`module:attribute`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Components {
    /// The ServerApp reference (required unless this is an AgentApp bundle).
    pub serverapp: Option<String>,
    /// The ClientApp reference (required unless this is an AgentApp bundle).
    pub clientapp: Option<String>,
    /// The AgentApp reference, for AgentApp bundles.
    pub agentapp: Option<String>,
}

impl Components {
    /// True when the FAB declares an `agentapp` (flwr then runs it as
    /// `primary_task_type = "flwr-agentapp"` and does not require the other
    /// two components).
    pub fn is_agentapp_bundle(&self) -> bool {
        self.agentapp.is_some()
    }
}

/// A parsed and checked FAB.
///
/// `from_bytes` applies the checks that flwr applies to a FAB on its way to
/// a ClientApp: the size limit (Control `StartRun`), `get_fab_config`'s
/// `validate_config(check_module=False)` (required fields, config value
/// types, components, `fab-format-version`), and `flwr-clientapp`'s
/// `install_from_fab` (zip-slip, `.info/CONTENT` hashes). A FAB that passes
/// will not make a SuperNode fail while reading it.
#[derive(Debug, Clone)]
pub struct Fab {
    content: Bytes,
    hash_str: String,
    publisher: String,
    name: String,
    version: String,
    components: Components,
    default_config: UserConfig,
    fab_format_version: i64,
    files: Vec<String>,
}

impl Fab {
    /// Parses and checks the FAB `content`.
    pub fn from_bytes(content: Bytes) -> Result<Fab, FabError> {
        if content.len() > FAB_MAX_SIZE {
            return Err(FabError::TooLarge {
                size: content.len(),
                max: FAB_MAX_SIZE,
            });
        }
        let hash_str = hex::encode(Sha256::digest(&content));
        let mut zip = ZipArchive::new(Cursor::new(content.as_ref())).map_err(FabError::Zip)?;
        let files = list_files(&mut zip)?;

        let pyproject = read_utf8(&mut zip, FAB_CONFIG_FILE)?;
        let doc = parse_document(&pyproject).map_err(|source| FabError::Toml {
            file: FAB_CONFIG_FILE.into(),
            source,
        })?;
        let meta = validate_config(&doc, &files)?;
        verify_content(&mut zip)?;

        Ok(Fab {
            content,
            hash_str,
            publisher: meta.publisher,
            name: meta.name,
            version: meta.version,
            components: meta.components,
            default_config: meta.default_config,
            fab_format_version: meta.fab_format_version,
            files,
        })
    }

    /// Reads the file at `path` and parses it with [`Fab::from_bytes`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Fab, FabError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| FabError::Io {
            path: path.to_owned(),
            source,
        })?;
        Fab::from_bytes(Bytes::from(bytes))
    }

    /// The FAB's bytes, as received (for `GetFabResponse.fab.content`).
    pub fn content(&self) -> &Bytes {
        &self.content
    }

    /// Lowercase hex SHA-256 of the bytes (`Fab.hash_str`, `Run.fab_hash`).
    pub fn hash_str(&self) -> &str {
        &self.hash_str
    }

    /// `"<publisher>/<name>"` (`Run.fab_id`).
    pub fn fab_id(&self) -> String {
        format!("{}/{}", self.publisher, self.name)
    }

    /// `project.version` (`Run.fab_version`).
    pub fn fab_version(&self) -> &str {
        &self.version
    }

    /// `tool.flwr.app.publisher`.
    pub fn publisher(&self) -> &str {
        &self.publisher
    }

    /// `project.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared components.
    pub fn components(&self) -> &Components {
        &self.components
    }

    /// `[tool.flwr.app.config]`, flattened with `.`, in document order.
    pub fn default_config(&self) -> &UserConfig {
        &self.default_config
    }

    /// `tool.flwr.app.fab-format-version` (0 when absent).
    pub fn fab_format_version(&self) -> i64 {
        self.fab_format_version
    }

    /// Names of the files in the archive (directories left out), in archive
    /// order.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The directory name `flwr-clientapp` installs the app under
    /// (`$FLWR_HOME/apps/<this>`): `publisher.name.version.hash8`.
    pub fn install_dir_name(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.publisher,
            self.name,
            self.version,
            &self.hash_str[..FAB_HASH_TRUNCATION]
        )
    }

    /// The file name `flwr build` gives this FAB:
    /// `publisher.name.version-with-dashes.hash8.fab`.
    pub fn file_name(&self) -> String {
        format!(
            "{}.{}.{}.{}.fab",
            self.publisher,
            self.name,
            self.version.replace('.', "-"),
            &self.hash_str[..FAB_HASH_TRUNCATION]
        )
    }
}

/// What `validate_config` extracts from `pyproject.toml`.
struct Meta {
    publisher: String,
    name: String,
    version: String,
    components: Components,
    default_config: UserConfig,
    fab_format_version: i64,
}

/// Lists the archive's files, refusing names that would escape the
/// extraction directory (flwr's `safe_extract_zip`) and archives whose
/// declared uncompressed size is excessive.
fn list_files(zip: &mut ZipArchive<Cursor<&[u8]>>) -> Result<Vec<String>, FabError> {
    let mut files = Vec::with_capacity(zip.len());
    let mut total: u64 = 0;
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(FabError::Zip)?;
        if entry.enclosed_name().is_none() {
            return Err(FabError::UnsafePath {
                name: entry.name().to_owned(),
            });
        }
        total = total.saturating_add(entry.size());
        if !entry.is_dir() {
            files.push(entry.name().to_owned());
        }
    }
    if total > FAB_MAX_UNCOMPRESSED_SIZE {
        return Err(FabError::TooLargeUncompressed {
            size: total,
            max: FAB_MAX_UNCOMPRESSED_SIZE,
        });
    }
    Ok(files)
}

/// Reads one archive member, never more than [`FAB_MAX_UNCOMPRESSED_SIZE`]
/// bytes whatever its header claims.
fn read_member(zip: &mut ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<Vec<u8>, FabError> {
    let entry = match zip.by_name(name) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(FabError::MissingFile { name: name.into() })
        }
        Err(e) => return Err(FabError::Zip(e)),
    };
    let mut buf = Vec::new();
    entry
        .take(FAB_MAX_UNCOMPRESSED_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(|source| FabError::ReadMember {
            name: name.into(),
            source,
        })?;
    if buf.len() as u64 > FAB_MAX_UNCOMPRESSED_SIZE {
        return Err(FabError::TooLargeUncompressed {
            size: buf.len() as u64,
            max: FAB_MAX_UNCOMPRESSED_SIZE,
        });
    }
    Ok(buf)
}

fn read_utf8(zip: &mut ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<String, FabError> {
    String::from_utf8(read_member(zip, name)?).map_err(|source| FabError::NotUtf8 {
        name: name.into(),
        source,
    })
}

/// flwr-clientapp's `_verify_hashes`: every `path,sha256,bits` line of
/// `.info/CONTENT` names a file of the archive whose SHA-256 matches. (flwr
/// ignores the size field and files the manifest does not list.)
fn verify_content(zip: &mut ZipArchive<Cursor<&[u8]>>) -> Result<(), FabError> {
    let manifest = read_utf8(zip, FAB_CONTENT_FILE)?;
    // Python: `content.strip().split("\n")`, each line `split(",")` into
    // exactly three fields.
    for (index, line) in manifest.trim().split('\n').enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        let [path, expected, _bits] = fields[..] else {
            return Err(FabError::ContentManifest {
                line: index + 1,
                text: line.to_owned(),
            });
        };
        let data = match read_member(zip, path) {
            Err(FabError::MissingFile { .. }) => {
                return Err(FabError::ContentMismatch {
                    path: path.to_owned(),
                    expected: expected.to_owned(),
                    actual: None,
                })
            }
            other => other?,
        };
        let actual = hex::encode(Sha256::digest(&data));
        if actual != expected {
            return Err(FabError::ContentMismatch {
                path: path.to_owned(),
                expected: expected.to_owned(),
                actual: Some(actual),
            });
        }
    }
    Ok(())
}

/// flwr's `validate_config(config, check_module=False)` as `get_fab_config`
/// runs it, plus the string types and single `/` in the FAB id that
/// `flwr-clientapp` relies on.
fn validate_config(doc: &Table, files: &[String]) -> Result<Meta, FabError> {
    let mut errors = Vec::new();
    let project = doc.get("project").and_then(TomlValue::as_table);
    let app = doc
        .get("tool")
        .and_then(TomlValue::as_table)
        .and_then(|t| t.get("flwr"))
        .and_then(TomlValue::as_table)
        .and_then(|t| t.get("app"))
        .and_then(TomlValue::as_table);

    // validate_fields_in_config, in flwr's order.
    if project.is_none() {
        errors.push("Missing [project] section".to_owned());
    }
    let name = string_field(project, "name", "project", &mut errors);
    let version = string_field(project, "version", "project", &mut errors);
    if app.is_none() {
        errors.push("Missing [tool.flwr.app] section".to_owned());
    }
    let publisher = string_field(app, "publisher", "tool.flwr.app", &mut errors);
    if let Some(app) = app {
        for key in ["fab-include", "fab-exclude"] {
            if let Some(value) = app.get(key) {
                check_pattern_list(value, key, &mut errors);
            }
        }
    }
    let default_config = match app.and_then(|a| a.get("config")) {
        None => UserConfig::new(),
        Some(TomlValue::Table(config)) => flatten(config)?,
        Some(other) => {
            return Err(FabError::InvalidConfigValue {
                key: "config".into(),
                found: other.type_name(),
            })
        }
    };
    let components = match app.map(|a| a.get("components")) {
        None => None,
        Some(None) => {
            errors.push("Missing [tool.flwr.app.components] section".to_owned());
            None
        }
        Some(Some(value)) => Some(components(value, &mut errors)),
    };
    for (what, value) in [("publisher", &publisher), ("name", &name)] {
        if value.contains('/') {
            errors.push(format!(
                "{what} \"{value}\" must not contain '/' (the FAB id is publisher/name)"
            ));
        }
    }
    if !errors.is_empty() {
        return Err(FabError::InvalidConfig { errors });
    }
    let fab_format_version = validate_fab_format(doc, app, files)
        .map_err(|e| FabError::InvalidConfig { errors: vec![e] })?;
    let Some(components) = components else {
        // Unreachable: a missing table was reported above.
        return Err(FabError::InvalidConfig {
            errors: vec!["Missing [tool.flwr.app.components] section".to_owned()],
        });
    };
    Ok(Meta {
        publisher,
        name,
        version,
        components,
        default_config,
        fab_format_version,
    })
}

/// A required string property of `section` (reported missing only when the
/// section itself exists, as flwr does).
fn string_field(
    table: Option<&Table>,
    key: &str,
    section: &str,
    errors: &mut Vec<String>,
) -> String {
    match table.and_then(|t| t.get(key)) {
        None => {
            if table.is_some() {
                errors.push(format!("Property \"{key}\" missing in [{section}]"));
            }
            String::new()
        }
        Some(TomlValue::String(s)) => s.clone(),
        Some(other) => {
            errors.push(format!(
                "Property \"{key}\" in [{section}] must be a string, found a {}",
                other.type_name()
            ));
            String::new()
        }
    }
}

/// The components table: `serverapp` and `clientapp` required unless an
/// `agentapp` is declared; each a `module:attribute` reference.
fn components(value: &TomlValue, errors: &mut Vec<String>) -> Components {
    let Some(table) = value.as_table() else {
        errors.push(format!(
            "[tool.flwr.app.components] must be a table, found a {}",
            value.type_name()
        ));
        return Components {
            serverapp: None,
            clientapp: None,
            agentapp: None,
        };
    };
    let mut get = |key: &str| -> Option<String> {
        let value = table.get(key)?;
        let Some(reference) = value.as_str() else {
            errors.push(format!(
                "Property \"{key}\" in [tool.flwr.app.components] must be a string, found a {}",
                value.type_name()
            ));
            return None;
        };
        // object_ref.validate(check_module=False)
        let (module, attribute) = reference.split_once(':').unwrap_or((reference, ""));
        if module.is_empty() {
            errors.push(format!("Missing module in {reference}"));
        } else if attribute.is_empty() {
            errors.push(format!("Missing attribute in {reference}"));
        }
        Some(reference.to_owned())
    };
    let found = Components {
        agentapp: get("agentapp"),
        serverapp: get("serverapp"),
        clientapp: get("clientapp"),
    };
    if !table.contains_key("agentapp") {
        for key in ["serverapp", "clientapp"] {
            if !table.contains_key(key) {
                errors.push(format!(
                    "Property \"{key}\" missing in [tool.flwr.app.components]"
                ));
            }
        }
    }
    found
}

/// flwr's `check_pattern_list_value` for `fab-include` / `fab-exclude`.
fn check_pattern_list(value: &TomlValue, key: &str, errors: &mut Vec<String>) {
    let TomlValue::Array(items) = value else {
        errors.push(format!(
            "Property \"{key}\" in [tool.flwr.app] must be a list of strings."
        ));
        return;
    };
    if items.is_empty() {
        errors.push(format!(
            "Property \"{key}\" in [tool.flwr.app] must not be an empty list."
        ));
    } else if items
        .iter()
        .any(|p| p.as_str().is_none_or(|s| s.trim().is_empty()))
    {
        errors.push(format!(
            "Property \"{key}\" in [tool.flwr.app] must be a list of non-empty strings."
        ));
    }
}

/// `normalize_and_validate_fab_format` (`flwr/supercore/fab_format_version.py`).
///
/// Version 0 (the default) only checks the shape of `[project].dependencies`.
/// Version 1 also needs `flwr-version-target`, a `flwr` dependency with a `>=`
/// bound and a root `LICENSE`/`LICENSE.md` that is in the FAB. Not checked
/// here (it needs a PEP 440 implementation): that the target version
/// satisfies the `flwr` specifier, and PEP 508 syntax of other dependencies.
fn validate_fab_format(doc: &Table, app: Option<&Table>, files: &[String]) -> Result<i64, String> {
    let version = match app.and_then(|a| a.get("fab-format-version")) {
        None => 0,
        Some(TomlValue::Integer(v)) if *v >= 0 => *v,
        Some(_) => {
            return Err(
                "Invalid [tool.flwr.app].fab-format-version: expected a non-negative integer."
                    .to_owned(),
            )
        }
    };
    let project = doc.get("project").and_then(TomlValue::as_table);
    let flwr_dependency = flwr_requirement(project)?;
    match version {
        0 => Ok(0),
        1 => {
            match app.and_then(|a| a.get("flwr-version-target")) {
                Some(TomlValue::String(_)) => {}
                Some(_) => {
                    return Err(
                        "Invalid [tool.flwr.app].flwr-version-target: expected a string."
                            .to_owned(),
                    )
                }
                None => {
                    return Err(
                        "Missing [tool.flwr.app].flwr-version-target for fab-format-version >= 1."
                            .to_owned(),
                    )
                }
            }
            let license = project
                .and_then(|p| p.get("license"))
                .and_then(TomlValue::as_table)
                .and_then(|l| l.get("file"))
                .and_then(TomlValue::as_str)
                .filter(|f| *f == "LICENSE" || *f == "LICENSE.md")
                .ok_or_else(|| {
                    "fab-format-version = 1 requires [project].license to be \
                     { file = \"LICENSE\" } or { file = \"LICENSE.md\" }."
                        .to_owned()
                })?;
            let Some(requirement) = flwr_dependency else {
                return Err("Missing \"flwr\" dependency in [project].dependencies for \
                     fab-format-version >= 1."
                    .to_owned());
            };
            let specifiers = requirement.split(';').next().unwrap_or_default();
            let has_lower_bound = specifiers.split(',').any(|s| {
                s.trim()
                    .trim_start_matches('(')
                    .trim_start()
                    .starts_with(">=")
            });
            if !has_lower_bound {
                return Err(
                    "Invalid \"flwr\" dependency specifier: an inclusive lower bound \
                            declared with \">=\" is required for fab-format-version = 1."
                        .to_owned(),
                );
            }
            if !files.iter().any(|f| f == license) {
                return Err("fab-format-version = 1 requires the declared \
                            [project].license.file to be included in the FAB."
                    .to_owned());
            }
            Ok(1)
        }
        other => Err(format!(
            "Unsupported [tool.flwr.app].fab-format-version: {other}."
        )),
    }
}

/// The single `flwr` entry of `[project].dependencies`, if any.
fn flwr_requirement(project: Option<&Table>) -> Result<Option<String>, String> {
    let Some(deps) = project.and_then(|p| p.get("dependencies")) else {
        return Ok(None);
    };
    let TomlValue::Array(deps) = deps else {
        return Err(
            "Invalid [project].dependencies: expected a list containing a \"flwr\" \
                    dependency declaration."
                .to_owned(),
        );
    };
    let mut found = None;
    for dep in deps {
        let Some(dep) = dep.as_str() else {
            return Err(
                "Invalid [project].dependencies: dependency entries must be strings.".to_owned(),
            );
        };
        let dep = dep.trim();
        // PEP 508 name: letters, digits, `.`, `_`, `-`; compared verbatim as
        // `packaging`'s `Requirement.name == "flwr"` does.
        let name_len = dep
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .unwrap_or(dep.len());
        if &dep[..name_len] == "flwr" {
            if found.is_some() {
                return Err("Multiple \"flwr\" dependency declarations are not supported.".into());
            }
            // Skip extras (`flwr[simulation]`) to reach the specifiers.
            let rest = dep[name_len..].trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']').map_or("", |(_, after)| after),
                None => rest,
            };
            found = Some(rest.to_owned());
        }
    }
    Ok(found)
}
