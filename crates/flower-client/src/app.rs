//! A Rust ClientApp in the spirit of Flower's message API
//! (`flwr.clientapp.ClientApp` with `@app.train()`, `@app.evaluate()`,
//! `@app.query()`), and [`NumPyClientApp`], which lets an existing
//! [`NumPyClient`] join a modern federation unchanged.
//!
//! A [`ClientApp`] gets each instruction decoded ([`Instruction`]: its
//! arrays as [`NdArray`]s of any dtype, its config record) with the
//! [`Context`] (run config, node config) and returns a [`Reply`] (arrays and
//! metrics). [`ClientApp::handle`] does the decoding and encoding with the
//! message API's record names (`"arrays"`, `"config"`, `"metrics"`, as
//! flwr's `FedAvg` sends and reads them); an app may override it to work
//! on raw [`Message`]s.
//!
//! Nothing here panics on peer input: an instruction that does not decode,
//! a handler error and a message type without a handler all become an
//! error reply (`CLIENT_APP_RAISED_EXCEPTION`), as a Python ClientApp's
//! exception does.

use flower_core::npy;
use flower_core::{Config, Metrics, NdArray, Scalar};
use flower_fab::UserConfig;
use flower_message::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Message, MessageError, MetricRecord,
    MetricValue, Record, RecordDict, NUMPY_STYPE,
};

use crate::numpy::{BoxError, NotImplemented, NumPyClient};

/// flwr's `ErrorCode.CLIENT_APP_RAISED_EXCEPTION`: the code of every error
/// reply this module produces.
pub const CLIENT_APP_RAISED_EXCEPTION: i64 = 2;

/// The record names of flwr's message-API strategies.
pub const ARRAYS_KEY: &str = "arrays";
/// See [`ARRAYS_KEY`].
pub const CONFIG_KEY: &str = "config";
/// See [`ARRAYS_KEY`].
pub const METRICS_KEY: &str = "metrics";
/// The metric FedAvg weights replies by.
pub const NUM_EXAMPLES_KEY: &str = "num-examples";

/// What a handler knows about the run and the node (flwr's `Context`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// The run.
    pub run_id: u64,
    /// This node's id (from ActivateNode).
    pub node_id: u64,
    /// `--node-config` (local to the node, never from the SuperLink).
    pub node_config: UserConfig,
    /// The FAB's `[tool.flwr.app.config]` fused with the run's overrides.
    pub run_config: UserConfig,
    /// `<publisher>/<name>` of the run's FAB (the app the ServerApp runs;
    /// the Rust node serves it without executing it).
    pub fab_id: String,
    /// Version of the run's FAB.
    pub fab_version: String,
}

impl Context {
    /// A numeric value of the node config (`float` or `int`).
    pub fn node_f64(&self, key: &str) -> Option<f64> {
        config_f64(&self.node_config, key)
    }

    /// A numeric value of the run config (`float` or `int`).
    pub fn run_f64(&self, key: &str) -> Option<f64> {
        config_f64(&self.run_config, key)
    }
}

fn config_f64(config: &UserConfig, key: &str) -> Option<f64> {
    match config.get(key)? {
        flower_fab::ConfigValue::Float(f) => Some(*f),
        flower_fab::ConfigValue::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// One decoded instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// The full message type (`"train"`, `"evaluate.custom"`, ...).
    pub message_type: String,
    /// The group (the server round, for flwr's strategies).
    pub group_id: String,
    /// The arrays of the `"arrays"` ArrayRecord (else of the first
    /// ArrayRecord), in order, with their names.
    pub arrays: Vec<(String, NdArray)>,
    /// The `"config"` ConfigRecord (else the first ConfigRecord, else empty).
    pub config: ConfigRecord,
    /// The whole content, for records the fields above do not cover.
    pub content: RecordDict,
}

impl Instruction {
    /// Decodes a message-API content.
    ///
    /// # Errors
    /// An array whose data is not a `.npy` file matching its dtype and
    /// shape.
    pub fn from_content(
        message_type: &str,
        group_id: &str,
        content: &RecordDict,
    ) -> Result<Self, flower_message::Error> {
        let arrays = match pick(content, ARRAYS_KEY, |r| match r {
            Record::Array(a) => Some(a),
            _ => None,
        }) {
            Some(record) => record
                .iter()
                .map(|(name, a)| Ok((name.clone(), a.to_ndarray()?)))
                .collect::<Result<_, flower_message::Error>>()?,
            None => Vec::new(),
        };
        let config = pick(content, CONFIG_KEY, |r| match r {
            Record::Config(c) => Some(c),
            _ => None,
        })
        .cloned()
        .unwrap_or_default();
        Ok(Instruction {
            message_type: message_type.to_owned(),
            group_id: group_id.to_owned(),
            arrays,
            config,
            content: content.clone(),
        })
    }

    /// `config["server-round"]` as flwr's strategies set it.
    pub fn server_round(&self) -> Option<i64> {
        match self.config.get("server-round")? {
            ConfigValue::Sint64(v) => Some(*v),
            ConfigValue::Uint64(v) => i64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// A numeric config value (`double` or an integer).
    pub fn config_f64(&self, key: &str) -> Option<f64> {
        match self.config.get(key)? {
            ConfigValue::Double(v) => Some(*v),
            ConfigValue::Sint64(v) => Some(*v as f64),
            ConfigValue::Uint64(v) => Some(*v as f64),
            _ => None,
        }
    }
}

/// The record named `key` if it has the wanted kind, else the first record
/// of that kind.
fn pick<'a, T>(
    content: &'a RecordDict,
    key: &str,
    kind: impl Fn(&'a Record) -> Option<&'a T>,
) -> Option<&'a T> {
    content
        .get(key)
        .and_then(&kind)
        .or_else(|| content.values().find_map(&kind))
}

/// What a handler returns: arrays (for `train`), metrics, and optionally a
/// config record. Encoded as `RecordDict{"arrays", "metrics", "config"}`,
/// leaving out the absent parts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    /// The arrays to send back, with their names (keep the instruction's
    /// names: FedAvg aggregates by name).
    pub arrays: Option<Vec<(String, NdArray)>>,
    /// Metrics; FedAvg needs [`NUM_EXAMPLES_KEY`].
    pub metrics: MetricRecord,
    /// An optional config record.
    pub config: Option<ConfigRecord>,
}

impl Reply {
    /// A train reply: `arrays` and `num-examples`.
    pub fn train(arrays: Vec<(String, NdArray)>, num_examples: u64) -> Self {
        Reply {
            arrays: Some(arrays),
            metrics: MetricRecord::new().with(NUM_EXAMPLES_KEY, num_examples),
            config: None,
        }
    }

    /// An evaluate reply: `num-examples` only (add the loss with
    /// [`Reply::metric`]).
    pub fn evaluate(num_examples: u64) -> Self {
        Reply {
            arrays: None,
            metrics: MetricRecord::new().with(NUM_EXAMPLES_KEY, num_examples),
            config: None,
        }
    }

    /// Adds a metric.
    #[must_use]
    pub fn metric(mut self, key: impl Into<String>, value: impl Into<MetricValue>) -> Self {
        self.metrics.insert(key.into(), value.into());
        self
    }

    /// The reply's content.
    pub fn into_content(self) -> RecordDict {
        let mut content = RecordDict::new();
        if let Some(arrays) = self.arrays {
            let record: ArrayRecord = arrays
                .iter()
                .map(|(name, a)| (name.clone(), Array::from_ndarray(a)))
                .collect();
            content.insert(ARRAYS_KEY.into(), record.into());
        }
        content.insert(METRICS_KEY.into(), self.metrics.into());
        if let Some(config) = self.config {
            content.insert(CONFIG_KEY.into(), config.into());
        }
        content
    }
}

/// A ClientApp: handlers for the three message types of flwr's message API.
///
/// Each handler defaults to "not implemented", which the node answers with
/// an error reply (the run goes on; the ServerApp counts a failure), as a
/// Python ClientApp without that handler does. Handlers run on Tokio's
/// blocking pool, one message at a time, so they may compute freely.
///
/// ```
/// use flower_client::app::{ClientApp, Context, Instruction, Reply};
/// use flower_client::BoxError;
/// use flower_core::NdArray;
///
/// /// Adds 1 to every float32 array; leaves other dtypes as they are.
/// struct AddOne;
///
/// impl ClientApp for AddOne {
///     fn train(&mut self, ins: Instruction, _ctx: &Context) -> Result<Reply, BoxError> {
///         let arrays = ins
///             .arrays
///             .into_iter()
///             .map(|(name, a)| match a {
///                 NdArray::F32(x) => (name, NdArray::F32(x + 1.0)),
///                 other => (name, other),
///             })
///             .collect();
///         Ok(Reply::train(arrays, 10))
///     }
/// }
/// ```
pub trait ClientApp: Send {
    /// A name for the logs: the node reports it serves the run's FAB with
    /// this app.
    fn name(&self) -> &str {
        "rust-clientapp"
    }

    /// Handles a `train` message.
    fn train(&mut self, ins: Instruction, ctx: &Context) -> Result<Reply, BoxError> {
        let _ = (ins, ctx);
        Err(NotImplemented.into())
    }

    /// Handles an `evaluate` message.
    fn evaluate(&mut self, ins: Instruction, ctx: &Context) -> Result<Reply, BoxError> {
        let _ = (ins, ctx);
        Err(NotImplemented.into())
    }

    /// Handles a `query` message.
    fn query(&mut self, ins: Instruction, ctx: &Context) -> Result<Reply, BoxError> {
        let _ = (ins, ctx);
        Err(NotImplemented.into())
    }

    /// Turns a received message into the reply's content, or the error the
    /// reply carries instead. The default is [`dispatch`].
    fn handle(&mut self, message: &Message, ctx: &Context) -> Result<RecordDict, MessageError> {
        dispatch(self, message, ctx)
    }
}

/// The action of a message type: `"train.custom"` → `"train"`.
pub fn action(message_type: &str) -> &str {
    message_type.split('.').next().unwrap_or(message_type)
}

/// An error reply's payload (`CLIENT_APP_RAISED_EXCEPTION`).
pub fn app_error(reason: impl Into<String>) -> MessageError {
    MessageError {
        code: CLIENT_APP_RAISED_EXCEPTION,
        reason: reason.into(),
    }
}

/// The default [`ClientApp::handle`]: picks the handler by the message
/// type's action, decodes the content with the message-API names, and
/// encodes the handler's [`Reply`].
///
/// # Errors
/// A message type without a handler, a message that carries an error, a
/// content that does not decode, or an `Err` from the handler.
pub fn dispatch<A: ClientApp + ?Sized>(
    app: &mut A,
    message: &Message,
    ctx: &Context,
) -> Result<RecordDict, MessageError> {
    let meta = &message.metadata;
    let kind = action(&meta.message_type);
    let content = message
        .content()
        .ok_or_else(|| app_error("the instruction carries an error, not content"))?;
    if !matches!(kind, "train" | "evaluate" | "query") {
        return Err(app_error(format!(
            "no handler for message type `{}` (this Rust ClientApp handles train, evaluate and query)",
            meta.message_type
        )));
    }
    let ins = Instruction::from_content(&meta.message_type, &meta.group_id, content)
        .map_err(|e| app_error(format!("cannot decode the instruction: {e}")))?;
    let result = match kind {
        "train" => app.train(ins, ctx),
        "evaluate" => app.evaluate(ins, ctx),
        _ => app.query(ins, ctx),
    };
    match result {
        Ok(reply) => Ok(reply.into_content()),
        Err(e) if e.is::<NotImplemented>() => Err(app_error(format!(
            "no `{kind}` function registered in the Rust ClientApp"
        ))),
        Err(e) => Err(app_error(format!("{kind} failed: {e}"))),
    }
}

/// Runs an existing [`NumPyClient`] as a [`ClientApp`].
///
/// * Instructions of a legacy strategy (flwr's `compat` layer: content
///   `fitins.parameters` / `fitins.config`, `evaluateins.*`) are answered
///   with the legacy keys (`fitres.parameters`, `fitres.num_examples`,
///   `fitres.metrics`, `fitres.status`, and the `evaluateres.*` ones), as
///   Python's `NumPyClient` inside a ClientApp does.
/// * Message-API instructions call `fit` with the `"arrays"` in order and
///   the `"config"` record, and reply with the same array names, the metrics
///   and `num-examples`; `evaluate` replies `loss`, `num-examples` and the
///   metrics; `query` replies the properties as a `"config"` record.
///
/// Metrics that a MetricRecord cannot hold (strings, bytes, bools) are
/// sent in a ConfigRecord `"config"` beside them.
#[derive(Debug, Clone, Default)]
pub struct NumPyClientApp<N> {
    inner: N,
}

impl<N> NumPyClientApp<N> {
    /// Wraps `inner`.
    pub fn new(inner: N) -> Self {
        Self { inner }
    }

    /// The wrapped client.
    pub fn into_inner(self) -> N {
        self.inner
    }
}

impl<N: NumPyClient + Send> ClientApp for NumPyClientApp<N> {
    fn name(&self) -> &str {
        "rust-numpyclient"
    }

    fn train(&mut self, ins: Instruction, _ctx: &Context) -> Result<Reply, BoxError> {
        let names: Vec<String> = ins.arrays.iter().map(|(n, _)| n.clone()).collect();
        let arrays = ins.arrays.into_iter().map(|(_, a)| a).collect();
        let (arrays, num_examples, metrics) = self.inner.fit(arrays, &to_config(&ins.config))?;
        let arrays: Vec<(String, NdArray)> = arrays
            .into_iter()
            .enumerate()
            .map(|(i, a)| (names.get(i).cloned().unwrap_or_else(|| i.to_string()), a))
            .collect();
        Ok(with_metrics(Reply::train(arrays, num_examples), &metrics))
    }

    fn evaluate(&mut self, ins: Instruction, _ctx: &Context) -> Result<Reply, BoxError> {
        let arrays = ins.arrays.into_iter().map(|(_, a)| a).collect();
        let (loss, num_examples, metrics) = self.inner.evaluate(arrays, &to_config(&ins.config))?;
        Ok(with_metrics(
            Reply::evaluate(num_examples).metric("loss", loss),
            &metrics,
        ))
    }

    fn query(&mut self, ins: Instruction, _ctx: &Context) -> Result<Reply, BoxError> {
        let properties = self.inner.get_properties(&to_config(&ins.config))?;
        Ok(Reply {
            arrays: None,
            metrics: MetricRecord::new(),
            config: Some(from_scalars(&properties)),
        })
    }

    fn handle(&mut self, message: &Message, ctx: &Context) -> Result<RecordDict, MessageError> {
        let Some(content) = message.content() else {
            return dispatch(self, message, ctx);
        };
        match action(&message.metadata.message_type) {
            "train" if content.array_record("fitins.parameters").is_some() => {
                self.legacy(content, "fitins")
            }
            "evaluate" if content.array_record("evaluateins.parameters").is_some() => {
                self.legacy(content, "evaluateins")
            }
            _ => dispatch(self, message, ctx),
        }
    }
}

impl<N: NumPyClient> NumPyClientApp<N> {
    /// The legacy (`compat`) path: `ins` is `"fitins"` or `"evaluateins"`.
    fn legacy(&mut self, content: &RecordDict, ins: &str) -> Result<RecordDict, MessageError> {
        let parameters = content
            .array_record(&format!("{ins}.parameters"))
            .map(legacy_arrays)
            .transpose()
            .map_err(|e| app_error(format!("cannot decode the parameters: {e}")))?
            .unwrap_or_default();
        let config = content
            .config_record(&format!("{ins}.config"))
            .map(to_config)
            .unwrap_or_default();
        let mut out = RecordDict::new();
        if ins == "fitins" {
            let (arrays, num_examples, metrics) = self
                .inner
                .fit(parameters, &config)
                .map_err(|e| app_error(format!("fit failed: {e}")))?;
            out.insert("fitres.metrics".into(), from_scalars(&metrics).into());
            out.insert(
                "fitres.num_examples".into(),
                MetricRecord::new()
                    .with("num_examples", num_examples)
                    .into(),
            );
            out.insert("fitres.parameters".into(), legacy_record(&arrays).into());
            out.insert("fitres.status".into(), ok_status().into());
        } else {
            let (loss, num_examples, metrics) = self
                .inner
                .evaluate(parameters, &config)
                .map_err(|e| app_error(format!("evaluate failed: {e}")))?;
            out.insert(
                "evaluateres.loss".into(),
                MetricRecord::new().with("loss", loss).into(),
            );
            out.insert(
                "evaluateres.num_examples".into(),
                MetricRecord::new()
                    .with("num_examples", num_examples)
                    .into(),
            );
            out.insert("evaluateres.metrics".into(), from_scalars(&metrics).into());
            out.insert("evaluateres.status".into(), ok_status().into());
        }
        Ok(out)
    }
}

/// `Status(code=OK, message="Success")` as flwr's compat layer embeds it.
fn ok_status() -> ConfigRecord {
    ConfigRecord::new()
        .with("code", 0i64)
        .with("message", "Success")
}

/// flwr's `arrayrecord_to_parameters`: the `.npy` data of every array but
/// `_empty`, in order (the legacy arrays carry no dtype or shape).
fn legacy_arrays(record: &ArrayRecord) -> Result<Vec<NdArray>, flower_core::CodecError> {
    record
        .iter()
        .filter(|(name, _)| name.as_str() != "_empty")
        .map(|(_, a)| npy::parse_npy(&a.data).and_then(|v| v.to_ndarray()))
        .collect()
}

/// flwr's `parameters_to_arrayrecord`: keys `"0"`, `"1"`, ..., empty dtype
/// and shape, `_empty` for no arrays.
fn legacy_record(arrays: &[NdArray]) -> ArrayRecord {
    let legacy = |data: Vec<u8>| Array {
        dtype: String::new(),
        shape: Vec::new(),
        stype: NUMPY_STYPE.to_owned(),
        data: data.into(),
    };
    if arrays.is_empty() {
        return std::iter::once(("_empty".to_owned(), legacy(Vec::new()))).collect();
    }
    arrays
        .iter()
        .enumerate()
        .map(|(i, a)| (i.to_string(), legacy(npy::encode_npy(a))))
        .collect()
}

/// A ConfigRecord's scalar values as a flower-core `Config` (list values,
/// which `Config` cannot hold, are left out).
pub fn to_config(record: &ConfigRecord) -> Config {
    record
        .iter()
        .filter_map(|(k, v)| {
            let s = match v {
                ConfigValue::Double(x) => Scalar::Double(*x),
                ConfigValue::Sint64(x) => Scalar::Sint64(*x),
                ConfigValue::Uint64(x) => Scalar::Uint64(*x),
                ConfigValue::Bool(x) => Scalar::Bool(*x),
                ConfigValue::String(x) => Scalar::String(x.clone()),
                ConfigValue::Bytes(x) => Scalar::Bytes(x.to_vec()),
                _ => return None,
            };
            Some((k.clone(), s))
        })
        .collect()
}

/// Scalars as a ConfigRecord (every `Scalar` fits).
fn from_scalars(map: &flower_core::ScalarMap) -> ConfigRecord {
    map.iter()
        .map(|(k, v)| (k.clone(), scalar_to_config(v)))
        .collect()
}

fn scalar_to_config(v: &Scalar) -> ConfigValue {
    match v {
        Scalar::Bool(b) => ConfigValue::Bool(*b),
        Scalar::Bytes(b) => ConfigValue::Bytes(b.clone().into()),
        Scalar::Double(d) => ConfigValue::Double(*d),
        Scalar::Sint64(i) => ConfigValue::Sint64(*i),
        Scalar::Uint64(u) => ConfigValue::Uint64(*u),
        Scalar::String(s) => ConfigValue::String(s.clone()),
    }
}

/// Adds `metrics` to a reply: numbers to its MetricRecord, the rest to its
/// ConfigRecord.
fn with_metrics(mut reply: Reply, metrics: &Metrics) -> Reply {
    let mut other = ConfigRecord::new();
    for (k, v) in metrics {
        match v {
            Scalar::Double(d) => {
                reply.metrics.insert(k.clone(), MetricValue::Double(*d));
            }
            Scalar::Sint64(i) => {
                reply.metrics.insert(k.clone(), MetricValue::Sint64(*i));
            }
            Scalar::Uint64(u) => {
                reply.metrics.insert(k.clone(), MetricValue::Uint64(*u));
            }
            _ => {
                other.insert(k.clone(), scalar_to_config(v));
            }
        }
    }
    if !other.is_empty() {
        reply.config = Some(other);
    }
    reply
}

#[cfg(test)]
mod tests;
