//! Combine and permute-backward: y[t] = Σ_s w[t,s] · rows[dest[t,s]] over kept slots, in slot
//! order, accumulated in f32 (f64 for f64). Without weights it is permute's backward pass.

use rayon::prelude::*;

use crate::threads::min_len;

use crate::cpu::simd::{dispatch, Body};
use crate::dtype::{Accum, Activation};
use crate::cpu::indices::check_dest;
use crate::error::Result;

/// Tokens per parallel task.
const TOKENS_PER_TASK: usize = 16;

/// Writes `y` ([num_tokens, hidden]) from `rows` ([num_rows, hidden]) and `dest` ([num_tokens, slots]).
/// `weights` ([num_tokens, slots]) of None means weight 1 for every kept slot.
pub fn combine<A: Activation>(
    rows: &[A],
    num_rows: usize,
    hidden: usize,
    dest: &[i32],
    slots: usize,
    weights: Option<&[A::Acc]>,
    y: &mut [A],
) -> Result<()> {
    check_dest(dest, slots, num_rows)?;
    if hidden == 0 || slots == 0 {
        y.fill(A::ZERO);
        return Ok(());
    }
    y.par_chunks_mut(TOKENS_PER_TASK * hidden).with_min_len(min_len()).zip(dest.par_chunks(TOKENS_PER_TASK * slots)).enumerate().for_each(
        |(task, (y_chunk, dest_chunk))| {
            let first_slot = task * TOKENS_PER_TASK * slots;
            dispatch(CombineTask { rows, hidden, slots, dest: dest_chunk, weights, first_slot, y: y_chunk });
        },
    );
    Ok(())
}

/// One task of combine: a chunk of tokens and their output rows.
struct CombineTask<'a, A: Activation> {
    rows: &'a [A],
    hidden: usize,
    slots: usize,
    /// dest of this chunk's tokens.
    dest: &'a [i32],
    weights: Option<&'a [A::Acc]>,
    /// Index of this chunk's first slot in `weights`.
    first_slot: usize,
    y: &'a mut [A],
}

impl<A: Activation> Body for CombineTask<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let CombineTask { rows, hidden, slots, dest, weights, first_slot, y } = self;
        let mut acc = vec![<A::Acc as Accum>::ZERO; hidden];
        for (i, (y_row, d_row)) in y.chunks_exact_mut(hidden).zip(dest.chunks_exact(slots)).enumerate() {
            let token_slot = first_slot + i * slots;
            let weight = |s: usize| weights.map_or(<A::Acc as Accum>::ONE, |w| w[token_slot + s]);
            let row = |d: i32| &rows[d as usize * hidden..(d as usize + 1) * hidden];
            let mut kept = d_row.iter().enumerate().filter(|&(_, &d)| d >= 0).peekable();
            // Sum from zero in slot order (0 + w·v keeps the contract's sign of zero); the last
            // kept slot writes the output directly.
            let zero = <A::Acc as Accum>::ZERO;
            let Some((s0, &d0)) = kept.next() else {
                y_row.fill(A::ZERO);
                continue;
            };
            let w0 = weight(s0);
            if kept.peek().is_none() {
                y_row.iter_mut().zip(row(d0)).for_each(|(o, &v)| *o = A::from_acc(zero + w0 * v.to_acc()));
                continue;
            }
            acc.iter_mut().zip(row(d0)).for_each(|(a, &v)| *a = zero + w0 * v.to_acc());
            while let Some((s, &d)) = kept.next() {
                let w = weight(s);
                if kept.peek().is_some() {
                    acc.iter_mut().zip(row(d)).for_each(|(a, &v)| *a += w * v.to_acc());
                } else {
                    y_row.iter_mut().zip(acc.iter().zip(row(d))).for_each(|(o, (&a, &v))| *o = A::from_acc(a + w * v.to_acc()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn weighted_sum_over_kept_slots() {
        let rows = [1.0f32, 10.0, 2.0, 20.0, 3.0, 30.0];
        let mut y = [0.0f32; 4];
        combine(&rows, 3, 2, &[2, 0, -1, 1], 2, Some(&[0.5, 2.0, 7.0, 1.0]), &mut y).unwrap();
        assert_eq!(y, [3.5, 35.0, 2.0, 20.0]);
        combine(&rows, 3, 2, &[2, 0, -1, 1], 2, None, &mut y).unwrap();
        assert_eq!(y, [4.0, 40.0, 2.0, 20.0]);
    }

    #[test]
    fn half_types_accumulate_in_f32() {
        let rows = [bf16::from_f32(1.0), bf16::from_f32(1.0 / 256.0)];
        let mut y = [bf16::ZERO];
        // 1 + 2/256 is exact in f32 and in bf16; 1 + 1/256 alone would round back to 1 in bf16.
        combine(&rows, 2, 1, &[0, 1], 2, Some(&[1.0, 2.0]), &mut y).unwrap();
        assert_eq!(y[0].to_f32(), 1.0 + 1.0 / 128.0);
    }
}
