//! The `.npy` array format, as `numpy.save(allow_pickle=False)` writes it and
//! `numpy.load(allow_pickle=False)` reads it.
//!
//! Flower's `ndarrays_to_parameters` serializes every tensor with `np.save`
//! into a `BytesIO`, so each entry of [`Parameters::tensors`](crate::Parameters)
//! is one `.npy` buffer:
//!
//! ```text
//! \x93NUMPY <major> <minor> <header length: u16 LE (1.0) | u32 LE (2.0, 3.0)>
//! {'descr': '<f4', 'fortran_order': False, 'shape': (899, 10), }   \n
//! <raw element data, C or Fortran order>
//! ```
//!
//! * [`parse_npy`] reads the header (every form numpy accepts: format versions
//!   1.0, 2.0 and 3.0, any header length, any key order, with or without a
//!   trailing comma or newline, Python 2 `10L` integers in 1.0/2.0 headers) and
//!   returns a zero-copy [`NpyView`] of the data.
//! * [`decode_npy`] turns a buffer into a C-order [`NdArray`], converting
//!   Fortran order and big-endian data. Little-endian C-order data (what every
//!   Flower client sends) is copied once, with no per-element work.
//! * [`encode_npy`] / [`encode_npy_into`] write a version 1.0, little-endian,
//!   C-order buffer with the header numpy 2.4 writes (byte-identical for
//!   C-contiguous arrays); [`npy_header`] gives just the header so that raw
//!   data can be streamed after it.
//!
//! Complex, object (pickled), structured, string and datetime dtypes are
//! refused with [`CodecError::UnsupportedDtype`]. Malformed input never panics
//! and never makes the decoder allocate more than the input length justifies:
//! the element count and byte size implied by the shape are computed with
//! checked arithmetic and compared with the available data before any
//! allocation.

use half::f16;
use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::{DType, NdArray};

mod header;
use header::parse_header;

/// The 6 bytes every `.npy` buffer starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// numpy aligns the start of the data to this many bytes (`ARRAY_ALIGN`).
const ARRAY_ALIGN: usize = 64;

/// numpy 2.4 pads the header by `21 - len(repr(growth axis length))` spaces.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// Largest number of dimensions accepted (numpy's `NPY_MAXDIMS`).
pub const MAX_DIMS: usize = 64;

/// Errors of the `.npy` / `.npz` codec and of [`Parameters`](crate::Parameters)
/// conversion.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The buffer does not start with `\x93NUMPY`.
    #[error("not a .npy buffer: it does not start with the magic string \\x93NUMPY")]
    BadMagic,
    /// A format version other than 1.0, 2.0 or 3.0.
    #[error("unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)")]
    UnsupportedVersion {
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },
    /// The buffer ends inside the preamble or the header.
    #[error("truncated .npy buffer: the {what} needs {needed} bytes, only {available} present")]
    Truncated {
        /// Which part is cut short.
        what: &'static str,
        /// Bytes needed up to the end of that part.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The header is not a Python dict literal with exactly the keys `descr`,
    /// `fortran_order` and `shape` of the right types.
    #[error("malformed .npy header: {0}")]
    BadHeader(String),
    /// A dtype this codec does not handle (complex, object, structured,
    /// strings, datetimes, long double, ...).
    #[error("unsupported dtype: {0}")]
    UnsupportedDtype(String),
    /// The data after the header is shorter than the shape requires.
    #[error(
        "shape {shape:?} of {dtype} needs {needed} data bytes, but only {available} follow the header"
    )]
    ShapeMismatch {
        /// Shape from the header.
        shape: Vec<usize>,
        /// Element type from the header.
        dtype: &'static str,
        /// Bytes the shape requires.
        needed: usize,
        /// Bytes present after the header.
        available: usize,
    },
    /// A shape whose size overflows `usize`/`isize`, or with too many
    /// dimensions.
    #[error("array too large: {0}")]
    TooLarge(String),
    /// [`Parameters::tensor_type`](crate::Parameters) is not `"numpy.ndarray"`.
    #[error("tensor_type is {0:?}, expected \"numpy.ndarray\"")]
    WrongTensorType(String),
    /// Decoding one tensor of a [`Parameters`](crate::Parameters) failed.
    #[error("tensor {index}: {source}")]
    Tensor {
        /// Position of the tensor in `Parameters::tensors`.
        index: usize,
        /// What went wrong.
        #[source]
        source: Box<CodecError>,
    },
    /// Decoding one entry of an `.npz` archive failed.
    #[error("npz entry {name:?}: {source}")]
    NpzEntry {
        /// Entry name inside the archive (with `.npy`).
        name: String,
        /// What went wrong.
        #[source]
        source: Box<CodecError>,
    },
    /// Reading or writing a file failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The `.npz` (zip) container is malformed or could not be written.
    #[error("zip archive error: {0}")]
    Zip(#[from] zip::result::ZipError),
}

impl CodecError {
    /// The underlying error, looking through [`CodecError::Tensor`] and
    /// [`CodecError::NpzEntry`] wrappers.
    pub fn innermost(&self) -> &CodecError {
        match self {
            CodecError::Tensor { source, .. } | CodecError::NpzEntry { source, .. } => {
                source.innermost()
            }
            other => other,
        }
    }
}

/// A parsed `.npy` buffer whose data is still borrowed from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyView<'a> {
    /// Element type.
    pub dtype: DType,
    /// True when multi-byte elements are stored big-endian (`'>'`, or native
    /// order on a big-endian host). Always false for 1-byte types.
    pub big_endian: bool,
    /// True when the data is in column-major (Fortran) order.
    pub fortran_order: bool,
    /// Shape (empty for a 0-d array).
    pub shape: Vec<usize>,
    /// Exactly the array's bytes: `len() * dtype.size()` bytes (any trailing
    /// bytes of the input are ignored, as numpy does).
    pub data: &'a [u8],
}

impl NpyView<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Copies the data into a C-order [`NdArray`], converting byte order and
    /// Fortran order as needed.
    pub fn to_ndarray(&self) -> Result<NdArray, CodecError> {
        let swap = self.dtype.size() > 1 && self.big_endian != cfg!(target_endian = "big");
        let shape = self.shape.as_slice();
        let f = self.fortran_order;
        let d = self.data;
        Ok(match self.dtype {
            DType::F16 => NdArray::F16(build(shape, f, pod_vec::<f16>(d, swap))?),
            DType::F32 => NdArray::F32(build(shape, f, pod_vec::<f32>(d, swap))?),
            DType::F64 => NdArray::F64(build(shape, f, pod_vec::<f64>(d, swap))?),
            DType::I8 => NdArray::I8(build(shape, f, pod_vec::<i8>(d, false))?),
            DType::I16 => NdArray::I16(build(shape, f, pod_vec::<i16>(d, swap))?),
            DType::I32 => NdArray::I32(build(shape, f, pod_vec::<i32>(d, swap))?),
            DType::I64 => NdArray::I64(build(shape, f, pod_vec::<i64>(d, swap))?),
            DType::U8 => NdArray::U8(build(shape, f, d.to_vec())?),
            DType::U16 => NdArray::U16(build(shape, f, pod_vec::<u16>(d, swap))?),
            DType::U32 => NdArray::U32(build(shape, f, pod_vec::<u32>(d, swap))?),
            DType::U64 => NdArray::U64(build(shape, f, pod_vec::<u64>(d, swap))?),
            // numpy treats any non-zero byte of a bool array as True.
            DType::Bool => NdArray::Bool(build(shape, f, d.iter().map(|&b| b != 0).collect())?),
        })
    }
}

/// Copies `data` into a `Vec<T>` with one `memcpy` (plus a byte swap of
/// each element when `swap`). `data.len()` is a multiple of `size_of::<T>()`.
fn pod_vec<T: bytemuck::Pod>(data: &[u8], swap: bool) -> Vec<T> {
    let mut v: Vec<T> = bytemuck::allocation::pod_collect_to_vec(data);
    if swap {
        let size = std::mem::size_of::<T>();
        for element in bytemuck::cast_slice_mut::<T, u8>(&mut v).chunks_exact_mut(size) {
            element.reverse();
        }
    }
    v
}

/// Builds a C-order array of `shape` from `data` stored in C or Fortran order.
fn build<T: Clone>(shape: &[usize], fortran: bool, data: Vec<T>) -> Result<ArrayD<T>, CodecError> {
    let to_err = |e: ndarray::ShapeError| {
        CodecError::TooLarge(format!("ndarray rejected shape {shape:?}: {e}"))
    };
    if fortran && shape.len() > 1 {
        let a = ArrayD::from_shape_vec(IxDyn(shape).f(), data).map_err(to_err)?;
        Ok(a.as_standard_layout().into_owned())
    } else {
        ArrayD::from_shape_vec(IxDyn(shape), data).map_err(to_err)
    }
}

/// Parses one `.npy` buffer without copying its data.
///
/// Accepts format versions 1.0, 2.0 and 3.0 and every header form numpy's
/// reader accepts for the supported dtypes. Trailing bytes after the data
/// are ignored.
pub fn parse_npy(bytes: &[u8]) -> Result<NpyView<'_>, CodecError> {
    if bytes.len() < MAGIC.len() {
        return if MAGIC.starts_with(bytes) {
            Err(CodecError::Truncated {
                what: "magic string",
                needed: 8,
                available: bytes.len(),
            })
        } else {
            Err(CodecError::BadMagic)
        };
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(CodecError::BadMagic);
    }
    let version = bytes.get(6..8).ok_or(CodecError::Truncated {
        what: "format version",
        needed: 8,
        available: bytes.len(),
    })?;
    let (major, minor) = (version[0], version[1]);
    let (len_size, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => return Err(CodecError::UnsupportedVersion { major, minor }),
    };
    let header_start = 8 + len_size;
    let len_bytes = bytes.get(8..header_start).ok_or(CodecError::Truncated {
        what: "header length",
        needed: header_start,
        available: bytes.len(),
    })?;
    // `len_bytes` has exactly `len_size` (2 or 4) bytes.
    let header_len = if let [a, b] = *len_bytes {
        usize::from(u16::from_le_bytes([a, b]))
    } else {
        let mut le = [0u8; 4];
        le.copy_from_slice(len_bytes);
        usize::try_from(u32::from_le_bytes(le))
            .map_err(|_| CodecError::TooLarge("header length exceeds usize".into()))?
    };
    let header_end = header_start
        .checked_add(header_len)
        .ok_or_else(|| CodecError::TooLarge("header length overflows usize".into()))?;
    let header = bytes
        .get(header_start..header_end)
        .ok_or(CodecError::Truncated {
            what: "header",
            needed: header_end,
            available: bytes.len(),
        })?;
    if utf8 && std::str::from_utf8(header).is_err() {
        return Err(CodecError::BadHeader(
            "version 3.0 header is not valid UTF-8".into(),
        ));
    }
    let header = parse_header(header, major <= 2)?;

    let nbytes = data_size(&header.shape, header.dtype)?;
    let available = bytes.len() - header_end;
    if available < nbytes {
        return Err(CodecError::ShapeMismatch {
            shape: header.shape,
            dtype: header.dtype.numpy_name(),
            needed: nbytes,
            available,
        });
    }
    Ok(NpyView {
        dtype: header.dtype,
        big_endian: header.big_endian,
        fortran_order: header.fortran_order,
        shape: header.shape,
        data: &bytes[header_end..header_end + nbytes],
    })
}

/// Byte size of the data of an array of `shape` and `dtype`, checking
/// for overflow the way ndarray does (the product of the non-zero axis
/// lengths, times the element size, must fit in `isize`).
fn data_size(shape: &[usize], dtype: DType) -> Result<usize, CodecError> {
    let too_large = || {
        CodecError::TooLarge(format!(
            "shape {shape:?} of {} overflows the address space",
            dtype.numpy_name()
        ))
    };
    let mut nonzero: usize = 1;
    for &d in shape.iter().filter(|&&d| d != 0) {
        nonzero = nonzero.checked_mul(d).ok_or_else(too_large)?;
    }
    let max_bytes = nonzero.checked_mul(dtype.size()).ok_or_else(too_large)?;
    if max_bytes > isize::MAX as usize {
        return Err(too_large());
    }
    Ok(if shape.contains(&0) { 0 } else { max_bytes })
}

/// Decodes one `.npy` buffer into a C-order [`NdArray`].
pub fn decode_npy(bytes: &[u8]) -> Result<NdArray, CodecError> {
    parse_npy(bytes)?.to_ndarray()
}

/// Encodes `array` as a version 1.0, little-endian, C-order `.npy` buffer
/// that `numpy.load(allow_pickle=False)` reads.
pub fn encode_npy(array: &NdArray) -> Vec<u8> {
    let mut out = Vec::new();
    encode_npy_into(array, &mut out);
    out
}

/// Appends the `.npy` encoding of `array` to `out` (see [`encode_npy`]).
pub fn encode_npy_into(array: &NdArray, out: &mut Vec<u8>) {
    let header = npy_header(array.dtype(), array.shape());
    out.reserve(header.len() + array.len() * array.dtype().size());
    out.extend_from_slice(&header);
    crate::with_ndarray!(array, a => Element::append_le(a, out));
}

/// The `.npy` header (magic string through the final `\n`) of a
/// little-endian, C-order array, as numpy 2.4 writes it: keys sorted, the
/// growth-axis padding, and spaces up to a 64-byte boundary. Raw
/// little-endian C-order data may be written right after it.
///
/// Version 1.0 is used unless the header does not fit its 16-bit length
/// (only with shapes of absurd rank), then 2.0.
pub fn npy_header(dtype: DType, shape: &[usize]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut dict = String::with_capacity(128);
    dict.push_str("{'descr': '");
    dict.push_str(descr_le(dtype));
    dict.push_str("', 'fortran_order': False, 'shape': (");
    for (i, d) in shape.iter().enumerate() {
        if i > 0 {
            dict.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(dict, "{d}");
    }
    if shape.len() == 1 {
        dict.push(',');
    }
    dict.push_str("), }");
    if let Some(first) = shape.first() {
        let digits = first.to_string().len();
        dict.extend(std::iter::repeat_n(
            ' ',
            GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits),
        ));
    }

    let hlen = dict.len() + 1; // + '\n'
    let (version, prefix) = if (ARRAY_ALIGN + hlen) <= usize::from(u16::MAX) {
        (1u8, 10usize)
    } else {
        (2u8, 12usize)
    };
    let padlen = ARRAY_ALIGN - ((prefix + hlen) % ARRAY_ALIGN);
    let total_len = hlen + padlen;
    let mut out = Vec::with_capacity(prefix + total_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        // Checked above: total_len <= u16::MAX.
        out.extend_from_slice(&u16::try_from(total_len).unwrap_or(u16::MAX).to_le_bytes());
    } else {
        out.extend_from_slice(&u32::try_from(total_len).unwrap_or(u32::MAX).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + padlen, b' ');
    out.push(b'\n');
    out
}

/// numpy's little-endian `descr` string for `dtype`.
fn descr_le(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "<f2",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
    }
}

/// Writes the elements of an array as little-endian bytes in C order.
trait Element: Sized {
    fn append_le(a: &ArrayD<Self>, out: &mut Vec<u8>);
}

macro_rules! pod_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn append_le(a: &ArrayD<Self>, out: &mut Vec<u8>) {
                let start = out.len();
                match a.as_slice() {
                    // Standard layout: one memcpy.
                    Some(s) => out.extend_from_slice(bytemuck::cast_slice(s)),
                    None => {
                        for x in a.iter() {
                            out.extend_from_slice(bytemuck::bytes_of(x));
                        }
                    }
                }
                if cfg!(target_endian = "big") {
                    for e in out[start..].chunks_exact_mut(std::mem::size_of::<$t>()) {
                        e.reverse();
                    }
                }
            }
        }
    )*};
}
pod_element!(f16, f32, f64, i8, i16, i32, i64, u8, u16, u32, u64);

impl Element for bool {
    fn append_le(a: &ArrayD<Self>, out: &mut Vec<u8>) {
        out.extend(a.iter().map(|&b| u8::from(b)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_numpy_layout() {
        let h = npy_header(DType::F32, &[899, 10]);
        assert_eq!(h.len(), 128);
        let text = std::str::from_utf8(&h[10..]).unwrap_or_default();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (899, 10), }"));
        assert!(text.ends_with('\n'));
        let h0 = npy_header(DType::F64, &[]);
        assert!(std::str::from_utf8(&h0[10..])
            .unwrap_or_default()
            .contains("'shape': (), }"));
        assert_eq!(h0.len() % 64, 0);
        let h1 = npy_header(DType::U8, &[5]);
        assert!(std::str::from_utf8(&h1[10..])
            .unwrap_or_default()
            .contains("'shape': (5,), }"));
    }

    #[test]
    fn non_standard_layouts_encode_in_c_order() {
        let c =
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1i16, 2, 3, 4, 5, 6]).unwrap_or_default();
        // A Fortran-layout array and a strided view, both encoded element by element.
        let f = c.clone().reversed_axes();
        assert!(f.as_slice().is_none());
        let back = decode_npy(&encode_npy(&NdArray::I16(f.clone()))).ok();
        assert_eq!(back, Some(NdArray::I16(f)));
        let strided = c
            .slice_axis(ndarray::Axis(1), ndarray::Slice::new(0, None, 2))
            .to_owned()
            .into_dyn();
        let back = decode_npy(&encode_npy(&NdArray::I16(strided.clone()))).ok();
        assert_eq!(back, Some(NdArray::I16(strided)));
    }

    #[test]
    fn round_trip_f32() {
        let a = NdArray::F32(
            ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
                .unwrap_or_default(),
        );
        let bytes = encode_npy(&a);
        assert_eq!(decode_npy(&bytes).ok(), Some(a));
    }
}
