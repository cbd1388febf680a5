//! An order-preserving tree of a parsed TOML document.
//!
//! `toml::Table` is a `BTreeMap` unless the crate's `preserve_order` feature is
//! on, and turning that feature on would change the iteration order for every
//! other crate of the workspace. Flower keeps the document order (Python
//! dicts), so the run config must too: this module deserializes through
//! `toml`'s serde front end (which walks the document in order) into our own
//! tree backed by `IndexMap`.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The key under which `toml` hands a datetime to serde as a one-entry map.
const DATETIME_KEY: &str = "$__toml_private_datetime";

/// A TOML table in document order.
pub(crate) type Table = IndexMap<String, TomlValue>;

/// One TOML value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TomlValue {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Any of TOML's four date/time forms, as written.
    Datetime(String),
    Array(Vec<TomlValue>),
    Table(Table),
}

impl TomlValue {
    /// Name of the TOML type, for error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            TomlValue::String(_) => "string",
            TomlValue::Integer(_) => "integer",
            TomlValue::Float(_) => "float",
            TomlValue::Boolean(_) => "boolean",
            TomlValue::Datetime(_) => "datetime",
            TomlValue::Array(_) => "array",
            TomlValue::Table(_) => "table",
        }
    }

    /// The table, if this is one.
    pub(crate) fn as_table(&self) -> Option<&Table> {
        match self {
            TomlValue::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            TomlValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses a TOML document into an ordered table.
pub(crate) fn parse_document(text: &str) -> Result<Table, toml::de::Error> {
    let root: DocumentRoot = toml::from_str(text)?;
    Ok(root.0)
}

/// The document root, which is always a table.
struct DocumentRoot(Table);

impl<'de> Deserialize<'de> for DocumentRoot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match TomlValue::deserialize(deserializer)? {
            TomlValue::Table(t) => Ok(DocumentRoot(t)),
            other => Err(de::Error::custom(format!(
                "expected a TOML document, found a {}",
                other.type_name()
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for TomlValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = TomlValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<TomlValue, E> {
        Ok(TomlValue::Boolean(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<TomlValue, E> {
        Ok(TomlValue::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<TomlValue, E> {
        // TOML integers are 64-bit signed; the parser never gives more.
        i64::try_from(v)
            .map(TomlValue::Integer)
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64-bit signed")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<TomlValue, E> {
        Ok(TomlValue::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<TomlValue, E> {
        Ok(TomlValue::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<TomlValue, E> {
        Ok(TomlValue::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TomlValue, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(TomlValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TomlValue, A::Error> {
        let mut table = Table::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == DATETIME_KEY {
                let text: String = map.next_value()?;
                return Ok(TomlValue::Datetime(text));
            }
            let value: TomlValue = map.next_value()?;
            table.insert(key, value);
        }
        Ok(TomlValue::Table(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_document_order_and_types() {
        let doc = parse_document(
            "z = 1\na = 'x'\n[t]\nm = 1.5\nb = true\nd = 1979-05-27T07:32:00Z\nl = [1, 2]\n\
             [t.sub]\nq = -3\n",
        )
        .expect("valid TOML");
        let keys: Vec<_> = doc.keys().cloned().collect();
        assert_eq!(keys, ["z", "a", "t"]);
        let t = doc["t"].as_table().expect("table");
        let keys: Vec<_> = t.keys().cloned().collect();
        assert_eq!(keys, ["m", "b", "d", "l", "sub"]);
        assert_eq!(t["m"], TomlValue::Float(1.5));
        assert_eq!(t["b"], TomlValue::Boolean(true));
        assert_eq!(t["d"], TomlValue::Datetime("1979-05-27T07:32:00Z".into()));
        assert_eq!(
            t["l"],
            TomlValue::Array(vec![TomlValue::Integer(1), TomlValue::Integer(2)])
        );
        assert_eq!(
            t["sub"].as_table().expect("table")["q"],
            TomlValue::Integer(-3)
        );
    }

    #[test]
    fn rejects_invalid_toml() {
        assert!(parse_document("a = ").is_err());
        assert!(parse_document("a = 1\na = 2").is_err());
    }
}
