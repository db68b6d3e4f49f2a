//! Permute on the GPU: xp[r] = x[src[r]] as row copies of the widest word the rows allow.

use super::common::{check_i32, kernel_name, row_block, Rows};
use super::context::Device;
use super::launch::{Args, Launch};
use crate::dtype::DType;
use crate::error::Result;

/// The gather kernels by the bytes of the word they copy.
const GATHER_KERNELS: [(&str, &str); 4] = [("16", "gather_rows_b16"), ("8", "gather_rows_b8"), ("4", "gather_rows_b4"), ("2", "gather_rows_b2")];

/// xp[r] = x[src[r]] (padding rows and out-of-range sources give zero rows).
pub fn permute(device: &Device, stream: u64, dtype: DType, x: Rows, hidden: usize, src: u64, xp: Rows) -> Result<()> {
    let bytes = hidden * dtype.elem_bytes();
    if xp.rows == 0 || bytes == 0 {
        return Ok(());
    }
    check_i32("T", x.rows)?;
    device.make_current()?;
    let width = [16usize, 8, 4, 2]
        .into_iter()
        .find(|&w| bytes.is_multiple_of(w) && x.ptr.is_multiple_of(w as u64) && xp.ptr.is_multiple_of(w as u64))
        .unwrap_or(2);
    let kernel = kernel_name(&GATHER_KERNELS, &width.to_string())?;
    let words = (bytes / width) as i64;
    let block = row_block(words as usize, 256);
    Launch { device, stream }.run(kernel, xp.rows as u64, block, 0, Args::new().ptr(x.ptr).ptr(xp.ptr).ptr(src).i32(x.rows as i32).i64(words))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::context::has_kernel;

    #[test]
    fn its_kernels_are_embedded() {
        assert!(GATHER_KERNELS.iter().all(|(_, name)| has_kernel(name)));
    }
}
