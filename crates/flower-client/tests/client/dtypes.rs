//! Every dtype round-trips through a `NumPyClient`'s `fit`: the server's
//! `.npy` tensors are decoded for the client and its results encoded back,
//! bit for bit, both for tensors written by flower-core and by numpy itself.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flower_client::{start_client, BoxError, ClientOptions, NumPyClient};
use flower_core::{
    ndarrays_to_parameters, parameters_to_ndarrays, ClientMessage, Config, DType, FitIns, Metrics,
    NdArray, Parameters, ReconnectIns, Scalar, ServerMessage, NUMPY_TENSOR_TYPE,
};
use half::f16;
use ndarray::{ArrayD, IxDyn};

use crate::scripted::{script, ScriptedServer, Session};
use crate::{init_tracing, STEP_TIMEOUT};

/// Returns what it is given and remembers the dtypes it saw.
#[derive(Debug, Default)]
struct Echo {
    seen: Vec<Vec<DType>>,
}

impl NumPyClient for Echo {
    fn fit(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        self.seen
            .push(parameters.iter().map(NdArray::dtype).collect());
        let mut metrics = Metrics::new();
        metrics.insert("arrays".into(), Scalar::from(parameters.len() as u64));
        Ok((parameters, 1, metrics))
    }
}

fn arr<T: Clone>(shape: &[usize], values: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), values).unwrap()
}

/// One array per dtype, with edge values and assorted shapes (0-d, empty, 1-d..3-d).
fn every_dtype() -> Vec<NdArray> {
    vec![
        NdArray::F16(arr(
            &[2, 2],
            vec![
                f16::from_f32(-1.5),
                f16::MAX,
                f16::MIN_POSITIVE_SUBNORMAL,
                f16::NEG_INFINITY,
            ],
        )),
        NdArray::F32(arr(
            &[2, 3],
            vec![0.0, -0.0, 1.0e-45, f32::MAX, f32::INFINITY, 0.1],
        )),
        NdArray::F64(arr(&[], vec![std::f64::consts::PI])),
        NdArray::I8(arr(&[3], vec![i8::MIN, 0, i8::MAX])),
        NdArray::I16(arr(&[1, 2], vec![i16::MIN, i16::MAX])),
        NdArray::I32(arr(&[0], vec![])),
        NdArray::I64(arr(&[2, 1, 2], vec![i64::MIN, -1, 0, i64::MAX])),
        NdArray::U8(arr(&[4], vec![0, 1, 128, 255])),
        NdArray::U16(arr(&[2], vec![0, u16::MAX])),
        NdArray::U32(arr(&[2], vec![7, u32::MAX])),
        NdArray::U64(arr(&[2], vec![0, u64::MAX])),
        NdArray::Bool(arr(&[2, 2], vec![true, false, false, true])),
    ]
}

/// Runs one `FitIns` carrying `parameters` through an `Echo` client and
/// returns the `FitRes` parameters plus the dtypes the client saw.
async fn fit_through_client(parameters: Parameters) -> (Parameters, Vec<DType>) {
    let result: Arc<Mutex<Option<Parameters>>> = Arc::default();
    let out = result.clone();
    let server = ScriptedServer::start(script(move |mut s: Session| {
        let parameters = parameters.clone();
        let out = out.clone();
        async move {
            let reply = s
                .ask(ServerMessage::Fit(FitIns {
                    parameters,
                    config: Config::new(),
                }))
                .await;
            match reply {
                ClientMessage::Fit(res) => {
                    assert!(res.status.is_ok(), "{:?}", res.status);
                    *out.lock().unwrap() = Some(res.parameters);
                }
                other => panic!("expected fit_res, got {other:?}"),
            }
            s.send(ServerMessage::Reconnect(ReconnectIns::default()))
                .await;
            let _ = s.reply().await;
            s.close();
        }
    }))
    .await;
    let echo = Arc::new(Mutex::new(Echo::default().to_client()));
    let summary = tokio::time::timeout(
        STEP_TIMEOUT,
        start_client(
            ClientOptions::new(server.address()).insecure().no_retries(),
            echo.clone(),
        ),
    )
    .await
    .expect("bounded")
    .expect("client ran");
    assert_eq!((summary.fit, summary.failed_replies), (1, 0));
    let seen = echo.lock().unwrap().get_ref().seen.clone();
    assert_eq!(seen.len(), 1);
    let parameters = result.lock().unwrap().take().expect("server got a fit_res");
    (parameters, seen.into_iter().next().unwrap())
}

#[tokio::test]
async fn every_dtype_round_trips_through_fit() {
    init_tracing();
    let arrays = every_dtype();
    let sent = ndarrays_to_parameters(&arrays);
    let (back, seen) = fit_through_client(sent.clone()).await;

    let all = [
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
    assert_eq!(seen, all);
    assert_eq!(back.tensor_type, NUMPY_TENSOR_TYPE);
    let decoded = parameters_to_ndarrays(&back).expect("FitRes tensors decode");
    assert_eq!(decoded, arrays);
    assert_eq!(back.tensors, sent.tensors, "byte-identical .npy");
}

/// numpy writes one `.npy` per dtype (NaN included); the client decodes and
/// re-encodes them; numpy loads the result and compares.
#[tokio::test]
async fn numpy_written_tensors_round_trip() {
    init_tracing();
    let Some(python) = flower_testkit::python() else {
        return;
    };
    const MAKE: &str = r#"
import io, json, numpy as np
arrays = [
    np.array([[1.5, np.nan], [np.inf, -0.0]], dtype=np.float16),
    np.array([np.nan, -np.inf, 1e-38], dtype=np.float32),
    np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    np.array([-128, 127], dtype=np.int8), np.array([-2, 3], dtype=np.int16),
    np.zeros((0, 3), dtype=np.int32), np.array(-(2**63), dtype=np.int64),
    np.arange(5, dtype=np.uint8), np.array([65535], dtype=np.uint16),
    np.array([[4294967295]], dtype=np.uint32), np.array([2**64 - 1], dtype=np.uint64),
    np.array([True, False, True]),
]
out = []
for a in arrays:
    b = io.BytesIO(); np.save(b, a, allow_pickle=False); out.append(b.getvalue().hex())
print(json.dumps(out))
"#;
    const CHECK: &str = r#"
import io, json, sys, numpy as np
sent, back = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert len(sent) == len(back) == 12
for s, b in zip(sent, back):
    x = np.load(io.BytesIO(bytes.fromhex(s)), allow_pickle=False)
    y = np.load(io.BytesIO(bytes.fromhex(b)), allow_pickle=False)
    assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, y.dtype, x.shape, y.shape)
    assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (x, y)
    assert x.tobytes() == y.tobytes()
print("ok")
"#;
    let out = flower_testkit::run_python(&python, MAKE, &[]);
    let sent_hex: Vec<String> = serde_json::from_slice(&out).unwrap();
    let tensors = sent_hex
        .iter()
        .map(|h| Bytes::from(hex::decode(h).unwrap()))
        .collect();
    let sent = Parameters {
        tensors,
        tensor_type: NUMPY_TENSOR_TYPE.into(),
    };
    let (back, seen) = fit_through_client(sent).await;
    assert_eq!(seen.len(), 12);
    let back_hex: Vec<String> = back.tensors.iter().map(hex::encode).collect();
    let sent_json = serde_json::to_string(&sent_hex).unwrap();
    let back_json = serde_json::to_string(&back_hex).unwrap();
    let verdict = flower_testkit::run_python(&python, CHECK, &[&sent_json, &back_json]);
    assert_eq!(String::from_utf8_lossy(&verdict).trim(), "ok");
}
