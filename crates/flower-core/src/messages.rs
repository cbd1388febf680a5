//! Typed Ins/Res pairs, status, and the two stream messages, with lossless
//! conversions to and from the generated proto types.

use bytes::Bytes;
use flower_proto as pb;

use crate::scalar::{map_from_proto, map_to_proto, Config, Metrics, Properties};
use crate::ConversionError;

/// `tensor_type` that Flower's `ndarrays_to_parameters` writes.
pub const NUMPY_TENSOR_TYPE: &str = "numpy.ndarray";

/// Serialized model parameters: opaque tensors plus their type tag.
///
/// Tensors are [`Bytes`] so that a decoded message shares its buffer instead
/// of copying every tensor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parameters {
    /// One serialized tensor per layer, in model order.
    pub tensors: Vec<Bytes>,
    /// How the tensors are serialized (`"numpy.ndarray"` for `.npy`).
    pub tensor_type: String,
}

impl Parameters {
    /// Total number of tensor bytes.
    pub fn byte_len(&self) -> usize {
        self.tensors.iter().map(Bytes::len).sum()
    }
}

/// Status code of a client reply (`flwr.proto.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Success.
    Ok,
    /// The client has no `get_properties`.
    GetPropertiesNotImplemented,
    /// The client has no `get_parameters`.
    GetParametersNotImplemented,
    /// The client has no `fit`.
    FitNotImplemented,
    /// The client has no `evaluate`.
    EvaluateNotImplemented,
    /// A value this version does not know (proto3 enums are open); kept as sent.
    Unrecognized(i32),
}

impl From<i32> for Code {
    fn from(v: i32) -> Self {
        match pb::Code::try_from(v) {
            Ok(pb::Code::Ok) => Code::Ok,
            Ok(pb::Code::GetPropertiesNotImplemented) => Code::GetPropertiesNotImplemented,
            Ok(pb::Code::GetParametersNotImplemented) => Code::GetParametersNotImplemented,
            Ok(pb::Code::FitNotImplemented) => Code::FitNotImplemented,
            Ok(pb::Code::EvaluateNotImplemented) => Code::EvaluateNotImplemented,
            Err(_) => Code::Unrecognized(v),
        }
    }
}

impl From<Code> for i32 {
    fn from(c: Code) -> Self {
        match c {
            Code::Ok => pb::Code::Ok as i32,
            Code::GetPropertiesNotImplemented => pb::Code::GetPropertiesNotImplemented as i32,
            Code::GetParametersNotImplemented => pb::Code::GetParametersNotImplemented as i32,
            Code::FitNotImplemented => pb::Code::FitNotImplemented as i32,
            Code::EvaluateNotImplemented => pb::Code::EvaluateNotImplemented as i32,
            Code::Unrecognized(v) => v,
        }
    }
}

/// Status of a client reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Outcome code.
    pub code: Code,
    /// Human-readable message (`"Success"` from Python's `NumPyClient`).
    pub message: String,
}

impl Status {
    /// `OK` / `"Success"`, what Python's `NumPyClient` always sends.
    pub fn success() -> Self {
        Status {
            code: Code::Ok,
            message: "Success".into(),
        }
    }
    /// True when the code is `OK`.
    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }
}

impl Default for Status {
    fn default() -> Self {
        Status {
            code: Code::Ok,
            message: String::new(),
        }
    }
}

/// Why a client disconnects (`flwr.proto.Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Unknown.
    Unknown,
    /// Will reconnect (what Python's client always sends).
    Reconnect,
    /// Power disconnected.
    PowerDisconnected,
    /// Wi-Fi unavailable.
    WifiUnavailable,
    /// Acknowledged.
    Ack,
    /// A value this version does not know; kept as sent.
    Unrecognized(i32),
}

impl From<i32> for Reason {
    fn from(v: i32) -> Self {
        match pb::Reason::try_from(v) {
            Ok(pb::Reason::Unknown) => Reason::Unknown,
            Ok(pb::Reason::Reconnect) => Reason::Reconnect,
            Ok(pb::Reason::PowerDisconnected) => Reason::PowerDisconnected,
            Ok(pb::Reason::WifiUnavailable) => Reason::WifiUnavailable,
            Ok(pb::Reason::Ack) => Reason::Ack,
            Err(_) => Reason::Unrecognized(v),
        }
    }
}

impl From<Reason> for i32 {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Unknown => pb::Reason::Unknown as i32,
            Reason::Reconnect => pb::Reason::Reconnect as i32,
            Reason::PowerDisconnected => pb::Reason::PowerDisconnected as i32,
            Reason::WifiUnavailable => pb::Reason::WifiUnavailable as i32,
            Reason::Ack => pb::Reason::Ack as i32,
            Reason::Unrecognized(v) => v,
        }
    }
}

/// Asks a client to disconnect; `seconds > 0` means "come back after that long".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReconnectIns {
    /// Seconds to wait before rejoining; 0 (Python's `None`) means shut down.
    pub seconds: i64,
}

/// A client's answer to [`ReconnectIns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisconnectRes {
    /// Why the client disconnects.
    pub reason: Reason,
}

/// Asks a client for its properties.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GetPropertiesIns {
    /// Server configuration.
    pub config: Config,
}

/// A client's properties.
#[derive(Debug, Clone, PartialEq)]
pub struct GetPropertiesRes {
    /// Outcome.
    pub status: Status,
    /// The properties.
    pub properties: Properties,
}

/// Asks a client for its current parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GetParametersIns {
    /// Server configuration.
    pub config: Config,
}

/// A client's current parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GetParametersRes {
    /// Outcome.
    pub status: Status,
    /// The parameters.
    pub parameters: Parameters,
}

/// Asks a client to train on the given parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FitIns {
    /// Global model.
    pub parameters: Parameters,
    /// Training configuration.
    pub config: Config,
}

/// Result of local training.
#[derive(Debug, Clone, PartialEq)]
pub struct FitRes {
    /// Outcome.
    pub status: Status,
    /// Updated parameters.
    pub parameters: Parameters,
    /// Number of training examples used (the aggregation weight).
    pub num_examples: i64,
    /// Training metrics.
    pub metrics: Metrics,
}

/// Asks a client to evaluate the given parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvaluateIns {
    /// Global model.
    pub parameters: Parameters,
    /// Evaluation configuration.
    pub config: Config,
}

/// Result of local evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluateRes {
    /// Outcome.
    pub status: Status,
    /// Loss; 32-bit on the wire (a Python double arrives rounded to f32).
    pub loss: f32,
    /// Number of evaluation examples.
    pub num_examples: i64,
    /// Evaluation metrics.
    pub metrics: Metrics,
}

/// An instruction from the server to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// Disconnect (and maybe come back).
    Reconnect(ReconnectIns),
    /// Send properties.
    GetProperties(GetPropertiesIns),
    /// Send parameters.
    GetParameters(GetParametersIns),
    /// Train.
    Fit(FitIns),
    /// Evaluate.
    Evaluate(EvaluateIns),
}

/// A client's reply to one instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Answer to `Reconnect`.
    Disconnect(DisconnectRes),
    /// Answer to `GetProperties`.
    GetProperties(GetPropertiesRes),
    /// Answer to `GetParameters`.
    GetParameters(GetParametersRes),
    /// Answer to `Fit`.
    Fit(FitRes),
    /// Answer to `Evaluate`.
    Evaluate(EvaluateRes),
}

/// The kind of a [`ServerMessage`]: which instruction it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstructionKind {
    /// `reconnect_ins`.
    Reconnect,
    /// `get_properties_ins`.
    GetProperties,
    /// `get_parameters_ins`.
    GetParameters,
    /// `fit_ins`.
    Fit,
    /// `evaluate_ins`.
    Evaluate,
}

impl InstructionKind {
    /// The protobuf oneof field name (`"fit_ins"`, ...), for logs and errors.
    pub const fn as_str(self) -> &'static str {
        match self {
            InstructionKind::Reconnect => "reconnect_ins",
            InstructionKind::GetProperties => "get_properties_ins",
            InstructionKind::GetParameters => "get_parameters_ins",
            InstructionKind::Fit => "fit_ins",
            InstructionKind::Evaluate => "evaluate_ins",
        }
    }

    /// The reply kind that answers this instruction.
    pub const fn reply(self) -> ReplyKind {
        match self {
            InstructionKind::Reconnect => ReplyKind::Disconnect,
            InstructionKind::GetProperties => ReplyKind::GetProperties,
            InstructionKind::GetParameters => ReplyKind::GetParameters,
            InstructionKind::Fit => ReplyKind::Fit,
            InstructionKind::Evaluate => ReplyKind::Evaluate,
        }
    }
}

impl std::fmt::Display for InstructionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a [`ClientMessage`]: which reply it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    /// `disconnect_res`.
    Disconnect,
    /// `get_properties_res`.
    GetProperties,
    /// `get_parameters_res`.
    GetParameters,
    /// `fit_res`.
    Fit,
    /// `evaluate_res`.
    Evaluate,
}

impl ReplyKind {
    /// The protobuf oneof field name (`"fit_res"`, ...), for logs and errors.
    pub const fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Disconnect => "disconnect_res",
            ReplyKind::GetProperties => "get_properties_res",
            ReplyKind::GetParameters => "get_parameters_res",
            ReplyKind::Fit => "fit_res",
            ReplyKind::Evaluate => "evaluate_res",
        }
    }
}

impl std::fmt::Display for ReplyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ServerMessage {
    /// Which instruction this is.
    pub fn kind(&self) -> InstructionKind {
        match self {
            ServerMessage::Reconnect(_) => InstructionKind::Reconnect,
            ServerMessage::GetProperties(_) => InstructionKind::GetProperties,
            ServerMessage::GetParameters(_) => InstructionKind::GetParameters,
            ServerMessage::Fit(_) => InstructionKind::Fit,
            ServerMessage::Evaluate(_) => InstructionKind::Evaluate,
        }
    }
}

impl ClientMessage {
    /// Which reply this is.
    pub fn kind(&self) -> ReplyKind {
        match self {
            ClientMessage::Disconnect(_) => ReplyKind::Disconnect,
            ClientMessage::GetProperties(_) => ReplyKind::GetProperties,
            ClientMessage::GetParameters(_) => ReplyKind::GetParameters,
            ClientMessage::Fit(_) => ReplyKind::Fit,
            ClientMessage::Evaluate(_) => ReplyKind::Evaluate,
        }
    }
}

// ---- conversions -----------------------------------------------------------

impl From<Parameters> for pb::Parameters {
    fn from(p: Parameters) -> Self {
        pb::Parameters {
            tensors: p.tensors,
            tensor_type: p.tensor_type,
        }
    }
}

impl From<pb::Parameters> for Parameters {
    fn from(p: pb::Parameters) -> Self {
        Parameters {
            tensors: p.tensors,
            tensor_type: p.tensor_type,
        }
    }
}

impl From<Status> for pb::Status {
    fn from(s: Status) -> Self {
        pb::Status {
            code: s.code.into(),
            message: s.message,
        }
    }
}

impl From<pb::Status> for Status {
    fn from(s: pb::Status) -> Self {
        Status {
            code: s.code.into(),
            message: s.message,
        }
    }
}

// Python always sets the nested `status` / `parameters` messages, so we do too
// (an absent one decodes as its default, which is what Python reads as well).
fn status_from(s: Option<pb::Status>) -> Status {
    s.map(Status::from).unwrap_or_default()
}
fn params_from(p: Option<pb::Parameters>) -> Parameters {
    p.map(Parameters::from).unwrap_or_default()
}

impl From<ServerMessage> for pb::ServerMessage {
    fn from(m: ServerMessage) -> Self {
        use pb::server_message as sm;
        let msg = match m {
            ServerMessage::Reconnect(r) => {
                sm::Msg::ReconnectIns(sm::ReconnectIns { seconds: r.seconds })
            }
            ServerMessage::GetProperties(i) => sm::Msg::GetPropertiesIns(sm::GetPropertiesIns {
                config: map_to_proto(i.config),
            }),
            ServerMessage::GetParameters(i) => sm::Msg::GetParametersIns(sm::GetParametersIns {
                config: map_to_proto(i.config),
            }),
            ServerMessage::Fit(i) => sm::Msg::FitIns(sm::FitIns {
                parameters: Some(i.parameters.into()),
                config: map_to_proto(i.config),
            }),
            ServerMessage::Evaluate(i) => sm::Msg::EvaluateIns(sm::EvaluateIns {
                parameters: Some(i.parameters.into()),
                config: map_to_proto(i.config),
            }),
        };
        pb::ServerMessage { msg: Some(msg) }
    }
}

impl TryFrom<pb::ServerMessage> for ServerMessage {
    type Error = ConversionError;
    fn try_from(m: pb::ServerMessage) -> Result<Self, Self::Error> {
        use pb::server_message as sm;
        Ok(
            match m
                .msg
                .ok_or(ConversionError::EmptyMessage("ServerMessage"))?
            {
                sm::Msg::ReconnectIns(r) => {
                    ServerMessage::Reconnect(ReconnectIns { seconds: r.seconds })
                }
                sm::Msg::GetPropertiesIns(i) => ServerMessage::GetProperties(GetPropertiesIns {
                    config: map_from_proto(i.config)?,
                }),
                sm::Msg::GetParametersIns(i) => ServerMessage::GetParameters(GetParametersIns {
                    config: map_from_proto(i.config)?,
                }),
                sm::Msg::FitIns(i) => ServerMessage::Fit(FitIns {
                    parameters: params_from(i.parameters),
                    config: map_from_proto(i.config)?,
                }),
                sm::Msg::EvaluateIns(i) => ServerMessage::Evaluate(EvaluateIns {
                    parameters: params_from(i.parameters),
                    config: map_from_proto(i.config)?,
                }),
            },
        )
    }
}

impl From<ClientMessage> for pb::ClientMessage {
    fn from(m: ClientMessage) -> Self {
        use pb::client_message as cm;
        let msg = match m {
            ClientMessage::Disconnect(d) => cm::Msg::DisconnectRes(cm::DisconnectRes {
                reason: d.reason.into(),
            }),
            ClientMessage::GetProperties(r) => cm::Msg::GetPropertiesRes(cm::GetPropertiesRes {
                status: Some(r.status.into()),
                properties: map_to_proto(r.properties),
            }),
            ClientMessage::GetParameters(r) => cm::Msg::GetParametersRes(cm::GetParametersRes {
                status: Some(r.status.into()),
                parameters: Some(r.parameters.into()),
            }),
            ClientMessage::Fit(r) => cm::Msg::FitRes(cm::FitRes {
                status: Some(r.status.into()),
                parameters: Some(r.parameters.into()),
                num_examples: r.num_examples,
                metrics: map_to_proto(r.metrics),
            }),
            ClientMessage::Evaluate(r) => cm::Msg::EvaluateRes(cm::EvaluateRes {
                status: Some(r.status.into()),
                loss: r.loss,
                num_examples: r.num_examples,
                metrics: map_to_proto(r.metrics),
            }),
        };
        pb::ClientMessage { msg: Some(msg) }
    }
}

impl TryFrom<pb::ClientMessage> for ClientMessage {
    type Error = ConversionError;
    fn try_from(m: pb::ClientMessage) -> Result<Self, Self::Error> {
        use pb::client_message as cm;
        Ok(
            match m
                .msg
                .ok_or(ConversionError::EmptyMessage("ClientMessage"))?
            {
                cm::Msg::DisconnectRes(d) => ClientMessage::Disconnect(DisconnectRes {
                    reason: d.reason.into(),
                }),
                cm::Msg::GetPropertiesRes(r) => ClientMessage::GetProperties(GetPropertiesRes {
                    status: status_from(r.status),
                    properties: map_from_proto(r.properties)?,
                }),
                cm::Msg::GetParametersRes(r) => ClientMessage::GetParameters(GetParametersRes {
                    status: status_from(r.status),
                    parameters: params_from(r.parameters),
                }),
                cm::Msg::FitRes(r) => ClientMessage::Fit(FitRes {
                    status: status_from(r.status),
                    parameters: params_from(r.parameters),
                    num_examples: r.num_examples,
                    metrics: map_from_proto(r.metrics)?,
                }),
                cm::Msg::EvaluateRes(r) => ClientMessage::Evaluate(EvaluateRes {
                    status: status_from(r.status),
                    loss: r.loss,
                    num_examples: r.num_examples,
                    metrics: map_from_proto(r.metrics)?,
                }),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scalar;

    #[test]
    fn reconnect_without_seconds_is_two_bytes() {
        use prost::Message;
        let m: pb::ServerMessage = ServerMessage::Reconnect(ReconnectIns::default()).into();
        assert_eq!(m.encode_to_vec(), vec![0x0a, 0x00]);
        let m: pb::ServerMessage = ServerMessage::GetParameters(GetParametersIns::default()).into();
        assert_eq!(m.encode_to_vec(), vec![0x1a, 0x00]);
    }

    #[test]
    fn unknown_codes_survive() {
        let s = Status::from(pb::Status {
            code: 42,
            message: "x".into(),
        });
        assert_eq!(s.code, Code::Unrecognized(42));
        assert_eq!(pb::Status::from(s).code, 42);
    }

    #[test]
    fn empty_oneof_is_an_error() {
        assert!(ClientMessage::try_from(pb::ClientMessage { msg: None }).is_err());
        assert!(ServerMessage::try_from(pb::ServerMessage { msg: None }).is_err());
    }

    #[test]
    fn fit_res_round_trips() {
        let mut metrics = Metrics::new();
        metrics.insert("acc".into(), Scalar::Double(0.5));
        let res = ClientMessage::Fit(FitRes {
            status: Status::success(),
            parameters: Parameters {
                tensors: vec![Bytes::from_static(b"abc")],
                tensor_type: NUMPY_TENSOR_TYPE.into(),
            },
            num_examples: 12,
            metrics,
        });
        let back = ClientMessage::try_from(pb::ClientMessage::from(res.clone())).unwrap();
        assert_eq!(back, res);
    }
}
