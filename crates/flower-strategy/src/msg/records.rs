//! The message content the strategies read and write: Flower's
//! `ArrayRecord`, `MetricRecord`, `ConfigRecord` and `RecordDict`, as
//! ordered maps (Flower keeps insertion order, and the order of an
//! `ArrayRecord` is the order of the aggregated model's arrays).
//!
//! An array is held as `.npy` bytes (what Flower's `Array.data` holds for
//! `numpy.ndarray` arrays), so a reply can be folded straight from them.

use std::sync::Arc;

use bytes::Bytes;
use flower_core::npy::{parse_npy, NpyView};

use crate::layers::{encode_layer, view_to_layer, Layer};
use crate::StrategyError;

/// An insertion-ordered map with string keys (Flower's records are Python
/// dicts). Inserting an existing key replaces its value in place.
#[derive(Debug, Clone, PartialEq)]
pub struct Ordered<V> {
    entries: Vec<(String, V)>,
}

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered {
            entries: Vec::new(),
        }
    }
}

impl<V> Ordered<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (kept at its old position when present).
    pub fn insert(&mut self, key: impl Into<String>, value: V) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Keys in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys as a sorted list (Python compares key sets).
    pub(crate) fn key_set(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.keys().collect();
        k.sort_unstable();
        k
    }
}

impl<K: Into<String>, V> FromIterator<(K, V)> for Ordered<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = Ordered::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

/// One array of an [`ArrayRecord`]: its `.npy` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Array(Bytes);

impl Array {
    /// Wraps `.npy` bytes; fails when they are not a `.npy` buffer.
    pub fn from_npy(bytes: Bytes) -> Result<Self, StrategyError> {
        parse_npy(&bytes).map_err(|source| StrategyError::Decode { tensor: 0, source })?;
        Ok(Array(bytes))
    }

    /// The `.npy` bytes.
    pub fn npy(&self) -> &Bytes {
        &self.0
    }

    /// The parsed header and the borrowed data.
    pub fn view(&self) -> Result<NpyView<'_>, StrategyError> {
        parse_npy(&self.0).map_err(|source| StrategyError::Decode { tensor: 0, source })
    }

    pub(crate) fn layer(&self) -> Result<Layer, StrategyError> {
        let v = self.view()?;
        view_to_layer(&v).map_err(|source| StrategyError::Decode { tensor: 0, source })
    }

    pub(crate) fn of_layer(layer: &Layer) -> Array {
        Array(encode_layer(layer))
    }
}

/// Flower's `ArrayRecord`: named arrays, in order.
pub type ArrayRecord = Ordered<Array>;

/// A value of a [`MetricRecord`].
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// Python `int`.
    Int(i64),
    /// Python `float`.
    Float(f64),
    /// List of `int`.
    IntList(Vec<i64>),
    /// List of `float`.
    FloatList(Vec<f64>),
}

impl MetricValue {
    /// The value as a Python number (`None` for lists).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetricValue::Int(i) => Some(*i as f64),
            MetricValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The elements as f64 (a scalar is one element).
    pub(crate) fn values(&self) -> Vec<f64> {
        match self {
            MetricValue::Int(i) => vec![*i as f64],
            MetricValue::Float(f) => vec![*f],
            MetricValue::IntList(v) => v.iter().map(|&i| i as f64).collect(),
            MetricValue::FloatList(v) => v.clone(),
        }
    }

    /// True for the list variants.
    pub fn is_list(&self) -> bool {
        matches!(self, MetricValue::IntList(_) | MetricValue::FloatList(_))
    }
}

/// Flower's `MetricRecord`.
pub type MetricRecord = Ordered<MetricValue>;

/// A value of a [`ConfigRecord`].
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    /// `int`.
    Int(i64),
    /// `float`.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// `str`.
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// List of `int`.
    IntList(Vec<i64>),
    /// List of `float`.
    FloatList(Vec<f64>),
    /// List of `bool`.
    BoolList(Vec<bool>),
    /// List of `str`.
    StrList(Vec<String>),
    /// List of `bytes`.
    BytesList(Vec<Vec<u8>>),
}

/// Flower's `ConfigRecord`.
pub type ConfigRecord = Ordered<ConfigValue>;

/// One record of a [`RecordDict`].
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// An `ArrayRecord`.
    Arrays(ArrayRecord),
    /// A `MetricRecord`.
    Metrics(MetricRecord),
    /// A `ConfigRecord`.
    Config(ConfigRecord),
}

impl Record {
    /// The record's keys, sorted (Python compares `set(record.keys())`).
    pub(crate) fn key_set(&self) -> Vec<&str> {
        match self {
            Record::Arrays(r) => r.key_set(),
            Record::Metrics(r) => r.key_set(),
            Record::Config(r) => r.key_set(),
        }
    }
}

/// Flower's `RecordDict` (a message's content).
pub type RecordDict = Ordered<Record>;

impl Ordered<Record> {
    /// The array records, in order.
    pub fn array_records(&self) -> impl Iterator<Item = (&str, &ArrayRecord)> {
        self.iter().filter_map(|(k, r)| match r {
            Record::Arrays(a) => Some((k, a)),
            _ => None,
        })
    }

    /// The metric records, in order.
    pub fn metric_records(&self) -> impl Iterator<Item = (&str, &MetricRecord)> {
        self.iter().filter_map(|(k, r)| match r {
            Record::Metrics(m) => Some((k, m)),
            _ => None,
        })
    }

    /// The config records, in order.
    pub fn config_records(&self) -> impl Iterator<Item = (&str, &ConfigRecord)> {
        self.iter().filter_map(|(k, r)| match r {
            Record::Config(c) => Some((k, c)),
            _ => None,
        })
    }

    /// The first array record (what Flower's strategies read).
    pub fn first_arrays(&self) -> Option<&ArrayRecord> {
        self.array_records().next().map(|(_, a)| a)
    }

    /// The first metric record.
    pub fn first_metrics(&self) -> Option<&MetricRecord> {
        self.metric_records().next().map(|(_, m)| m)
    }
}

/// `"train"` or `"evaluate"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// `MessageType.TRAIN`.
    Train,
    /// `MessageType.EVALUATE`.
    Evaluate,
}

impl MessageType {
    /// Flower's name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Train => "train",
            MessageType::Evaluate => "evaluate",
        }
    }
}

/// A message a strategy sends. Every message of a phase shares one content.
#[derive(Debug, Clone)]
pub struct Message {
    /// Destination node.
    pub dst_node_id: u64,
    /// Train or evaluate.
    pub message_type: MessageType,
    /// The content (`{arrayrecord_key: arrays, configrecord_key: config}`).
    pub content: Arc<RecordDict>,
}

/// An error a node replied with instead of content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    /// Flower's error code.
    pub code: i64,
    /// Why.
    pub reason: String,
}

/// A node's reply: content, or an error.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The node that replied.
    pub src_node_id: u64,
    /// Its content, or its error.
    pub content: Result<RecordDict, ReplyError>,
}
