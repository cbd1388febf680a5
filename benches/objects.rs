//! The Fleet API's object codec on a 40 MB float32 model (8 chunks of
//! 5 MiB), next to one SHA-256 pass and one `memcpy` of the same bytes.
//!
//! Run: `cargo bench --bench objects -- --warm-up-time 1 --measurement-time 3`
//!
//! * `sha256`: one hash of the 40 MB, the floor of deflating a model the
//!   first time (every chunk's id is its SHA-256).
//! * `memcpy_alloc`: `to_vec()` of the 40 MB (allocate + copy).
//! * `deflate`: chunk objects as new buffers (head + a copy of the bytes),
//!   what a pushed reply needs as contiguous objects.
//! * `deflate_parts`: chunk objects as head + a slice of the array (no copy),
//!   what the server's broadcast uses.
//! * `deflate_parts_reusing`: the same with the previous deflation's chunk
//!   ids (the model sent for evaluation, then for the next round's
//!   training): no hashing of the array bytes at all.
//! * `inflate`: rebuilding the message from `deflate`'s objects (hash
//!   checks and assembly of each array).

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use flower_core::NdArray;
use flower_message::{
    deflate, deflate_parts, deflate_parts_reusing, inflate, Array, ArrayRecord, ChunkIds, Limits,
    Message, Metadata, ObjectId, RecordDict,
};
use ndarray::{ArrayD, IxDyn};

const ELEMENTS: usize = 10_000_000;

fn objects(c: &mut Criterion) {
    let values: Vec<f32> = (0..ELEMENTS).map(|i| (i as f32).sin()).collect();
    let array = NdArray::F32(ArrayD::from_shape_vec(IxDyn(&[ELEMENTS]), values).unwrap());
    let model = Array::from_ndarray(&array);
    let npy = model.data.clone();
    let message = Message::new(
        Metadata::default(),
        RecordDict::new().with("arrays", ArrayRecord::new().with("w", model)),
    );
    let deflated = deflate(&message);
    let (_, known) = deflate_parts_reusing(&message, &ChunkIds::default());
    assert_eq!(deflate_parts(&message).root, deflated.root);

    let mut group = c.benchmark_group("objects_f32_40MB");
    group.throughput(Throughput::Bytes(npy.len() as u64));
    group.sample_size(10);
    group.bench_function("sha256", |b| b.iter(|| ObjectId::of(black_box(&npy))));
    group.bench_function("memcpy_alloc", |b| b.iter(|| black_box(&npy).to_vec()));
    group.bench_function("deflate", |b| b.iter(|| deflate(black_box(&message))));
    group.bench_function("deflate_parts", |b| {
        b.iter(|| deflate_parts(black_box(&message)))
    });
    group.bench_function("deflate_parts_reusing", |b| {
        b.iter(|| deflate_parts_reusing(black_box(&message), &known))
    });
    group.bench_function("inflate", |b| {
        b.iter(|| inflate(&deflated.tree, black_box(&deflated), &Limits::default()).unwrap())
    });
    group.finish();
}

fn main() {
    // What `criterion_group!` / `criterion_main!` expand to, written out so
    // that no undocumented public function is generated.
    let mut c = Criterion::default().configure_from_args();
    objects(&mut c);
    c.final_summary();
}
