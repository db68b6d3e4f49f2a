//! Regroup on the GPU: rows in a grid of blocks, a-major to b-major (see cpu::regroup), as one
//! launch that finds the blocks' starts and one row copy per output row of the widest word that fits.

use super::common::{check_i32, kernel_name, row_block, Rows};
use super::context::Device;
use super::launch::{Args, Launch};
use crate::dtype::DType;
use crate::error::Result;

/// The row-copy kernels by the bytes of the word they copy.
const REGROUP_KERNELS: [(&str, &str); 4] =
    [("16", "regroup_rows_b16"), ("8", "regroup_rows_b8"), ("4", "regroup_rows_b4"), ("2", "regroup_rows_b2")];

/// Bytes of scratch memory a regroup of an [a_blocks, b_blocks] grid needs (the blocks' starts).
pub fn regroup_workspace(a_blocks: usize, b_blocks: usize) -> usize {
    (2 * a_blocks * b_blocks + 1) * std::mem::size_of::<i64>()
}

/// A regroup's device memory: the [a_blocks, b_blocks] int64 counts and the caller's workspace of
/// `regroup_workspace` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Blocks {
    pub counts: u64,
    pub a_blocks: usize,
    pub b_blocks: usize,
    pub workspace: u64,
}

/// out = the rows of x regrouped from a-major to b-major blocks (x and out: [rows, hidden]).
pub fn regroup(device: &Device, stream: u64, dtype: DType, x: Rows, hidden: usize, blocks: Blocks, out: Rows) -> Result<()> {
    let bytes = hidden * dtype.elem_bytes();
    if out.rows == 0 || bytes == 0 {
        return Ok(());
    }
    let (a, b) = (check_i32("regroup blocks", blocks.a_blocks)?, check_i32("regroup blocks", blocks.b_blocks)?);
    check_i32("regroup blocks", blocks.a_blocks * blocks.b_blocks)?;
    device.make_current()?;
    let go = Launch { device, stream };
    let in_starts = blocks.workspace;
    let out_starts = blocks.workspace + (blocks.a_blocks * blocks.b_blocks * std::mem::size_of::<i64>()) as u64;
    go.run("regroup_starts", 1, 32, 0, Args::new().ptr(blocks.counts).i32(a).i32(b).ptr(in_starts).ptr(out_starts))?;
    let width = [16usize, 8, 4, 2]
        .into_iter()
        .find(|&w| bytes.is_multiple_of(w) && x.ptr.is_multiple_of(w as u64) && out.ptr.is_multiple_of(w as u64))
        .unwrap_or(2);
    let kernel = kernel_name(&REGROUP_KERNELS, &width.to_string())?;
    let words = (bytes / width) as i64;
    let args = Args::new().ptr(x.ptr).ptr(out.ptr).ptr(in_starts).ptr(out_starts).i32(a).i32(b).i64(x.rows as i64).i64(words);
    go.run(kernel, out.rows as u64, row_block(words as usize, 256), 0, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::context::has_kernel;

    #[test]
    fn its_kernels_are_embedded() {
        assert!(has_kernel("regroup_starts"));
        assert!(REGROUP_KERNELS.iter().all(|(_, name)| has_kernel(name)));
        assert_eq!(regroup_workspace(2, 3), 13 * 8);
    }
}
