//! Unit tests of the ClientApp API: dispatch, decoding, error replies and
//! the NumPyClient adapter on both key sets.

use super::*;
use flower_message::{Message, Metadata, Payload};
use ndarray::{ArrayD, IxDyn};

fn message(message_type: &str, content: RecordDict) -> Message {
    Message::new(
        Metadata {
            message_type: message_type.into(),
            group_id: "1".into(),
            ..Metadata::default()
        },
        content,
    )
}

fn f32s(shape: &[usize], v: Vec<f32>) -> NdArray {
    NdArray::F32(ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape"))
}

/// Adds `delta` to float32 arrays; evaluate reports the element count.
struct Add(f32);

impl ClientApp for Add {
    fn train(&mut self, ins: Instruction, _ctx: &Context) -> Result<Reply, BoxError> {
        let round = ins.server_round().unwrap_or(-1);
        let arrays = ins
            .arrays
            .into_iter()
            .map(|(n, a)| match a {
                NdArray::F32(x) => Ok((n, NdArray::F32(x + self.0))),
                other => Err(format!("dtype {:?}", other.dtype())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Reply::train(arrays, 7).metric("round", round))
    }
}

fn train_content() -> RecordDict {
    let mut content = RecordDict::new();
    content.insert(
        "arrays".into(),
        ArrayRecord::from_iter([(
            "w".to_owned(),
            Array::from_ndarray(&f32s(&[2], vec![1.0, 2.0])),
        )])
        .into(),
    );
    content.insert(
        "config".into(),
        ConfigRecord::new()
            .with("server-round", 3i64)
            .with("lr", 0.5)
            .into(),
    );
    content
}

#[test]
fn train_dispatches_and_encodes_the_reply() {
    let reply = Add(1.0)
        .handle(&message("train", train_content()), &Context::default())
        .expect("ok");
    let arrays = reply.array_record("arrays").expect("arrays");
    assert_eq!(arrays.keys().collect::<Vec<_>>(), ["w"]);
    assert_eq!(
        arrays["w"].to_ndarray().expect("npy"),
        f32s(&[2], vec![2.0, 3.0])
    );
    let metrics = reply.metric_record("metrics").expect("metrics");
    assert_eq!(metrics.get("num-examples"), Some(&MetricValue::Sint64(7)));
    assert_eq!(metrics.get("round"), Some(&MetricValue::Sint64(3)));
}

#[test]
fn missing_handlers_unknown_types_and_errors_become_error_replies() {
    let ctx = Context::default();
    let err = Add(1.0)
        .handle(&message("evaluate", train_content()), &ctx)
        .expect_err("no evaluate handler");
    assert_eq!(err.code, CLIENT_APP_RAISED_EXCEPTION);
    assert!(
        err.reason.contains("no `evaluate` function"),
        "{}",
        err.reason
    );
    let err = Add(1.0)
        .handle(&message("reconnect", train_content()), &ctx)
        .expect_err("unknown type");
    assert!(err
        .reason
        .contains("no handler for message type `reconnect`"));
    // A float64 array makes the handler fail: its error is the reason.
    let mut content = train_content();
    content.insert(
        "arrays".into(),
        ArrayRecord::from_ndarrays(&[NdArray::F64(ArrayD::zeros(IxDyn(&[1])))]).into(),
    );
    let err = Add(1.0)
        .handle(&message("train.x", content), &ctx)
        .expect_err("bad dtype");
    assert!(
        err.reason.starts_with("train failed: dtype"),
        "{}",
        err.reason
    );
    // Corrupt npy data: a decode error, not a panic.
    let mut content = train_content();
    let mut bad = Array::from_ndarray(&f32s(&[2], vec![1.0, 2.0]));
    bad.data = bytes::Bytes::from_static(b"garbage");
    content.insert(
        "arrays".into(),
        ArrayRecord::from_iter([("w".to_owned(), bad)]).into(),
    );
    let err = Add(1.0)
        .handle(&message("train", content), &ctx)
        .expect_err("bad npy");
    assert!(err.reason.contains("cannot decode"), "{}", err.reason);
    // A message that carries an error.
    let msg = Message {
        metadata: Metadata::default(),
        payload: Payload::Error(MessageError::default()),
    };
    assert!(Add(1.0).handle(&msg, &ctx).is_err());
}

struct Numpy;

impl NumPyClient for Numpy {
    fn fit(
        &mut self,
        parameters: Vec<NdArray>,
        config: &Config,
    ) -> Result<(Vec<NdArray>, u64, Metrics), BoxError> {
        let lr = config.get("lr").and_then(Scalar::as_f64).unwrap_or(0.0) as f32;
        let out = parameters
            .into_iter()
            .map(|p| match p {
                NdArray::F32(x) => NdArray::F32(x + lr),
                other => other,
            })
            .collect();
        let metrics = [
            ("acc".to_owned(), Scalar::Double(0.5)),
            ("tag".to_owned(), Scalar::String("x".into())),
        ]
        .into_iter()
        .collect();
        Ok((out, 12, metrics))
    }

    fn evaluate(
        &mut self,
        parameters: Vec<NdArray>,
        _config: &Config,
    ) -> Result<(f64, u64, Metrics), BoxError> {
        Ok((parameters.len() as f64, 4, Metrics::new()))
    }
}

#[test]
fn numpy_adapter_speaks_the_message_api() {
    let mut app = NumPyClientApp::new(Numpy);
    let ctx = Context::default();
    let reply = app
        .handle(&message("train", train_content()), &ctx)
        .expect("ok");
    let arrays = reply.array_record("arrays").expect("arrays");
    assert_eq!(
        arrays["w"].to_ndarray().expect("npy"),
        f32s(&[2], vec![1.5, 2.5])
    );
    let metrics = reply.metric_record("metrics").expect("metrics");
    assert_eq!(metrics.get("num-examples"), Some(&MetricValue::Sint64(12)));
    assert_eq!(metrics.get("acc"), Some(&MetricValue::Double(0.5)));
    let other = reply.config_record("config").expect("non-numeric metrics");
    assert_eq!(other.get("tag"), Some(&ConfigValue::String("x".into())));
    let reply = app
        .handle(&message("evaluate", train_content()), &ctx)
        .expect("ok");
    let metrics = reply.metric_record("metrics").expect("metrics");
    assert_eq!(metrics.get("loss"), Some(&MetricValue::Double(1.0)));
    assert_eq!(metrics.get("num-examples"), Some(&MetricValue::Sint64(4)));
}

#[test]
fn numpy_adapter_answers_legacy_keys_with_legacy_keys() {
    let mut app = NumPyClientApp::new(Numpy);
    let ctx = Context::default();
    let mut content = RecordDict::new();
    // As flwr's `parameters_to_arrayrecord`: no dtype, no shape.
    let legacy = Array {
        dtype: String::new(),
        shape: Vec::new(),
        stype: NUMPY_STYPE.into(),
        data: npy::encode_npy(&f32s(&[2], vec![1.0, 2.0])).into(),
    };
    content.insert(
        "fitins.parameters".into(),
        ArrayRecord::from_iter([("0".to_owned(), legacy)]).into(),
    );
    content.insert(
        "fitins.config".into(),
        ConfigRecord::new().with("lr", 1.0).into(),
    );
    let reply = app.handle(&message("train", content), &ctx).expect("ok");
    let keys: Vec<&String> = reply.keys().collect();
    assert_eq!(
        keys,
        [
            "fitres.metrics",
            "fitres.num_examples",
            "fitres.parameters",
            "fitres.status"
        ]
    );
    let params = reply.array_record("fitres.parameters").expect("params");
    assert_eq!(params["0"].dtype, "");
    assert_eq!(
        legacy_arrays(params).expect("npy"),
        vec![f32s(&[2], vec![2.0, 3.0])]
    );
    let n = reply.metric_record("fitres.num_examples").expect("n");
    assert_eq!(n.get("num_examples"), Some(&MetricValue::Sint64(12)));
    let status = reply.config_record("fitres.status").expect("status");
    assert_eq!(status.get("code"), Some(&ConfigValue::Sint64(0)));

    let mut content = RecordDict::new();
    content.insert("evaluateins.parameters".into(), legacy_record(&[]).into());
    content.insert("evaluateins.config".into(), ConfigRecord::new().into());
    let reply = app.handle(&message("evaluate", content), &ctx).expect("ok");
    let loss = reply.metric_record("evaluateres.loss").expect("loss");
    assert_eq!(
        loss.get("loss"),
        Some(&MetricValue::Double(0.0)),
        "`_empty` is skipped"
    );
}
