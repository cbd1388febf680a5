//! The JSON bodies of `Array`, `ArrayRecord` and `RecordDict` objects,
//! written exactly as Python's `json.dumps` (default arguments) writes
//! them, and read back with serde_json keeping key order.
//!
//! `json.dumps` defaults: separators `", "` and `": "`, `ensure_ascii=True`
//! (every character outside `' '..='~'` is escaped, `\uXXXX` with lowercase
//! hex, UTF-16 surrogate pairs above U+FFFF, and `\"`, `\\`, `\n`, `\r`,
//! `\t`, `\b`, `\f` short forms), insertion order.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Appends `s` as a JSON string literal, as `json.dumps` writes it.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            ' '..='~' => out.push(c as u8),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.extend_from_slice(b"\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[usize::from((*unit >> shift) & 0xf)]);
                    }
                }
            }
        }
    }
    out.push(b'"');
}

/// Appends `{"k": "v", ...}` for string pairs (`{}` when empty).
pub(crate) fn write_str_map<'a>(
    out: &mut Vec<u8>,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) {
    out.push(b'{');
    for (i, (k, v)) in pairs.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        write_str(out, k);
        out.extend_from_slice(b": ");
        write_str(out, v);
    }
    out.push(b'}');
}

/// Appends `[a, b, ...]` for unsigned integers.
pub(crate) fn write_uint_list(out: &mut Vec<u8>, items: impl Iterator<Item = u64>) {
    out.push(b'[');
    for (i, v) in items.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.to_string().as_bytes());
    }
    out.push(b']');
}

/// A JSON object of string values, in document order, duplicates kept (the
/// caller decides what a duplicate means).
#[derive(Debug)]
pub(crate) struct StrPairs(pub(crate) Vec<(String, String)>);

impl<'de> Deserialize<'de> for StrPairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrPairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrPairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(StrPairs(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

/// The body of an `Array` object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArrayBody {
    pub(crate) dtype: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) stype: String,
    pub(crate) arraychunk_ids: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_like_python_json_dumps() {
        // json.dumps("a\"\\\n\r\t\b\f\x00\x1f\x7f é€😀/")
        let mut out = Vec::new();
        write_str(&mut out, "a\"\\\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f} é€😀/");
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#""a\"\\\n\r\t\b\f\u0000\u001f\u007f \u00e9\u20ac\ud83d\ude00/""#
        );
        let mut out = Vec::new();
        write_str_map(&mut out, [("a", "1"), ("b", "2")].into_iter());
        assert_eq!(out, br#"{"a": "1", "b": "2"}"#);
        let mut out = Vec::new();
        write_str_map(&mut out, std::iter::empty());
        write_uint_list(&mut out, [0, 10].into_iter());
        write_uint_list(&mut out, std::iter::empty());
        assert_eq!(out, b"{}[0, 10][]");
    }

    #[test]
    fn pairs_keep_order_and_duplicates() {
        let p: Result<StrPairs, _> = serde_json::from_slice(br#"{"b": "1", "a": "2", "b": "3"}"#);
        let p = p.map(|p| p.0).unwrap_or_default();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1], ("a".to_owned(), "2".to_owned()));
        assert!(serde_json::from_slice::<StrPairs>(br#"{"a": 1}"#).is_err());
        assert!(serde_json::from_slice::<StrPairs>(br#"["a"]"#).is_err());
    }
}
