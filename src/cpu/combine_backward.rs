//! Combine's backward pass: grad_yp[dest[t,s]] = w[t,s] · grad_y[t] (padding rows zero) and
//! grad_w[t,s] = ⟨grad_y[t], yp[dest[t,s]]⟩ (zero where dest < 0).

use crate::threads::{for_each_chunk_mut, DisjointChunks};

use crate::cpu::indices::{check_dest, check_one_to_one, check_src};
use crate::cpu::simd::{dispatch, Body};
use crate::cpu::stream::{fence, flush_row, prefetch_rows, row_target, worth_streaming};
use crate::dtype::{Accum, Activation};
use crate::error::Result;

const ROWS_PER_TASK: usize = 64;
const TOKENS_PER_TASK: usize = 64;
/// How many tokens ahead their rows of yp are prefetched.
const PREFETCH_TOKENS: usize = 1;
/// Independent partial sums of a dot product: fixed, so the result does not depend on threads.
const DOT_LANES: usize = 16;

/// Computes grad_yp ([src.len(), hidden]) and grad_w ([num_tokens, slots]) in one pass over the
/// tokens: each kept (token, slot) reads its row of yp for grad_w and writes its row of grad_yp.
#[allow(clippy::too_many_arguments)]
pub fn combine_backward<A: Activation>(
    grad_y: &[A],
    yp: &[A],
    num_tokens: usize,
    hidden: usize,
    dest: &[i32],
    src: &[i32],
    slots: usize,
    weights: &[A::Acc],
    grad_yp: &mut [A],
    grad_w: &mut [A::Acc],
) -> Result<()> {
    let num_rows = src.len();
    assert_eq!(grad_yp.len(), num_rows * hidden, "combine_backward: grad_yp is not [rows, hidden]");
    assert_eq!(grad_w.len(), dest.len(), "combine_backward: grad_w is not [tokens, slots]");
    check_dest(dest, slots, num_rows)?;
    check_src(src, num_tokens)?;
    check_one_to_one(dest, src, slots)?;
    if hidden > 0 {
        // Padding rows, which no pick writes, are zero.
        for_each_chunk_mut(grad_yp, ROWS_PER_TASK * hidden, |task, out| {
            let rows = &src[task * ROWS_PER_TASK..task * ROWS_PER_TASK + out.len() / hidden];
            out.chunks_exact_mut(hidden).zip(rows).filter(|(_, &t)| t < 0).for_each(|(row, _)| row.fill(A::ZERO));
        });
    }
    if slots == 0 {
        return Ok(());
    }
    if hidden == 0 {
        grad_w.fill(<A::Acc as Accum>::ZERO); // empty dot products
        return Ok(());
    }
    let streaming = worth_streaming(std::mem::size_of_val(grad_yp));
    // Each task writes the rows of its own tokens' kept slots, taken from here by row index;
    // check_one_to_one proved that no row belongs to two slots.
    let grad_yp = DisjointChunks::new(grad_yp, hidden);
    for_each_chunk_mut(grad_w, TOKENS_PER_TASK * slots, |task, gw_chunk| {
        let first_token = task * TOKENS_PER_TASK;
        let dest_chunk = &dest[first_token * slots..first_token * slots + gw_chunk.len()];
        dispatch(TokenGrads { grad_y, yp, hidden, slots, first_token, dest: dest_chunk, weights, streaming, grad_yp: &grad_yp, out: gw_chunk });
        fence(streaming);
    });
    Ok(())
}

/// One task's tokens: grad_w[t,s] = ⟨grad_y[t], yp[d]⟩ and grad_yp[d] = w[t,s] · grad_y[t] for
/// each kept slot (d = dest[t,s]); grad_w is zero where dest < 0.
struct TokenGrads<'a, A: Activation> {
    grad_y: &'a [A],
    yp: &'a [A],
    hidden: usize,
    slots: usize,
    first_token: usize,
    /// dest of this task's tokens.
    dest: &'a [i32],
    weights: &'a [A::Acc],
    /// Write grad_yp rows with streaming stores (through a row buffer in L1).
    streaming: bool,
    /// grad_yp's rows.
    grad_yp: &'a DisjointChunks<'a, A>,
    out: &'a mut [A::Acc],
}

impl<A: Activation> Body for TokenGrads<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (hidden, slots, streaming) = (self.hidden, self.slots, self.streaming);
        let mut staged = vec![A::ZERO; if streaming { hidden } else { 0 }];
        for (i, (gw_row, d_row)) in self.out.chunks_exact_mut(slots).zip(self.dest.chunks_exact(slots)).enumerate() {
            if let Some(next) = self.dest.get((i + PREFETCH_TOKENS) * slots..(i + PREFETCH_TOKENS + 1) * slots) {
                prefetch_rows(self.yp, hidden, next);
            }
            let t = self.first_token + i;
            let g = &self.grad_y[t * hidden..(t + 1) * hidden];
            for (s, (gw, &d)) in gw_row.iter_mut().zip(d_row).enumerate() {
                if d < 0 {
                    *gw = <A::Acc as Accum>::ZERO;
                    continue;
                }
                let d = d as usize;
                *gw = dot(g, &self.yp[d * hidden..(d + 1) * hidden]);
                let w = self.weights[t * slots + s];
                // SAFETY: this (token, slot) is the only one with row d (check_one_to_one), so
                // row d is taken once.
                let row_out = unsafe { self.grad_yp.take(d) };
                let row = row_target(row_out, &mut staged, streaming);
                for (o, &v) in row.iter_mut().zip(g) {
                    *o = A::from_acc(w * v.to_acc());
                }
                flush_row(row_out, &staged, streaming);
            }
        }
    }
}

/// ⟨a, b⟩ in the accumulation type, with DOT_LANES interleaved partial sums added in a fixed order.
#[inline(always)]
fn dot<A: Activation>(a: &[A], b: &[A]) -> A::Acc {
    let mut lanes = [<A::Acc as Accum>::ZERO; DOT_LANES];
    let mut a_chunks = a.chunks_exact(DOT_LANES);
    let mut b_chunks = b.chunks_exact(DOT_LANES);
    for (ca, cb) in (&mut a_chunks).zip(&mut b_chunks) {
        for l in 0..DOT_LANES {
            lanes[l] += ca[l].to_acc() * cb[l].to_acc();
        }
    }
    for (l, (&x, &y)) in a_chunks.remainder().iter().zip(b_chunks.remainder()).enumerate() {
        lanes[l] += x.to_acc() * y.to_acc();
    }
    let mut sum = <A::Acc as Accum>::ZERO;
    for v in lanes {
        sum += v;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_of_a_small_combine() {
        // token 0 -> rows 1 (w .5) and 0 (w 2); token 1 -> row 2 (w 1), slot 1 dropped; row 3 padding.
        let grad_y = [1.0f64, 2.0, 3.0, 4.0];
        let yp = [1.0f64, 0.0, 0.0, 1.0, 2.0, 2.0, 9.0, 9.0];
        let mut grad_yp = [7.0f64; 8];
        let mut grad_w = [7.0f64; 4];
        combine_backward(&grad_y, &yp, 2, 2, &[1, 0, 2, -1], &[0, 0, 1, -1], 2, &[0.5, 2.0, 1.0, 3.0], &mut grad_yp, &mut grad_w).unwrap();
        assert_eq!(grad_yp, [2.0, 4.0, 0.5, 1.0, 3.0, 4.0, 0.0, 0.0]);
        assert_eq!(grad_w, [2.0, 1.0, 14.0, 0.0]);
    }

    #[test]
    fn large_outputs_written_with_streaming_stores_match_plain_loops() {
        let (tokens, slots, hidden) = (2048, 2, 1024); // grad_yp: 4096 rows * 4 KiB = 16 MiB
        let (dest, src) = crate::cpu::test_plan::random_plan(tokens, slots, 6);
        let grad_y = crate::cpu::test_plan::values(tokens * hidden, 7);
        let yp = crate::cpu::test_plan::values(src.len() * hidden, 8);
        let weights = crate::cpu::test_plan::values(dest.len(), 9);
        let mut grad_yp = vec![9.0f32; src.len() * hidden];
        let mut grad_w = vec![9.0f32; dest.len()];
        combine_backward(&grad_y, &yp, tokens, hidden, &dest, &src, slots, &weights, &mut grad_yp, &mut grad_w).unwrap();
        for (r, &t) in src.iter().enumerate() {
            let row = &grad_yp[r * hidden..(r + 1) * hidden];
            if t < 0 {
                assert!(row.iter().all(|&v| v == 0.0), "padding row {r}");
                continue;
            }
            let i = (t as usize * slots..(t as usize + 1) * slots).find(|&i| dest[i] == r as i32).unwrap();
            let g = &grad_y[t as usize * hidden..(t as usize + 1) * hidden];
            assert!(row.iter().zip(g).all(|(&v, &gv)| v == weights[i] * gv), "row {r}");
        }
        for (i, &d) in dest.iter().enumerate() {
            let t = i / slots;
            let want = if d < 0 { 0.0 } else { dot::<f32>(&grad_y[t * hidden..(t + 1) * hidden], &yp[d as usize * hidden..(d as usize + 1) * hidden]) };
            assert_eq!(grad_w[i], want, "pair {i}");
        }
    }

    #[test]
    fn rejects_a_row_claimed_by_two_slots() {
        let mut grad_yp = [0.0f64; 8];
        let mut grad_w = [0.0f64; 4];
        let err = combine_backward(&[1.0f64; 4], &[1.0f64; 8], 2, 2, &[1, 1, 2, -1], &[0, 0, 1, -1], 2, &[1.0; 4], &mut grad_yp, &mut grad_w);
        assert!(err.unwrap_err().to_string().contains("twice"));
    }
}
