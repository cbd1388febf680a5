//! The `.npy` header parser: a small parser for the subset of Python
//! literal syntax that `ast.literal_eval` accepts and that can appear in a
//! valid header (`{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`),
//! plus the validation of the three keys and the `descr` dtype strings.
//!
//! Hostile headers are bounded: nesting depth ([`MAX_NESTING`]), number of
//! dimensions ([`MAX_DIMS`]), and integers are parsed with checked arithmetic.

use super::{CodecError, MAX_DIMS};
use crate::DType;

/// Deepest nesting of tuples/lists accepted in a header literal.
const MAX_NESTING: usize = 16;

/// The three header fields.
pub(super) struct Header {
    pub(super) dtype: DType,
    pub(super) big_endian: bool,
    pub(super) fortran_order: bool,
    pub(super) shape: Vec<usize>,
}

/// A Python literal value.
#[derive(Debug)]
enum Value {
    Str(Vec<u8>),
    Bool(bool),
    /// An integer; `None` when it does not fit in an `i128`.
    Int(Option<i128>),
    PyNone,
    Tuple(Vec<Value>),
    List,
    Dict,
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::PyNone => "None",
            Value::Tuple(_) => "a tuple",
            Value::List => "a list",
            Value::Dict => "a dict",
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    /// Accept Python 2 `10L` integers (format versions 1.0 and 2.0).
    long_suffix: bool,
}

fn bad(msg: impl Into<String>) -> CodecError {
    CodecError::BadHeader(msg.into())
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), CodecError> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{}'", c as char)))
        }
    }

    fn unexpected(&self, wanted: &str) -> CodecError {
        match self.peek() {
            Some(c) => bad(format!(
                "expected {wanted} at byte {}, found {:?}",
                self.pos,
                char::from(c)
            )),
            None => bad(format!("expected {wanted}, found the end of the header")),
        }
    }

    /// Parses the whole header: one dict literal, then only whitespace.
    fn header(&mut self) -> Result<Vec<(Vec<u8>, Value)>, CodecError> {
        self.skip_ws();
        if self.peek() != Some(b'{') {
            return Err(bad("the header is not a dict literal"));
        }
        let entries = self.dict_entries(0)?;
        self.skip_ws();
        if self.pos != self.s.len() {
            return Err(bad(format!(
                "unexpected text after the dict at byte {}",
                self.pos
            )));
        }
        Ok(entries)
    }

    /// Parses `{key: value, ...}` starting at `{`.
    fn dict_entries(&mut self, depth: usize) -> Result<Vec<(Vec<u8>, Value)>, CodecError> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(entries);
            }
            let key = match self.value(depth + 1)? {
                Value::Str(k) => k,
                other => return Err(bad(format!("dict key is {}, not a string", other.kind()))),
            };
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
    }

    /// Parses a sequence of values up to `close`; returns the items and
    /// whether a comma was seen (to tell `(5)` from `(5,)`).
    fn sequence(&mut self, close: u8, depth: usize) -> Result<(Vec<Value>, bool), CodecError> {
        let mut items = Vec::new();
        let mut comma = false;
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, comma));
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    comma = true;
                }
                Some(c) if c == close => {}
                _ => return Err(self.unexpected(&format!("',' or '{}'", close as char))),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, CodecError> {
        if depth > MAX_NESTING {
            return Err(bad("literal nested too deeply"));
        }
        self.skip_ws();
        match self.peek() {
            Some(b'\'' | b'"') => self.string(),
            Some(b'u' | b'U') if matches!(self.s.get(self.pos + 1), Some(b'\'' | b'"')) => {
                self.pos += 1;
                self.string()
            }
            Some(b'(') => {
                self.pos += 1;
                let (items, comma) = self.sequence(b')', depth)?;
                if items.len() == 1 && !comma {
                    // `(x)` is just `x` in Python.
                    Ok(items.into_iter().next().unwrap_or(Value::Tuple(Vec::new())))
                } else {
                    Ok(Value::Tuple(items))
                }
            }
            Some(b'[') => {
                self.pos += 1;
                self.sequence(b']', depth)?;
                Ok(Value::List)
            }
            Some(b'{') => {
                self.dict_entries(depth)?;
                Ok(Value::Dict)
            }
            Some(b'-' | b'+' | b'0'..=b'9') => self.int(),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(Value::Bool(true)),
                    b"False" => Ok(Value::Bool(false)),
                    b"None" => Ok(Value::PyNone),
                    name => Err(bad(format!(
                        "{:?} is not a Python literal (booleans are True/False)",
                        String::from_utf8_lossy(name)
                    ))),
                }
            }
            _ => Err(self.unexpected("a value")),
        }
    }

    /// Parses a decimal integer with an optional sign (and `L` suffix for
    /// Python 2 headers).
    fn int(&mut self) -> Result<Value, CodecError> {
        let mut negative = false;
        while let Some(c @ (b'-' | b'+')) = self.peek() {
            negative ^= c == b'-';
            self.pos += 1;
            self.skip_ws();
        }
        let start = self.pos;
        let mut value: Option<i128> = Some(0);
        while let Some(c) = self.peek() {
            match c {
                b'0'..=b'9' => {
                    value = value
                        .and_then(|v| v.checked_mul(10))
                        .and_then(|v| v.checked_add(i128::from(c - b'0')));
                }
                b'_' if self.pos > start
                    && matches!(self.s.get(self.pos + 1), Some(b'0'..=b'9')) => {}
                _ => break,
            }
            self.pos += 1;
        }
        let digits = &self.s[start..self.pos];
        if digits.is_empty() {
            return Err(self.unexpected("digits"));
        }
        if digits.len() > 1 && digits[0] == b'0' && digits.iter().any(|&d| d != b'0' && d != b'_') {
            return Err(bad(
                "integers with leading zeros are not valid Python literals",
            ));
        }
        if self.long_suffix && self.peek() == Some(b'L') {
            self.pos += 1;
        }
        if matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'.') {
            return Err(bad(format!(
                "only decimal integers are accepted in the header (at byte {})",
                self.pos
            )));
        }
        Ok(Value::Int(value.map(|v| if negative { -v } else { v })))
    }

    /// Parses a quoted string with Python's simple escapes.
    fn string(&mut self) -> Result<Value, CodecError> {
        let quote = self.peek().ok_or_else(|| self.unexpected("a string"))?;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let c = self
                .peek()
                .ok_or_else(|| bad("unterminated string in the header"))?;
            self.pos += 1;
            match c {
                c if c == quote => return Ok(Value::Str(out)),
                b'\n' => return Err(bad("newline inside a string in the header")),
                b'\\' => {
                    let e = self
                        .peek()
                        .ok_or_else(|| bad("unterminated string in the header"))?;
                    self.pos += 1;
                    match e {
                        b'\\' | b'\'' | b'"' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        _ => {
                            return Err(bad(format!(
                                "unsupported escape \\{} in a header string",
                                char::from(e)
                            )))
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }
}

/// Parses and validates the header dict.
pub(super) fn parse_header(header: &[u8], long_suffix: bool) -> Result<Header, CodecError> {
    let mut parser = Parser {
        s: header,
        pos: 0,
        long_suffix,
    };
    let entries = parser.header()?;

    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in entries {
        // Python dict literals keep the last of duplicate keys.
        match key.as_slice() {
            b"descr" => descr = Some(value),
            b"fortran_order" => fortran = Some(value),
            b"shape" => shape = Some(value),
            other => {
                return Err(bad(format!(
                    "unexpected key {:?} (expected exactly 'descr', 'fortran_order', 'shape')",
                    String::from_utf8_lossy(other)
                )))
            }
        }
    }
    let missing = |k: &str| bad(format!("missing key '{k}'"));
    let descr = descr.ok_or_else(|| missing("descr"))?;
    let fortran = fortran.ok_or_else(|| missing("fortran_order"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;

    let fortran_order = match fortran {
        Value::Bool(b) => b,
        other => {
            return Err(bad(format!(
                "fortran_order is {}, not True/False",
                other.kind()
            )))
        }
    };
    let shape = match shape {
        Value::Tuple(items) => {
            if items.len() > MAX_DIMS {
                return Err(CodecError::TooLarge(format!(
                    "{} dimensions (at most {MAX_DIMS} are supported)",
                    items.len()
                )));
            }
            items
                .into_iter()
                .map(|item| match item {
                    Value::Int(Some(v)) if v < 0 => {
                        Err(bad(format!("negative dimension {v} in shape")))
                    }
                    Value::Int(Some(v)) => usize::try_from(v).map_err(|_| {
                        CodecError::TooLarge(format!("dimension {v} does not fit in usize"))
                    }),
                    Value::Int(None) => Err(CodecError::TooLarge(
                        "a dimension of the shape does not fit in 128 bits".into(),
                    )),
                    other => Err(bad(format!("shape holds {}, not an int", other.kind()))),
                })
                .collect::<Result<Vec<usize>, _>>()?
        }
        other => return Err(bad(format!("shape is {}, not a tuple", other.kind()))),
    };
    let (dtype, big_endian) = match descr {
        Value::Str(s) => parse_descr(&s)?,
        Value::List | Value::Tuple(_) => {
            return Err(CodecError::UnsupportedDtype(
                "structured dtypes (a list of fields as descr) are not supported".into(),
            ))
        }
        other => {
            return Err(bad(format!(
                "descr is {}, not a dtype string",
                other.kind()
            )))
        }
    };
    Ok(Header {
        dtype,
        big_endian,
        fortran_order,
        shape,
    })
}

/// Maps a numpy type string (`'<f4'`, `'|b1'`, `'>i8'`, `'float32'`, `'?'`,
/// ...) to a [`DType`] and whether it is stored big-endian.
fn parse_descr(descr: &[u8]) -> Result<(DType, bool), CodecError> {
    let text = String::from_utf8_lossy(descr);
    if let Some(dtype) = ALL_DTYPES
        .iter()
        .find(|d| d.numpy_name().as_bytes() == descr)
    {
        return Ok((*dtype, cfg!(target_endian = "big") && dtype.size() > 1));
    }
    let (order, code) = match descr.first() {
        Some(&o @ (b'<' | b'>' | b'|' | b'=')) => (o, &descr[1..]),
        _ => (b'=', descr),
    };
    let dtype = match code {
        b"b1" | b"?" => DType::Bool,
        b"i1" | b"b" => DType::I8,
        b"u1" | b"B" => DType::U8,
        b"i2" | b"h" => DType::I16,
        b"u2" | b"H" => DType::U16,
        b"i4" | b"i" => DType::I32,
        b"u4" | b"I" => DType::U32,
        b"i8" | b"q" => DType::I64,
        b"u8" | b"Q" => DType::U64,
        b"f2" | b"e" => DType::F16,
        b"f4" | b"f" => DType::F32,
        b"f8" | b"d" => DType::F64,
        _ => {
            return Err(CodecError::UnsupportedDtype(unsupported_reason(
                code, &text,
            )))
        }
    };
    let big_endian = dtype.size() > 1
        && match order {
            b'>' => true,
            b'<' => false,
            _ => cfg!(target_endian = "big"),
        };
    Ok((dtype, big_endian))
}

/// A clear message for a dtype code this codec refuses.
fn unsupported_reason(code: &[u8], text: &str) -> String {
    let what = match code.first() {
        Some(b'c' | b'F' | b'D' | b'G') => "complex numbers are not supported",
        Some(b'O') => {
            "object arrays hold pickled Python objects and are refused (allow_pickle=False)"
        }
        Some(b'V') => "void/structured dtypes are not supported",
        Some(b'S' | b'a' | b'U' | b'T') => "string dtypes are not supported",
        Some(b'M' | b'm') => "datetime/timedelta dtypes are not supported",
        Some(b'f' | b'g') => "only float16, float32 and float64 are supported",
        Some(b'i' | b'u' | b'l' | b'L' | b'p' | b'P') => {
            "only 8-, 16-, 32- and 64-bit integers with an explicit size are supported"
        }
        _ => "unknown dtype descriptor",
    };
    format!("{text:?}: {what}")
}

const ALL_DTYPES: [DType; 12] = [
    DType::F16,
    DType::F32,
    DType::F64,
    DType::I8,
    DType::I16,
    DType::I32,
    DType::I64,
    DType::U8,
    DType::U16,
    DType::U32,
    DType::U64,
    DType::Bool,
];
