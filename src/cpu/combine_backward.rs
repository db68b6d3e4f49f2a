//! Combine's backward pass: grad_yp[dest[t,s]] = w[t,s] · grad_y[t] (padding rows zero) and
//! grad_w[t,s] = ⟨grad_y[t], yp[dest[t,s]]⟩ (zero where dest < 0).

use rayon::prelude::*;

use crate::threads::min_len;

use crate::cpu::indices::{check_dest, check_src};
use crate::cpu::simd::{dispatch, Body};
use crate::dtype::{Accum, Activation};
use crate::error::{Error, Result};

const ROWS_PER_TASK: usize = 64;
const TOKENS_PER_TASK: usize = 64;
/// Independent partial sums of a dot product: fixed, so the result does not depend on threads.
const DOT_LANES: usize = 16;

/// Computes grad_yp ([src.len(), hidden]) and grad_w ([num_tokens, slots]).
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
    check_dest(dest, slots, num_rows)?;
    check_src(src, num_tokens)?;
    // Each row's slot: the s with dest[src[r], s] == r.
    let row_slot: Vec<i64> = src
        .par_iter().with_min_len(min_len())
        .enumerate()
        .map(|(r, &t)| {
            if t < 0 {
                return Ok(-1);
            }
            let first = t as usize * slots;
            match dest[first..first + slots].iter().position(|&d| d as usize == r && d >= 0) {
                Some(s) => Ok((first + s) as i64),
                None => Err(Error::Plan {
                    arg: "plan.src",
                    problem: format!("row {r} names token {t}, but no slot of token {t} has that row in plan.dest"),
                }),
            }
        })
        .collect::<Result<_>>()?;
    if hidden > 0 {
        grad_yp.par_chunks_mut(ROWS_PER_TASK * hidden).with_min_len(min_len()).zip(row_slot.par_chunks(ROWS_PER_TASK)).zip(src.par_chunks(ROWS_PER_TASK)).for_each(
            |((out, slot_of_row), src_rows)| dispatch(ScaleRows { grad_y, hidden, weights, slot_of_row, src_rows, out }),
        );
    }
    if slots == 0 {
        return Ok(());
    }
    grad_w.par_chunks_mut(TOKENS_PER_TASK * slots).with_min_len(min_len()).zip(dest.par_chunks(TOKENS_PER_TASK * slots)).enumerate().for_each(
        |(task, (gw_chunk, dest_chunk))| {
            let first_token = task * TOKENS_PER_TASK;
            dispatch(WeightGrads { grad_y, yp, hidden, slots, first_token, dest: dest_chunk, out: gw_chunk })
        },
    );
    Ok(())
}

/// grad_yp rows of one task: w[slot of row] · grad_y[src[row]], padding rows zero.
struct ScaleRows<'a, A: Activation> {
    grad_y: &'a [A],
    hidden: usize,
    weights: &'a [A::Acc],
    slot_of_row: &'a [i64],
    src_rows: &'a [i32],
    out: &'a mut [A],
}

impl<A: Activation> Body for ScaleRows<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let hidden = self.hidden;
        for ((row_out, &slot), &t) in self.out.chunks_exact_mut(hidden).zip(self.slot_of_row).zip(self.src_rows) {
            if slot < 0 {
                row_out.fill(A::ZERO);
                continue;
            }
            let w = self.weights[slot as usize];
            let g = &self.grad_y[t as usize * hidden..(t as usize + 1) * hidden];
            row_out.iter_mut().zip(g).for_each(|(o, &v)| *o = A::from_acc(w * v.to_acc()));
        }
    }
}

/// grad_w of one task's tokens: ⟨grad_y[t], yp[dest[t,s]]⟩, zero where dest < 0.
struct WeightGrads<'a, A: Activation> {
    grad_y: &'a [A],
    yp: &'a [A],
    hidden: usize,
    slots: usize,
    first_token: usize,
    dest: &'a [i32],
    out: &'a mut [A::Acc],
}

impl<A: Activation> Body for WeightGrads<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (hidden, slots) = (self.hidden, self.slots);
        for (i, (gw_row, d_row)) in self.out.chunks_exact_mut(slots).zip(self.dest.chunks_exact(slots)).enumerate() {
            let t = self.first_token + i;
            let g = &self.grad_y[t * hidden..(t + 1) * hidden];
            for (gw, &d) in gw_row.iter_mut().zip(d_row) {
                *gw = if d < 0 {
                    <A::Acc as Accum>::ZERO
                } else {
                    dot(g, &self.yp[d as usize * hidden..(d as usize + 1) * hidden])
                };
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
}
