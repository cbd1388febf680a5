//! Malformed `.npy` / `.npz` input gives a typed error, never a panic, and
//! never an allocation the input does not justify.

use std::io::{Cursor, Write};

use flower_core::npy::{decode_npy, encode_npy, parse_npy};
use flower_core::npz::{read_npz, read_npz_from};
use flower_core::{parameters_to_ndarrays, CodecError, NdArray, Parameters};

/// A `.npy` buffer with the given version, raw header text and data.
fn npy(version: u8, header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend(
            u16::try_from(header.len())
                .expect("short header")
                .to_le_bytes(),
        );
    } else {
        out.extend(
            u32::try_from(header.len())
                .expect("header fits u32")
                .to_le_bytes(),
        );
    }
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// A version 1.0 buffer with a header dict built from its three values.
fn npy_dict(descr: &str, fortran: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}\n");
    npy(1, header.as_bytes(), data)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    BadMagic,
    UnsupportedVersion,
    Truncated,
    BadHeader,
    UnsupportedDtype,
    ShapeMismatch,
    TooLarge,
}

fn kind(e: &CodecError) -> Option<Kind> {
    Some(match e {
        CodecError::BadMagic => Kind::BadMagic,
        CodecError::UnsupportedVersion { .. } => Kind::UnsupportedVersion,
        CodecError::Truncated { .. } => Kind::Truncated,
        CodecError::BadHeader(_) => Kind::BadHeader,
        CodecError::UnsupportedDtype(_) => Kind::UnsupportedDtype,
        CodecError::ShapeMismatch { .. } => Kind::ShapeMismatch,
        CodecError::TooLarge(_) => Kind::TooLarge,
        _ => return None,
    })
}

fn cases() -> Vec<(&'static str, Vec<u8>, Kind)> {
    let f4x3 = [0u8; 12];
    let deep = format!("{}{}", "(".repeat(10_000), ")".repeat(10_000));
    let dims65 = format!("({})", vec!["1"; 65].join(", "));
    vec![
        ("empty buffer", vec![], Kind::Truncated),
        ("prefix of the magic", b"\x93NUM".to_vec(), Kind::Truncated),
        (
            "text",
            b"hello, this is not an npy file".to_vec(),
            Kind::BadMagic,
        ),
        (
            "png",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(),
            Kind::BadMagic,
        ),
        ("short non-magic", b"PK".to_vec(), Kind::BadMagic),
        ("version 4.0", npy(4, b"{}", &[]), Kind::UnsupportedVersion),
        (
            "version 1.1",
            b"\x93NUMPY\x01\x01\x10\x00{}".to_vec(),
            Kind::UnsupportedVersion,
        ),
        (
            "no header length",
            b"\x93NUMPY\x01\x00".to_vec(),
            Kind::Truncated,
        ),
        (
            "half a header length",
            b"\x93NUMPY\x02\x00\x10\x00".to_vec(),
            Kind::Truncated,
        ),
        (
            "header longer than the buffer",
            b"\x93NUMPY\x01\x00\xc8\x00{'descr'".to_vec(),
            Kind::Truncated,
        ),
        (
            "4 GiB header length in a tiny buffer",
            b"\x93NUMPY\x02\x00\xff\xff\xff\xff{}".to_vec(),
            Kind::Truncated,
        ),
        (
            "header is a list",
            npy(1, b"[1, 2]\n", &[]),
            Kind::BadHeader,
        ),
        ("header is empty", npy(1, b"", &[]), Kind::BadHeader),
        (
            "lowercase false",
            npy_dict("'<f4'", "false", "(3,)", &f4x3),
            Kind::BadHeader,
        ),
        (
            "fortran_order 0",
            npy_dict("'<f4'", "0", "(3,)", &f4x3),
            Kind::BadHeader,
        ),
        (
            "shape as a list",
            npy_dict("'<f4'", "False", "[3]", &f4x3),
            Kind::BadHeader,
        ),
        (
            "shape (3) is an int",
            npy_dict("'<f4'", "False", "(3)", &f4x3),
            Kind::BadHeader,
        ),
        (
            "shape with a float",
            npy_dict("'<f4'", "False", "(3.0,)", &f4x3),
            Kind::BadHeader,
        ),
        (
            "shape with a hex int",
            npy_dict("'<f4'", "False", "(0x3,)", &f4x3),
            Kind::BadHeader,
        ),
        (
            "negative dimension",
            npy_dict("'<f4'", "False", "(-3,)", &f4x3),
            Kind::BadHeader,
        ),
        (
            "descr is an int",
            npy_dict("4", "False", "(3,)", &f4x3),
            Kind::BadHeader,
        ),
        (
            "missing shape",
            npy(1, b"{'descr': '<f4', 'fortran_order': False}\n", &f4x3),
            Kind::BadHeader,
        ),
        (
            "extra key",
            npy(
                1,
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}",
                &f4x3,
            ),
            Kind::BadHeader,
        ),
        (
            "missing comma",
            npy(
                1,
                b"{'descr': '<f4' 'fortran_order': False, 'shape': (3,)}",
                &f4x3,
            ),
            Kind::BadHeader,
        ),
        (
            "text after the dict",
            npy(
                1,
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,)} x\n",
                &f4x3,
            ),
            Kind::BadHeader,
        ),
        (
            "unterminated string",
            npy(1, b"{'descr: '<f4'}", &f4x3),
            Kind::BadHeader,
        ),
        (
            "unterminated dict",
            npy(1, b"{'descr': '<f4', ", &f4x3),
            Kind::BadHeader,
        ),
        (
            "10000 nested parentheses",
            npy_dict("'<f4'", "False", &deep, &f4x3),
            Kind::BadHeader,
        ),
        (
            "python 2 long in a version 3.0 header",
            npy(
                3,
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (3L,), }",
                &f4x3,
            ),
            Kind::BadHeader,
        ),
        (
            "version 3.0 header that is not UTF-8",
            npy(
                3,
                b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), '\xff': 1}",
                &f4x3,
            ),
            Kind::BadHeader,
        ),
        (
            "complex64",
            npy_dict("'<c8'", "False", "(3,)", &[0; 24]),
            Kind::UnsupportedDtype,
        ),
        (
            "object",
            npy_dict("'|O'", "False", "(3,)", &[0; 24]),
            Kind::UnsupportedDtype,
        ),
        (
            "unicode string",
            npy_dict("'<U5'", "False", "(3,)", &[0; 60]),
            Kind::UnsupportedDtype,
        ),
        (
            "datetime",
            npy_dict("'<M8[ns]'", "False", "(3,)", &[0; 24]),
            Kind::UnsupportedDtype,
        ),
        (
            "float128",
            npy_dict("'<f16'", "False", "(3,)", &[0; 48]),
            Kind::UnsupportedDtype,
        ),
        (
            "structured",
            npy_dict("[('a', '<f4')]", "False", "(3,)", &f4x3),
            Kind::UnsupportedDtype,
        ),
        (
            "data one byte short",
            npy_dict("'<f4'", "False", "(3,)", &f4x3[..11]),
            Kind::ShapeMismatch,
        ),
        (
            "no data at all",
            npy_dict("'<f8'", "True", "(2, 2)", &[]),
            Kind::ShapeMismatch,
        ),
        (
            "0-d without data",
            npy_dict("'<i8'", "False", "()", &[1, 2, 3]),
            Kind::ShapeMismatch,
        ),
        (
            "tiny buffer claiming 1e12 elements",
            npy_dict("'<f4'", "False", "(1000000000000,)", &[0; 16]),
            Kind::ShapeMismatch,
        ),
        (
            "shape (2**62, 2**62)",
            npy_dict(
                "'<f4'",
                "False",
                "(4611686018427387904, 4611686018427387904)",
                &[0; 16],
            ),
            Kind::TooLarge,
        ),
        (
            "bytes overflow (2**62 float64s)",
            npy_dict("'<f8'", "False", "(4611686018427387904,)", &[0; 16]),
            Kind::TooLarge,
        ),
        (
            "empty axis next to absurd ones",
            npy_dict(
                "'<f4'",
                "False",
                "(0, 4611686018427387904, 4611686018427387904)",
                &[],
            ),
            Kind::TooLarge,
        ),
        (
            "dimension beyond 128 bits",
            npy_dict("'<u1'", "False", &format!("({},)", "9".repeat(60)), &[]),
            Kind::TooLarge,
        ),
        (
            "65 dimensions",
            npy_dict("'<u1'", "False", &dims65, &[0]),
            Kind::TooLarge,
        ),
    ]
}

#[test]
fn malformed_inputs_give_the_specific_error() {
    let cases = cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (name, bytes, want) in &cases {
        let parsed = parse_npy(bytes).map(|_| ());
        let decoded = decode_npy(bytes).map(|_| ());
        for (what, result) in [("parse_npy", parsed), ("decode_npy", decoded)] {
            match result {
                Ok(()) => failures.push(format!("{name}: {what} accepted it")),
                Err(e) if kind(&e) != Some(*want) => {
                    failures.push(format!("{name}: {what} gave {e:?}, expected {want:?}"))
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn refusals_explain_themselves() {
    let msg = |descr: &str| {
        decode_npy(&npy_dict(descr, "False", "(1,)", &[0; 16]))
            .expect_err("refused")
            .to_string()
    };
    assert!(msg("'<c8'").contains("complex"), "{}", msg("'<c8'"));
    assert!(msg("'|O'").contains("pickle"), "{}", msg("'|O'"));
    assert!(msg("'<U1'").contains("string"), "{}", msg("'<U1'"));
    let huge =
        decode_npy(&npy_dict("'<f4'", "False", "(1000000000000,)", &[0; 16])).expect_err("refused");
    match huge {
        CodecError::ShapeMismatch {
            needed, available, ..
        } => {
            assert_eq!((needed, available), (4_000_000_000_000, 16));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_not_a_panic() {
    let array = NdArray::F32(
        ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[3, 4]),
            (0..12).map(|i| i as f32).collect(),
        )
        .expect("shape"),
    );
    let good = encode_npy(&array);
    assert_eq!(decode_npy(&good).expect("valid"), array);
    for len in 0..good.len() {
        let e = decode_npy(&good[..len]).expect_err("truncated");
        let k = kind(&e);
        assert!(
            matches!(
                k,
                Some(Kind::Truncated | Kind::ShapeMismatch | Kind::BadHeader)
            ),
            "truncated to {len}: {e:?}"
        );
    }
    // Flip each header byte to a few values: any outcome but a panic.
    let header_len = good.len() - 48;
    let mut accepted = 0;
    for i in 0..header_len {
        for v in [0u8, b' ', b'(', b')', b',', b'\'', b'9', 0xff] {
            let mut bad = good.clone();
            bad[i] = v;
            if let Ok(a) = decode_npy(&bad) {
                accepted += 1;
                assert!(a.len() * a.dtype().size() <= bad.len());
            }
        }
    }
    assert!(accepted > 0, "padding bytes may change without harm");
}

#[test]
fn parameters_errors_name_the_tensor() {
    let good = encode_npy(&NdArray::U8(ndarray::arr1(&[1u8, 2]).into_dyn()));
    let p = Parameters {
        tensors: vec![good.clone().into(), b"junk".to_vec().into()],
        tensor_type: "numpy.ndarray".into(),
    };
    match parameters_to_ndarrays(&p) {
        Err(e @ CodecError::Tensor { index: 1, .. }) => {
            assert!(matches!(e.innermost(), CodecError::BadMagic));
        }
        other => panic!("{other:?}"),
    }
    let wrong = Parameters {
        tensors: vec![good.into()],
        tensor_type: "torch.Tensor".into(),
    };
    match parameters_to_ndarrays(&wrong) {
        Err(CodecError::WrongTensorType(t)) => assert_eq!(t, "torch.Tensor"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_npz_files() {
    // Not a zip at all.
    assert!(matches!(
        read_npz_from(Cursor::new(b"definitely not a zip archive".to_vec())),
        Err(CodecError::Zip(_))
    ));
    // Missing file.
    assert!(matches!(
        read_npz(std::path::Path::new("/nonexistent/dir/model.npz")),
        Err(CodecError::Io(_))
    ));
    // A zip whose entry is not an .npy buffer, and one whose entry is cut short.
    let mut buf = Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        z.start_file("arr_0.npy", opts).expect("start");
        z.write_all(&encode_npy(&NdArray::I8(ndarray::arr1(&[1i8]).into_dyn())))
            .expect("write");
        z.start_file("notes.txt", opts).expect("start");
        z.write_all(b"hello").expect("write");
        z.finish().expect("finish");
    }
    match read_npz_from(Cursor::new(buf.into_inner())) {
        Err(CodecError::NpzEntry { name, source }) => {
            assert_eq!(name, "notes.txt");
            assert!(matches!(*source, CodecError::BadMagic));
        }
        other => panic!("{other:?}"),
    }
    let mut buf = Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        z.start_file("arr_0.npy", zip::write::SimpleFileOptions::default())
            .expect("start");
        let full = encode_npy(&NdArray::F64(ndarray::arr1(&[1.0, 2.0]).into_dyn()));
        z.write_all(&full[..full.len() - 3]).expect("write");
        z.finish().expect("finish");
    }
    let err = read_npz_from(Cursor::new(buf.into_inner())).expect_err("short entry");
    assert!(
        matches!(err.innermost(), CodecError::ShapeMismatch { .. }),
        "{err:?}"
    );
    // A corrupted byte inside a stored entry fails the CRC check.
    let mut buf = Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("arr_0.npy", stored).expect("start");
        z.write_all(&encode_npy(&NdArray::F64(
            ndarray::arr1(&[1.0, 2.0]).into_dyn(),
        )))
        .expect("write");
        z.finish().expect("finish");
    }
    let mut bytes = buf.into_inner();
    let pos = bytes
        .windows(8)
        .position(|w| w == 2.0f64.to_le_bytes())
        .expect("data");
    bytes[pos + 7] ^= 0x01;
    let err = read_npz_from(Cursor::new(bytes)).expect_err("bad CRC");
    assert!(
        matches!(&err, CodecError::NpzEntry { name, .. } if name == "arr_0.npy"),
        "{err:?}"
    );
    assert!(matches!(err.innermost(), CodecError::Io(_)), "{err:?}");

    // Duplicate names would make an ambiguous archive: refused.
    let a = NdArray::U8(ndarray::arr1(&[1u8]).into_dyn());
    let dup = [("w".to_owned(), a.clone()), ("w".to_owned(), a)];
    assert!(matches!(
        flower_core::npz::write_npz_to(Cursor::new(Vec::new()), &dup, Default::default()),
        Err(CodecError::Zip(_))
    ));
}
