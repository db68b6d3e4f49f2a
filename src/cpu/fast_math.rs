//! Branch-free f32 exp and sigmoid that the compiler vectorizes; a few ulp from the exact values.

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split into a part exact in f32 and the rest (Cody–Waite reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
// Below this exp underflows to 0 even as a subnormal; above EXP_MAX it overflows to inf.
const EXP_MIN: f32 = -104.0;
const EXP_MAX: f32 = 88.722_84;
// Adding and subtracting 1.5 * 2^23 rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// 2^n for an integer n in [-126, 127], built from its exponent bits.
#[inline(always)]
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// exp(x) for f32: 0 for x = -inf, inf for x = +inf; max relative error about 2 ulp.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let shifted = xc * LOG2E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    // The integer n sits in the low mantissa bits of `shifted` (no float-to-int conversion,
    // which would not vectorize).
    let n_int = shifted.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Taylor polynomial of exp on |r| <= ln2 / 2; truncation error < 1e-9.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // Scale by 2^n in two steps so n in [-150, 128] never leaves the exponent range.
    let half = n_int >> 1;
    let v = p * pow2(half) * pow2(n_int - half);
    if x > EXP_MAX {
        f32::INFINITY
    } else {
        v
    }
}

/// The logistic function 1 / (1 + exp(-x)), exact at ±inf, without overflow.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

/// The logistic function in f64.
#[inline(always)]
pub fn sigmoid_f64(x: f64) -> f64 {
    let e = (-x.abs()).exp();
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_f64_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -103.0f32;
        while x < 88.7 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            if want > 1e-37 {
                worst = worst.max(((got - want) / want).abs());
            } else {
                assert!((got - want).abs() <= 2e-45 * 4.0, "x={x} got={got} want={want}");
            }
            x += 0.0137;
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "worst relative error {worst}");
    }

    #[test]
    fn exp_edge_values() {
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
    }

    #[test]
    fn sigmoid_edges_and_symmetry() {
        assert_eq!(sigmoid_f32(f32::INFINITY), 1.0);
        assert_eq!(sigmoid_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid_f32(0.0), 0.5);
        for &x in &[-30.0f32, -3.0, -0.5, 0.25, 4.0, 50.0] {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!(((sigmoid_f32(x) as f64 - want) / want).abs() < 4e-7, "x={x}");
        }
    }
}
