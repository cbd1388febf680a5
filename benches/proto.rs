//! Protobuf encode/decode of a 40 MB `FitRes` (one 10M-element float32
//! tensor), next to a plain `memcpy` of the same bytes.
//!
//! Run: `cargo bench --bench proto -- --warm-up-time 1 --measurement-time 3`
//!
//! * `memcpy_alloc`: `to_vec()` of the encoded message (allocate + copy).
//! * `encode_fit_res`: typed `ClientMessage::Fit` -> proto -> `Vec<u8>`.
//! * `decode_fit_res`: `Bytes` -> proto (tensors stay `Bytes` slices of the
//!   input, no copy) -> typed `ClientMessage`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use flower_core::npy::encode_npy;
use flower_core::{ClientMessage, FitRes, NdArray, Parameters, Status, NUMPY_TENSOR_TYPE};
use ndarray::{ArrayD, IxDyn};
use prost::Message;

const ELEMENTS: usize = 10_000_000;

fn proto(c: &mut Criterion) {
    let values: Vec<f32> = (0..ELEMENTS).map(|i| (i as f32).cos()).collect();
    let array = NdArray::F32(ArrayD::from_shape_vec(IxDyn(&[ELEMENTS]), values).unwrap());
    let message = ClientMessage::Fit(FitRes {
        status: Status::success(),
        parameters: Parameters {
            tensors: vec![Bytes::from(encode_npy(&array))],
            tensor_type: NUMPY_TENSOR_TYPE.into(),
        },
        num_examples: 100,
        metrics: Default::default(),
    });
    let encoded = Bytes::from(flower_proto::ClientMessage::from(message.clone()).encode_to_vec());

    let mut group = c.benchmark_group("fit_res_40MB");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.sample_size(10);
    group.bench_function("memcpy_alloc", |b| b.iter(|| black_box(&encoded).to_vec()));
    group.bench_function("encode_fit_res", |b| {
        b.iter(|| flower_proto::ClientMessage::from(black_box(&message).clone()).encode_to_vec())
    });
    group.bench_function("decode_fit_res", |b| {
        b.iter(|| {
            let proto = flower_proto::ClientMessage::decode(black_box(encoded.clone())).unwrap();
            ClientMessage::try_from(proto).unwrap()
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    proto(&mut c);
    c.final_summary();
}
