//! Score functions over one token's logits (softmax, sigmoid), with NaN / all -inf checks.

use crate::cpu::fast_math::{exp_f32, sigmoid_f32, sigmoid_f64};
use crate::dtype::{Accum, Activation};
use crate::routing::ScoreFunction;

/// Why a row of logits cannot be scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRow {
    NaN,
    AllNegInf,
}

impl BadRow {
    pub fn problem(self) -> &'static str {
        match self {
            BadRow::NaN => "NaN value",
            BadRow::AllNegInf => "row of all -inf (no expert can be scored)",
        }
    }
}

/// What a task scoring rows returns: Ok, or the first bad token and what is wrong with it.
pub type RowsOutcome = Result<(), (usize, &'static str)>;

/// The first bad token over all tasks (in token order) as a `logits` error.
pub fn check_rows(outcomes: &[RowsOutcome]) -> crate::error::Result<()> {
    match outcomes.iter().find_map(|o| o.err()) {
        Some((token, problem)) => Err(crate::error::Error::Logits { arg: "logits", problem, token }),
        None => Ok(()),
    }
}

/// Scores of the accumulation type; implemented for f32 and f64.
pub trait ScoreMath: Accum {
    /// exp(x), accurate to a few ulp, vectorizable for f32.
    fn exp(self) -> Self;
    fn sigmoid(self) -> Self;
}
impl ScoreMath for f32 {
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        sigmoid_f32(self)
    }
}
impl ScoreMath for f64 {
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        sigmoid_f64(self)
    }
}

/// Independent lanes of the max / sum reductions: a fixed split the compiler can vectorize, so the
/// result does not depend on the thread count (or on anything but the row).
const LANES: usize = 16;

/// (max, any NaN) of a row, over LANES interleaved partial maxima.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lane-indexed loops are what vectorizes
fn max_and_nan<F: Accum>(values: &[F]) -> (F, bool) {
    let mut max = [F::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let (blocks, tail) = values.as_chunks::<LANES>();
    for block in blocks {
        for l in 0..LANES {
            nan[l] |= block[l].is_nan();
            max[l] = if block[l] > max[l] { block[l] } else { max[l] };
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        nan[l] |= v.is_nan();
        max[l] = if v > max[l] { v } else { max[l] };
    }
    let mut m = F::NEG_INFINITY;
    for v in max {
        m = if v > m { v } else { m };
    }
    (m, nan.iter().any(|&n| n))
}

/// Sum of a row over LANES interleaved partial sums, added in a fixed order.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn lane_sum<F: Accum>(values: &[F]) -> F {
    let mut acc = [F::ZERO; LANES];
    let (blocks, tail) = values.as_chunks::<LANES>();
    for block in blocks {
        for l in 0..LANES {
            acc[l] += block[l];
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] += v;
    }
    let mut sum = F::ZERO;
    for v in acc {
        sum += v;
    }
    sum
}

/// Writes score(logits) into `out` (same length). Softmax of a row holding +inf gives the +inf
/// entries equal shares of 1 (the limit); a row of all -inf or any NaN is rejected.
#[inline(always)]
pub fn score_row<L: Activation>(logits: &[L], out: &mut [L::Acc], score: ScoreFunction) -> Result<(), BadRow>
where
    L::Acc: ScoreMath,
{
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = l.to_acc();
    }
    let (max, has_nan) = max_and_nan(out);
    if has_nan {
        return Err(BadRow::NaN);
    }
    if max == <L::Acc as Accum>::NEG_INFINITY {
        return Err(BadRow::AllNegInf);
    }
    match score {
        ScoreFunction::Sigmoid => out.iter_mut().for_each(|v| *v = v.sigmoid()),
        ScoreFunction::Softmax if max == <L::Acc as Accum>::INFINITY => {
            let count = out.iter().filter(|&&v| v == max).count();
            let share = <L::Acc as Accum>::ONE / <L::Acc as Accum>::from_f64(count as f64);
            out.iter_mut().for_each(|v| *v = if *v == max { share } else { <L::Acc as Accum>::ZERO });
        }
        ScoreFunction::Softmax => {
            out.iter_mut().for_each(|v| *v = (*v - max).exp());
            let inverse = <L::Acc as Accum>::ONE / lane_sum(out);
            out.iter_mut().for_each(|v| *v = *v * inverse);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_handles_inf() {
        let mut out = [0.0f32; 3];
        score_row(&[1.0f32, 2.0, 3.0], &mut out, ScoreFunction::Softmax).unwrap();
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(out[2] > out[1] && out[1] > out[0]);
        score_row(&[f32::INFINITY, 2.0, f32::INFINITY], &mut out, ScoreFunction::Softmax).unwrap();
        assert_eq!(out, [0.5, 0.0, 0.5]);
        score_row(&[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY], &mut out, ScoreFunction::Softmax).unwrap();
        assert_eq!(out, [0.0, 1.0, 0.0]);
    }

    #[test]
    fn bad_rows_are_rejected() {
        let mut out = [0.0f64; 2];
        assert_eq!(score_row(&[f64::NAN, 1.0], &mut out, ScoreFunction::Softmax), Err(BadRow::NaN));
        let ninf = f64::NEG_INFINITY;
        assert_eq!(score_row(&[ninf, ninf], &mut out, ScoreFunction::Sigmoid), Err(BadRow::AllNegInf));
    }
}
