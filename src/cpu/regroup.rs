//! Regroup: rows held as a grid of blocks (block (a, b) has counts[a][b] rows), reordered from
//! a-major to b-major — an expert-parallel all-to-all's received rows, source-rank-major, into
//! local-expert-major segments; with the counts transposed, the way back.

use crate::cpu::permute::permute;
use crate::error::{Error, Result};

/// For each output row (blocks in b-major order), the input row (blocks in a-major order) it takes.
/// `counts` is [a_blocks, b_blocks] row-major; every count must be >= 0 and they must sum to `rows`.
pub fn regroup_sources(counts: &[i64], a_blocks: usize, b_blocks: usize, rows: usize) -> Result<Vec<i32>> {
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
    // starts[a * b_blocks + b]: the first input row of block (a, b).
    let mut starts = Vec::with_capacity(counts.len());
    let mut next = 0usize;
    for &c in counts {
        starts.push(next);
        next += c as usize;
    }
    let mut sources = Vec::with_capacity(rows);
    for b in 0..b_blocks {
        for a in 0..a_blocks {
            let block = a * b_blocks + b;
            let start = starts[block];
            sources.extend((start..start + counts[block] as usize).map(|r| r as i32));
        }
    }
    Ok(sources)
}

/// Writes `out` ([rows, hidden]) with the rows of `x` ([rows, hidden]) regrouped from a-major to
/// b-major blocks. Works on any element type: it only moves bits.
#[allow(clippy::too_many_arguments)]
pub fn regroup<A: Copy + Send + Sync>(
    x: &[A],
    rows: usize,
    hidden: usize,
    counts: &[i64],
    a_blocks: usize,
    b_blocks: usize,
    zero: A,
    out: &mut [A],
) -> Result<()> {
    assert_eq!(x.len(), rows * hidden, "regroup: x is not [rows, hidden]");
    let sources = regroup_sources(counts, a_blocks, b_blocks, rows)?;
    permute(x, rows, hidden, &sources, zero, out)
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
            regroup(&x, rows, hidden, &counts, a_blocks, b_blocks, 0, &mut out).unwrap();
            assert_eq!(out, reference(&x, hidden, &counts, a_blocks, b_blocks));
            let transposed: Vec<i64> = (0..b_blocks * a_blocks).map(|i| counts[(i % a_blocks) * b_blocks + i / a_blocks]).collect();
            let mut back = vec![u32::MAX; rows * hidden];
            regroup(&out, rows, hidden, &transposed, b_blocks, a_blocks, 0, &mut back).unwrap();
            assert_eq!(back, x);
        }
    }

    #[test]
    fn bad_counts_are_errors() {
        let x = [0u32; 4];
        let mut out = [0u32; 4];
        assert!(matches!(regroup(&x, 4, 1, &[1, 2, 1], 2, 2, 0, &mut out), Err(Error::Shape { .. })));
        assert!(matches!(regroup(&x, 4, 1, &[1, 2, 1, 1], 2, 2, 0, &mut out), Err(Error::Argument { .. })));
        assert!(matches!(regroup(&x, 4, 1, &[5, -1, 0, 0], 2, 2, 0, &mut out), Err(Error::Argument { .. })));
        assert!(regroup(&[0u32; 0], 0, 1, &[], 0, 3, 0, &mut []).is_ok());
    }
}
