//! [`NdArray`]: an n-dimensional array of any dtype Flower clients send.

use half::f16;
use ndarray::ArrayD;

/// Element type of an [`NdArray`] (numpy dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// `float16`
    F16,
    /// `float32`
    F32,
    /// `float64`
    F64,
    /// `int8`
    I8,
    /// `int16`
    I16,
    /// `int32`
    I32,
    /// `int64`
    I64,
    /// `uint8`
    U8,
    /// `uint16`
    U16,
    /// `uint32`
    U32,
    /// `uint64`
    U64,
    /// `bool`
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// numpy's name for the dtype (`"float32"`, ...).
    pub fn numpy_name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
        }
    }
}

/// An n-dimensional array of one of the supported dtypes.
#[derive(Debug, Clone, PartialEq)]
pub enum NdArray {
    /// `float16`
    F16(ArrayD<f16>),
    /// `float32`
    F32(ArrayD<f32>),
    /// `float64`
    F64(ArrayD<f64>),
    /// `int8`
    I8(ArrayD<i8>),
    /// `int16`
    I16(ArrayD<i16>),
    /// `int32`
    I32(ArrayD<i32>),
    /// `int64`
    I64(ArrayD<i64>),
    /// `uint8`
    U8(ArrayD<u8>),
    /// `uint16`
    U16(ArrayD<u16>),
    /// `uint32`
    U32(ArrayD<u32>),
    /// `uint64`
    U64(ArrayD<u64>),
    /// `bool`
    Bool(ArrayD<bool>),
}

/// Runs `$body` with `$a` bound to the inner `ArrayD<T>` of any variant.
#[macro_export]
macro_rules! with_ndarray {
    ($value:expr, $a:ident => $body:expr) => {
        match $value {
            $crate::NdArray::F16($a) => $body,
            $crate::NdArray::F32($a) => $body,
            $crate::NdArray::F64($a) => $body,
            $crate::NdArray::I8($a) => $body,
            $crate::NdArray::I16($a) => $body,
            $crate::NdArray::I32($a) => $body,
            $crate::NdArray::I64($a) => $body,
            $crate::NdArray::U8($a) => $body,
            $crate::NdArray::U16($a) => $body,
            $crate::NdArray::U32($a) => $body,
            $crate::NdArray::U64($a) => $body,
            $crate::NdArray::Bool($a) => $body,
        }
    };
}

impl NdArray {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            NdArray::F16(_) => DType::F16,
            NdArray::F32(_) => DType::F32,
            NdArray::F64(_) => DType::F64,
            NdArray::I8(_) => DType::I8,
            NdArray::I16(_) => DType::I16,
            NdArray::I32(_) => DType::I32,
            NdArray::I64(_) => DType::I64,
            NdArray::U8(_) => DType::U8,
            NdArray::U16(_) => DType::U16,
            NdArray::U32(_) => DType::U32,
            NdArray::U64(_) => DType::U64,
            NdArray::Bool(_) => DType::Bool,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        with_ndarray!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_ndarray!(self, a => a.len())
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

macro_rules! ndarray_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<ArrayD<$t>> for NdArray {
            fn from(a: ArrayD<$t>) -> Self { NdArray::$v(a) }
        }
    )*};
}
ndarray_from!(f16 => F16, f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64, bool => Bool);
