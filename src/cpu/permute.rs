//! Permute: gathers token rows into expert-contiguous rows, xp[r] = x[src[r]], padding rows zero.

use crate::threads::for_each_chunk_mut;

use crate::cpu::indices::check_src;
use crate::cpu::stream::{copy_row, fence, prefetch_row, worth_streaming};
use crate::error::Result;

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;
/// How many rows ahead the source rows are prefetched.
const PREFETCH_ROWS: usize = 2;

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
    assert_eq!(xp.len(), src.len() * hidden, "permute: xp is not [rows, hidden]");
    check_src(src, num_tokens)?;
    if hidden == 0 {
        return Ok(());
    }
    let streaming = worth_streaming(std::mem::size_of_val(xp));
    for_each_chunk_mut(xp, ROWS_PER_TASK * hidden, |task, out| {
        let rows = &src[task * ROWS_PER_TASK..(task * ROWS_PER_TASK + out.len() / hidden)];
        for (i, (row_out, &t)) in out.chunks_exact_mut(hidden).zip(rows).enumerate() {
            if let Some(&ahead) = rows.get(i + PREFETCH_ROWS) {
                if ahead >= 0 {
                    prefetch_row(&x[ahead as usize * hidden..(ahead as usize + 1) * hidden]);
                }
            }
            if t < 0 {
                row_out.fill(zero);
            } else {
                let t = t as usize;
                copy_row(row_out, &x[t * hidden..(t + 1) * hidden], streaming);
            }
        }
        fence(streaming);
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

    #[test]
    fn large_outputs_written_with_streaming_stores_match_a_plain_gather() {
        let (tokens, slots, hidden) = (2048, 2, 1024); // xp: 4096 rows * 4 KiB = 16 MiB
        let (_, src) = crate::cpu::test_plan::random_plan(tokens, slots, 1);
        let x = crate::cpu::test_plan::values(tokens * hidden, 2);
        assert!(crate::cpu::stream::worth_streaming(src.len() * hidden * 4));
        let mut xp = vec![9.0f32; src.len() * hidden];
        permute(&x, tokens, hidden, &src, 0.0, &mut xp).unwrap();
        for (r, &t) in src.iter().enumerate() {
            let want = if t < 0 { vec![0.0; hidden] } else { x[t as usize * hidden..(t as usize + 1) * hidden].to_vec() };
            assert_eq!(&xp[r * hidden..(r + 1) * hidden], &want[..], "row {r}");
        }
    }
}
