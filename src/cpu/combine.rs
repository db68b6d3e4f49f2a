//! Combine and permute-backward: y[t] = Σ_s w[t,s] · rows[dest[t,s]] over kept slots, in slot
//! order, accumulated in f32 (f64 for f64). Without weights it is permute's backward pass.

use crate::threads::for_each_chunk_mut;

use crate::cpu::simd::{dispatch, Body};
use crate::cpu::stream::{fence, prefetch_rows, worth_streaming, write_row};
use crate::dtype::{Accum, Activation};
use crate::cpu::indices::check_dest;
use crate::error::Result;

/// Tokens per parallel task.
const TOKENS_PER_TASK: usize = 16;
/// How many tokens ahead their rows are prefetched.
const PREFETCH_TOKENS: usize = 1;

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
    assert_eq!(y.len() * slots, dest.len() * hidden, "combine: y is not [tokens, hidden]");
    check_dest(dest, slots, num_rows)?;
    if hidden == 0 || slots == 0 {
        y.fill(A::ZERO);
        return Ok(());
    }
    let streaming = worth_streaming(std::mem::size_of_val(y));
    for_each_chunk_mut(y, TOKENS_PER_TASK * hidden, |task, y_chunk| {
        let first_slot = task * TOKENS_PER_TASK * slots;
        let dest = &dest[first_slot..first_slot + y_chunk.len() / hidden * slots];
        dispatch(CombineTask { rows, hidden, slots, dest, weights, first_slot, streaming, y: y_chunk });
        fence(streaming);
    });
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
    /// Write the output rows with streaming stores (through a row buffer in L1).
    streaming: bool,
    y: &'a mut [A],
}

impl<A: Activation> Body for CombineTask<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let CombineTask { rows, hidden, slots, dest, weights, first_slot, streaming, y } = self;
        let mut acc = vec![<A::Acc as Accum>::ZERO; hidden];
        let mut staged = vec![A::ZERO; if streaming { hidden } else { 0 }];
        for (i, (y_out, d_row)) in y.chunks_exact_mut(hidden).zip(dest.chunks_exact(slots)).enumerate() {
            if let Some(next) = dest.get((i + PREFETCH_TOKENS) * slots..(i + PREFETCH_TOKENS + 1) * slots) {
                prefetch_rows(rows, hidden, next);
            }
            let token_slot = first_slot + i * slots;
            let weight = |s: usize| weights.map_or(<A::Acc as Accum>::ONE, |w| w[token_slot + s]);
            let row = |d: i32| &rows[d as usize * hidden..(d as usize + 1) * hidden];
            let mut kept = d_row.iter().enumerate().filter(|&(_, &d)| d >= 0).peekable();
            // Sum from zero in slot order (0 + w·v keeps the contract's sign of zero); the last
            // kept slot writes the output directly.
            let zero = <A::Acc as Accum>::ZERO;
            write_row(y_out, &mut staged, streaming, |y_row| {
                let Some((s0, &d0)) = kept.next() else {
                    y_row.fill(A::ZERO);
                    return;
                };
                let w0 = weight(s0);
                if kept.peek().is_none() {
                    y_row.iter_mut().zip(row(d0)).for_each(|(o, &v)| *o = A::from_acc(zero + w0 * v.to_acc()));
                    return;
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
            });
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

    #[test]
    fn large_outputs_written_with_streaming_stores_match_a_plain_sum() {
        let (tokens, slots, hidden) = (4096, 2, 1024); // y: 4096 tokens * 4 KiB = 16 MiB
        let (dest, _) = crate::cpu::test_plan::random_plan(tokens, slots, 3);
        let rows = crate::cpu::test_plan::values(dest.len() * hidden, 4);
        let weights = crate::cpu::test_plan::values(dest.len(), 5);
        assert!(crate::cpu::stream::worth_streaming(tokens * hidden * 4));
        let mut y = vec![9.0f32; tokens * hidden];
        combine(&rows, dest.len(), hidden, &dest, slots, Some(&weights), &mut y).unwrap();
        for t in 0..tokens {
            for h in 0..hidden {
                let mut want = 0.0f32;
                for s in 0..slots {
                    let d = dest[t * slots + s];
                    if d >= 0 {
                        want += weights[t * slots + s] * rows[d as usize * hidden + h];
                    }
                }
                assert_eq!(y[t * hidden + h], want, "token {t}, column {h}");
            }
        }
    }
}
