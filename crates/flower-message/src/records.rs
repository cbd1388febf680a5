//! Records: [`Array`], [`ArrayRecord`], [`ConfigRecord`], [`MetricRecord`]
//! and the [`RecordDict`] that holds them (`flwr.app`'s classes of the same
//! names).
//!
//! Records are ordered maps: iteration follows insertion order, and
//! inserting an existing key replaces its value in place, as a Python
//! `dict` does. They deref to [`IndexMap`]; remove entries with
//! `shift_remove` to keep the order of the others (Python's `del`).

use std::ops::{Deref, DerefMut};

use bytes::Bytes;
use flower_core::{npy, DType, NdArray};
use indexmap::IndexMap;

use crate::{ConfigValue, Error, MetricValue};

/// `stype` of arrays serialized with `numpy.save(allow_pickle=False)`.
pub const NUMPY_STYPE: &str = "numpy.ndarray";

/// A serialized array (`flwr.app.Array`).
///
/// For `stype == "numpy.ndarray"` (what flwr writes for NumPy arrays and
/// PyTorch tensors), `data` is a complete `.npy` file; [`Array::from_ndarray`]
/// and [`Array::to_ndarray`] convert through flower-core's codec. Other
/// `stype`s are carried as opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Array {
    /// `str(ndarray.dtype)`, e.g. `"float32"`.
    pub dtype: String,
    /// The dimensions (empty for a 0-d array).
    pub shape: Vec<usize>,
    /// How `data` was serialized, e.g. [`NUMPY_STYPE`].
    pub stype: String,
    /// The serialized array.
    pub data: Bytes,
}

impl Array {
    /// Serializes `array` as flwr's `Array.from_numpy_ndarray` does: a
    /// version 1.0 `.npy` buffer (byte-identical to `numpy.save` for the
    /// dtypes flower-core supports).
    pub fn from_ndarray(array: &NdArray) -> Self {
        Array {
            dtype: array.dtype().numpy_name().to_owned(),
            shape: array.shape().to_vec(),
            stype: NUMPY_STYPE.to_owned(),
            data: Bytes::from(npy::encode_npy(array)),
        }
    }

    /// Decodes `data` (flwr's `Array.numpy()`), checking that the `.npy`
    /// header agrees with `dtype` and `shape`.
    pub fn to_ndarray(&self) -> Result<NdArray, Error> {
        self.npy_view()?.to_ndarray().map_err(Error::Npy)
    }

    /// Parses `data` as `.npy` without copying it, checking that the header
    /// agrees with `dtype` and `shape`.
    pub fn npy_view(&self) -> Result<npy::NpyView<'_>, Error> {
        if self.stype != NUMPY_STYPE {
            return Err(Error::WrongStype {
                stype: self.stype.clone(),
            });
        }
        let view = npy::parse_npy(&self.data).map_err(Error::Npy)?;
        // `str(np.dtype)` is the plain name for native/little-endian data;
        // other spellings (e.g. ">f4") are not compared.
        let dtype_differs = DTYPES
            .iter()
            .any(|d| d.numpy_name() == self.dtype && *d != view.dtype);
        if dtype_differs || view.shape != self.shape {
            return Err(Error::ArrayMismatch {
                declared: format!("{} {:?}", self.dtype, self.shape),
                found: format!("{} {:?}", view.dtype.numpy_name(), view.shape),
            });
        }
        Ok(view)
    }
}

impl From<&NdArray> for Array {
    fn from(array: &NdArray) -> Self {
        Array::from_ndarray(array)
    }
}

const DTYPES: [DType; 12] = [
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

/// Defines an ordered record type over `IndexMap<String, $value>`.
macro_rules! ordered_record {
    ($(#[$doc:meta])* $name:ident => $value:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $name(IndexMap<String, $value>);

        impl $name {
            /// An empty record.
            pub fn new() -> Self {
                Self::default()
            }

            /// Inserts `value` under `key` (in place if the key exists) and
            /// returns `self`, for building records in one expression.
            #[must_use]
            pub fn with(mut self, key: impl Into<String>, value: impl Into<$value>) -> Self {
                self.0.insert(key.into(), value.into());
                self
            }

            /// The underlying ordered map.
            pub fn into_inner(self) -> IndexMap<String, $value> {
                self.0
            }
        }

        impl Deref for $name {
            type Target = IndexMap<String, $value>;
            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }

        impl From<IndexMap<String, $value>> for $name {
            fn from(map: IndexMap<String, $value>) -> Self {
                $name(map)
            }
        }

        impl<K: Into<String>> FromIterator<(K, $value)> for $name {
            fn from_iter<I: IntoIterator<Item = (K, $value)>>(iter: I) -> Self {
                $name(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
            }
        }

        impl IntoIterator for $name {
            type Item = (String, $value);
            type IntoIter = indexmap::map::IntoIter<String, $value>;
            fn into_iter(self) -> Self::IntoIter {
                self.0.into_iter()
            }
        }

        impl<'a> IntoIterator for &'a $name {
            type Item = (&'a String, &'a $value);
            type IntoIter = indexmap::map::Iter<'a, String, $value>;
            fn into_iter(self) -> Self::IntoIter {
                self.0.iter()
            }
        }
    };
}

ordered_record!(
    /// Named arrays, e.g. a model's weights (`flwr.app.ArrayRecord`).
    ArrayRecord => Array
);
ordered_record!(
    /// Named configuration values (`flwr.app.ConfigRecord`).
    ConfigRecord => ConfigValue
);
ordered_record!(
    /// Named metrics (`flwr.app.MetricRecord`).
    MetricRecord => MetricValue
);
ordered_record!(
    /// The content of a message: named records (`flwr.app.RecordDict`).
    RecordDict => Record
);

impl ArrayRecord {
    /// A record of `arrays` named `"0"`, `"1"`, ... (flwr's
    /// `ArrayRecord(list_of_ndarrays)`).
    pub fn from_ndarrays(arrays: &[NdArray]) -> Self {
        arrays
            .iter()
            .enumerate()
            .map(|(i, a)| (i.to_string(), Array::from_ndarray(a)))
            .collect()
    }

    /// Decodes every array, in order (flwr's `to_numpy_ndarrays`).
    pub fn to_ndarrays(&self) -> Result<Vec<NdArray>, Error> {
        self.values().map(Array::to_ndarray).collect()
    }
}

/// One record of a [`RecordDict`].
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// An [`ArrayRecord`].
    Array(ArrayRecord),
    /// A [`MetricRecord`].
    Metric(MetricRecord),
    /// A [`ConfigRecord`].
    Config(ConfigRecord),
}

impl From<ArrayRecord> for Record {
    fn from(r: ArrayRecord) -> Self {
        Record::Array(r)
    }
}
impl From<MetricRecord> for Record {
    fn from(r: MetricRecord) -> Self {
        Record::Metric(r)
    }
}
impl From<ConfigRecord> for Record {
    fn from(r: ConfigRecord) -> Self {
        Record::Config(r)
    }
}

impl RecordDict {
    /// The `ArrayRecord` named `key`, if that record is one.
    pub fn array_record(&self, key: &str) -> Option<&ArrayRecord> {
        match self.get(key) {
            Some(Record::Array(r)) => Some(r),
            _ => None,
        }
    }

    /// The `MetricRecord` named `key`, if that record is one.
    pub fn metric_record(&self, key: &str) -> Option<&MetricRecord> {
        match self.get(key) {
            Some(Record::Metric(r)) => Some(r),
            _ => None,
        }
    }

    /// The `ConfigRecord` named `key`, if that record is one.
    pub fn config_record(&self, key: &str) -> Option<&ConfigRecord> {
        match self.get(key) {
            Some(Record::Config(r)) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn array_npy_round_trip_and_checks() {
        let nd = NdArray::I16(
            ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1, -2, 3, -4]).unwrap_or_default(),
        );
        let mut a = Array::from_ndarray(&nd);
        assert_eq!(
            (a.dtype.as_str(), a.shape.as_slice()),
            ("int16", &[2, 2][..])
        );
        assert_eq!(a.to_ndarray().ok(), Some(nd));
        a.shape = vec![4];
        assert!(matches!(a.to_ndarray(), Err(Error::ArrayMismatch { .. })));
        a.shape = vec![2, 2];
        a.dtype = "uint16".into();
        assert!(matches!(a.to_ndarray(), Err(Error::ArrayMismatch { .. })));
        a.dtype = "int16".into();
        a.data = a.data.slice(..a.data.len() - 1);
        assert!(matches!(a.to_ndarray(), Err(Error::Npy(_))));
        a.stype = "torch.Tensor".into();
        assert!(matches!(a.to_ndarray(), Err(Error::WrongStype { .. })));
    }

    #[test]
    fn records_keep_insertion_order_and_replace_in_place() {
        let mut r = ConfigRecord::new()
            .with("b", 1i64)
            .with("a", "x")
            .with("b", true);
        assert_eq!(r.keys().collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(r.get("b"), Some(&ConfigValue::Bool(true)));
        r.shift_remove("b");
        r.insert("b".into(), 2.5.into());
        assert_eq!(r.keys().collect::<Vec<_>>(), ["a", "b"]);
        let d = RecordDict::new().with("c", r.clone());
        assert_eq!(d.config_record("c"), Some(&r));
        assert_eq!(d.array_record("c"), None);
    }
}
