//! Shazeer et al. 2017's smooth load estimator for noisy top-k gating, and the normal CDF it needs.

use rayon::prelude::*;

use crate::threads::min_len;

use crate::error::{Error, Result};

/// Φ(z), the standard normal CDF, to about 1e-15 relative accuracy.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// The complementary error function: a positive-term series for |x| < 1.5 (no cancellation) and a
/// continued fraction beyond.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x > 27.3 {
        return 0.0; // below the smallest subnormal f64
    }
    if x < 1.5 {
        // erf(x) = 2/√π · e^{-x²} · Σ_n 2^n x^{2n+1} / (1·3·…·(2n+1))
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        while term > 1e-17 * sum {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        1.0 - std::f64::consts::FRAC_2_SQRT_PI * (-x * x).exp() * sum
    } else {
        // erfc(x) = e^{-x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))), by Lentz's method.
        let tiny = 1e-300;
        let mut f = x;
        let mut c = x;
        let mut d = 0.0;
        for n in 1..500 {
            let a = n as f64 / 2.0;
            d = x + a * d;
            d = if d == 0.0 { tiny } else { 1.0 / d };
            c = x + a / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x * x).exp() / (f * std::f64::consts::PI.sqrt())
    }
}

/// P[t, e] = Φ((clean[t,e] − threshold[t,e]) / noise_std[t,e]), where the threshold is the k-th
/// largest noisy logit of token t with expert e left out (−inf when k = E).
pub fn noisy_load_probs(
    clean: &[f64],
    noisy: &[f64],
    noise_std: &[f64],
    num_experts: usize,
    top_k: usize,
    out: &mut [f64],
) -> Result<()> {
    if let Some(i) = noise_std.iter().position(|&s| !(s > 0.0 && s.is_finite())) {
        return Err(Error::Argument {
            arg: "noise_std",
            got: format!("{} at token {}, expert {}", noise_std[i], i / num_experts, i % num_experts),
            expected: "finite values > 0".into(),
        });
    }
    for (arg, values) in [("clean_logits", clean), ("noisy_logits", noisy)] {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::Logits { arg, problem: "non-finite value", token: i / num_experts });
        }
    }
    if num_experts == 0 {
        return Ok(());
    }
    out.par_chunks_mut(num_experts).with_min_len(min_len()).enumerate().for_each(|(t, row)| {
        let range = t * num_experts..(t + 1) * num_experts;
        let mut sorted = noisy[range.clone()].to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k - 1];
        let next = sorted.get(top_k).copied().unwrap_or(f64::NEG_INFINITY);
        for (e, p) in row.iter_mut().enumerate() {
            let i = range.start + e;
            // Leaving out an expert at or above the k-th value moves the threshold to the next one.
            let threshold = if noisy[i] >= kth { next } else { kth };
            *p = normal_cdf((clean[i] - threshold) / noise_std[i]);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        let cases = [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.5, 4.069_520_174_449_59e-4),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_034_8e-12),
            (-1.0, 1.842_700_792_949_715),
            (1.49, 0.035_102_135_156_795_79),
            (1.51, 0.032_723_251_871_288_36),
            (10.0, 2.088_487_583_762_545e-45),
        ];
        for (x, want) in cases {
            let got = erfc(x);
            assert!(((got - want) / want).abs() < 1e-13, "erfc({x}) = {got}, want {want}");
        }
        assert_eq!(normal_cdf(f64::INFINITY), 1.0);
        assert_eq!(normal_cdf(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn threshold_leaves_the_expert_out() {
        let noisy = [3.0, 1.0, 2.0];
        let mut out = [0.0; 3];
        noisy_load_probs(&noisy, &noisy, &[1.0; 3], 3, 1, &mut out).unwrap();
        // expert 0 is the top-1: its threshold is the runner-up 2.0; others compare to 3.0.
        assert!((out[0] - normal_cdf(1.0)).abs() < 1e-15);
        assert!((out[1] - normal_cdf(-2.0)).abs() < 1e-15);
        assert!((out[2] - normal_cdf(-1.0)).abs() < 1e-15);
    }
}
