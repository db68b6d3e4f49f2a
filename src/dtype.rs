//! Element types: the activation dtypes moeroute accepts and the float type each one accumulates in.

use half::{bf16, f16};

use crate::error::{Error, Result};

/// A float type that kernels compute and accumulate in: f32 (for f32 and the half types) or f64.
pub trait Accum:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    fn is_nan(self) -> bool;
    /// The larger of two non-NaN values.
    #[inline(always)]
    fn max_of(self, other: Self) -> Self {
        if other > self {
            other
        } else {
            self
        }
    }
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Accum for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const INFINITY: Self = f32::INFINITY;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Accum for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const INFINITY: Self = f64::INFINITY;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// An activation / logits element type: f32, f64, f16 or bf16.
pub trait Activation: Copy + Send + Sync + 'static {
    /// The type this element is computed and accumulated in.
    type Acc: Accum;
    const ZERO: Self;
    fn to_acc(self) -> Self::Acc;
    /// Rounds to nearest even.
    fn from_acc(v: Self::Acc) -> Self;
}

macro_rules! identity_activation {
    ($t:ty) => {
        impl Activation for $t {
            type Acc = $t;
            const ZERO: Self = 0.0;
            #[inline(always)]
            fn to_acc(self) -> $t {
                self
            }
            #[inline(always)]
            fn from_acc(v: $t) -> Self {
                v
            }
        }
    };
}
identity_activation!(f32);
identity_activation!(f64);

impl Activation for f16 {
    type Acc = f32;
    const ZERO: Self = f16::ZERO;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Activation for bf16 {
    type Acc = f32;
    const ZERO: Self = bf16::ZERO;
    #[inline(always)]
    fn to_acc(self) -> f32 {
        // A bf16 is the top half of an f32: widening is exact.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_acc(v: f32) -> Self {
        // Round to nearest even on the top 16 bits; NaN stays a (quiet) NaN. Branch-free, so
        // conversion loops vectorize (half's from_f32 does not).
        let bits = v.to_bits();
        let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
        let is_nan = (bits & 0x7FFF_FFFF) > 0x7F80_0000;
        bf16::from_bits(if is_nan { (bits >> 16) as u16 | 0x0040 } else { rounded as u16 })
    }
}

/// The dtypes moeroute accepts for logits and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
}

impl DType {
    /// The dtype called `name` ("float32", "float64", "float16" or "bfloat16").
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "float32" => Some(Self::F32),
            "float64" => Some(Self::F64),
            "float16" => Some(Self::F16),
            "bfloat16" => Some(Self::BF16),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F64 => "float64",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
        }
    }

    /// The dtype called `name`, given for the argument `arg`; a DType error naming `arg` for any
    /// other name. Every binding parses its dtype names with this.
    pub fn parse_arg(name: &str, arg: &'static str) -> Result<Self> {
        Self::parse(name).ok_or_else(|| Error::DType {
            arg,
            got: name.to_string(),
            expected: "float32, float64, float16 or bfloat16".into(),
        })
    }

    /// `parse_arg` for an array of accumulated values (weights, probs and their gradients): only
    /// float32 and float64 are accepted.
    pub fn parse_accum(name: &str, arg: &'static str) -> Result<Self> {
        Self::parse(name).filter(|dtype| dtype.is_accum()).ok_or_else(|| Error::DType {
            arg,
            got: name.to_string(),
            expected: "float32 or float64".into(),
        })
    }

    /// This dtype if it is an accumulation dtype, else `parse_accum`'s error naming `arg`.
    pub fn check_accum(self, arg: &'static str) -> Result<Self> {
        Self::parse_accum(self.name(), arg)
    }

    /// Whether this is an accumulation dtype (float32 or float64), the dtype of weights and probs.
    pub fn is_accum(self) -> bool {
        matches!(self, Self::F32 | Self::F64)
    }

    /// The short name kernels are suffixed with: "f32", "f64", "f16" or "bf16".
    pub fn suffix(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }

    /// Bytes of one element.
    pub fn elem_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F64 => 8,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// Bytes of one element of the accumulation type (float64 for float64, else float32).
    pub fn acc_bytes(self) -> usize {
        if self == Self::F64 {
            8
        } else {
            4
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sizes_and_accumulation() {
        for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            assert_eq!(DType::parse_arg(dtype.name(), "x"), Ok(dtype));
            assert_eq!(DType::parse_accum(dtype.name(), "x").is_ok(), dtype.is_accum());
        }
        let suffixes = [DType::F32, DType::F64, DType::F16, DType::BF16].map(DType::suffix);
        assert_eq!(suffixes, ["f32", "f64", "f16", "bf16"]);
        assert_eq!((DType::BF16.elem_bytes(), DType::BF16.acc_bytes()), (2, 4));
        assert_eq!((DType::F64.elem_bytes(), DType::F64.acc_bytes()), (8, 8));
        let err = DType::parse_arg("int8", "logits").unwrap_err().to_string();
        assert_eq!(err, "logits: got int8, expected float32, float64, float16 or bfloat16");
        let err = DType::parse_accum("float16", "plan.probs").unwrap_err().to_string();
        assert_eq!(err, "plan.probs: got float16, expected float32 or float64");
    }

    #[test]
    fn bf16_rounding_matches_half() {
        let mut x = 0x0000_0001u32;
        while x < 0xFFFF_F000 {
            let v = f32::from_bits(x);
            let ours = <bf16 as Activation>::from_acc(v);
            let reference = bf16::from_f32(v);
            if v.is_nan() {
                assert!(ours.is_nan());
            } else {
                assert_eq!(ours.to_bits(), reference.to_bits(), "{v:e}");
            }
            x = x.wrapping_add(0x0000_7A31);
        }
    }
}
