//! The `.npy` / `.npz` codec against the pinned numpy, in both directions.
//!
//! Every test generates its inputs (or checks our outputs) in a single Python
//! invocation. Arrays are compared bit for bit through their little-endian,
//! C-order raw bytes, so NaN payloads and signed zeros count too.
//!
//! Skipped (with a printed reason) when the pinned venv is absent, unless
//! `FLOWER_REQUIRE_PYTHON=1`.

use std::collections::BTreeMap;

use flower_core::npy::{decode_npy, encode_npy, parse_npy};
use flower_core::npz::{
    order_npz_arrays, read_npz, read_npz_ordered, write_npz, write_npz_arrays, write_npz_compressed,
};
use flower_core::{ndarrays_to_parameters, parameters_to_ndarrays, DType, NdArray};
use serde_json::Value;

use crate::unhex;

/// Python helpers shared by the scripts: the case matrix of the main test.
const PRELUDE: &str = r#"
import io, json, sys, struct, warnings, zipfile
import numpy as np

DTYPES = ['f2', 'f4', 'f8', 'i1', 'i2', 'i4', 'i8', 'u1', 'u2', 'u4', 'u8', 'b1']
SHAPES = [('0d', ()), ('empty', (0, 3)), ('1d', (5,)), ('3d', (2, 3, 4))]

def base_array(dt, shape, seed):
    """Random bit patterns (NaNs, infinities, -0.0 included) in '<'/'|' order, C order."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if dt == 'b1':
        a = rng.integers(0, 2, size=n).astype('|b1')
    else:
        size = np.dtype(dt).itemsize
        a = rng.integers(0, 256, size=n * size, dtype=np.uint8).view(np.dtype(dt).newbyteorder('<'))
    return a.reshape(shape)

def cases():
    """(name, C-order little-endian array, byte order to store, memory order to store)."""
    out = []
    seed = 0
    for dt in DTYPES:
        orders = ['<', '>'] if np.dtype(dt).itemsize > 1 else ['|']
        for endian in orders:
            for order in ['C', 'F']:
                for sname, shape in SHAPES:
                    seed += 1
                    out.append((f'{dt}{endian}{order}-{sname}', base_array(dt, shape, seed), endian, order))
    return out

def stored(base, endian, order):
    a = base.astype(base.dtype.newbyteorder('>')) if endian == '>' else base
    if order == 'F' and a.ndim >= 2:
        a = np.asfortranarray(a)
    return a

def save(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()

def header_of(b):
    f = io.BytesIO(b)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f, max_header_size=200000)
    return np.lib.format.read_array_header_2_0(f, max_header_size=200000)

def describe(b, loaded):
    if loaded.dtype == np.bool_:
        # Any non-zero byte is True (numpy keeps the raw byte; we store true).
        loaded = loaded.view(np.uint8) != 0
    shape, fortran, dtype = header_of(b) if b[6] in (1, 2) else (None, None, None)
    return {
        'npy': b.hex(),
        'dtype': loaded.dtype.name,
        'shape': list(loaded.shape),
        'expected': np.ascontiguousarray(loaded).astype(loaded.dtype.newbyteorder('<')).tobytes().hex(),
        'big_endian': loaded.dtype.byteorder == '>',
        'fortran': fortran,
    }
"#;

/// The elements of `a` in logical C order as little-endian bytes, computed
/// element by element (independently of the encoder under test).
fn le_bytes(a: &NdArray) -> Vec<u8> {
    let mut out = Vec::new();
    match a {
        NdArray::F16(x) => x.iter().for_each(|v| out.extend(v.to_bits().to_le_bytes())),
        NdArray::F32(x) => x.iter().for_each(|v| out.extend(v.to_bits().to_le_bytes())),
        NdArray::F64(x) => x.iter().for_each(|v| out.extend(v.to_bits().to_le_bytes())),
        NdArray::I8(x) => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        NdArray::I16(x) => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        NdArray::I32(x) => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        NdArray::I64(x) => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        NdArray::U8(x) => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        NdArray::U16(x) => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        NdArray::U32(x) => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        NdArray::U64(x) => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        NdArray::Bool(x) => x.iter().for_each(|v| out.push(u8::from(*v))),
    }
    out
}

fn is_standard_layout(a: &NdArray) -> bool {
    flower_core::with_ndarray!(a, x => x.is_standard_layout())
}

fn dtype_from_name(name: &str) -> DType {
    [
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
    ]
    .into_iter()
    .find(|d| d.numpy_name() == name)
    .unwrap_or_else(|| panic!("unexpected numpy dtype {name}"))
}

fn shape_of(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("shape list")
        .iter()
        .map(|d| usize::try_from(d.as_u64().expect("dim")).expect("dim fits"))
        .collect()
}

/// Checks one case described by `describe()` in the prelude; returns the
/// decoded array or pushes a failure.
fn check_case(name: &str, case: &Value, failures: &mut Vec<String>) -> Option<NdArray> {
    let bytes = unhex(case["npy"].as_str().expect("npy hex"));
    let dtype = dtype_from_name(case["dtype"].as_str().expect("dtype"));
    let shape = shape_of(&case["shape"]);
    let expected = unhex(case["expected"].as_str().expect("expected hex"));

    let view = match parse_npy(&bytes) {
        Ok(v) => v,
        Err(e) => {
            failures.push(format!("{name}: parse_npy failed: {e}"));
            return None;
        }
    };
    if view.dtype != dtype || view.shape != shape {
        failures.push(format!(
            "{name}: header gave {:?} {:?}, numpy says {dtype:?} {shape:?}",
            view.dtype, view.shape
        ));
    }
    if view.big_endian != case["big_endian"].as_bool().expect("big_endian") {
        failures.push(format!("{name}: big_endian = {}", view.big_endian));
    }
    if let Some(f) = case["fortran"].as_bool() {
        if view.fortran_order != f {
            failures.push(format!("{name}: fortran_order = {}", view.fortran_order));
        }
    }
    if view.data.len() != expected.len() {
        failures.push(format!("{name}: view has {} data bytes", view.data.len()));
    }
    let array = match decode_npy(&bytes) {
        Ok(a) => a,
        Err(e) => {
            failures.push(format!("{name}: decode_npy failed: {e}"));
            return None;
        }
    };
    if array.dtype() != dtype || array.shape() != shape.as_slice() {
        failures.push(format!(
            "{name}: decoded {:?} {:?}, numpy says {dtype:?} {shape:?}",
            array.dtype(),
            array.shape()
        ));
    }
    if !is_standard_layout(&array) {
        failures.push(format!("{name}: decoded array is not in C order"));
    }
    if le_bytes(&array) != expected {
        failures.push(format!("{name}: decoded values differ from numpy's"));
    }
    Some(array)
}

#[test]
fn every_dtype_order_endianness_and_shape_both_ways() {
    let Some(py) = flower_testkit::python() else {
        return;
    };

    // numpy -> Rust.
    let script = format!(
        "{PRELUDE}\nout = {{}}\nfor name, base, endian, order in cases():\n    \
         a = stored(base, endian, order)\n    b = save(a)\n    \
         loaded = np.load(io.BytesIO(b), allow_pickle=False)\n    \
         assert loaded.dtype == a.dtype and loaded.shape == a.shape\n    \
         out[name] = describe(b, loaded)\nprint(json.dumps(out))\n"
    );
    let generated: BTreeMap<String, Value> =
        serde_json::from_slice(&flower_testkit::run_python(&py, &script, &[]))
            .expect("generator JSON");
    // 9 multi-byte dtypes x 2 byte orders + 3 one-byte dtypes, x 2 orders x 4 shapes.
    assert_eq!(generated.len(), (9 * 2 + 3) * 2 * 4);
    let fortran_cases = generated
        .values()
        .filter(|c| c["fortran"] == Value::Bool(true))
        .count();
    let big_cases = generated
        .values()
        .filter(|c| c["big_endian"] == Value::Bool(true))
        .count();
    // np.save marks only the 3-d Fortran arrays as fortran_order (0-d, 1-d and
    // empty arrays are C-contiguous too); hand-written headers below cover the rest.
    assert_eq!(
        fortran_cases, 21,
        "one Fortran case per dtype and byte order"
    );
    assert_eq!(big_cases, 9 * 2 * 4);

    let mut failures = Vec::new();
    let mut encoded = BTreeMap::new();
    for (name, case) in &generated {
        if let Some(array) = check_case(name, case, &mut failures) {
            encoded.insert(name.clone(), hex::encode(encode_npy(&array)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Rust -> numpy: our encoding of each decoded array loads in numpy with
    // the same dtype, shape and bits, and is byte-identical to np.save.
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("encoded.json");
    std::fs::write(&input, serde_json::to_vec(&encoded).expect("json")).expect("write");
    let check = format!(
        "{PRELUDE}\nencoded = json.load(open(sys.argv[1]))\nfailures, not_identical = [], []\n\
         for name, base, endian, order in cases():\n    b = bytes.fromhex(encoded[name])\n    \
         x = np.load(io.BytesIO(b), allow_pickle=False)\n    \
         if x.dtype != base.dtype or x.shape != base.shape or x.tobytes() != base.tobytes() or not x.flags.c_contiguous:\n        \
         failures.append(f'{{name}}: numpy loaded {{x.dtype}} {{x.shape}}')\n    \
         if b != save(base):\n        not_identical.append(name)\n\
         print(json.dumps({{'checked': len(encoded), 'failures': failures, 'not_identical': not_identical}}))\n"
    );
    let out: Value = serde_json::from_slice(&flower_testkit::run_python(
        &py,
        &check,
        &[input.to_str().expect("utf-8 path")],
    ))
    .expect("checker JSON");
    assert_eq!(out["checked"], generated.len());
    assert_eq!(
        out["failures"],
        Value::Array(vec![]),
        "numpy rejected our encoding"
    );
    assert_eq!(
        out["not_identical"],
        Value::Array(vec![]),
        "our bytes differ from np.save"
    );
}

#[test]
fn format_versions_and_unusual_headers() {
    let Some(py) = flower_testkit::python() else {
        return;
    };
    let script = format!(
        r#"{PRELUDE}
from numpy.lib import _format_impl as fmt

def raw(version, header, data, encoding='latin1'):
    h = header.encode(encoding)
    size = struct.pack('<H' if version == 1 else '<I', len(h))
    return b'\x93NUMPY' + bytes([version, 0]) + size + h + data

def via_numpy_header(version, a):
    buf = io.BytesIO()
    d = {{'descr': np.lib.format.dtype_to_descr(a.dtype), 'fortran_order': False, 'shape': a.shape}}
    fmt._write_array_header(buf, d, version=version)
    return buf.getvalue() + a.tobytes()

f8 = np.arange(6, dtype='<f8').reshape(3, 2) / 7
i4 = np.array([-3, 0, 7, 2**31 - 1], dtype='<i4')
m = (np.arange(6).reshape(2, 3) - 2).astype('>i4')
u2 = np.array([1, 65535, 300], dtype='<u2')
b = {{}}
b['v2.0 numpy'] = via_numpy_header((2, 0), f8)
b['v3.0 numpy'] = via_numpy_header((3, 0), i4)
b['v3.0 utf8 padding'] = raw(3, "{{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }}" + ' ' * 5 + '\n', i4.tobytes(), 'utf8')
b['no comma, no newline, key order, fortran, big-endian'] = raw(
    1, '{{"shape": (3, 2), "fortran_order": True, "descr": ">i4"}}', m.T.tobytes(order='F'))
b['odd header length, trailing comma and newline'] = raw(
    1, "{{'shape': (3,), 'descr': '<u2', 'fortran_order': False,}}" + ' ' * 11 + '\n', u2.tobytes())
b['v2.0 with a 70000-byte header'] = raw(
    2, "{{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }}" + ' ' * 70000 + '\n', u2.tobytes())
b['whitespace, double quotes, tuple trailing comma'] = raw(
    1, '{{\n\t"descr" : "<f8" ,\n "fortran_order":False,"shape":( 3 , 2 , ) , }}\n', f8.tobytes())
b['python 2 long ints'] = raw(1, "{{'descr': '<f8', 'fortran_order': False, 'shape': (3L, 2L), }}\n", f8.tobytes())
b['unicode prefix and |f4'] = raw(1, "{{u'descr': u'|f4', 'fortran_order': False, 'shape': (2,), }}\n", np.array([1.5, -2], '<f4').tobytes())
b['dtype name'] = raw(1, "{{'descr': 'float32', 'fortran_order': False, 'shape': (2,), }}\n", np.array([1.5, -2], '<f4').tobytes())
b['bool as ?'] = raw(1, "{{'descr': '?', 'fortran_order': False, 'shape': (3,), }}\n", bytes([1, 0, 1]))
b['bool non-0/1 bytes'] = raw(1, "{{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }}\n", bytes([2, 0, 255]))
b['1-d fortran'] = raw(1, "{{'descr': '<i4', 'fortran_order': True, 'shape': (4,), }}\n", i4.tobytes())
b['0-d fortran big-endian'] = raw(1, "{{'descr': '>f8', 'fortran_order': True, 'shape': (), }}\n", np.array(2.5, '>f8').tobytes())
b['empty fortran'] = raw(1, "{{'descr': '<f4', 'fortran_order': True, 'shape': (0, 3), }}\n", b'')
b['trailing bytes ignored'] = save(i4) + b'garbage after the data'
b['4-d fortran'] = save(np.asfortranarray(np.arange(120, dtype='<i2').reshape(2, 3, 4, 5)))
b['legacy 64-byte header'] = raw(1, "{{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }}" + ' ' * 4 + '\n', u2.tobytes())
out = {{}}
with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    for name, data in b.items():
        # numpy refuses headers over 10000 bytes unless told otherwise.
        out[name] = describe(data, np.load(io.BytesIO(data), allow_pickle=False, max_header_size=200000))
print(json.dumps(out))
"#
    );
    let generated: BTreeMap<String, Value> =
        serde_json::from_slice(&flower_testkit::run_python(&py, &script, &[]))
            .expect("generator JSON");
    assert_eq!(generated.len(), 18);
    let mut failures = Vec::new();
    for (name, case) in &generated {
        check_case(name, case, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Spot checks of what the headers mean (independently of numpy's view).
    let v3 = unhex(generated["v3.0 numpy"]["npy"].as_str().expect("hex"));
    assert_eq!(&v3[6..8], &[3, 0]);
    let fortran = unhex(
        generated["no comma, no newline, key order, fortran, big-endian"]["npy"]
            .as_str()
            .expect("hex"),
    );
    let view = parse_npy(&fortran).expect("parses");
    assert!(view.fortran_order && view.big_endian);
    match decode_npy(&fortran).expect("decodes") {
        NdArray::I32(a) => {
            assert_eq!(a.shape(), &[3, 2]);
            // m.T with m = arange(6).reshape(2, 3) - 2.
            assert_eq!(
                a.iter().copied().collect::<Vec<_>>(),
                vec![-2, 1, -1, 2, 0, 3]
            );
        }
        other => panic!("expected int32, got {other:?}"),
    }
    let bools = unhex(
        generated["bool non-0/1 bytes"]["npy"]
            .as_str()
            .expect("hex"),
    );
    match decode_npy(&bools).expect("decodes") {
        NdArray::Bool(a) => assert_eq!(a.iter().copied().collect::<Vec<_>>(), [true, false, true]),
        other => panic!("expected bool, got {other:?}"),
    }
}

/// Python script writing `np.savez` / `np.savez_compressed` / a shuffled zip
/// of known arrays into the directory `sys.argv[1]`.
const NPZ_WRITER: &str = r#"
import os
d = sys.argv[1]
arrays = [base_array(dt, shape, 1000 + i) for i, (dt, (_, shape)) in
          enumerate((dt, s) for dt in DTYPES for s in SHAPES[2:])]
np.savez(os.path.join(d, 'savez.npz'), *arrays)
named = {f'layer{i}.weight': a for i, a in enumerate(arrays[:5])}
np.savez_compressed(os.path.join(d, 'compressed.npz'), **named)
# arr_N entries in a shuffled archive order: model order is numeric order.
order = [10, 2, 0, 11, 1, 3, 9, 4, 8, 5, 7, 6]
with zipfile.ZipFile(os.path.join(d, 'shuffled.npz'), 'w') as z:
    for i in order:
        z.writestr(f'arr_{i}.npy', save(arrays[i]))
with np.load(os.path.join(d, 'shuffled.npz')) as f:
    assert list(f.keys()) == [f'arr_{i}' for i in order]
print(json.dumps({
    'arrays': [describe(save(a), a) for a in arrays],
    'named': list(named),
}))
"#;

#[test]
fn npz_from_numpy_savez_and_savez_compressed() {
    let Some(py) = flower_testkit::python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let out: Value = serde_json::from_slice(&flower_testkit::run_python(
        &py,
        &format!("{PRELUDE}\n{NPZ_WRITER}"),
        &[dir.path().to_str().expect("utf-8 path")],
    ))
    .expect("JSON");
    let expected = out["arrays"].as_array().expect("arrays");
    assert_eq!(expected.len(), 24);
    let mut failures = Vec::new();
    let expected_arrays: Vec<NdArray> = expected
        .iter()
        .enumerate()
        .filter_map(|(i, c)| check_case(&format!("arr_{i}"), c, &mut failures))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let savez = read_npz(&dir.path().join("savez.npz")).expect("read savez");
    let keys: Vec<&str> = savez.iter().map(|(k, _)| k.as_str()).collect();
    let want: Vec<String> = (0..24).map(|i| format!("arr_{i}")).collect();
    assert_eq!(keys, want);
    for ((key, got), want) in savez.iter().zip(&expected_arrays) {
        assert_eq!(le_bytes(got), le_bytes(want), "{key}");
        assert_eq!(got.dtype(), want.dtype(), "{key}");
        assert_eq!(got.shape(), want.shape(), "{key}");
    }

    let compressed = read_npz(&dir.path().join("compressed.npz")).expect("read compressed");
    let names: Vec<&str> = compressed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "layer0.weight",
            "layer1.weight",
            "layer2.weight",
            "layer3.weight",
            "layer4.weight"
        ]
    );
    for ((key, got), want) in compressed.iter().zip(&expected_arrays) {
        assert_eq!(le_bytes(got), le_bytes(want), "{key}");
        assert_eq!(got.shape(), want.shape(), "{key}");
    }

    // Model order: numeric arr_N order regardless of archive order ...
    let shuffled = read_npz(&dir.path().join("shuffled.npz")).expect("read shuffled");
    assert_eq!(shuffled[0].0, "arr_10");
    let ordered = read_npz_ordered(&dir.path().join("shuffled.npz")).expect("ordered");
    assert_eq!(ordered.len(), 12);
    for (i, (got, want)) in ordered.iter().zip(&expected_arrays).enumerate() {
        assert_eq!(le_bytes(got), le_bytes(want), "model position {i}");
        assert_eq!(got.shape(), want.shape(), "model position {i}");
    }
    // ... and archive order when the keys are not all arr_N.
    let named_order = order_npz_arrays(compressed.clone());
    assert_eq!(named_order.len(), compressed.len());
    for (got, (_, want)) in named_order.iter().zip(&compressed) {
        assert_eq!(le_bytes(got), le_bytes(want));
    }
}

#[test]
fn npz_written_by_us_loads_in_numpy() {
    let Some(py) = flower_testkit::python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Arrays from numpy's own bytes (checked by the test above), so Python
    // can regenerate the expected values.
    let out: Value = serde_json::from_slice(&flower_testkit::run_python(
        &py,
        &format!("{PRELUDE}\n{NPZ_WRITER}"),
        &[dir.path().to_str().expect("utf-8 path")],
    ))
    .expect("JSON");
    let arrays: Vec<NdArray> = out["arrays"]
        .as_array()
        .expect("arrays")
        .iter()
        .map(|c| decode_npy(&unhex(c["npy"].as_str().expect("hex"))).expect("decodes"))
        .collect();
    assert_eq!(arrays.len(), 24);

    write_npz_arrays(&dir.path().join("ours_arrays.npz"), &arrays).expect("write arrays");
    let named: Vec<(String, NdArray)> = arrays
        .iter()
        .take(5)
        .enumerate()
        .map(|(i, a)| (format!("layer{i}.weight"), a.clone()))
        .collect();
    write_npz(&dir.path().join("ours_named.npz"), &named).expect("write named");
    write_npz_compressed(&dir.path().join("ours_compressed.npz"), &named)
        .expect("write compressed");
    // Overwriting an existing file works (rename over it).
    write_npz(&dir.path().join("ours_named.npz"), &named).expect("overwrite");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");

    let check = format!(
        r#"{PRELUDE}
import os
d = sys.argv[1]
arrays = [base_array(dt, shape, 1000 + i) for i, (dt, (_, shape)) in
          enumerate((dt, s) for dt in DTYPES for s in SHAPES[2:])]
failures = []
def same(name, x, a):
    if x.dtype != a.dtype or x.shape != a.shape or x.tobytes() != a.tobytes():
        failures.append(f'{{name}}: {{x.dtype}} {{x.shape}} vs {{a.dtype}} {{a.shape}}')
with np.load(os.path.join(d, 'ours_arrays.npz'), allow_pickle=False) as f:
    if list(f.keys()) != [f'arr_{{i}}' for i in range(len(arrays))]:
        failures.append(f'keys {{list(f.keys())}}')
    for i, a in enumerate(arrays):
        same(f'arr_{{i}}', f[f'arr_{{i}}'], a)
for file, method in [('ours_named.npz', zipfile.ZIP_STORED), ('ours_compressed.npz', zipfile.ZIP_DEFLATED)]:
    path = os.path.join(d, file)
    with zipfile.ZipFile(path) as z:
        if [i.compress_type for i in z.infolist()] != [method] * 5:
            failures.append(f'{{file}}: compression {{[i.compress_type for i in z.infolist()]}}')
        if z.testzip() is not None:
            failures.append(f'{{file}}: bad CRC')
    with np.load(path, allow_pickle=False) as f:
        if list(f.keys()) != [f'layer{{i}}.weight' for i in range(5)]:
            failures.append(f'{{file}}: keys {{list(f.keys())}}')
        for i in range(5):
            same(f'{{file}} layer{{i}}', f[f'layer{{i}}.weight'], arrays[i])
print(json.dumps(failures))
"#
    );
    let failures: Value = serde_json::from_slice(&flower_testkit::run_python(
        &py,
        &check,
        &[dir.path().to_str().expect("utf-8 path")],
    ))
    .expect("JSON");
    assert_eq!(failures, Value::Array(vec![]));

    // And our own reader reads our own files back.
    let back = read_npz(&dir.path().join("ours_compressed.npz")).expect("read back");
    assert_eq!(back.len(), named.len());
    for ((k1, a1), (k2, a2)) in back.iter().zip(&named) {
        assert_eq!(k1, k2);
        // Compared bit for bit: the arrays hold NaNs.
        assert_eq!((a1.dtype(), a1.shape()), (a2.dtype(), a2.shape()));
        assert_eq!(le_bytes(a1), le_bytes(a2));
    }
}

#[test]
fn parameters_round_trip_through_python_flower() {
    let Some(py) = flower_testkit::python() else {
        return;
    };
    // Python Flower's ndarrays_to_parameters output decodes to the same arrays,
    // and ours decodes in Python's parameters_to_ndarrays.
    let script = r#"
import json, sys
import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays, Parameters
arrays = [np.arange(12, dtype=np.float32).reshape(3, 4) / 3, np.array([-1, 5], dtype=np.int64),
          np.array(7.25), np.zeros((0, 3), dtype=np.float16)]
if len(sys.argv) > 1:
    data = json.load(open(sys.argv[1]))
    got = parameters_to_ndarrays(Parameters(tensors=[bytes.fromhex(t) for t in data['tensors']],
                                            tensor_type=data['tensor_type']))
    ok = len(got) == len(arrays) and all(
        g.dtype == a.dtype and g.shape == a.shape and g.tobytes() == a.tobytes() for g, a in zip(got, arrays))
    print(json.dumps(ok))
else:
    p = ndarrays_to_parameters(arrays)
    print(json.dumps({'tensors': [t.hex() for t in p.tensors], 'tensor_type': p.tensor_type}))
"#;
    let from_py: Value =
        serde_json::from_slice(&flower_testkit::run_python(&py, script, &[])).expect("JSON");
    let params = flower_core::Parameters {
        tensors: from_py["tensors"]
            .as_array()
            .expect("tensors")
            .iter()
            .map(|t| unhex(t.as_str().expect("hex")).into())
            .collect(),
        tensor_type: from_py["tensor_type"].as_str().expect("type").to_owned(),
    };
    let arrays = parameters_to_ndarrays(&params).expect("decodes");
    assert_eq!(arrays.len(), 4);
    assert_eq!(arrays[0].shape(), &[3, 4]);
    match &arrays[0] {
        NdArray::F32(a) => assert_eq!(a[[2, 3]], 11.0f32 / 3.0),
        other => panic!("expected float32, got {other:?}"),
    }
    assert_eq!(
        arrays[1],
        NdArray::I64(ndarray::arr1(&[-1i64, 5]).into_dyn())
    );
    assert_eq!(arrays[2], NdArray::F64(ndarray::arr0(7.25).into_dyn()));
    assert_eq!(
        (arrays[3].dtype(), arrays[3].shape()),
        (DType::F16, &[0usize, 3][..])
    );
    // Our encoding is byte-identical to Flower's.
    let ours = ndarrays_to_parameters(&arrays);
    assert_eq!(ours, params);

    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("params.json");
    let json = serde_json::json!({
        "tensors": ours.tensors.iter().map(hex::encode).collect::<Vec<_>>(),
        "tensor_type": ours.tensor_type,
    });
    std::fs::write(&input, json.to_string()).expect("write");
    let ok: Value = serde_json::from_slice(&flower_testkit::run_python(
        &py,
        script,
        &[input.to_str().expect("utf-8 path")],
    ))
    .expect("JSON");
    assert_eq!(ok, Value::Bool(true));
}
