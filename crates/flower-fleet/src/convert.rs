//! The round driver's legacy instructions as Flower messages, and replies
//! back, in one of two [`MessageFormat`]s:
//!
//! | instruction | `Modern` (message API) | `Legacy` (flwr's compat layer) |
//! |---|---|---|
//! | `FitIns` | type `train`: `arrays` (ArrayRecord) + `config` (ConfigRecord, the strategy's config then `server-round`) | type `train`: `fitins.parameters` + `fitins.config` |
//! | `EvaluateIns` | type `evaluate`: `arrays` + `config` | type `evaluate`: `evaluateins.parameters` + `evaluateins.config` |
//! | `GetParametersIns` | refused: a message-API ClientApp has no `get_parameters` (give the server initial parameters) | type `get_parameters`: `getparametersins.config` |
//!
//! Replies: `Modern` reads `arrays` and `metrics` (MetricRecord; its
//! `num-examples` is the weight, and evaluate's loss is the first of
//! [`ContentOptions::loss_keys`] present), as flwr's `FedAvg` and
//! `ClientApp` conventions have them; `Legacy` reads `fitres.*`,
//! `evaluateres.*`, `getparametersres.*` as `recorddict_compat.py` writes
//! them. Reply values that legacy `Scalar`s cannot hold (lists) are dropped.

use bytes::Bytes;
use flower_core::npy::parse_npy;
use flower_core::{
    ClientMessage, Code, Config, EvaluateRes, FitRes, GetParametersRes, InstructionKind, Metrics,
    Parameters, Scalar, ServerMessage, Status,
};
use flower_message::{
    Array, ArrayRecord, ConfigRecord, ConfigValue, Message, MetricRecord, MetricValue, Payload,
    Record, RecordDict, NUMPY_STYPE,
};
use flower_server::ContentReply;
use flower_strategy::msg;

use crate::FleetError;

/// Which records instructions and replies carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageFormat {
    /// The message API (`@app.train()` / `@app.evaluate()` ClientApps and
    /// flwr's message-API strategies): `arrays`, `config`, `metrics`.
    #[default]
    Modern,
    /// flwr's compat keys (`fitins.parameters`, ...), for
    /// `ClientApp(client_fn=...)` apps with a `NumPyClient`.
    Legacy,
}

/// How instructions and replies are translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentOptions {
    /// The record layout.
    pub format: MessageFormat,
    /// Names of the model's arrays in `Modern` instructions, in order (the
    /// keys of the initial `.npz`). `None`: `"0"`, `"1"`, ..., as flwr's
    /// `ArrayRecord(list_of_ndarrays)` names them.
    pub array_keys: Option<Vec<String>>,
    /// Metric keys that hold an evaluate reply's loss, first match wins
    /// (default `loss`, then flwr templates' `eval_loss`).
    pub loss_keys: Vec<String>,
}

impl Default for ContentOptions {
    fn default() -> Self {
        ContentOptions {
            format: MessageFormat::Modern,
            array_keys: None,
            loss_keys: vec!["loss".into(), "eval_loss".into()],
        }
    }
}

/// flwr's message types.
pub(crate) const TRAIN: &str = "train";
pub(crate) const EVALUATE: &str = "evaluate";
pub(crate) const GET_PARAMETERS: &str = "get_parameters";

/// flwr's compat key for an empty `Parameters`.
const EMPTY_TENSOR_KEY: &str = "_empty";

/// The message type and content of an instruction.
pub(crate) fn instruction_content(
    message: &ServerMessage,
    round: Option<u64>,
    options: &ContentOptions,
) -> Result<(&'static str, RecordDict), FleetError> {
    let legacy = options.format == MessageFormat::Legacy;
    match message {
        ServerMessage::Fit(ins) if legacy => {
            Ok((TRAIN, compat_ins("fitins", &ins.parameters, &ins.config)))
        }
        ServerMessage::Evaluate(ins) if legacy => Ok((
            EVALUATE,
            compat_ins("evaluateins", &ins.parameters, &ins.config),
        )),
        ServerMessage::Fit(ins) => Ok((
            TRAIN,
            modern_ins(&ins.parameters, &ins.config, round, options)?,
        )),
        ServerMessage::Evaluate(ins) => Ok((
            EVALUATE,
            modern_ins(&ins.parameters, &ins.config, round, options)?,
        )),
        ServerMessage::GetParameters(ins) if legacy => Ok((
            GET_PARAMETERS,
            RecordDict::new().with("getparametersins.config", config_record(&ins.config)),
        )),
        ServerMessage::GetParameters(_) => Err(FleetError::Unsupported(
            "a message-API ClientApp cannot answer get_parameters: give the server initial \
             parameters (e.g. an .npz file), or use the legacy message format"
                .into(),
        )),
        other => Err(FleetError::Unsupported(format!(
            "{} has no Fleet API message",
            other.kind()
        ))),
    }
}

fn config_record(config: &Config) -> ConfigRecord {
    config
        .iter()
        .map(|(k, v)| (k.clone(), scalar_to_config(v)))
        .collect()
}

fn scalar_to_config(v: &Scalar) -> ConfigValue {
    match v {
        Scalar::Bool(b) => ConfigValue::Bool(*b),
        Scalar::Bytes(b) => ConfigValue::Bytes(Bytes::from(b.clone())),
        Scalar::Double(d) => ConfigValue::Double(*d),
        Scalar::Sint64(i) => ConfigValue::Sint64(*i),
        Scalar::Uint64(u) => ConfigValue::Uint64(*u),
        Scalar::String(s) => ConfigValue::String(s.clone()),
    }
}

fn config_to_scalar(v: &ConfigValue) -> Option<Scalar> {
    Some(match v {
        ConfigValue::Bool(b) => Scalar::Bool(*b),
        ConfigValue::Bytes(b) => Scalar::Bytes(b.to_vec()),
        ConfigValue::Double(d) => Scalar::Double(*d),
        ConfigValue::Sint64(i) => Scalar::Sint64(*i),
        ConfigValue::Uint64(u) => Scalar::Uint64(*u),
        ConfigValue::String(s) => Scalar::String(s.clone()),
        _ => return None,
    })
}

fn metric_to_scalar(v: &MetricValue) -> Option<Scalar> {
    Some(match v {
        MetricValue::Double(d) => Scalar::Double(*d),
        MetricValue::Sint64(i) => Scalar::Sint64(*i),
        MetricValue::Uint64(u) => Scalar::Uint64(*u),
        _ => return None,
    })
}

/// flwr's `_fit_or_evaluate_ins_to_recorddict`.
fn compat_ins(prefix: &str, parameters: &Parameters, config: &Config) -> RecordDict {
    RecordDict::new()
        .with(format!("{prefix}.parameters"), compat_arrays(parameters))
        .with(format!("{prefix}.config"), config_record(config))
}

/// flwr's `parameters_to_arrayrecord`: keys `"0"`, `"1"`, ..., no dtype or
/// shape.
fn compat_arrays(parameters: &Parameters) -> ArrayRecord {
    let opaque = |data: Bytes| Array {
        dtype: String::new(),
        shape: Vec::new(),
        stype: parameters.tensor_type.clone(),
        data,
    };
    if parameters.tensors.is_empty() {
        return ArrayRecord::new().with(EMPTY_TENSOR_KEY, opaque(Bytes::new()));
    }
    parameters
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (i.to_string(), opaque(t.clone())))
        .collect()
}

/// An `Array` for a `.npy` tensor (dtype and shape from its header, data
/// shared, not copied); other tensors are carried opaquely.
fn tensor_array(tensor: &Bytes, tensor_type: &str) -> Array {
    if tensor_type == NUMPY_STYPE {
        if let Ok(view) = parse_npy(tensor) {
            return Array {
                dtype: view.dtype.numpy_name().to_owned(),
                shape: view.shape.clone(),
                stype: NUMPY_STYPE.to_owned(),
                data: tensor.clone(),
            };
        }
    }
    Array {
        dtype: String::new(),
        shape: Vec::new(),
        stype: tensor_type.to_owned(),
        data: tensor.clone(),
    }
}

fn modern_ins(
    parameters: &Parameters,
    config: &Config,
    round: Option<u64>,
    options: &ContentOptions,
) -> Result<RecordDict, FleetError> {
    let n = parameters.tensors.len();
    let names: Vec<String> = match &options.array_keys {
        Some(keys) if keys.len() == n => keys.clone(),
        Some(keys) => {
            return Err(FleetError::Unsupported(format!(
                "the model has {n} arrays but {} array keys are configured",
                keys.len()
            )))
        }
        None => (0..n).map(|i| i.to_string()).collect(),
    };
    let arrays: ArrayRecord = names
        .into_iter()
        .zip(&parameters.tensors)
        .map(|(name, t)| (name, tensor_array(t, &parameters.tensor_type)))
        .collect();
    // flwr's FedAvg: the configured dict, then `server-round`.
    let mut config = config_record(config);
    if let Some(round) = round {
        config.insert("server-round".into(), ConfigValue::from(round));
    }
    Ok(RecordDict::new()
        .with("arrays", arrays)
        .with("config", config))
}

/// A message-API strategy's content (`flower_strategy::msg`) as Flower
/// records, key for key and in order: arrays keep their `.npy` bytes
/// (shared, not copied), config and metric values their types.
pub(crate) fn strategy_content(content: &msg::RecordDict) -> Result<RecordDict, FleetError> {
    content
        .iter()
        .map(|(key, record)| {
            let record = match record {
                msg::Record::Arrays(arrays) => Record::Array(
                    arrays
                        .iter()
                        .map(|(k, a)| (k, tensor_array(a.npy(), NUMPY_STYPE)))
                        .collect(),
                ),
                msg::Record::Metrics(metrics) => Record::Metric(
                    metrics
                        .iter()
                        .map(|(k, v)| (k, metric_to_message(v)))
                        .collect(),
                ),
                msg::Record::Config(config) => Record::Config(
                    config
                        .iter()
                        .map(|(k, v)| (k, config_to_message(v)))
                        .collect(),
                ),
            };
            Ok((key, record))
        })
        .collect()
}

fn metric_to_message(v: &msg::MetricValue) -> MetricValue {
    match v {
        msg::MetricValue::Int(i) => MetricValue::Sint64(*i),
        msg::MetricValue::Float(f) => MetricValue::Double(*f),
        msg::MetricValue::IntList(l) => MetricValue::SintList(l.clone()),
        msg::MetricValue::FloatList(l) => MetricValue::DoubleList(l.clone()),
    }
}

fn config_to_message(v: &msg::ConfigValue) -> ConfigValue {
    match v {
        msg::ConfigValue::Int(i) => ConfigValue::Sint64(*i),
        msg::ConfigValue::Float(f) => ConfigValue::Double(*f),
        msg::ConfigValue::Bool(b) => ConfigValue::Bool(*b),
        msg::ConfigValue::Str(s) => ConfigValue::String(s.clone()),
        msg::ConfigValue::Bytes(b) => ConfigValue::Bytes(Bytes::from(b.clone())),
        msg::ConfigValue::IntList(l) => ConfigValue::SintList(l.clone()),
        msg::ConfigValue::FloatList(l) => ConfigValue::DoubleList(l.clone()),
        msg::ConfigValue::BoolList(l) => ConfigValue::BoolList(l.clone()),
        msg::ConfigValue::StrList(l) => ConfigValue::StringList(l.clone()),
        msg::ConfigValue::BytesList(l) => {
            ConfigValue::BytesList(l.iter().map(|b| Bytes::from(b.clone())).collect())
        }
    }
}

/// A Python int as the strategies hold it: i64, or a float beyond it (flwr
/// sends unsigned values only above i64's range).
fn int_value(u: u64) -> Result<i64, f64> {
    i64::try_from(u).map_err(|_| u as f64)
}

fn metric_from_message(v: &MetricValue) -> msg::MetricValue {
    let ints = |l: &[u64]| -> msg::MetricValue {
        match l
            .iter()
            .map(|&u| int_value(u))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(l) => msg::MetricValue::IntList(l),
            Err(_) => msg::MetricValue::FloatList(l.iter().map(|&u| u as f64).collect()),
        }
    };
    match v {
        MetricValue::Double(d) => msg::MetricValue::Float(*d),
        MetricValue::Sint64(i) => msg::MetricValue::Int(*i),
        MetricValue::Uint64(u) => {
            int_value(*u).map_or_else(msg::MetricValue::Float, msg::MetricValue::Int)
        }
        MetricValue::DoubleList(l) => msg::MetricValue::FloatList(l.clone()),
        MetricValue::SintList(l) => msg::MetricValue::IntList(l.clone()),
        MetricValue::UintList(l) => ints(l),
    }
}

fn config_from_message(v: &ConfigValue) -> msg::ConfigValue {
    match v {
        ConfigValue::Double(d) => msg::ConfigValue::Float(*d),
        ConfigValue::Sint64(i) => msg::ConfigValue::Int(*i),
        ConfigValue::Uint64(u) => {
            int_value(*u).map_or_else(msg::ConfigValue::Float, msg::ConfigValue::Int)
        }
        ConfigValue::Bool(b) => msg::ConfigValue::Bool(*b),
        ConfigValue::String(s) => msg::ConfigValue::Str(s.clone()),
        ConfigValue::Bytes(b) => msg::ConfigValue::Bytes(b.to_vec()),
        ConfigValue::DoubleList(l) => msg::ConfigValue::FloatList(l.clone()),
        ConfigValue::SintList(l) => msg::ConfigValue::IntList(l.clone()),
        ConfigValue::UintList(l) => {
            match l
                .iter()
                .map(|&u| int_value(u))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(l) => msg::ConfigValue::IntList(l),
                Err(_) => msg::ConfigValue::FloatList(l.iter().map(|&u| u as f64).collect()),
            }
        }
        ConfigValue::BoolList(l) => msg::ConfigValue::BoolList(l.clone()),
        ConfigValue::StringList(l) => msg::ConfigValue::StrList(l.clone()),
        ConfigValue::BytesList(l) => {
            msg::ConfigValue::BytesList(l.iter().map(|b| b.to_vec()).collect())
        }
    }
}

/// A reply to a message-API instruction of type `kind`: its content as the
/// strategies read it (arrays must be `.npy` arrays), or the error it
/// carries.
pub(crate) fn reply_content(
    kind: &'static str,
    reply: &Message,
) -> Result<ContentReply, FleetError> {
    let content = match &reply.payload {
        Payload::Content(c) => c,
        Payload::Error(e) => {
            return Ok(Err(msg::ReplyError {
                code: e.code,
                reason: e.reason.clone(),
            }))
        }
    };
    let mut out = msg::RecordDict::new();
    for (key, record) in content.iter() {
        let record = match record {
            Record::Array(arrays) => {
                let mut r = msg::ArrayRecord::new();
                for (k, a) in arrays.iter() {
                    if a.stype != NUMPY_STYPE {
                        return Err(bad(
                            kind,
                            format!("array {k:?} is a {:?}, not a NumPy array", a.stype),
                        ));
                    }
                    let array = msg::Array::from_npy(a.data.clone())
                        .map_err(|e| bad(kind, format!("array {k:?}: {e}")))?;
                    r.insert(k.clone(), array);
                }
                msg::Record::Arrays(r)
            }
            Record::Metric(m) => msg::Record::Metrics(
                m.iter()
                    .map(|(k, v)| (k.clone(), metric_from_message(v)))
                    .collect(),
            ),
            Record::Config(c) => msg::Record::Config(
                c.iter()
                    .map(|(k, v)| (k.clone(), config_from_message(v)))
                    .collect(),
            ),
        };
        out.insert(key.clone(), record);
    }
    Ok(Ok(out))
}

fn bad(kind: &'static str, reason: impl Into<String>) -> FleetError {
    FleetError::BadReply {
        kind,
        reason: reason.into(),
    }
}

fn kind_name(kind: InstructionKind) -> &'static str {
    match kind {
        InstructionKind::Fit => TRAIN,
        InstructionKind::Evaluate => EVALUATE,
        InstructionKind::GetParameters => GET_PARAMETERS,
        InstructionKind::GetProperties => "get_properties",
        InstructionKind::Reconnect => "reconnect",
    }
}

/// Translates the reply to an instruction of `kind`.
pub(crate) fn reply_to_client_message(
    kind: InstructionKind,
    reply: &Message,
    options: &ContentOptions,
) -> Result<ClientMessage, FleetError> {
    let name = kind_name(kind);
    let content = match &reply.payload {
        Payload::Content(c) => c,
        Payload::Error(e) => {
            return Err(bad(
                name,
                format!("the ClientApp failed (error code {}): {}", e.code, e.reason),
            ))
        }
    };
    match (options.format, kind) {
        (MessageFormat::Modern, InstructionKind::Fit) => {
            modern_fit(content).map(ClientMessage::Fit)
        }
        (MessageFormat::Modern, InstructionKind::Evaluate) => {
            modern_evaluate(content, options).map(ClientMessage::Evaluate)
        }
        (MessageFormat::Legacy, InstructionKind::Fit) => {
            compat_fit(content).map(ClientMessage::Fit)
        }
        (MessageFormat::Legacy, InstructionKind::Evaluate) => {
            compat_evaluate(content).map(ClientMessage::Evaluate)
        }
        (MessageFormat::Legacy, InstructionKind::GetParameters) => {
            compat_get_parameters(content).map(ClientMessage::GetParameters)
        }
        _ => Err(bad(name, "no reply is expected to this instruction")),
    }
}

/// The record named `key`, else the only record of that type.
fn pick<'a, T>(
    content: &'a RecordDict,
    key: &str,
    get: impl Fn(&'a RecordDict, &str) -> Option<&'a T>,
) -> Option<&'a T> {
    if let Some(r) = get(content, key) {
        return Some(r);
    }
    let mut found = content.keys().filter_map(|k| get(content, k));
    match (found.next(), found.next()) {
        (Some(r), None) => Some(r),
        _ => None,
    }
}

fn arrays_to_parameters(record: &ArrayRecord) -> Parameters {
    let tensor_type = record
        .values()
        .next()
        .map(|a| a.stype.clone())
        .unwrap_or_default();
    Parameters {
        tensors: record
            .iter()
            .filter(|(k, _)| k.as_str() != EMPTY_TENSOR_KEY)
            .map(|(_, a)| a.data.clone())
            .collect(),
        tensor_type,
    }
}

fn metric_int(kind: &'static str, record: &MetricRecord, key: &str) -> Result<i64, FleetError> {
    match record.get(key) {
        Some(MetricValue::Sint64(i)) => Ok(*i),
        Some(MetricValue::Uint64(u)) => {
            i64::try_from(*u).map_err(|_| bad(kind, format!("{key} too large")))
        }
        // flwr's strategies accept a float weight too.
        Some(MetricValue::Double(d)) if d.is_finite() && *d >= 0.0 => Ok(*d as i64),
        Some(_) => Err(bad(kind, format!("metric {key:?} is not a number"))),
        None => Err(bad(kind, format!("metric {key:?} is missing"))),
    }
}

fn metric_f64(record: &MetricRecord, key: &str) -> Option<f64> {
    match record.get(key)? {
        MetricValue::Double(d) => Some(*d),
        MetricValue::Sint64(i) => Some(*i as f64),
        MetricValue::Uint64(u) => Some(*u as f64),
        _ => None,
    }
}

fn metrics_of(record: &MetricRecord) -> Metrics {
    record
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), metric_to_scalar(v)?)))
        .collect()
}

fn success() -> Status {
    Status {
        code: Code::Ok,
        message: "Success".into(),
    }
}

fn modern_fit(content: &RecordDict) -> Result<FitRes, FleetError> {
    let arrays = pick(content, "arrays", RecordDict::array_record)
        .ok_or_else(|| bad(TRAIN, "no ArrayRecord \"arrays\""))?;
    let metrics = pick(content, "metrics", RecordDict::metric_record)
        .ok_or_else(|| bad(TRAIN, "no MetricRecord \"metrics\""))?;
    Ok(FitRes {
        status: success(),
        parameters: arrays_to_parameters(arrays),
        num_examples: metric_int(TRAIN, metrics, "num-examples")?,
        metrics: metrics_of(metrics),
    })
}

fn modern_evaluate(
    content: &RecordDict,
    options: &ContentOptions,
) -> Result<EvaluateRes, FleetError> {
    let metrics = pick(content, "metrics", RecordDict::metric_record)
        .ok_or_else(|| bad(EVALUATE, "no MetricRecord \"metrics\""))?;
    let loss = options
        .loss_keys
        .iter()
        .find_map(|k| metric_f64(metrics, k))
        .ok_or_else(|| {
            bad(
                EVALUATE,
                format!("none of the loss metrics {:?}", options.loss_keys),
            )
        })?;
    Ok(EvaluateRes {
        status: success(),
        loss: loss as f32,
        num_examples: metric_int(EVALUATE, metrics, "num-examples")?,
        metrics: metrics_of(metrics),
    })
}

fn compat_status(
    kind: &'static str,
    content: &RecordDict,
    prefix: &str,
) -> Result<Status, FleetError> {
    let record = content
        .config_record(&format!("{prefix}.status"))
        .ok_or_else(|| bad(kind, format!("no {prefix}.status")))?;
    let code = match record.get("code") {
        Some(ConfigValue::Sint64(c)) => i32::try_from(*c).unwrap_or(i32::MAX),
        _ => return Err(bad(kind, format!("{prefix}.status has no integer code"))),
    };
    let message = match record.get("message") {
        Some(ConfigValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    Ok(Status {
        code: Code::from(code),
        message,
    })
}

fn compat_config(content: &RecordDict, key: &str) -> Metrics {
    content
        .config_record(key)
        .map(|r| {
            r.iter()
                .filter_map(|(k, v)| Some((k.clone(), config_to_scalar(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn compat_fit(content: &RecordDict) -> Result<FitRes, FleetError> {
    let arrays = content
        .array_record("fitres.parameters")
        .ok_or_else(|| bad(TRAIN, "no fitres.parameters"))?;
    let n = content
        .metric_record("fitres.num_examples")
        .ok_or_else(|| bad(TRAIN, "no fitres.num_examples"))?;
    Ok(FitRes {
        status: compat_status(TRAIN, content, "fitres")?,
        parameters: arrays_to_parameters(arrays),
        num_examples: metric_int(TRAIN, n, "num_examples")?,
        metrics: compat_config(content, "fitres.metrics"),
    })
}

fn compat_evaluate(content: &RecordDict) -> Result<EvaluateRes, FleetError> {
    let loss = content
        .metric_record("evaluateres.loss")
        .and_then(|r| metric_f64(r, "loss"))
        .ok_or_else(|| bad(EVALUATE, "no evaluateres.loss"))?;
    let n = content
        .metric_record("evaluateres.num_examples")
        .ok_or_else(|| bad(EVALUATE, "no evaluateres.num_examples"))?;
    Ok(EvaluateRes {
        status: compat_status(EVALUATE, content, "evaluateres")?,
        loss: loss as f32,
        num_examples: metric_int(EVALUATE, n, "num_examples")?,
        metrics: compat_config(content, "evaluateres.metrics"),
    })
}

fn compat_get_parameters(content: &RecordDict) -> Result<GetParametersRes, FleetError> {
    let arrays = content
        .array_record("getparametersres.parameters")
        .ok_or_else(|| bad(GET_PARAMETERS, "no getparametersres.parameters"))?;
    Ok(GetParametersRes {
        status: compat_status(GET_PARAMETERS, content, "getparametersres")?,
        parameters: arrays_to_parameters(arrays),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flower_core::{EvaluateIns, FitIns, NdArray};
    use flower_message::Metadata;

    /// Message-API content goes out and comes back record for record, key
    /// order, value types and array bytes (shared, not copied) included.
    #[test]
    fn strategy_content_round_trips() {
        let p = params();
        let array = msg::Array::from_npy(p.tensors[0].clone()).expect("npy");
        let mut metrics = msg::MetricRecord::new();
        metrics.insert("num-examples", msg::MetricValue::Int(3));
        metrics.insert("hist", msg::MetricValue::FloatList(vec![0.5, 1.5]));
        let mut config = msg::ConfigRecord::new();
        config.insert("server-round", msg::ConfigValue::Int(2));
        config.insert("tags", msg::ConfigValue::StrList(vec!["a".into()]));
        config.insert("blob", msg::ConfigValue::Bytes(vec![1, 2]));
        let mut content = msg::RecordDict::new();
        content.insert(
            "z-arrays",
            msg::Record::Arrays([("w", array)].into_iter().collect()),
        );
        content.insert("metrics", msg::Record::Metrics(metrics));
        content.insert("config", msg::Record::Config(config));
        let out = strategy_content(&content).expect("content");
        let arrays = out.array_record("z-arrays").expect("arrays");
        assert_eq!(arrays["w"].dtype, "float32");
        assert_eq!(arrays["w"].data.as_ptr(), p.tensors[0].as_ptr());
        assert_eq!(
            out.keys().collect::<Vec<_>>(),
            ["z-arrays", "metrics", "config"]
        );
        let reply = Message::new(Metadata::default(), out);
        let back = reply_content(TRAIN, &reply)
            .expect("reply")
            .expect("content");
        assert_eq!(back, content);
        let err = Message::with_error(
            Metadata::default(),
            flower_message::MessageError {
                code: 3,
                reason: "boom".into(),
            },
        );
        let e = reply_content(TRAIN, &err).expect("reply").unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (3, "boom"));
    }

    fn params() -> Parameters {
        let a = NdArray::from(ndarray_f32());
        Parameters {
            tensors: vec![Bytes::from(flower_core::npy::encode_npy(&a))],
            tensor_type: NUMPY_STYPE.into(),
        }
    }

    fn ndarray_f32() -> ndarray::ArrayD<f32> {
        ndarray::ArrayD::from_shape_vec(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap_or_default()
    }

    #[test]
    fn modern_fit_instruction_names_arrays_and_adds_the_round() {
        let mut config = Config::new();
        config.insert("lr".into(), Scalar::Double(0.1));
        let ins = ServerMessage::Fit(FitIns {
            parameters: params(),
            config,
        });
        let options = ContentOptions {
            array_keys: Some(vec!["w".into()]),
            ..ContentOptions::default()
        };
        let (ty, rd) = instruction_content(&ins, Some(3), &options).expect("content");
        assert_eq!(ty, "train");
        let arrays = rd.array_record("arrays").expect("arrays");
        let w = arrays.get("w").expect("w");
        assert_eq!(
            (w.dtype.as_str(), w.shape.as_slice()),
            ("float32", &[2usize, 2][..])
        );
        let config = rd.config_record("config").expect("config");
        let keys: Vec<&str> = config.keys().map(String::as_str).collect();
        assert_eq!(keys, ["lr", "server-round"]);
        assert_eq!(config.get("server-round"), Some(&ConfigValue::Sint64(3)));
        // A key list of the wrong length is refused, not silently renamed.
        let wrong = ContentOptions {
            array_keys: Some(vec![]),
            ..ContentOptions::default()
        };
        assert!(instruction_content(&ins, Some(1), &wrong).is_err());
    }

    #[test]
    fn legacy_instructions_use_compat_keys() {
        let ins = ServerMessage::Evaluate(EvaluateIns {
            parameters: Parameters::default(),
            config: Config::new(),
        });
        let options = ContentOptions {
            format: MessageFormat::Legacy,
            ..ContentOptions::default()
        };
        let (ty, rd) = instruction_content(&ins, Some(1), &options).expect("content");
        assert_eq!(ty, "evaluate");
        let arrays = rd
            .array_record("evaluateins.parameters")
            .expect("parameters");
        assert!(arrays.contains_key("_empty"));
        assert!(rd.config_record("evaluateins.config").is_some());
        let get = ServerMessage::GetParameters(flower_core::GetParametersIns::default());
        assert!(instruction_content(&get, None, &ContentOptions::default()).is_err());
        assert_eq!(
            instruction_content(&get, None, &options).expect("get").0,
            "get_parameters"
        );
    }

    #[test]
    fn modern_replies_become_legacy_results() {
        let options = ContentOptions::default();
        let content = RecordDict::new()
            .with(
                "arrays",
                ArrayRecord::new().with("w", tensor_array(&params().tensors[0], NUMPY_STYPE)),
            )
            .with(
                "metrics",
                MetricRecord::new()
                    .with("num-examples", 30i64)
                    .with("eval_loss", 0.5)
                    .with("hist", vec![1.0, 2.0]),
            );
        let reply = Message::new(Metadata::default(), content);
        let fit = reply_to_client_message(InstructionKind::Fit, &reply, &options);
        let Ok(ClientMessage::Fit(fit)) = fit else {
            panic!("not a FitRes: {fit:?}");
        };
        assert_eq!(fit.num_examples, 30);
        assert_eq!(fit.parameters, params());
        assert!(!fit.metrics.contains_key("hist"));
        let eval = reply_to_client_message(InstructionKind::Evaluate, &reply, &options);
        let Ok(ClientMessage::Evaluate(eval)) = eval else {
            panic!("not an EvaluateRes: {eval:?}");
        };
        assert_eq!(eval.loss, 0.5);
        let err = Message::with_error(
            Metadata::default(),
            flower_message::MessageError {
                code: 1,
                reason: "boom".into(),
            },
        );
        assert!(reply_to_client_message(InstructionKind::Fit, &err, &options).is_err());
    }

    #[test]
    fn legacy_replies_become_legacy_results() {
        let status = ConfigRecord::new()
            .with("code", 0i64)
            .with("message", "Success");
        let content = RecordDict::new()
            .with("fitres.metrics", ConfigRecord::new().with("acc", 0.9))
            .with(
                "fitres.num_examples",
                MetricRecord::new().with("num_examples", 7i64),
            )
            .with("fitres.parameters", compat_arrays(&params()))
            .with("fitres.status", status);
        let reply = Message::new(Metadata::default(), content);
        let options = ContentOptions {
            format: MessageFormat::Legacy,
            ..ContentOptions::default()
        };
        let fit = reply_to_client_message(InstructionKind::Fit, &reply, &options);
        let Ok(ClientMessage::Fit(fit)) = fit else {
            panic!("not a FitRes: {fit:?}");
        };
        assert_eq!((fit.num_examples, fit.status.code), (7, Code::Ok));
        assert_eq!(fit.parameters, params());
        assert_eq!(fit.metrics.get("acc"), Some(&Scalar::Double(0.9)));
    }
}
