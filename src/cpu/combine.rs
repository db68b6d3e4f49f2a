//! Combine and permute-backward: y[t] = Σ_s w[t,s] · rows[dest[t,s]] over kept slots, in slot
//! order, accumulated in f32 (f64 for f64). Without weights it is permute's backward pass. With
//! several sources of rows, a slot's value is the sum of its row in each (in source order): the
//! backward pass of a permuted tensor used twice (e.g. by an expert's gate and up projections)
//! adds the two gradients in the same pass instead of in a separate one.

use crate::threads::for_each_chunk_mut;

use crate::cpu::simd::{dispatch, Body};
use crate::cpu::stream::{fence, flush_row, prefetch_rows, row_target, worth_streaming};
use crate::dtype::{Accum, Activation};
use crate::cpu::indices::check_dest;
use crate::error::Result;

/// Tokens per parallel task.
const TOKENS_PER_TASK: usize = 16;
/// How many tokens ahead their rows are prefetched.
const PREFETCH_TOKENS: usize = 1;

/// Writes `y` ([num_tokens, hidden]) from `sources` (one or more [num_rows, hidden] arrays of
/// rows) and `dest` ([num_tokens, slots]). `weights` ([num_tokens, slots]) of None means weight
/// 1 for every kept slot.
#[allow(clippy::too_many_arguments)]
pub fn combine<A: Activation>(
    sources: &[&[A]],
    num_rows: usize,
    hidden: usize,
    dest: &[i32],
    slots: usize,
    weights: Option<&[A::Acc]>,
    y: &mut [A],
) -> Result<()> {
    assert_eq!(y.len() * slots, dest.len() * hidden, "combine: y is not [tokens, hidden]");
    assert!(!sources.is_empty(), "combine: no source of rows");
    assert!(sources.iter().all(|s| s.len() == num_rows * hidden), "combine: a source is not [rows, hidden]");
    check_dest(dest, slots, num_rows)?;
    if hidden == 0 || slots == 0 {
        y.fill(A::ZERO);
        return Ok(());
    }
    let streaming = worth_streaming(std::mem::size_of_val(y));
    for_each_chunk_mut(y, TOKENS_PER_TASK * hidden, |task, y_chunk| {
        let first_slot = task * TOKENS_PER_TASK * slots;
        let dest = &dest[first_slot..first_slot + y_chunk.len() / hidden * slots];
        dispatch(CombineTask { sources, hidden, slots, dest, weights, first_slot, streaming, y: y_chunk });
        fence(streaming);
    });
    Ok(())
}

/// One task of combine: a chunk of tokens and their output rows.
struct CombineTask<'a, A: Activation> {
    sources: &'a [&'a [A]],
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
        let CombineTask { sources, hidden, slots, dest, weights, first_slot, streaming, y } = self;
        let mut acc = vec![<A::Acc as Accum>::ZERO; hidden];
        let mut staged = vec![A::ZERO; if streaming { hidden } else { 0 }];
        let mut summed = vec![<A::Acc as Accum>::ZERO; if sources.len() > 1 { hidden } else { 0 }];
        for (i, (y_out, d_row)) in y.chunks_exact_mut(hidden).zip(dest.chunks_exact(slots)).enumerate() {
            if let Some(next) = dest.get((i + PREFETCH_TOKENS) * slots..(i + PREFETCH_TOKENS + 1) * slots) {
                for rows in sources {
                    prefetch_rows(rows, hidden, next);
                }
            }
            let token_slot = first_slot + i * slots;
            let kept = d_row.iter().filter(|&&d| d >= 0).count();
            let y_row = row_target(y_out, &mut staged, streaming);
            if kept == 0 {
                y_row.fill(A::ZERO);
            }
            let mut done = 0;
            for (s, &d) in d_row.iter().enumerate() {
                if d < 0 {
                    continue;
                }
                let step = match (done == 0, done + 1 == kept) {
                    (true, true) => Step::Only,
                    (true, false) => Step::First,
                    (false, false) => Step::Middle,
                    (false, true) => Step::Last,
                };
                done += 1;
                let w = match weights {
                    Some(w) => w[token_slot + s],
                    None => <A::Acc as Accum>::ONE,
                };
                let range = d as usize * hidden..(d as usize + 1) * hidden;
                if let [rows] = sources {
                    add_slot(step, w, &rows[range], |v: A| v.to_acc(), &mut acc, y_row);
                } else {
                    sum_rows(sources, range, &mut summed);
                    add_slot(step, w, &summed, |v| v, &mut acc, y_row);
                }
            }
            flush_row(y_out, &staged, streaming);
        }
    }
}

/// Where a kept slot falls among its token's kept slots.
#[derive(Clone, Copy)]
enum Step {
    /// The token's only kept slot: writes the output row.
    Only,
    /// The first of several: starts the accumulator.
    First,
    /// Neither first nor last: adds to the accumulator.
    Middle,
    /// The last of several: writes accumulator + this slot to the output row.
    Last,
}

/// Adds w · values (converted by `to_acc`) for one slot. The sum starts from zero (0 + w·v keeps
/// the contract's sign of zero), and the last kept slot writes the output row directly.
#[inline(always)]
fn add_slot<A: Activation, V: Copy>(
    step: Step,
    w: A::Acc,
    values: &[V],
    to_acc: impl Fn(V) -> A::Acc,
    acc: &mut [A::Acc],
    y_row: &mut [A],
) {
    let zero = <A::Acc as Accum>::ZERO;
    match step {
        Step::Only => {
            for (o, &v) in y_row.iter_mut().zip(values) {
                *o = A::from_acc(zero + w * to_acc(v));
            }
        }
        Step::First => {
            for (a, &v) in acc.iter_mut().zip(values) {
                *a = zero + w * to_acc(v);
            }
        }
        Step::Middle => {
            for (a, &v) in acc.iter_mut().zip(values) {
                *a += w * to_acc(v);
            }
        }
        Step::Last => {
            for (o, (&a, &v)) in y_row.iter_mut().zip(acc.iter().zip(values)) {
                *o = A::from_acc(a + w * to_acc(v));
            }
        }
    }
}

/// summed = the rows at `range` of every source, added in source order in the accumulation type.
#[inline(always)]
fn sum_rows<A: Activation>(sources: &[&[A]], range: std::ops::Range<usize>, summed: &mut [A::Acc]) {
    let (first, rest) = sources.split_first().expect("combine has at least one source");
    for (o, &v) in summed.iter_mut().zip(&first[range.clone()]) {
        *o = v.to_acc();
    }
    for rows in rest {
        for (o, &v) in summed.iter_mut().zip(&rows[range.clone()]) {
            *o += v.to_acc();
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
        combine(&[&rows], 3, 2, &[2, 0, -1, 1], 2, Some(&[0.5, 2.0, 7.0, 1.0]), &mut y).unwrap();
        assert_eq!(y, [3.5, 35.0, 2.0, 20.0]);
        combine(&[&rows], 3, 2, &[2, 0, -1, 1], 2, None, &mut y).unwrap();
        assert_eq!(y, [4.0, 40.0, 2.0, 20.0]);
    }

    #[test]
    fn half_types_accumulate_in_f32() {
        let rows = [bf16::from_f32(1.0), bf16::from_f32(1.0 / 256.0)];
        let mut y = [bf16::ZERO];
        // 1 + 2/256 is exact in f32 and in bf16; 1 + 1/256 alone would round back to 1 in bf16.
        combine(&[&rows], 2, 1, &[0, 1], 2, Some(&[1.0, 2.0]), &mut y).unwrap();
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
        combine(&[&rows], dest.len(), hidden, &dest, slots, Some(&weights), &mut y).unwrap();
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

    #[test]
    fn several_sources_add_each_slot_rows_first() {
        let a = [1.0f32, 10.0, 2.0, 20.0, 3.0, 30.0];
        let b = [0.5f32, -1.0, 0.25, 4.0, -3.0, 1.0];
        let mut y = [0.0f32; 4];
        combine(&[&a, &b], 3, 2, &[2, 0, -1, 1], 2, None, &mut y).unwrap();
        assert_eq!(y, [(3.0 - 3.0) + 1.5, 31.0 + 9.0, 2.25, 24.0]);
    }

    #[test]
    fn two_sources_give_the_bits_of_adding_them_first() {
        // f32: summing the sources per slot in the accumulation type is the same rounding as
        // adding the arrays elementwise and combining the sum; both sizes (ordinary and
        // streaming stores).
        for (tokens, hidden) in [(37, 5), (4096, 1024)] {
            let slots = 3;
            let (dest, _) = crate::cpu::test_plan::random_plan(tokens, slots, 11);
            let a = crate::cpu::test_plan::values(dest.len() * hidden, 12);
            let b = crate::cpu::test_plan::values(dest.len() * hidden, 13);
            let added: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let (mut fused, mut plain) = (vec![9.0f32; tokens * hidden], vec![7.0f32; tokens * hidden]);
            combine(&[&a, &b], dest.len(), hidden, &dest, slots, None, &mut fused).unwrap();
            combine(&[&added], dest.len(), hidden, &dest, slots, None, &mut plain).unwrap();
            assert!(fused.iter().zip(&plain).all(|(x, y)| x.to_bits() == y.to_bits()), "tokens {tokens}");
        }
    }

    #[test]
    fn half_sources_add_in_f32() {
        // Adding the three bf16 arrays first rounds 1 + 1/256 back to 1 twice; the fused sum
        // keeps both halves.
        let (a, b) = ([bf16::from_f32(1.0)], [bf16::from_f32(1.0 / 256.0)]);
        let mut y = [bf16::ZERO];
        combine(&[&a, &b, &b], 1, 1, &[0], 1, None, &mut y).unwrap();
        assert_eq!(y[0].to_f32(), 1.0 + 1.0 / 128.0);
    }
}
