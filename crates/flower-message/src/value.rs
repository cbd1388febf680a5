//! Values of `ConfigRecord`s and `MetricRecord`s, and flwr's rules for
//! typing Python values into them (`app/message/{config,metric}record.py`,
//! `common/serde_utils.py`).
//!
//! The enums mirror the protobuf `oneof`s one to one, so decoding and
//! re-encoding is lossless. The `From` impls and [`ConfigValue::from_python`] /
//! [`MetricValue::from_python`] apply Python's rules:
//!
//! * `bool` is tested before `int` (a Python `bool` is an `int`);
//! * an `int` becomes `sint64`, or `uint64` when it is above `i64::MAX`;
//!   outside `[-2^63, 2^64)` it is refused (protobuf raises `ValueError`);
//! * a list takes the first type all of its elements match; an int list
//!   holding any value above `i64::MAX` becomes `uint_list`;
//! * an empty list becomes `bool_list` in a ConfigRecord and `double_list`
//!   in a MetricRecord;
//! * a list must be homogeneous by the type of its first element,
//!   `isinstance`-style: `[1, True]` is accepted (as the ints `[1, 1]`),
//!   `[True, 1]` is refused;
//! * MetricRecords take only `int`/`float` (never `bool`, `str`, `bytes`).

use bytes::Bytes;
use flower_proto as pb;
use pb::config_record_value::Value as PbConfig;
use pb::metric_record_value::Value as PbMetric;

use crate::Error;

/// A value of a [`ConfigRecord`](crate::ConfigRecord): the `oneof` of
/// `flwr.proto.ConfigRecordValue`.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    /// `double`
    Double(f64),
    /// `sint64`
    Sint64(i64),
    /// `uint64` (Python ints above `i64::MAX`)
    Uint64(u64),
    /// `bool`
    Bool(bool),
    /// `string`
    String(String),
    /// `bytes`
    Bytes(Bytes),
    /// `double_list`
    DoubleList(Vec<f64>),
    /// `sint_list`
    SintList(Vec<i64>),
    /// `uint_list`
    UintList(Vec<u64>),
    /// `bool_list` (also what an empty Python list becomes)
    BoolList(Vec<bool>),
    /// `string_list`
    StringList(Vec<String>),
    /// `bytes_list`
    BytesList(Vec<Bytes>),
}

/// A value of a [`MetricRecord`](crate::MetricRecord): the `oneof` of
/// `flwr.proto.MetricRecordValue`.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// `double`
    Double(f64),
    /// `sint64`
    Sint64(i64),
    /// `uint64` (Python ints above `i64::MAX`)
    Uint64(u64),
    /// `double_list` (also what an empty Python list becomes)
    DoubleList(Vec<f64>),
    /// `sint_list`
    SintList(Vec<i64>),
    /// `uint_list`
    UintList(Vec<u64>),
}

/// A dynamically typed Python value, to apply flwr's typing rules to values
/// whose type is only known at run time (e.g. parsed from a config file).
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None` (never a valid record value).
    None,
    /// `bool`
    Bool(bool),
    /// `int` (Python ints are unbounded; 128 bits cover every valid value
    /// and then some).
    Int(i128),
    /// `float`
    Float(f64),
    /// `str`
    Str(String),
    /// `bytes`
    Bytes(Bytes),
    /// `list`
    List(Vec<PyValue>),
}

/// Python's scalar types, in the order `_record_value_to_proto` tries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PyType {
    Bool,
    Int,
    Float,
    Str,
    Bytes,
}

impl PyValue {
    /// The exact Python type (`type(v)`), for scalars.
    fn py_type(&self) -> Option<PyType> {
        match self {
            PyValue::Bool(_) => Some(PyType::Bool),
            PyValue::Int(_) => Some(PyType::Int),
            PyValue::Float(_) => Some(PyType::Float),
            PyValue::Str(_) => Some(PyType::Str),
            PyValue::Bytes(_) => Some(PyType::Bytes),
            PyValue::None | PyValue::List(_) => None,
        }
    }

    /// `isinstance(self, t)`: a `bool` is also an `int`.
    fn is_instance(&self, t: PyType) -> bool {
        self.py_type() == Some(t) || (t == PyType::Int && matches!(self, PyValue::Bool(_)))
    }

    fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "NoneType",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Bytes(_) => "bytes",
            PyValue::List(_) => "list",
        }
    }

    fn as_int(&self) -> Option<i128> {
        match self {
            PyValue::Int(v) => Some(*v),
            PyValue::Bool(b) => Some(i128::from(*b)),
            _ => None,
        }
    }
}

/// An integer value: `sint64`, or `uint64` above `i64::MAX`, as Python does.
fn int_scalar(v: i128) -> Result<Result<i64, u64>, Error> {
    if let Ok(s) = i64::try_from(v) {
        Ok(Ok(s))
    } else if let Ok(u) = u64::try_from(v) {
        Ok(Err(u))
    } else {
        Err(Error::InvalidValue(format!(
            "int {v} is outside the 64-bit range [-2^63, 2^64)"
        )))
    }
}

/// An integer list: `uint_list` if any element is above `i64::MAX`.
fn int_list(items: &[PyValue]) -> Result<Result<Vec<i64>, Vec<u64>>, Error> {
    let ints: Vec<i128> = items.iter().filter_map(PyValue::as_int).collect();
    if ints.iter().any(|&v| v > i128::from(i64::MAX)) {
        ints.iter()
            .map(|&v| {
                u64::try_from(v).map_err(|_| {
                    Error::InvalidValue(format!(
                        "int {v} cannot share a uint64 list with values above 2^63-1"
                    ))
                })
            })
            .collect::<Result<Vec<u64>, Error>>()
            .map(Err)
    } else {
        ints.iter()
            .map(|&v| {
                i64::try_from(v).map_err(|_| Error::InvalidValue(format!("int {v} is below -2^63")))
            })
            .collect::<Result<Vec<i64>, Error>>()
            .map(Ok)
    }
}

/// `_check_value` of a record: a scalar of an allowed type, or a list whose
/// elements are all instances of the type of its first element.
fn check_python(value: &PyValue, allowed: &[PyType], record: &str) -> Result<(), Error> {
    let valid = |v: &PyValue| {
        // MetricRecord refuses `bool` explicitly, though it is an `int`.
        let refused_bool = matches!(v, PyValue::Bool(_)) && !allowed.contains(&PyType::Bool);
        let ok = !refused_bool && allowed.iter().any(|&t| v.is_instance(t));
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidValue(format!(
                "a {} is not a valid {record} value",
                v.type_name()
            )))
        }
    };
    match value {
        PyValue::List(items) => {
            let Some(first) = items.first() else {
                return Ok(());
            };
            valid(first)?;
            let Some(t) = first.py_type() else {
                return Err(Error::InvalidValue(format!(
                    "a list of {} is not a valid {record} value",
                    first.type_name()
                )));
            };
            if items.iter().all(|v| v.is_instance(t)) {
                Ok(())
            } else {
                Err(Error::InvalidValue(format!(
                    "all values in a {record} list must be of the same type as the first ({})",
                    first.type_name()
                )))
            }
        }
        scalar => valid(scalar),
    }
}

/// The type a list is serialized as: the first of `allowed` that all its
/// elements are instances of (`allowed[0]` for an empty list).
fn list_type(items: &[PyValue], allowed: &[PyType]) -> Option<PyType> {
    allowed
        .iter()
        .copied()
        .find(|&t| items.iter().all(|v| v.is_instance(t)))
}

const CONFIG_TYPES: [PyType; 5] = [
    PyType::Bool,
    PyType::Int,
    PyType::Float,
    PyType::Str,
    PyType::Bytes,
];
const METRIC_TYPES: [PyType; 2] = [PyType::Float, PyType::Int];

impl ConfigValue {
    /// Types a Python value as `ConfigRecord.__setitem__` and
    /// `ConfigRecord.deflate` do, or says why Python would refuse it.
    pub fn from_python(value: &PyValue) -> Result<Self, Error> {
        check_python(value, &CONFIG_TYPES, "ConfigRecord")?;
        Ok(match value {
            PyValue::Bool(b) => ConfigValue::Bool(*b),
            PyValue::Int(v) => match int_scalar(*v)? {
                Ok(s) => ConfigValue::Sint64(s),
                Err(u) => ConfigValue::Uint64(u),
            },
            PyValue::Float(f) => ConfigValue::Double(*f),
            PyValue::Str(s) => ConfigValue::String(s.clone()),
            PyValue::Bytes(b) => ConfigValue::Bytes(b.clone()),
            PyValue::List(items) => match list_type(items, &CONFIG_TYPES) {
                Some(PyType::Bool) => ConfigValue::BoolList(
                    items
                        .iter()
                        .map(|v| matches!(v, PyValue::Bool(true)))
                        .collect(),
                ),
                Some(PyType::Int) => match int_list(items)? {
                    Ok(s) => ConfigValue::SintList(s),
                    Err(u) => ConfigValue::UintList(u),
                },
                Some(PyType::Float) => ConfigValue::DoubleList(
                    items
                        .iter()
                        .filter_map(|v| match v {
                            PyValue::Float(f) => Some(*f),
                            _ => None,
                        })
                        .collect(),
                ),
                Some(PyType::Str) => ConfigValue::StringList(
                    items
                        .iter()
                        .filter_map(|v| match v {
                            PyValue::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                ),
                Some(PyType::Bytes) => ConfigValue::BytesList(
                    items
                        .iter()
                        .filter_map(|v| match v {
                            PyValue::Bytes(b) => Some(b.clone()),
                            _ => None,
                        })
                        .collect(),
                ),
                // `check_python` accepted only homogeneous lists.
                None => return Err(Error::InvalidValue("mixed list".into())),
            },
            PyValue::None => return Err(Error::InvalidValue("None is not a value".into())),
        })
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> pb::ConfigRecordValue {
        let value = match self {
            ConfigValue::Double(v) => PbConfig::Double(*v),
            ConfigValue::Sint64(v) => PbConfig::Sint64(*v),
            ConfigValue::Uint64(v) => PbConfig::Uint64(*v),
            ConfigValue::Bool(v) => PbConfig::Bool(*v),
            ConfigValue::String(v) => PbConfig::String(v.clone()),
            ConfigValue::Bytes(v) => PbConfig::Bytes(v.clone()),
            ConfigValue::DoubleList(v) => PbConfig::DoubleList(pb::DoubleList { vals: v.clone() }),
            ConfigValue::SintList(v) => PbConfig::SintList(pb::SintList { vals: v.clone() }),
            ConfigValue::UintList(v) => PbConfig::UintList(pb::UintList { vals: v.clone() }),
            ConfigValue::BoolList(v) => PbConfig::BoolList(pb::BoolList { vals: v.clone() }),
            ConfigValue::StringList(v) => PbConfig::StringList(pb::StringList { vals: v.clone() }),
            ConfigValue::BytesList(v) => PbConfig::BytesList(pb::BytesList { vals: v.clone() }),
        };
        pb::ConfigRecordValue { value: Some(value) }
    }

    /// Bytes this value adds to a message (for size accounting).
    pub(crate) fn size(&self) -> usize {
        match self {
            ConfigValue::String(s) => s.len(),
            ConfigValue::Bytes(b) => b.len(),
            ConfigValue::DoubleList(v) => v.len() * 8,
            ConfigValue::SintList(v) => v.len() * 8,
            ConfigValue::UintList(v) => v.len() * 8,
            ConfigValue::BoolList(v) => v.len(),
            ConfigValue::StringList(v) => v.iter().map(String::len).sum(),
            ConfigValue::BytesList(v) => v.iter().map(Bytes::len).sum(),
            _ => 8,
        }
    }
}

impl TryFrom<pb::ConfigRecordValue> for ConfigValue {
    type Error = Error;

    fn try_from(value: pb::ConfigRecordValue) -> Result<Self, Error> {
        Ok(match value.value {
            Some(PbConfig::Double(v)) => ConfigValue::Double(v),
            Some(PbConfig::Sint64(v)) => ConfigValue::Sint64(v),
            Some(PbConfig::Uint64(v)) => ConfigValue::Uint64(v),
            Some(PbConfig::Bool(v)) => ConfigValue::Bool(v),
            Some(PbConfig::String(v)) => ConfigValue::String(v),
            Some(PbConfig::Bytes(v)) => ConfigValue::Bytes(v),
            Some(PbConfig::DoubleList(v)) => ConfigValue::DoubleList(v.vals),
            Some(PbConfig::SintList(v)) => ConfigValue::SintList(v.vals),
            Some(PbConfig::UintList(v)) => ConfigValue::UintList(v.vals),
            Some(PbConfig::BoolList(v)) => ConfigValue::BoolList(v.vals),
            Some(PbConfig::StringList(v)) => ConfigValue::StringList(v.vals),
            Some(PbConfig::BytesList(v)) => ConfigValue::BytesList(v.vals),
            None => {
                return Err(Error::InvalidValue(
                    "ConfigRecordValue has no value set".into(),
                ))
            }
        })
    }
}

impl MetricValue {
    /// Types a Python value as `MetricRecord.__setitem__` and
    /// `MetricRecord.deflate` do, or says why Python would refuse it.
    pub fn from_python(value: &PyValue) -> Result<Self, Error> {
        check_python(value, &METRIC_TYPES, "MetricRecord")?;
        Ok(match value {
            PyValue::Int(v) => match int_scalar(*v)? {
                Ok(s) => MetricValue::Sint64(s),
                Err(u) => MetricValue::Uint64(u),
            },
            PyValue::Float(f) => MetricValue::Double(*f),
            PyValue::List(items) => match list_type(items, &METRIC_TYPES) {
                Some(PyType::Float) => MetricValue::DoubleList(
                    items
                        .iter()
                        .filter_map(|v| match v {
                            PyValue::Float(f) => Some(*f),
                            _ => None,
                        })
                        .collect(),
                ),
                Some(PyType::Int) => match int_list(items)? {
                    Ok(s) => MetricValue::SintList(s),
                    Err(u) => MetricValue::UintList(u),
                },
                _ => return Err(Error::InvalidValue("mixed list".into())),
            },
            other => {
                return Err(Error::InvalidValue(format!(
                    "a {} is not a valid MetricRecord value",
                    other.type_name()
                )))
            }
        })
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> pb::MetricRecordValue {
        let value = match self {
            MetricValue::Double(v) => PbMetric::Double(*v),
            MetricValue::Sint64(v) => PbMetric::Sint64(*v),
            MetricValue::Uint64(v) => PbMetric::Uint64(*v),
            MetricValue::DoubleList(v) => PbMetric::DoubleList(pb::DoubleList { vals: v.clone() }),
            MetricValue::SintList(v) => PbMetric::SintList(pb::SintList { vals: v.clone() }),
            MetricValue::UintList(v) => PbMetric::UintList(pb::UintList { vals: v.clone() }),
        };
        pb::MetricRecordValue { value: Some(value) }
    }

    /// Bytes this value adds to a message (for size accounting).
    pub(crate) fn size(&self) -> usize {
        match self {
            MetricValue::DoubleList(v) => v.len() * 8,
            MetricValue::SintList(v) => v.len() * 8,
            MetricValue::UintList(v) => v.len() * 8,
            _ => 8,
        }
    }
}

impl TryFrom<pb::MetricRecordValue> for MetricValue {
    type Error = Error;

    fn try_from(value: pb::MetricRecordValue) -> Result<Self, Error> {
        Ok(match value.value {
            Some(PbMetric::Double(v)) => MetricValue::Double(v),
            Some(PbMetric::Sint64(v)) => MetricValue::Sint64(v),
            Some(PbMetric::Uint64(v)) => MetricValue::Uint64(v),
            Some(PbMetric::DoubleList(v)) => MetricValue::DoubleList(v.vals),
            Some(PbMetric::SintList(v)) => MetricValue::SintList(v.vals),
            Some(PbMetric::UintList(v)) => MetricValue::UintList(v.vals),
            None => {
                return Err(Error::InvalidValue(
                    "MetricRecordValue has no value set".into(),
                ))
            }
        })
    }
}

// Typed constructors with Python's mapping (an int is `sint64` unless it
// exceeds `i64::MAX`; an empty list takes the record's default list type).

impl From<bool> for ConfigValue {
    fn from(v: bool) -> Self {
        ConfigValue::Bool(v)
    }
}
impl From<f64> for ConfigValue {
    fn from(v: f64) -> Self {
        ConfigValue::Double(v)
    }
}
impl From<f32> for ConfigValue {
    fn from(v: f32) -> Self {
        ConfigValue::Double(f64::from(v))
    }
}
impl From<i64> for ConfigValue {
    fn from(v: i64) -> Self {
        ConfigValue::Sint64(v)
    }
}
impl From<i32> for ConfigValue {
    fn from(v: i32) -> Self {
        ConfigValue::Sint64(i64::from(v))
    }
}
impl From<u64> for ConfigValue {
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(ConfigValue::Uint64(v), ConfigValue::Sint64)
    }
}
impl From<u32> for ConfigValue {
    fn from(v: u32) -> Self {
        ConfigValue::Sint64(i64::from(v))
    }
}
impl From<&str> for ConfigValue {
    fn from(v: &str) -> Self {
        ConfigValue::String(v.to_owned())
    }
}
impl From<String> for ConfigValue {
    fn from(v: String) -> Self {
        ConfigValue::String(v)
    }
}
impl From<Bytes> for ConfigValue {
    fn from(v: Bytes) -> Self {
        ConfigValue::Bytes(v)
    }
}
impl From<Vec<u8>> for ConfigValue {
    fn from(v: Vec<u8>) -> Self {
        ConfigValue::Bytes(Bytes::from(v))
    }
}
impl From<Vec<bool>> for ConfigValue {
    fn from(v: Vec<bool>) -> Self {
        ConfigValue::BoolList(v)
    }
}
impl From<Vec<f64>> for ConfigValue {
    fn from(v: Vec<f64>) -> Self {
        if v.is_empty() {
            ConfigValue::BoolList(Vec::new())
        } else {
            ConfigValue::DoubleList(v)
        }
    }
}
impl From<Vec<i64>> for ConfigValue {
    fn from(v: Vec<i64>) -> Self {
        if v.is_empty() {
            ConfigValue::BoolList(Vec::new())
        } else {
            ConfigValue::SintList(v)
        }
    }
}
impl From<Vec<u64>> for ConfigValue {
    fn from(v: Vec<u64>) -> Self {
        if v.is_empty() {
            ConfigValue::BoolList(Vec::new())
        } else if v.iter().any(|&x| i64::try_from(x).is_err()) {
            ConfigValue::UintList(v)
        } else {
            ConfigValue::SintList(
                v.into_iter()
                    .filter_map(|x| i64::try_from(x).ok())
                    .collect(),
            )
        }
    }
}
impl From<Vec<String>> for ConfigValue {
    fn from(v: Vec<String>) -> Self {
        if v.is_empty() {
            ConfigValue::BoolList(Vec::new())
        } else {
            ConfigValue::StringList(v)
        }
    }
}
impl From<Vec<Bytes>> for ConfigValue {
    fn from(v: Vec<Bytes>) -> Self {
        if v.is_empty() {
            ConfigValue::BoolList(Vec::new())
        } else {
            ConfigValue::BytesList(v)
        }
    }
}

impl From<f64> for MetricValue {
    fn from(v: f64) -> Self {
        MetricValue::Double(v)
    }
}
impl From<f32> for MetricValue {
    fn from(v: f32) -> Self {
        MetricValue::Double(f64::from(v))
    }
}
impl From<i64> for MetricValue {
    fn from(v: i64) -> Self {
        MetricValue::Sint64(v)
    }
}
impl From<i32> for MetricValue {
    fn from(v: i32) -> Self {
        MetricValue::Sint64(i64::from(v))
    }
}
impl From<u64> for MetricValue {
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(MetricValue::Uint64(v), MetricValue::Sint64)
    }
}
impl From<u32> for MetricValue {
    fn from(v: u32) -> Self {
        MetricValue::Sint64(i64::from(v))
    }
}
impl From<Vec<f64>> for MetricValue {
    fn from(v: Vec<f64>) -> Self {
        MetricValue::DoubleList(v)
    }
}
impl From<Vec<i64>> for MetricValue {
    fn from(v: Vec<i64>) -> Self {
        if v.is_empty() {
            MetricValue::DoubleList(Vec::new())
        } else {
            MetricValue::SintList(v)
        }
    }
}
impl From<Vec<u64>> for MetricValue {
    fn from(v: Vec<u64>) -> Self {
        if v.is_empty() {
            MetricValue::DoubleList(Vec::new())
        } else if v.iter().any(|&x| i64::try_from(x).is_err()) {
            MetricValue::UintList(v)
        } else {
            MetricValue::SintList(
                v.into_iter()
                    .filter_map(|x| i64::try_from(x).ok())
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: i128) -> PyValue {
        PyValue::Int(v)
    }

    #[test]
    fn python_int_mapping() {
        let max = i128::from(i64::MAX);
        assert_eq!(
            ConfigValue::from_python(&int(max)).ok(),
            Some(ConfigValue::Sint64(i64::MAX))
        );
        assert_eq!(
            ConfigValue::from_python(&int(max + 1)).ok(),
            Some(ConfigValue::Uint64(1 << 63))
        );
        assert!(ConfigValue::from_python(&int(1 << 64)).is_err());
        assert!(ConfigValue::from_python(&int(i128::from(i64::MIN) - 1)).is_err());
        assert_eq!(ConfigValue::from(u64::MAX), ConfigValue::Uint64(u64::MAX));
        assert_eq!(ConfigValue::from(5u64), ConfigValue::Sint64(5));
        assert_eq!(
            MetricValue::from(vec![5u64]),
            MetricValue::SintList(vec![5])
        );
        assert_eq!(
            MetricValue::from(vec![5u64, u64::MAX]),
            MetricValue::UintList(vec![5, u64::MAX])
        );
    }

    #[test]
    fn python_list_rules() {
        let l = |v: Vec<PyValue>| PyValue::List(v);
        assert_eq!(
            ConfigValue::from_python(&l(vec![])).ok(),
            Some(ConfigValue::BoolList(vec![]))
        );
        assert_eq!(
            MetricValue::from_python(&l(vec![])).ok(),
            Some(MetricValue::DoubleList(vec![]))
        );
        // `[1, True]` passes `isinstance(True, int)` and serializes as ints.
        assert_eq!(
            ConfigValue::from_python(&l(vec![int(1), PyValue::Bool(true)])).ok(),
            Some(ConfigValue::SintList(vec![1, 1]))
        );
        assert!(ConfigValue::from_python(&l(vec![PyValue::Bool(true), int(1)])).is_err());
        assert!(ConfigValue::from_python(&l(vec![int(1), PyValue::Float(1.0)])).is_err());
        assert_eq!(
            ConfigValue::from_python(&l(vec![int(-1), int(1 << 63)])).ok(),
            None,
            "a negative int cannot join a uint64 list"
        );
        assert!(MetricValue::from_python(&PyValue::Bool(true)).is_err());
        assert!(MetricValue::from_python(&PyValue::Str("x".into())).is_err());
        assert!(ConfigValue::from_python(&PyValue::None).is_err());
        assert!(ConfigValue::from_python(&l(vec![l(vec![])])).is_err());
    }

    #[test]
    fn empty_oneof_is_refused() {
        assert!(matches!(
            ConfigValue::try_from(pb::ConfigRecordValue { value: None }),
            Err(Error::InvalidValue(_))
        ));
        assert!(matches!(
            MetricValue::try_from(pb::MetricRecordValue { value: None }),
            Err(Error::InvalidValue(_))
        ));
    }
}
