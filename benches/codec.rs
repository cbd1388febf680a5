//! `.npy` codec throughput on a 40 MB float32 tensor (10M elements), next to
//! a plain `memcpy` of the same 40 MB so that the ratio is visible.
//!
//! Run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`
//!
//! * `memcpy_alloc`: `to_vec()` of the 40 MB payload (allocate + copy), the
//!   fair baseline for decode and encode, which also allocate their output.
//! * `memcpy_into`: copy into a preallocated buffer (bandwidth only).
//! * `decode_npy`: `.npy` bytes -> `NdArray::F32` (header parse + one copy).
//! * `encode_npy`: `NdArray::F32` -> fresh `.npy` `Vec<u8>`.
//! * `encode_npy_into`: the same into a reused buffer.
//! * `parameters_to_ndarrays`: one-tensor `Parameters` -> arrays.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use flower_core::npy::{decode_npy, encode_npy, encode_npy_into, parse_npy};
use flower_core::{ndarrays_to_parameters, parameters_to_ndarrays, NdArray};
use ndarray::{ArrayD, IxDyn};

const ELEMENTS: usize = 10_000_000;

fn codec(c: &mut Criterion) {
    let values: Vec<f32> = (0..ELEMENTS).map(|i| (i as f32).sin()).collect();
    let array = NdArray::F32(ArrayD::from_shape_vec(IxDyn(&[ELEMENTS / 10, 10]), values).unwrap());
    let encoded = encode_npy(&array);
    let payload = parse_npy(&encoded).unwrap().data.to_vec();
    assert_eq!(payload.len(), ELEMENTS * 4);
    let params = ndarrays_to_parameters(std::slice::from_ref(&array));

    let mut group = c.benchmark_group("npy_f32_40MB");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.sample_size(10);

    group.bench_function("memcpy_alloc", |b| b.iter(|| black_box(&payload).to_vec()));
    let mut dst = vec![0u8; payload.len()];
    group.bench_function("memcpy_into", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&payload)))
    });
    group.bench_function("decode_npy", |b| {
        b.iter(|| decode_npy(black_box(&encoded)).unwrap())
    });
    group.bench_function("encode_npy", |b| b.iter(|| encode_npy(black_box(&array))));
    let mut out = Vec::with_capacity(encoded.len());
    group.bench_function("encode_npy_into", |b| {
        b.iter(|| {
            out.clear();
            encode_npy_into(black_box(&array), &mut out);
        })
    });
    group.bench_function("parameters_to_ndarrays", |b| {
        b.iter(|| parameters_to_ndarrays(black_box(&params)).unwrap())
    });
    group.finish();
}

fn main() {
    // What `criterion_group!` / `criterion_main!` expand to, written out so
    // that no undocumented public function is generated.
    let mut c = Criterion::default().configure_from_args();
    codec(&mut c);
    c.final_summary();
}
