//! What the CUDA ops share: device rows and plan pointers, kernel lookup, index and alignment rules.

use super::context::cuda_error;
use super::launch::{Args, Launch};
use crate::dtype::DType;
use crate::error::Result;
use crate::routing::PlanFields;

/// Shared memory a kernel may use without opting in.
pub(super) const SHARED_LIMIT: usize = 48 * 1024;

/// Output pointers of a plan, one per field; the bindings pass them in `PLAN_FIELDS` order.
pub type PlanPointers = PlanFields<u64>;

/// A row-major [rows, hidden] activation on the device.
#[derive(Debug, Clone, Copy)]
pub struct Rows {
    pub ptr: u64,
    pub rows: usize,
}

/// A kernel name chosen at run time among a fixed set (names must be 'static for the cache).
pub(super) fn kernel_name(table: &[(&'static str, &'static str)], key: &str) -> Result<&'static str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, n)| *n).ok_or_else(|| cuda_error(format!("no kernel for {key}")))
}

/// The kernel of a table keyed "{dtype suffix}_v{v}" for `dtype` moving `v` elements per thread.
pub(super) fn vector_kernel(table: &[(&'static str, &'static str)], dtype: DType, v: usize) -> Result<&'static str> {
    kernel_name(table, &format!("{}_v{}", dtype.suffix(), v))
}

/// Threads per block for `items` per-thread items of a row: a multiple of 32 in [32, max].
pub(super) fn row_block(items: usize, max: u64) -> u32 {
    (items as u64).clamp(32, max).div_ceil(32) as u32 * 32
}

/// `value` as the kernels' int32 index, or an overflow error naming `what`.
pub(super) fn check_i32(what: &'static str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| crate::Error::IndexOverflow { arg: "logits", what, value: value as u128, limit: i32::MAX as i64 })
}

/// Elements moved per thread: as many as fit 16 bytes when every row starts 16-byte aligned.
pub(super) fn pack(dtype: DType, hidden: usize, pointers: &[u64]) -> usize {
    let (elem, widest) = (dtype.elem_bytes(), 16 / dtype.elem_bytes());
    let aligned = pointers.iter().all(|&p| p.is_multiple_of(16)) && (hidden * elem).is_multiple_of(16);
    if aligned { widest } else { 1 }
}

/// Marks all `rows` of src as padding (-1): when no gating kernel runs (T = 0), which otherwise does it.
pub(super) fn fill_padding(go: &Launch, src: u64, rows: usize) -> Result<()> {
    go.run("fill_i32", (rows as u64).div_ceil(256).min(65536), 256, 0, Args::new().ptr(src).i64(rows as i64).i32(-1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_need_aligned_rows() {
        assert_eq!(pack(DType::F32, 64, &[0, 256]), 4);
        assert_eq!(pack(DType::BF16, 64, &[0, 256]), 8);
        assert_eq!(pack(DType::F64, 64, &[0, 8]), 1);
        assert_eq!(pack(DType::F16, 3, &[0, 256]), 1);
        assert_eq!((row_block(1, 128), row_block(100, 128), row_block(1000, 256)), (32, 128, 256));
    }
}
