//! Every grpc-bidi message kind, built in Python with flwr 1.42's generated
//! classes, (a) decodes in Rust to the expected typed value and (b) is
//! re-encoded from that typed value byte for byte. Scalars follow Python
//! Flower's mapping (`flwr.common.serde.scalar_to_proto`).
//!
//! Maps hold one entry each, so map ordering plays no part in the byte
//! comparison. Skipped (with a printed reason) when the pinned venv is
//! absent, unless `FLOWER_REQUIRE_PYTHON=1`.

use std::collections::BTreeMap;

use flower_core::{
    ndarrays_to_parameters, parameters_to_ndarrays, ClientMessage, Code, DisconnectRes,
    EvaluateIns, EvaluateRes, FitIns, FitRes, GetParametersIns, GetParametersRes, GetPropertiesIns,
    GetPropertiesRes, NdArray, Parameters, Reason, ReconnectIns, Scalar, ScalarMap, ServerMessage,
    Status,
};
use flower_proto as pb;
use prost::Message;

use crate::unhex;

/// Builds every message in Python and prints `{name: hex}`.
const SCRIPT: &str = r#"
import io, json
import numpy as np
from flwr.proto.transport_pb2 import ServerMessage, ClientMessage, Scalar, Parameters, Status, Code, Reason
from flwr.common import serde, ndarrays_to_parameters
import flwr.common as common

p = ndarrays_to_parameters([np.array([1.5, -2.0], dtype=np.float32), np.arange(6, dtype=np.int64).reshape(2, 3)])
params = Parameters(tensors=p.tensors, tensor_type=p.tensor_type)
ok = Status(code=Code.OK, message="Success")
S, C = ServerMessage, ClientMessage
out = {}
out['reconnect_ins 0'] = S(reconnect_ins=S.ReconnectIns(seconds=0))
out['reconnect_ins 5'] = S(reconnect_ins=S.ReconnectIns(seconds=5))
out['get_properties_ins'] = S(get_properties_ins=S.GetPropertiesIns(config={'phase': Scalar(string='warm-up')}))
out['get_parameters_ins'] = S(get_parameters_ins=S.GetParametersIns(config={'server_round': Scalar(sint64=1)}))
out['fit_ins'] = S(fit_ins=S.FitIns(parameters=params, config={'lr': Scalar(double=0.01)}))
out['evaluate_ins'] = S(evaluate_ins=S.EvaluateIns(parameters=params, config={'flag': Scalar(bool=True)}))
out['disconnect_res'] = C(disconnect_res=C.DisconnectRes(reason=Reason.RECONNECT))
out['get_properties_res not implemented'] = C(get_properties_res=C.GetPropertiesRes(
    status=Status(code=Code.GET_PROPERTIES_NOT_IMPLEMENTED, message='Client does not implement `get_properties`')))
out['get_properties_res'] = C(get_properties_res=C.GetPropertiesRes(status=ok, properties={'blob': Scalar(bytes=b'\x00\xff\x10')}))
out['get_parameters_res'] = C(get_parameters_res=C.GetParametersRes(status=ok, parameters=params))
out['fit_res'] = C(fit_res=C.FitRes(status=ok, parameters=params, num_examples=60000,
                                    metrics={'big': Scalar(uint64=2**64 - 1)}))
out['evaluate_res'] = C(evaluate_res=C.EvaluateRes(status=ok, loss=0.7937368154525757, num_examples=10000,
                                                  metrics={'neg': Scalar(sint64=-42)}))
out['evaluate_res 0.1'] = C(evaluate_res=C.EvaluateRes(status=Status(code=Code.EVALUATE_NOT_IMPLEMENTED, message='no'),
                                                      loss=0.1, num_examples=0, metrics={'s': Scalar(string='é')}))

# Legacy serde builds the same bytes as the generated classes.
fit = serde.fit_res_to_proto(common.FitRes(status=common.Status(code=common.Code.OK, message='Success'),
                                           parameters=p, num_examples=60000, metrics={'big': 2**64 - 1}))
assert C(fit_res=fit).SerializeToString() == out['fit_res'].SerializeToString()
ev = serde.evaluate_res_to_proto(common.EvaluateRes(status=common.Status(code=common.Code.OK, message='Success'),
                                                    loss=0.7937368154525757, num_examples=10000, metrics={'neg': -42}))
assert C(evaluate_res=ev).SerializeToString() == out['evaluate_res'].SerializeToString()

# Scalars built directly, one per kind.
scalars = {
    'double 0.01': Scalar(double=0.01), 'double -0.0': Scalar(double=-0.0), 'double 0': Scalar(double=0.0),
    'uint64 2**63': Scalar(uint64=2**63), 'uint64 max': Scalar(uint64=2**64 - 1),
    'sint64 -5': Scalar(sint64=-5), 'sint64 min': Scalar(sint64=-2**63), 'sint64 0': Scalar(sint64=0),
    'bool true': Scalar(bool=True), 'bool false': Scalar(bool=False),
    'string': Scalar(string='héllo'), 'string empty': Scalar(string=''), 'bytes': Scalar(bytes=b'\x00\x01\xfe'),
}
# Python Flower's mapping of Python values (bool before int, uint64 only above INT64_MAX).
serde_values = {
    'py True': True, 'py False': False, 'py 5': 5, 'py 0': 0, 'py -7': -7, 'py 2**63-1': 2**63 - 1,
    'py 2**63': 2**63, 'py 2**64-1': 2**64 - 1, 'py 0.5': 0.5, 'py 1e300': 1e300, "py 'str'": 'str',
    "py b'bytes'": b'bytes',
}
for name, v in serde_values.items():
    scalars[name] = serde.scalar_to_proto(v)
    assert serde.scalar_from_proto(scalars[name]) == v and type(serde.scalar_from_proto(scalars[name])) is type(v)

print(json.dumps({
    'messages': {k: v.SerializeToString().hex() for k, v in out.items()},
    'scalars': {k: v.SerializeToString().hex() for k, v in scalars.items()},
    'which': {k: v.WhichOneof('scalar') for k, v in scalars.items()},
    'loss_f32': float(np.float32(0.7937368154525757)),
}))
"#;

fn map(key: &str, value: Scalar) -> ScalarMap {
    BTreeMap::from([(key.to_owned(), value)])
}

fn ok() -> Status {
    Status {
        code: Code::Ok,
        message: "Success".into(),
    }
}

/// The parameters Python built: Flower's `ndarrays_to_parameters` of a
/// float32 vector and an int64 matrix (our encoding is byte-identical).
fn params() -> Parameters {
    ndarrays_to_parameters(&[
        NdArray::F32(ndarray::arr1(&[1.5f32, -2.0]).into_dyn()),
        NdArray::I64(
            ndarray::Array::from_shape_vec((2, 3), (0..6).collect())
                .expect("shape")
                .into_dyn(),
        ),
    ])
}

fn python_output() -> Option<serde_json::Value> {
    let py = flower_testkit::python()?;
    let out = flower_testkit::run_python(&py, SCRIPT, &[]);
    Some(serde_json::from_slice(&out).expect("JSON from Python"))
}

#[test]
fn every_message_kind_decodes_and_reencodes_byte_identically() {
    let Some(out) = python_output() else { return };
    let messages = out["messages"].as_object().expect("messages");

    let server: Vec<(&str, ServerMessage)> = vec![
        (
            "reconnect_ins 0",
            ServerMessage::Reconnect(ReconnectIns { seconds: 0 }),
        ),
        (
            "reconnect_ins 5",
            ServerMessage::Reconnect(ReconnectIns { seconds: 5 }),
        ),
        (
            "get_properties_ins",
            ServerMessage::GetProperties(GetPropertiesIns {
                config: map("phase", Scalar::from("warm-up")),
            }),
        ),
        (
            "get_parameters_ins",
            ServerMessage::GetParameters(GetParametersIns {
                config: map("server_round", Scalar::int(1)),
            }),
        ),
        (
            "fit_ins",
            ServerMessage::Fit(FitIns {
                parameters: params(),
                config: map("lr", Scalar::from(0.01f64)),
            }),
        ),
        (
            "evaluate_ins",
            ServerMessage::Evaluate(EvaluateIns {
                parameters: params(),
                config: map("flag", Scalar::from(true)),
            }),
        ),
    ];
    let client: Vec<(&str, ClientMessage)> = vec![
        (
            "disconnect_res",
            ClientMessage::Disconnect(DisconnectRes {
                reason: Reason::Reconnect,
            }),
        ),
        (
            "get_properties_res not implemented",
            ClientMessage::GetProperties(GetPropertiesRes {
                status: Status {
                    code: Code::GetPropertiesNotImplemented,
                    message: "Client does not implement `get_properties`".into(),
                },
                properties: ScalarMap::new(),
            }),
        ),
        (
            "get_properties_res",
            ClientMessage::GetProperties(GetPropertiesRes {
                status: ok(),
                properties: map("blob", Scalar::from(vec![0u8, 0xff, 0x10])),
            }),
        ),
        (
            "get_parameters_res",
            ClientMessage::GetParameters(GetParametersRes {
                status: ok(),
                parameters: params(),
            }),
        ),
        (
            "fit_res",
            ClientMessage::Fit(FitRes {
                status: ok(),
                parameters: params(),
                num_examples: 60000,
                metrics: map("big", Scalar::from(u64::MAX)),
            }),
        ),
        (
            "evaluate_res",
            ClientMessage::Evaluate(EvaluateRes {
                status: ok(),
                loss: 0.793_736_8_f32,
                num_examples: 10000,
                metrics: map("neg", Scalar::from(-42i64)),
            }),
        ),
        (
            "evaluate_res 0.1",
            ClientMessage::Evaluate(EvaluateRes {
                status: Status {
                    code: Code::EvaluateNotImplemented,
                    message: "no".into(),
                },
                loss: 0.1f32,
                num_examples: 0,
                metrics: map("s", Scalar::from("é")),
            }),
        ),
    ];
    assert_eq!(
        server.len() + client.len(),
        messages.len(),
        "every case checked"
    );

    for (name, want) in server {
        let bytes = unhex(messages[name].as_str().expect("hex"));
        let decoded = pb::ServerMessage::decode(bytes.as_slice()).expect("prost decodes");
        let typed = ServerMessage::try_from(decoded).expect("converts");
        assert_eq!(typed, want, "{name}: decoded value");
        assert_eq!(
            pb::ServerMessage::from(want.clone()).encode_to_vec(),
            bytes,
            "{name}: Rust encoding differs from Python's"
        );
        if let ServerMessage::Fit(FitIns { parameters, .. })
        | ServerMessage::Evaluate(EvaluateIns { parameters, .. }) = &typed
        {
            let arrays = parameters_to_ndarrays(parameters).expect("numpy tensors decode");
            assert_eq!(
                arrays[0],
                NdArray::F32(ndarray::arr1(&[1.5f32, -2.0]).into_dyn())
            );
            assert_eq!(arrays[1].shape(), &[2, 3]);
        }
    }
    for (name, want) in client {
        let bytes = unhex(messages[name].as_str().expect("hex"));
        let decoded = pb::ClientMessage::decode(bytes.as_slice()).expect("prost decodes");
        let typed = ClientMessage::try_from(decoded).expect("converts");
        assert_eq!(typed, want, "{name}: decoded value");
        assert_eq!(
            pb::ClientMessage::from(want.clone()).encode_to_vec(),
            bytes,
            "{name}: Rust encoding differs from Python's"
        );
    }
}

#[test]
fn python_double_loss_arrives_as_float32() {
    let Some(out) = python_output() else { return };
    let bytes = unhex(out["messages"]["evaluate_res"].as_str().expect("hex"));
    let typed =
        ClientMessage::try_from(pb::ClientMessage::decode(bytes.as_slice()).expect("decodes"))
            .expect("converts");
    let ClientMessage::Evaluate(res) = typed else {
        panic!("expected evaluate_res, got {typed:?}")
    };
    // The double 0.7937368154525757 is rounded to f32 on the wire; widened
    // back it is what numpy's float32 gives.
    assert_eq!(res.loss, 0.7937368154525757f64 as f32);
    assert_eq!(f64::from(res.loss), out["loss_f32"].as_f64().expect("f64"));
    assert_eq!(f64::from(res.loss), 0.7937368154525757);
    let tenth = unhex(out["messages"]["evaluate_res 0.1"].as_str().expect("hex"));
    let ClientMessage::Evaluate(res) =
        ClientMessage::try_from(pb::ClientMessage::decode(tenth.as_slice()).expect("decodes"))
            .expect("converts")
    else {
        panic!("expected evaluate_res")
    };
    assert_eq!(f64::from(res.loss), 0.10000000149011612);
}

#[test]
fn scalars_match_python_and_flwr_serde_mapping() {
    let Some(out) = python_output() else { return };
    let scalars = out["scalars"].as_object().expect("scalars");
    let which = out["which"].as_object().expect("which");
    let cases: Vec<(&str, Scalar, &str)> = vec![
        ("double 0.01", Scalar::Double(0.01), "double"),
        ("double -0.0", Scalar::Double(-0.0), "double"),
        ("double 0", Scalar::Double(0.0), "double"),
        ("uint64 2**63", Scalar::Uint64(1 << 63), "uint64"),
        ("uint64 max", Scalar::Uint64(u64::MAX), "uint64"),
        ("sint64 -5", Scalar::Sint64(-5), "sint64"),
        ("sint64 min", Scalar::Sint64(i64::MIN), "sint64"),
        ("sint64 0", Scalar::Sint64(0), "sint64"),
        ("bool true", Scalar::Bool(true), "bool"),
        ("bool false", Scalar::Bool(false), "bool"),
        ("string", Scalar::String("héllo".into()), "string"),
        ("string empty", Scalar::String(String::new()), "string"),
        ("bytes", Scalar::Bytes(vec![0, 1, 0xfe]), "bytes"),
        // Python values through flwr.common.serde.scalar_to_proto versus the
        // Rust constructors for the same values.
        ("py True", Scalar::from(true), "bool"),
        ("py False", Scalar::from(false), "bool"),
        ("py 5", Scalar::int(5), "sint64"),
        ("py 0", Scalar::from(0i64), "sint64"),
        ("py -7", Scalar::from(-7i64), "sint64"),
        ("py 2**63-1", Scalar::int(i64::MAX as u64), "sint64"),
        ("py 2**63", Scalar::int(1 << 63), "uint64"),
        ("py 2**64-1", Scalar::from(u64::MAX), "uint64"),
        ("py 0.5", Scalar::from(0.5f64), "double"),
        ("py 1e300", Scalar::from(1e300f64), "double"),
        ("py 'str'", Scalar::from("str"), "string"),
        ("py b'bytes'", Scalar::from(b"bytes".to_vec()), "bytes"),
    ];
    assert_eq!(cases.len(), scalars.len(), "every case checked");
    for (name, want, kind) in cases {
        assert_eq!(which[name], kind, "{name}: Python's oneof");
        let bytes = unhex(scalars[name].as_str().expect("hex"));
        let decoded = pb::Scalar::decode(bytes.as_slice()).expect("prost decodes");
        let typed = Scalar::try_from(decoded).expect("converts");
        // -0.0 == 0.0, so compare doubles by bits.
        match (&typed, &want) {
            (Scalar::Double(a), Scalar::Double(b)) => {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}")
            }
            _ => assert_eq!(typed, want, "{name}: decoded value"),
        }
        assert_eq!(
            pb::Scalar::from(want).encode_to_vec(),
            bytes,
            "{name}: Rust encoding differs from Python's"
        );
    }
}
