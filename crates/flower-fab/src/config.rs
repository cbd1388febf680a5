//! Flower's user config (`[tool.flwr.app.config]`, `--run-config`) and the
//! run config a node computes from it.
//!
//! Mirrors `flwr/common/config.py` of flwr 1.42: `flatten_dict`,
//! `parse_config_args` and `fuse_dicts(check_keys=True)`.

use std::fmt;

use flower_core::{Scalar, ScalarMap};
use indexmap::IndexMap;

use crate::toml_value::{parse_document, Table, TomlValue};
use crate::{Fab, FabError};

/// One run-config value. Flower's `UserConfigValue` is `bool | float | int |
/// str`; TOML arrays, datetimes and anything else are refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    /// A TOML boolean.
    Bool(bool),
    /// A TOML integer (64-bit signed, as TOML defines it).
    Int(i64),
    /// A TOML float.
    Float(f64),
    /// A TOML string.
    Str(String),
}

impl ConfigValue {
    /// The value as `flower_core::Scalar`, as flwr's
    /// `user_config_value_to_proto` encodes it (ints always as `sint64`).
    pub fn to_scalar(&self) -> Scalar {
        match self {
            ConfigValue::Bool(b) => Scalar::Bool(*b),
            ConfigValue::Int(i) => Scalar::Sint64(*i),
            ConfigValue::Float(f) => Scalar::Double(*f),
            ConfigValue::Str(s) => Scalar::String(s.clone()),
        }
    }

    /// Reads a value received as a protobuf `Scalar` (e.g. a Control
    /// `StartRunRequest.override_config`). `bytes` and integers above
    /// `i64::MAX` are not config values and are refused.
    pub fn from_scalar(key: &str, scalar: Scalar) -> Result<Self, FabError> {
        match scalar {
            Scalar::Bool(b) => Ok(ConfigValue::Bool(b)),
            Scalar::Sint64(i) => Ok(ConfigValue::Int(i)),
            Scalar::Uint64(u) => {
                i64::try_from(u)
                    .map(ConfigValue::Int)
                    .map_err(|_| FabError::UnsupportedScalar {
                        key: key.to_owned(),
                        kind: "uint64 above i64::MAX",
                    })
            }
            Scalar::Double(f) => Ok(ConfigValue::Float(f)),
            Scalar::String(s) => Ok(ConfigValue::Str(s)),
            Scalar::Bytes(_) => Err(FabError::UnsupportedScalar {
                key: key.to_owned(),
                kind: "bytes",
            }),
        }
    }

    /// Name of the type, as Python calls it.
    pub fn type_name(&self) -> &'static str {
        match self {
            ConfigValue::Bool(_) => "bool",
            ConfigValue::Int(_) => "int",
            ConfigValue::Float(_) => "float",
            ConfigValue::Str(_) => "str",
        }
    }
}

impl From<ConfigValue> for Scalar {
    fn from(value: ConfigValue) -> Self {
        value.to_scalar()
    }
}

/// TOML literal syntax, so `format!("{key}={value}")` is a valid
/// `--run-config` argument that parses back to the same value.
impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigValue::Bool(b) => write!(f, "{b}"),
            ConfigValue::Int(i) => write!(f, "{i}"),
            ConfigValue::Float(x) if x.is_nan() => f.write_str("nan"),
            ConfigValue::Float(x) if x.is_infinite() => {
                f.write_str(if *x > 0.0 { "inf" } else { "-inf" })
            }
            // `{:?}` always keeps a `.` or an exponent, so TOML reads a float back.
            ConfigValue::Float(x) => write!(f, "{x:?}"),
            ConfigValue::Str(s) => write!(f, "{}", toml::Value::String(s.clone())),
        }
    }
}

/// A flat, ordered user config: keys joined with `.`, in document order
/// (Flower's `UserConfig`, a Python dict).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserConfig(IndexMap<String, ConfigValue>);

impl UserConfig {
    /// An empty config.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `--run-config` arguments exactly as flwr's `parse_config_args`:
    ///
    /// * a single argument ending in `.toml` is a TOML file, read and
    ///   flattened (a `.toml` argument next to others is an error);
    /// * otherwise each argument holds space-separated `key=value` pairs
    ///   (regex `(\S+?)=('[^']*'|"[^"]*"|\S+)`, text that does not match is
    ///   ignored), which are rewritten as `key = value` lines and parsed as
    ///   TOML: values use TOML syntax (`lr=0.1`, `on=true`, `name="x y"`),
    ///   keys may be dotted (`a.b=1`), inline tables flatten.
    /// * Arguments are merged in order with a *shallow* update, as flwr's
    ///   `dict.update` does: `a.b=1` and then, in a later argument, `a.c=2`
    ///   leaves only `a.c`.
    pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Self, FabError> {
        if let [only] = args {
            let only = only.as_ref();
            if only.ends_with(".toml") {
                let text = std::fs::read_to_string(only).map_err(|source| FabError::Io {
                    path: only.into(),
                    source,
                })?;
                return Self::from_toml_str(&text);
            }
        }
        let mut merged = Table::new();
        let mut flat = UserConfig::new();
        for arg in args {
            let arg = arg.as_ref();
            if arg.is_empty() {
                continue;
            }
            if arg.ends_with(".toml") {
                return Err(FabError::TomlFileWithPairs {
                    arg: arg.to_owned(),
                });
            }
            let toml_text = find_pairs(arg)
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join("\n");
            let table = parse_document(&toml_text).map_err(|source| FabError::OverrideSyntax {
                arg: arg.to_owned(),
                source,
            })?;
            // Shallow, like Python's `dict.update`.
            merged.extend(table);
            flat = flatten(&merged)?;
        }
        Ok(flat)
    }

    /// Parses a TOML document (such as a `--run-config` file) and flattens
    /// it.
    pub fn from_toml_str(text: &str) -> Result<Self, FabError> {
        let table = parse_document(text).map_err(|source| FabError::Toml {
            file: "run config".into(),
            source,
        })?;
        flatten(&table)
    }

    /// Reads a map received as protobuf scalars (e.g. `Run.override_config`).
    /// The order is that of the map (sorted for a `BTreeMap`).
    pub fn from_scalars<I>(scalars: I) -> Result<Self, FabError>
    where
        I: IntoIterator<Item = (String, Scalar)>,
    {
        let mut out = UserConfig::new();
        for (key, scalar) in scalars {
            let value = ConfigValue::from_scalar(&key, scalar)?;
            out.0.insert(key, value);
        }
        Ok(out)
    }

    /// The config as protobuf-ready scalars, for `Run.override_config`
    /// (`map<string, Scalar>`).
    pub fn to_scalars(&self) -> ScalarMap {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), v.to_scalar()))
            .collect()
    }

    /// Sets `key` (keeping its position if already present).
    pub fn insert(&mut self, key: impl Into<String>, value: ConfigValue) -> Option<ConfigValue> {
        self.0.insert(key.into(), value)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        self.0.get(key)
    }

    /// True if `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Keys and values in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ConfigValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `self` (the defaults) with `overrides` applied, as flwr's
    /// `fuse_dicts(defaults, overrides, check_keys=True)`: every override key
    /// must exist in the defaults (the first unknown one is reported, with
    /// the known keys). Like flwr, the override's type is not checked against
    /// the default's.
    pub fn fuse(&self, overrides: &UserConfig) -> Result<UserConfig, FabError> {
        let mut fused = self.clone();
        for (key, value) in overrides.iter() {
            match fused.0.get_mut(key) {
                Some(slot) => *slot = value.clone(),
                None => {
                    return Err(FabError::UnknownConfigKey {
                        key: key.to_owned(),
                        known: self.keys().map(str::to_owned).collect(),
                    })
                }
            }
        }
        Ok(fused)
    }
}

impl<K: Into<String>> FromIterator<(K, ConfigValue)> for UserConfig {
    fn from_iter<T: IntoIterator<Item = (K, ConfigValue)>>(iter: T) -> Self {
        UserConfig(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl<'a> IntoIterator for &'a UserConfig {
    type Item = (&'a String, &'a ConfigValue);
    type IntoIter = indexmap::map::Iter<'a, String, ConfigValue>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The run config of one run: the FAB's defaults fused with the run's
/// overrides. The server sends only the overrides (`Run.override_config`);
/// each SuperNode fuses them with the FAB it downloads and fails if an
/// override key is unknown, so the server checks that before starting a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    overrides: UserConfig,
    values: UserConfig,
}

impl RunConfig {
    /// Fuses `fab`'s defaults with `overrides`; fails on an unknown key.
    pub fn new(fab: &Fab, overrides: UserConfig) -> Result<Self, FabError> {
        let values = fab.default_config().fuse(&overrides)?;
        Ok(RunConfig { overrides, values })
    }

    /// Parses `--run-config` style arguments (see [`UserConfig::parse_args`])
    /// and fuses them with `fab`'s defaults.
    pub fn from_args<S: AsRef<str>>(fab: &Fab, args: &[S]) -> Result<Self, FabError> {
        Self::new(fab, UserConfig::parse_args(args)?)
    }

    /// The overrides alone, as given.
    pub fn overrides(&self) -> &UserConfig {
        &self.overrides
    }

    /// The overrides as protobuf-ready scalars for `Run.override_config`.
    pub fn override_scalars(&self) -> ScalarMap {
        self.overrides.to_scalars()
    }

    /// The fused config that the ClientApp sees as `context.run_config`.
    pub fn values(&self) -> &UserConfig {
        &self.values
    }

    /// The fused value of `key`.
    pub fn get(&self, key: &str) -> Option<&ConfigValue> {
        self.values.get(key)
    }
}

/// flwr's `flatten_dict`: nested tables join their keys with `.`; leaves
/// must be bool, int, float or str.
pub(crate) fn flatten(table: &Table) -> Result<UserConfig, FabError> {
    let mut out = UserConfig::new();
    flatten_into(table, "", &mut out)?;
    Ok(out)
}

fn flatten_into(table: &Table, parent: &str, out: &mut UserConfig) -> Result<(), FabError> {
    for (key, value) in table {
        let full = if parent.is_empty() {
            key.clone()
        } else {
            format!("{parent}.{key}")
        };
        let leaf = match value {
            TomlValue::Table(sub) => {
                flatten_into(sub, &full, out)?;
                continue;
            }
            TomlValue::Boolean(b) => ConfigValue::Bool(*b),
            TomlValue::Integer(i) => ConfigValue::Int(*i),
            TomlValue::Float(f) => ConfigValue::Float(*f),
            TomlValue::String(s) => ConfigValue::Str(s.clone()),
            TomlValue::Array(_) | TomlValue::Datetime(_) => {
                return Err(FabError::InvalidConfigValue {
                    key: full,
                    found: value.type_name(),
                })
            }
        };
        // A later duplicate (`"a.b" = 1` and `a.b = 2`) replaces the value in
        // place, as building a Python dict from pairs does.
        out.0.insert(full, leaf);
    }
    Ok(())
}

/// Python's `str.isspace`, which is what `\s` means in a `str` regex: Rust's
/// Unicode whitespace plus the four ASCII separators `\x1c`..`\x1f`.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `re.findall(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)", line)`, by hand: the
/// workspace has no regex dependency and the pattern is small.
fn find_pairs(line: &str) -> Vec<(&str, &str)> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(line.len(), |&(b, _)| b);
    let mut pairs = Vec::new();
    let mut start = 0;
    'scan: while start < chars.len() {
        // Lazy key: the shortest run of non-space chars ending before an `=`
        // after which a value matches.
        let mut eq = start + 1;
        while eq < chars.len() && !is_py_space(chars[eq - 1].1) {
            if chars[eq].1 == '=' {
                if let Some(end) = match_value(&chars, eq + 1) {
                    pairs.push((
                        &line[byte_at(start)..byte_at(eq)],
                        &line[byte_at(eq + 1)..byte_at(end)],
                    ));
                    start = end;
                    continue 'scan;
                }
            }
            eq += 1;
        }
        start += 1;
    }
    pairs
}

/// End (exclusive char index) of a value matching
/// `'[^']*'|"[^"]*"|\S+` at `at`, trying the alternatives in order.
fn match_value(chars: &[(usize, char)], at: usize) -> Option<usize> {
    let first = chars.get(at)?.1;
    if first == '\'' || first == '"' {
        if let Some(close) = chars[at + 1..].iter().position(|&(_, c)| c == first) {
            return Some(at + 1 + close + 1);
        }
    }
    if is_py_space(first) {
        return None;
    }
    let run = chars[at..]
        .iter()
        .take_while(|&&(_, c)| !is_py_space(c))
        .count();
    Some(at + run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<UserConfig, FabError> {
        UserConfig::parse_args(args)
    }

    fn pairs(line: &str) -> Vec<(&str, &str)> {
        find_pairs(line)
    }

    #[test]
    fn findall_matches_python_regex_cases() {
        // Expected values from Python's re.findall with flwr's pattern.
        assert_eq!(pairs("a=1 b=2"), [("a", "1"), ("b", "2")]);
        assert_eq!(
            pairs("name=\"x y\" k='p q'"),
            [("name", "\"x y\""), ("k", "'p q'")]
        );
        assert_eq!(pairs("a==b"), [("a", "=b")]);
        assert_eq!(pairs("a= b"), Vec::<(&str, &str)>::new());
        assert_eq!(pairs("junk a=1"), [("a", "1")]);
        assert_eq!(pairs("x=\"open b=2"), [("x", "\"open"), ("b", "2")]);
        assert_eq!(pairs("k=v=w"), [("k", "v=w")]);
        assert_eq!(pairs("é=ü"), [("é", "ü")]);
        assert_eq!(pairs(""), Vec::<(&str, &str)>::new());
    }

    #[test]
    fn parses_typed_values_and_flattens() {
        let cfg =
            parse(&["lr=0.1 epochs=3 on=true name=\"a b\" opt.m=0.9 t={x=1}"]).expect("valid");
        let got: Vec<_> = cfg.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
        assert_eq!(
            got,
            [
                ("lr".to_owned(), ConfigValue::Float(0.1)),
                ("epochs".to_owned(), ConfigValue::Int(3)),
                ("on".to_owned(), ConfigValue::Bool(true)),
                ("name".to_owned(), ConfigValue::Str("a b".into())),
                ("opt.m".to_owned(), ConfigValue::Float(0.9)),
                ("t.x".to_owned(), ConfigValue::Int(1)),
            ]
        );
    }

    #[test]
    fn later_arguments_update_shallowly() {
        let cfg = parse(&["a.b=1", "a.c=2 z=1", "z=2"]).expect("valid");
        let keys: Vec<_> = cfg.keys().collect();
        assert_eq!(keys, ["a.c", "z"]);
        assert_eq!(cfg.get("z"), Some(&ConfigValue::Int(2)));
    }

    #[test]
    fn rejects_bad_syntax_lists_and_mixed_toml_file() {
        let err = parse(&["lr=abc"]).expect_err("bare word is not TOML");
        assert!(matches!(err, FabError::OverrideSyntax { ref arg, .. } if arg == "lr=abc"));
        let err = parse(&["a=1 a=2"]).expect_err("duplicate key in one argument");
        assert!(matches!(err, FabError::OverrideSyntax { .. }));
        let err = parse(&["l=[1,2]"]).expect_err("lists are not config values");
        assert!(
            matches!(err, FabError::InvalidConfigValue { ref key, found: "array" } if key == "l")
        );
        let err = parse(&["a=1", "cfg.toml"]).expect_err("toml file beside pairs");
        assert!(matches!(err, FabError::TomlFileWithPairs { .. }));
        assert!(parse(&[]).expect("empty").is_empty());
        assert!(parse(&["", "nothing here"]).expect("no pairs").is_empty());
    }

    #[test]
    fn fuse_checks_keys_and_keeps_order() {
        let defaults: UserConfig = [("a", ConfigValue::Int(1)), ("b", ConfigValue::Float(0.5))]
            .into_iter()
            .collect();
        let fused = defaults
            .fuse(&parse(&["b=2.5"]).expect("valid"))
            .expect("known key");
        assert_eq!(fused.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(fused.get("b"), Some(&ConfigValue::Float(2.5)));
        let err = defaults
            .fuse(&parse(&["c=1"]).expect("valid"))
            .expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("`c`") && msg.contains("a, b"), "{msg}");
        // flwr does not check types: an int default takes a string override.
        let fused = defaults
            .fuse(&parse(&["a=\"x\""]).expect("valid"))
            .expect("no type check");
        assert_eq!(fused.get("a"), Some(&ConfigValue::Str("x".into())));
    }

    #[test]
    fn display_round_trips_through_parse() {
        let values = [
            ConfigValue::Bool(false),
            ConfigValue::Int(-7),
            ConfigValue::Float(1.0),
            ConfigValue::Float(1e-7),
            ConfigValue::Float(f64::INFINITY),
            ConfigValue::Str("with space \"and\" quote".into()),
        ];
        for v in values {
            let cfg = parse(&[&format!("k={v}")]).expect("display is TOML");
            assert_eq!(cfg.get("k"), Some(&v), "{v}");
        }
    }

    #[test]
    fn scalars_round_trip_and_refuse_bytes() {
        let cfg = parse(&["i=3 f=0.5 b=true s=\"x\""]).expect("valid");
        let scalars = cfg.to_scalars();
        assert_eq!(scalars["i"], Scalar::Sint64(3));
        assert_eq!(scalars["f"], Scalar::Double(0.5));
        let back = UserConfig::from_scalars(scalars).expect("all config types");
        assert_eq!(back.get("s"), Some(&ConfigValue::Str("x".into())));
        let err = UserConfig::from_scalars([("k".to_owned(), Scalar::Bytes(vec![1]))])
            .expect_err("bytes");
        assert!(matches!(
            err,
            FabError::UnsupportedScalar { kind: "bytes", .. }
        ));
        assert_eq!(
            ConfigValue::from_scalar("u", Scalar::Uint64(5)).expect("fits"),
            ConfigValue::Int(5)
        );
    }
}
