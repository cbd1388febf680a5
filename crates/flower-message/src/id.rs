//! [`ObjectId`]: the SHA-256 of an object's content, shown as 64 lowercase
//! hex characters.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::Error;

/// The id of a content-addressed object: `sha256(content)`.
///
/// Parsing accepts exactly 64 lowercase hex characters, the only form
/// `hashlib.sha256(..).hexdigest()` produces; flwr's own check
/// (`int(id, 16)`) is laxer, but no other spelling can name a stored object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

impl ObjectId {
    /// The id of `content` (the whole object: head, NUL, body).
    pub fn of(content: &[u8]) -> Self {
        ObjectId(Sha256::digest(content).into())
    }

    /// The id of the content made of `parts` one after the other, without
    /// joining them.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        ObjectId(hasher.finalize().into())
    }

    /// Wraps a raw 32-byte digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        ObjectId(bytes)
    }

    /// The raw 32-byte digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 lowercase hex characters given as bytes (as they appear in
    /// an object head).
    pub fn parse_bytes(text: &[u8]) -> Result<Self, Error> {
        let bad = || Error::BadObjectId {
            id: String::from_utf8_lossy(&text[..text.len().min(80)]).into_owned(),
        };
        if text.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            let hi = hex_value(pair[0]).ok_or_else(bad)?;
            let lo = hex_value(pair[1]).ok_or_else(bad)?;
            *byte = (hi << 4) | lo;
        }
        Ok(ObjectId(out))
    }

    /// Appends the 64 lowercase hex characters to `out`.
    pub(crate) fn write_hex(&self, out: &mut Vec<u8>) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in self.0 {
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 0xf)]);
        }
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl FromStr for ObjectId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        ObjectId::parse_bytes(s.as_bytes())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = Vec::with_capacity(64);
        self.write_hex(&mut hex);
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_strictness() {
        let id = ObjectId::of(b"RecordDict  2\0{}");
        let text = id.to_string();
        assert_eq!(
            text,
            "a5fc9cb09319dc373f7a8f11a799fd0d90c359120fd6241c230de34a4f93be3e"
        );
        assert_eq!(text.parse::<ObjectId>().ok(), Some(id));
        for bad in [
            &text[..63],
            &text.to_uppercase(),
            &format!("{}g", &text[..63]),
            &format!("0x{}", &text[..62]),
            "",
        ] {
            assert!(
                matches!(bad.parse::<ObjectId>(), Err(Error::BadObjectId { .. })),
                "{bad:?}"
            );
        }
    }
}
