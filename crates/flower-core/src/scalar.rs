//! `Scalar` values and the `config` / `metrics` / `properties` maps.

use std::collections::BTreeMap;

use flower_proto as pb;

use crate::ConversionError;

/// One value of a Flower `config`, `metrics` or `properties` map.
///
/// Mirrors Python Flower's `Scalar = bool | bytes | float | int | str`. Python
/// ints travel as `sint64`, except values above `i64::MAX`, which use `uint64`
/// (`flwr/common/serde.py`); both are kept apart here so that a value
/// round-trips byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// `bool` (checked before int in Python, since `bool` is an `int` there).
    Bool(bool),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `float` (f64).
    Double(f64),
    /// `int` within `i64` (zig-zag `sint64` on the wire).
    Sint64(i64),
    /// `int` above `i64::MAX` (`uint64` on the wire).
    Uint64(u64),
    /// `str`.
    String(String),
}

impl Scalar {
    /// An integer as Python Flower encodes it: `sint64` when it fits, else `uint64`.
    pub fn int(value: u64) -> Self {
        i64::try_from(value).map_or(Scalar::Uint64(value), Scalar::Sint64)
    }

    /// The value as f64 when it is numeric (float, int; not bool).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Scalar::Double(v) => Some(v),
            Scalar::Sint64(v) => Some(v as f64),
            Scalar::Uint64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as i64 when it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Scalar::Sint64(v) => Some(v),
            Scalar::Uint64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string slice when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool when it is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Scalar::Bool(b) => Some(b),
            _ => None,
        }
    }
}

macro_rules! scalar_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for Scalar {
            fn from(value: $t) -> Self { Scalar::$v(value.into()) }
        }
    )*};
}
scalar_from!(bool => Bool, f64 => Double, f32 => Double, i64 => Sint64, i32 => Sint64, String => String, &str => String, Vec<u8> => Bytes);

impl From<u64> for Scalar {
    fn from(value: u64) -> Self {
        Scalar::int(value)
    }
}

/// A `config`, `metrics` or `properties` map. Sorted, so encoding is deterministic.
pub type ScalarMap = BTreeMap<String, Scalar>;
/// Configuration sent by the server with an instruction.
pub type Config = ScalarMap;
/// Metrics returned by a client.
pub type Metrics = ScalarMap;
/// Properties returned by a client.
pub type Properties = ScalarMap;

impl From<Scalar> for pb::Scalar {
    fn from(value: Scalar) -> Self {
        use pb::scalar::Scalar as S;
        let inner = match value {
            Scalar::Bool(v) => S::Bool(v),
            Scalar::Bytes(v) => S::Bytes(v.into()),
            Scalar::Double(v) => S::Double(v),
            Scalar::Sint64(v) => S::Sint64(v),
            Scalar::Uint64(v) => S::Uint64(v),
            Scalar::String(v) => S::String(v),
        };
        pb::Scalar {
            scalar: Some(inner),
        }
    }
}

impl TryFrom<pb::Scalar> for Scalar {
    type Error = ConversionError;
    fn try_from(value: pb::Scalar) -> Result<Self, Self::Error> {
        use pb::scalar::Scalar as S;
        Ok(match value.scalar.ok_or(ConversionError::EmptyScalar)? {
            S::Bool(v) => Scalar::Bool(v),
            S::Bytes(v) => Scalar::Bytes(v.to_vec()),
            S::Double(v) => Scalar::Double(v),
            S::Sint64(v) => Scalar::Sint64(v),
            S::Uint64(v) => Scalar::Uint64(v),
            S::String(v) => Scalar::String(v),
        })
    }
}

pub(crate) fn map_to_proto(map: ScalarMap) -> BTreeMap<String, pb::Scalar> {
    map.into_iter().map(|(k, v)| (k, v.into())).collect()
}

pub(crate) fn map_from_proto(
    map: BTreeMap<String, pb::Scalar>,
) -> Result<ScalarMap, ConversionError> {
    map.into_iter()
        .map(|(k, v)| match Scalar::try_from(v) {
            Ok(v) => Ok((k, v)),
            Err(_) => Err(ConversionError::EmptyScalarInMap(k)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_uses_sint64_until_i64_max() {
        assert_eq!(Scalar::int(5), Scalar::Sint64(5));
        assert_eq!(Scalar::int(i64::MAX as u64), Scalar::Sint64(i64::MAX));
        assert_eq!(
            Scalar::int(i64::MAX as u64 + 1),
            Scalar::Uint64(i64::MAX as u64 + 1)
        );
    }

    #[test]
    fn round_trips_through_proto() {
        for s in [
            Scalar::Bool(true),
            Scalar::Bytes(vec![0, 1, 255]),
            Scalar::Double(-0.5),
            Scalar::Sint64(-7),
            Scalar::Uint64(u64::MAX),
            Scalar::String("é".into()),
        ] {
            let back = Scalar::try_from(pb::Scalar::from(s.clone())).unwrap();
            assert_eq!(back, s);
        }
        assert!(Scalar::try_from(pb::Scalar { scalar: None }).is_err());
    }
}
