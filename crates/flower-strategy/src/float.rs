//! [`Float`]: what the per-element code needs of f32 and f64, so that it is
//! written once for both (NumPy computes in the array's dtype, so the f32
//! path must stay in f32).

use std::ops::{Add, AddAssign, Div, Mul, Sub};

use crate::layers::Data;

/// f32 or f64.
pub(crate) trait Float:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
    + Send
    + Sync
{
    const ZERO: Self;
    const ONE: Self;
    const TWO: Self;
    const NAN: Self;

    fn is_nan(self) -> bool;
    fn abs(self) -> Self;
    /// `n as T`.
    fn from_usize(n: usize) -> Self;
    /// `x as T` (rounded for f32).
    fn from_f64(x: f64) -> Self;
    /// `values` as [`Data`] of this type.
    fn data(values: Vec<Self>) -> Data;
}

macro_rules! impl_float {
    ($t:ident, $variant:ident) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const TWO: Self = 2.0;
            const NAN: Self = $t::NAN;

            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
            fn abs(self) -> Self {
                $t::abs(self)
            }
            fn from_usize(n: usize) -> Self {
                n as $t
            }
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn data(values: Vec<Self>) -> Data {
                Data::$variant(values)
            }
        }
    };
}

impl_float!(f32, F32);
impl_float!(f64, F64);

/// NumPy's `sign`: -1, 0 or 1 (NaN stays NaN, zeros keep their sign).
pub(crate) fn sign<T: Float>(x: T) -> T {
    if x > T::ZERO {
        T::ONE
    } else if x < T::ZERO {
        T::ZERO - T::ONE
    } else {
        x * T::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_like_numpy() {
        assert_eq!(sign(3.5f32), 1.0);
        assert_eq!(sign(-0.1f64), -1.0);
        assert!(sign(f64::NAN).is_nan());
        assert!(sign(-0.0f32).is_sign_negative());
        assert_eq!(<f32 as Float>::from_f64(0.1), 0.1f32);
    }
}
