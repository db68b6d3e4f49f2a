//! Regroup: rows held as a grid of blocks (block (a, b) has counts[a][b] rows), reordered from
//! a-major to b-major — an expert-parallel all-to-all's received rows, source-rank-major, into
//! local-expert-major segments; with the counts transposed, the way back.

use crate::cpu::stream::{copy_row, fence, worth_streaming};
use crate::error::{Error, Result};
use crate::threads::for_each_chunk_mut;

/// The checks of a regroup's counts: [a_blocks, b_blocks] of them, each >= 0, summing to `rows`
/// (which must fit the int32 row index).
fn check_counts(counts: &[i64], a_blocks: usize, b_blocks: usize, rows: usize) -> Result<()> {
    if counts.len() != a_blocks * b_blocks {
        return Err(Error::Shape { arg: "counts", got: vec![counts.len()], expected: format!("[{a_blocks}, {b_blocks}]") });
    }
    if let Some((i, &c)) = counts.iter().enumerate().find(|(_, &c)| c < 0) {
        return Err(Error::Argument { arg: "counts", got: format!("{c} at block ({}, {})", i / b_blocks.max(1), i % b_blocks.max(1)), expected: "counts >= 0".into() });
    }
    let total: i128 = counts.iter().map(|&c| c as i128).sum();
    if total != rows as i128 {
        return Err(Error::Argument { arg: "counts", got: format!("counts summing to {total}"), expected: format!("the number of rows, {rows}") });
    }
    if rows > i32::MAX as usize {
        return Err(Error::IndexOverflow { arg: "rows", what: "rows", value: rows as u128, limit: i32::MAX as i64 });
    }
    Ok(())
}

/// Output rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// A run of rows that is contiguous in both the input and the output.
#[derive(Debug, Clone, Copy)]
struct Piece {
    out_start: usize,
    in_start: usize,
    len: usize,
}

/// The non-empty blocks in output order, as pieces (after checking the counts).
fn pieces(counts: &[i64], a_blocks: usize, b_blocks: usize, rows: usize) -> Result<Vec<Piece>> {
    check_counts(counts, a_blocks, b_blocks, rows)?;
    let mut starts = Vec::with_capacity(counts.len());
    let mut next = 0usize;
    for &c in counts {
        starts.push(next);
        next += c as usize;
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    for b in 0..b_blocks {
        for a in 0..a_blocks {
            let block = a * b_blocks + b;
            let len = counts[block] as usize;
            if len > 0 {
                out.push(Piece { out_start: at, in_start: starts[block], len });
                at += len;
            }
        }
    }
    Ok(out)
}

/// Writes `out` ([rows, hidden]) with the rows of `x` ([rows, hidden]) regrouped from a-major to
/// b-major blocks: each block is one contiguous copy. Works on any element type: it only moves bits.
#[allow(clippy::too_many_arguments)]
pub fn regroup<A: Copy + Send + Sync>(
    x: &[A],
    rows: usize,
    hidden: usize,
    counts: &[i64],
    a_blocks: usize,
    b_blocks: usize,
    out: &mut [A],
) -> Result<()> {
    assert_eq!(x.len(), rows * hidden, "regroup: x is not [rows, hidden]");
    assert_eq!(out.len(), rows * hidden, "regroup: out is not [rows, hidden]");
    let pieces = pieces(counts, a_blocks, b_blocks, rows)?;
    if hidden == 0 || rows == 0 {
        return Ok(());
    }
    let streaming = worth_streaming(std::mem::size_of_val(out));
    for_each_chunk_mut(out, ROWS_PER_TASK * hidden, |task, chunk| {
        let (first, last) = (task * ROWS_PER_TASK, task * ROWS_PER_TASK + chunk.len() / hidden);
        // the first piece ending after `first`
        let mut i = pieces.partition_point(|p| p.out_start + p.len <= first);
        while i < pieces.len() && pieces[i].out_start < last {
            let p = pieces[i];
            let (lo, hi) = (p.out_start.max(first), (p.out_start + p.len).min(last));
            let from = p.in_start + (lo - p.out_start);
            copy_row(&mut chunk[(lo - first) * hidden..(hi - first) * hidden], &x[from * hidden..(from + hi - lo) * hidden], streaming);
            i += 1;
        }
        fence(streaming);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious definition: the blocks cut out of x in a-major order, pasted in b-major order.
    fn reference(x: &[u32], hidden: usize, counts: &[i64], a_blocks: usize, b_blocks: usize) -> Vec<u32> {
        let mut blocks = Vec::new();
        let mut at = 0;
        for &c in counts {
            blocks.push(x[at * hidden..(at + c as usize) * hidden].to_vec());
            at += c as usize;
        }
        let mut out = Vec::new();
        for b in 0..b_blocks {
            for a in 0..a_blocks {
                out.extend_from_slice(&blocks[a * b_blocks + b]);
            }
        }
        out
    }

    #[test]
    fn regroups_like_the_reference_and_the_transposed_counts_undo_it() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for _ in 0..200 {
            let (a_blocks, b_blocks, hidden) = (1 + next() % 5, 1 + next() % 4, 1 + next() % 3);
            let counts: Vec<i64> = (0..a_blocks * b_blocks).map(|_| (next() % 4) as i64).collect();
            let rows = counts.iter().sum::<i64>() as usize;
            let x: Vec<u32> = (0..rows * hidden).map(|i| i as u32).collect();
            let mut out = vec![u32::MAX; rows * hidden];
            regroup(&x, rows, hidden, &counts, a_blocks, b_blocks, &mut out).unwrap();
            assert_eq!(out, reference(&x, hidden, &counts, a_blocks, b_blocks));
            let transposed: Vec<i64> = (0..b_blocks * a_blocks).map(|i| counts[(i % a_blocks) * b_blocks + i / a_blocks]).collect();
            let mut back = vec![u32::MAX; rows * hidden];
            regroup(&out, rows, hidden, &transposed, b_blocks, a_blocks, &mut back).unwrap();
            assert_eq!(back, x);
        }
    }

    #[test]
    fn large_outputs_written_with_streaming_stores_match_the_reference() {
        let (a_blocks, b_blocks, hidden) = (3, 5, 1024);
        let counts: Vec<i64> = (0..15).map(|i| 300 + 37 * (i % 4) as i64).collect();
        let rows = counts.iter().sum::<i64>() as usize;
        assert!(crate::cpu::stream::worth_streaming(rows * hidden * 4));
        let x: Vec<u32> = (0..rows * hidden).map(|i| i as u32).collect();
        let mut out = vec![0u32; rows * hidden];
        regroup(&x, rows, hidden, &counts, a_blocks, b_blocks, &mut out).unwrap();
        assert!(out == reference(&x, hidden, &counts, a_blocks, b_blocks));
    }

    #[test]
    fn bad_counts_are_errors() {
        let x = [0u32; 4];
        let mut out = [0u32; 4];
        assert!(matches!(regroup(&x, 4, 1, &[1, 2, 1], 2, 2, &mut out), Err(Error::Shape { .. })));
        assert!(matches!(regroup(&x, 4, 1, &[1, 2, 1, 1], 2, 2, &mut out), Err(Error::Argument { .. })));
        assert!(matches!(regroup(&x, 4, 1, &[5, -1, 0, 0], 2, 2, &mut out), Err(Error::Argument { .. })));
        assert!(regroup(&[0u32; 0], 0, 1, &[], 0, 3, &mut []).is_ok());
    }
}
