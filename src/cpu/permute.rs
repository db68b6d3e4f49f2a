//! Permute: gathers token rows into expert-contiguous rows, xp[r] = x[src[r]], padding rows zero.

use rayon::prelude::*;

use crate::threads::min_len;

use crate::cpu::indices::check_src;
use crate::error::Result;

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// Fills `xp` ([src.len(), hidden]) from `x` ([num_tokens, hidden]). Works on any element type:
/// it only moves bits (`zero` fills padding rows).
pub fn permute<A: Copy + Send + Sync>(
    x: &[A],
    num_tokens: usize,
    hidden: usize,
    src: &[i32],
    zero: A,
    xp: &mut [A],
) -> Result<()> {
    check_src(src, num_tokens)?;
    if hidden == 0 {
        return Ok(());
    }
    xp.par_chunks_mut(ROWS_PER_TASK * hidden).with_min_len(min_len()).zip(src.par_chunks(ROWS_PER_TASK)).for_each(|(out, rows)| {
        for (row_out, &t) in out.chunks_exact_mut(hidden).zip(rows) {
            if t < 0 {
                row_out.fill(zero);
            } else {
                let t = t as usize;
                row_out.copy_from_slice(&x[t * hidden..(t + 1) * hidden]);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_rows_and_zeroes_padding() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut xp = [9.0f32; 6];
        permute(&x, 2, 2, &[1, -1, 0], 0.0, &mut xp).unwrap();
        assert_eq!(xp, [3.0, 4.0, 0.0, 0.0, 1.0, 2.0]);
        assert!(permute(&x, 2, 2, &[2, -1, 0], 0.0, &mut xp).is_err());
    }
}
